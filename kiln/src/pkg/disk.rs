//! Bootable disk images: `kiln pkg --format raw|qcow2|vmdk|vhd|vhdx|vdi|gce`.
//!
//! One layout serves legacy BIOS and UEFI firmware (docs/DESIGN.md says why
//! GRUB): a GPT disk of 512-byte sectors with
//!
//! - the protective MBR carrying GRUB's BIOS boot sector, which loads
//! - partition 1, a BIOS boot partition holding GRUB's i386-pc core image
//!   (its first sector lists where the rest lies);
//! - partition 2, the EFI system partition (FAT), holding GRUB's x86_64 EFI
//!   image as `EFI/BOOT/BOOTX64.EFI` (the path firmware boots from a disk
//!   without boot entries), `boot/grub/grub.cfg` and the kernel as
//!   `boot/kiln`.
//!
//! Both GRUBs read the same `grub.cfg`, which loads the kernel with
//! multiboot2 and the app's command line; the kernel takes either boot
//! information form (plat/qemu's bootinfo.rs). GRUB's images come from
//! Debian's `grub-pc-bin` and `grub-efi-amd64-bin` through `grub-mkimage`;
//! formats other than raw are converted by `qemu-img` and checked with it.
//! `gce` is Google Compute Engine's import format: `disk.raw` (a whole
//! number of GiB) in a gzip'd tar.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Package;

/// Which firmware a disk image boots on (`kiln pkg --firmware`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Firmware {
    /// PC BIOS (GRUB's i386-pc boot sector and core image; x86_64)
    Bios,
    /// UEFI (the ESP's loader)
    Uefi,
    /// Both (x86_64's default; arm64 disks are UEFI only)
    Both,
}

impl Firmware {
    /// The firmware of a disk for `arch` when `--firmware` asks for
    /// `wanted`; an error for what the architecture cannot boot.
    pub fn for_arch(wanted: Option<Firmware>, arch: &str) -> Result<Firmware> {
        match (wanted, arch) {
            (Some(Firmware::Bios | Firmware::Both), "arm64") => bail!(
                "--firmware {}: arm64 machines boot disks from UEFI only (there is no arm64 BIOS); leave out --firmware, or give uefi",
                if wanted == Some(Firmware::Bios) { "bios" } else { "both" }
            ),
            (None, "arm64") => Ok(Firmware::Uefi),
            (None, _) => Ok(Firmware::Both),
            (Some(f), _) => Ok(f),
        }
    }

    fn bios(self) -> bool {
        self != Firmware::Uefi
    }

    fn uefi(self) -> bool {
        self != Firmware::Bios
    }
}

/// The disk formats `kiln pkg` writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
    Vdi,
    Gce,
}

impl Format {
    /// The file name extension, and `qemu-img`'s name for the format.
    fn extension(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Gce => "tar.gz",
        }
    }

    /// The name `--format` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Gce => "gce",
            other => other.extension(),
        }
    }

    fn qemu_img_name(self) -> Option<&'static str> {
        match self {
            Format::Raw | Format::Gce => None,
            Format::Qcow2 => Some("qcow2"),
            Format::Vmdk => Some("vmdk"),
            // Hyper-V's first format, which Azure and XenServer take too.
            Format::Vhd => Some("vpc"),
            Format::Vhdx => Some("vhdx"),
            Format::Vdi => Some("vdi"),
        }
    }
}

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// Partition 1 (GRUB's BIOS core image) starts at 1 MiB and is 1 MiB long.
const BIOS_BOOT_LBA: u64 = MIB / SECTOR;
const BIOS_BOOT_SECTORS: u64 = MIB / SECTOR;
/// Partition 2 (the EFI system partition) starts at 2 MiB.
const ESP_LBA: u64 = 2 * MIB / SECTOR;
/// The backup GPT at the end of the disk: 32 sectors of entries and a header.
const GPT_BACKUP_SECTORS: u64 = 33;
/// Where GRUB's BIOS boot sector keeps the first sector of the core image
/// (a little-endian LBA), and where the core image's first sector keeps
/// the list of the sectors that follow it: LBA (u64), count (u16).
const BOOT_IMG_CORE_LBA: usize = 0x5c;
const CORE_LIST_LBA: usize = 0x1f4;
const CORE_LIST_COUNT: usize = 0x1fc;

/// GRUB's modules for both images: GPT, FAT, multiboot2, the config file's
/// commands (normal), and the serial console.
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "multiboot2",
    "normal",
    "boot",
    "serial",
    "terminal",
];

/// The kernel's path inside the EFI system partition.
const KERNEL_PATH: &str = "/boot/kiln";
/// arm64: the kernel's command line, read by Kiln's UEFI loader.
const CMDLINE_PATH: &str = "/boot/cmdline";

/// Where Debian's packages put GRUB's images for each platform.
fn grub_dir(platform: &str) -> PathBuf {
    Path::new("/usr/lib/grub").join(platform)
}

/// Checks the host tools a format needs, naming the package to install.
pub fn check_tools(format: Format, arch: &str) -> Result<()> {
    if format.qemu_img_name().is_some() && which("qemu-img").is_none() {
        bail!("kiln pkg --format {}: qemu-img not found; install Debian's qemu-utils (apt-get install qemu-utils)", format.name());
    }
    if arch == "arm64" {
        // Kiln's own loader, built by cargo.
        return Ok(());
    }
    if which("grub-mkimage").is_none() {
        bail!("kiln pkg --format {}: grub-mkimage not found; install Debian's grub-pc-bin and grub-efi-amd64-bin (apt-get install grub-pc-bin grub-efi-amd64-bin)", format.name());
    }
    for (platform, package) in [
        ("i386-pc", "grub-pc-bin"),
        ("x86_64-efi", "grub-efi-amd64-bin"),
    ] {
        if !grub_dir(platform).join("multiboot2.mod").exists() {
            bail!("kiln pkg --format {}: GRUB's {platform} modules are missing ({}); install Debian's {package}", format.name(), grub_dir(platform).display());
        }
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Quotes one word for GRUB's script language: single quotes keep
/// everything literal; a single quote itself is written as `'\''`.
fn grub_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `grub.cfg` both GRUBs read: the serial console (COM1, as the
/// kernel's), no menu, the kernel with its command line words.
pub fn grub_cfg(words: &[String]) -> String {
    let mut s = String::from(
        "# Written by kiln pkg: boots the Kiln kernel with multiboot2.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n",
    );
    s.push_str("multiboot2 ");
    s.push_str(KERNEL_PATH);
    for w in words {
        s.push(' ');
        s.push_str(&grub_quote(w));
    }
    s.push_str("\nboot\n");
    s
}

/// Runs `grub-mkimage` for one platform and returns the image's bytes.
fn grub_mkimage(platform: &str, prefix: &str, extra: &[&str], work: &Path) -> Result<Vec<u8>> {
    let out = work.join(format!("grub-{platform}.img"));
    let o = Command::new("grub-mkimage")
        .arg("-O")
        .arg(platform)
        .arg("-d")
        .arg(grub_dir(platform))
        .arg("-o")
        .arg(&out)
        .arg("-p")
        .arg(prefix)
        .args(extra)
        .args(GRUB_MODULES)
        .output()
        .context("running grub-mkimage")?;
    if !o.status.success() {
        bail!(
            "grub-mkimage -O {platform} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    std::fs::read(&out).with_context(|| format!("reading {}", out.display()))
}

/// The files of the EFI system partition, as a FAT image of `bytes` bytes.
fn esp_image(bytes: u64, files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    use hadris_fat::embedded::{sync::Fat, MountToken};
    use hadris_fs::OpenOptions;
    use hadris_storage::{BlockSize, MemDevice};
    let mut dev = MemDevice::new(vec![0u8; bytes as usize], BlockSize::new(512).unwrap());
    let options = hadris_fat::FatOptions::new().with_label(
        hadris_fat::VolumeLabel::new("KILN-ESP").map_err(|e| anyhow::anyhow!("label: {e:?}"))?,
    );
    hadris_fat::sync::format(&mut dev, &options)
        .map_err(|e| anyhow::anyhow!("formatting the EFI system partition: {e}"))?;
    let mut token = MountToken::new();
    let mut fat: Fat<_> = Fat::mount(dev, &mut token)
        .map_err(|e| anyhow::anyhow!("mounting the EFI system partition: {e:?}"))?;
    for (path, data) in files {
        let (dir, name) = path
            .trim_start_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path));
        let dir = if dir.is_empty() {
            fat.root()
        } else {
            fat.create_dir_all(fat.root(), dir)
                .map_err(|e| anyhow::anyhow!("{dir} in the EFI system partition: {e:?}"))?
        };
        let f = fat
            .open(dir, name, OpenOptions::new().write().create().truncate())
            .map_err(|e| anyhow::anyhow!("{path} in the EFI system partition: {e:?}"))?;
        fat.write(&f, data)
            .map_err(|e| anyhow::anyhow!("writing {path} into the EFI system partition: {e:?}"))?;
        fat.close(f).map_err(|e| anyhow::anyhow!("{path}: {e:?}"))?;
    }
    let dev = fat
        .unmount()
        .map_err(|e| anyhow::anyhow!("finishing the EFI system partition: {e:?}"))?;
    Ok(dev.into_inner())
}

/// Writes the disk image for `p` in `format` into `out`; returns its path.
/// `words` is the kernel's command line, one word per item.
pub fn write(
    p: &Package,
    words: &[String],
    format: Format,
    firmware: Firmware,
    out: &Path,
) -> Result<PathBuf> {
    check_tools(format, p.arch)?;
    let work = out.join(format!(".{}-disk-{}", p.name, std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let r = write_in(p, words, format, firmware, out, &work);
    let _ = std::fs::remove_dir_all(&work);
    r
}

/// What goes on a disk for one architecture: the ESP's files, and for
/// x86_64 GRUB's BIOS path (its boot sector and core image).
struct Layout {
    files: Vec<(&'static str, Vec<u8>)>,
    bios: Option<(Vec<u8>, Vec<u8>)>,
}

/// x86_64: GRUB for BIOS and UEFI, one `grub.cfg` with the command line.
fn x86_64_layout(
    kernel: Vec<u8>,
    words: &[String],
    firmware: Firmware,
    work: &Path,
) -> Result<Layout> {
    // BIOS: the core image names its partition outright (the first disk's
    // second partition); UEFI: the partition GRUB was loaded from.
    let core = grub_mkimage("i386-pc", "(hd0,gpt2)/boot/grub", &["biosdisk"], work)?;
    // UEFI: GOP, so that multiboot2 finds a video mode to hand over (it
    // prints an error on the console otherwise; Kiln does not use it).
    let efi = grub_mkimage("x86_64-efi", "/boot/grub", &["efi_gop"], work)?;
    let boot_img =
        std::fs::read(grub_dir("i386-pc").join("boot.img")).context("reading GRUB's boot.img")?;
    if boot_img.len() != 512 || core.len() < 512 {
        bail!("GRUB's boot.img or core image has an unexpected size");
    }
    if (core.len() as u64).div_ceil(SECTOR) > BIOS_BOOT_SECTORS {
        bail!(
            "GRUB's core image ({} KiB) does not fit its 1 MiB partition",
            core.len() / 1024
        );
    }
    // A BIOS-only disk keeps the ESP as the partition GRUB reads its
    // configuration and the kernel from, without the UEFI loader; a
    // UEFI-only one has no BIOS boot partition (the ESP is then the first).
    let mut files = vec![
        ("/boot/grub/grub.cfg", grub_cfg(words).into_bytes()),
        (KERNEL_PATH, kernel),
    ];
    if firmware.uefi() {
        files.insert(0, ("/EFI/BOOT/BOOTX64.EFI", efi));
    }
    Ok(Layout {
        files,
        bios: firmware.bios().then_some((boot_img, core)),
    })
}

/// arm64: Kiln's own UEFI loader (plat/efi) with the kernel Image and its
/// command line beside it; UEFI only (arm64 machines have no BIOS).
fn arm64_layout(kernel: Vec<u8>, words: &[String]) -> Result<Layout> {
    let loader = crate::builder::efi_loader()?;
    let efi = std::fs::read(&loader).with_context(|| format!("reading {}", loader.display()))?;
    let cmdline: Vec<String> = words.iter().map(|w| kiln_boot::cmdline::quote(w)).collect();
    Ok(Layout {
        files: vec![
            ("/EFI/BOOT/BOOTAA64.EFI", efi),
            (
                CMDLINE_PATH,
                format!("{}\n", cmdline.join(" ")).into_bytes(),
            ),
            (KERNEL_PATH, kernel),
        ],
        bios: None,
    })
}

fn write_in(
    p: &Package,
    words: &[String],
    format: Format,
    firmware: Firmware,
    out: &Path,
    work: &Path,
) -> Result<PathBuf> {
    let kernel =
        std::fs::read(p.kernel).with_context(|| format!("reading {}", p.kernel.display()))?;
    let layout = match p.arch {
        "arm64" => arm64_layout(kernel, words)?,
        _ => x86_64_layout(kernel, words, firmware, work)?,
    };
    let files: Vec<(&str, &[u8])> = layout
        .files
        .iter()
        .map(|(n, d)| (*n, d.as_slice()))
        .collect();
    // The partition: its files with a quarter spare (for a user's edits
    // and FAT's own tables), at least 8 MiB, in whole MiB.
    let content: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let esp_bytes = (content + content / 4 + 2 * MIB)
        .max(8 * MIB)
        .next_multiple_of(MIB);
    let esp = esp_image(esp_bytes, &files)?;
    // The whole disk: GCE takes whole GiB only.
    let mut disk_bytes = ESP_LBA * SECTOR + esp_bytes + MIB;
    if format == Format::Gce {
        disk_bytes = disk_bytes.next_multiple_of(1 << 30);
    }
    let raw = work.join("disk.raw");
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&raw)
            .with_context(|| format!("creating {}", raw.display()))?;
        f.set_len(disk_bytes)?;
        let sectors = disk_bytes / SECTOR;
        let mut gpt = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(f, None)
            .context("making the partition table")?;
        if layout.bios.is_some() {
            gpt.add_partition_at(
                "BIOS boot",
                1,
                BIOS_BOOT_LBA,
                BIOS_BOOT_SECTORS,
                gpt::partition_types::BIOS,
                0,
            )
            .context("adding the BIOS boot partition")?;
        }
        let esp_sectors = (sectors - GPT_BACKUP_SECTORS - 1 - ESP_LBA).min(esp_bytes / SECTOR);
        let esp_number = if layout.bios.is_some() { 2 } else { 1 };
        gpt.add_partition_at(
            "EFI system",
            esp_number,
            ESP_LBA,
            esp_sectors,
            gpt::partition_types::EFI,
            0,
        )
        .context("adding the EFI system partition")?;
        let mut f = gpt.write().context("writing the partition table")?;
        let mut mbr =
            gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
        if let Some((boot_img, mut core)) = layout.bios {
            // The protective MBR carries GRUB's boot sector, pointed at
            // the core, whose first sector lists the rest.
            let core_sectors = (core.len() as u64).div_ceil(SECTOR);
            let mut code = [0u8; 440];
            code.copy_from_slice(&boot_img[..440]);
            code[BOOT_IMG_CORE_LBA..BOOT_IMG_CORE_LBA + 8]
                .copy_from_slice(&BIOS_BOOT_LBA.to_le_bytes());
            mbr.set_bootcode(code);
            core[CORE_LIST_LBA..CORE_LIST_LBA + 8]
                .copy_from_slice(&(BIOS_BOOT_LBA + 1).to_le_bytes());
            core[CORE_LIST_COUNT..CORE_LIST_COUNT + 2]
                .copy_from_slice(&((core_sectors - 1) as u16).to_le_bytes());
            f.seek(SeekFrom::Start(BIOS_BOOT_LBA * SECTOR))?;
            f.write_all(&core)?;
        }
        mbr.overwrite_lba0(&mut f)
            .context("writing the protective MBR")?;
        f.seek(SeekFrom::Start(ESP_LBA * SECTOR))?;
        f.write_all(&esp)?;
        f.sync_all()?;
    }
    let dest = out.join(format!("{}.{}", p.name, format.extension()));
    match format {
        Format::Raw => std::fs::rename(&raw, &dest)
            .with_context(|| format!("moving the image to {}", dest.display()))?,
        Format::Gce => gce_tarball(&raw, &dest)?,
        other => {
            let name = other.qemu_img_name().unwrap();
            let _ = std::fs::remove_file(&dest);
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-q", "-f", "raw", "-O", name]);
            if other == Format::Vhd {
                // Azure wants a fixed-size VHD whose size is a whole MiB.
                c.args(["-o", "subformat=fixed,force_size=on"]);
            }
            let o = c
                .arg(&raw)
                .arg(&dest)
                .output()
                .context("running qemu-img")?;
            if !o.status.success() {
                bail!(
                    "qemu-img convert to {name} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            check_image(&dest, name)?;
        }
    }
    Ok(dest)
}

/// `qemu-img check` where the format has checks, and `qemu-img info`
/// confirming the format, for a converted image.
fn check_image(image: &Path, name: &str) -> Result<()> {
    // A fixed VHD is a raw disk with a footer, which qemu-img would probe
    // as raw: the format is named.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", name])
        .arg(image)
        .output()
        .context("running qemu-img info")?;
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).with_context(|| {
        format!(
            "qemu-img info {}: {}",
            image.display(),
            String::from_utf8_lossy(&info.stderr).trim()
        )
    })?;
    if v["format"].as_str() != Some(name) {
        bail!(
            "qemu-img info {}: format {} where {name} was written",
            image.display(),
            v["format"]
        );
    }
    if matches!(name, "qcow2" | "vmdk" | "vhdx" | "vdi") {
        let o = Command::new("qemu-img")
            .args(["check", "-q", "-f", name])
            .arg(image)
            .output()
            .context("running qemu-img check")?;
        if !o.status.success() {
            bail!(
                "qemu-img check {}: {}",
                image.display(),
                String::from_utf8_lossy(&o.stdout).trim()
            );
        }
    }
    Ok(())
}

/// GCE's import format: one file `disk.raw` in a gzip'd tar (GNU format).
fn gce_tarball(raw: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("partial");
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut src = std::fs::File::open(raw)?;
    let len = src.metadata()?.len();
    let mut header = tar::Header::new_gnu();
    header.set_path("disk.raw")?;
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append(&header, &mut (&mut src).take(len))?;
    let gz = tar.into_inner()?;
    let mut w = gz.finish()?;
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_words_stay_literal() {
        let cfg = grub_cfg(&[
            "netdev.ip=dhcp".into(),
            "env.A=x y".into(),
            "--".into(),
            "it's $HOME".into(),
        ]);
        assert!(
            cfg.contains(
                r"multiboot2 /boot/kiln 'netdev.ip=dhcp' 'env.A=x y' '--' 'it'\''s $HOME'"
            ),
            "{cfg}"
        );
        assert!(cfg.ends_with("\nboot\n"));
    }
}
