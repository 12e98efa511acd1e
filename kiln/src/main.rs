//! `kiln`: build and run Kiln unikernels (the `kraft` of Kiln).

mod builder;
mod config;
mod dockerfile;
mod fdt;
mod forward;
mod initrd;
mod instance;
mod menu;
mod network;
mod pkg;
mod program;
mod rootfs;
mod symbols;
mod ui;
mod vmm;
mod volume;

use kiln::{kconfig, kraftfile};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use ui::Ui;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Build and run Kiln unikernels", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel image of an app (its folder holds the Kraftfile)
    Build(BuildArgs),
    /// Build if needed, then boot the app (QEMU, Firecracker or cloud-hypervisor) and show its console
    Run(RunArgs),
    /// Show or change the app's Kconfig configuration without a terminal UI
    Config(ConfigArgs),
    /// Configure the app in a full-screen menu (like `make menuconfig`)
    Menu(MenuArgs),
    /// Bridged networks for guests: create, rm, ls
    #[command(subcommand)]
    Net(NetCmd),
    /// List instances started with `kiln run -d`
    Ps(PsArgs),
    /// Show an instance's console output
    Logs(LogsArgs),
    /// Stop a running instance (QMP quit, then killed after 5 s)
    Stop(NameArg),
    /// Remove a stopped instance
    Rm(RmArgs),
    #[command(hide = true, name = "__supervise")]
    Supervise { dir: PathBuf },
    /// Resolve any Kconfig tree (like `make olddefconfig`) and print the .config
    Kconfig(KconfigArgs),
    /// Put host programs into an app's rootfs folder
    #[command(subcommand)]
    Rootfs(RootfsCmd),
    /// Volumes (disk images with a FAT file system) for `kiln run -v`: create, rm, ls
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Package an app for deployment: an OCI image for urunc (Kubernetes), a libvirt domain, or a bootable disk image (raw, qcow2, vmdk, vhd, vhdx, vdi, gce)
    Pkg(PkgArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PkgFormat {
    /// An OCI image layout folder and a docker-archive tarball, with urunc's annotations
    Oci,
    /// A libvirt domain (XML) booting a copy of the kernel, for virsh define
    Libvirt,
    /// A bootable GPT disk image (BIOS and UEFI), raw
    Raw,
    /// The disk image as qcow2 (QEMU, Proxmox, OpenStack)
    Qcow2,
    /// The disk image as VMDK (VMware, VirtualBox)
    Vmdk,
    /// The disk image as a fixed VHD (Hyper-V, Azure, XenServer)
    Vhd,
    /// The disk image as VHDX (Hyper-V)
    Vhdx,
    /// The disk image as VDI (VirtualBox)
    Vdi,
    /// The raw disk image in the tarball Google Compute Engine imports
    Gce,
}

impl PkgFormat {
    fn disk(self) -> Option<pkg::disk::Format> {
        use pkg::disk::Format as F;
        Some(match self {
            PkgFormat::Oci | PkgFormat::Libvirt => return None,
            PkgFormat::Raw => F::Raw,
            PkgFormat::Qcow2 => F::Qcow2,
            PkgFormat::Vmdk => F::Vmdk,
            PkgFormat::Vhd => F::Vhd,
            PkgFormat::Vhdx => F::Vhdx,
            PkgFormat::Vdi => F::Vdi,
            PkgFormat::Gce => F::Gce,
        })
    }
}

#[derive(Args)]
struct PkgArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// What to write
    #[arg(long, value_enum, default_value = "oci")]
    format: PkgFormat,
    /// The VMM the deployment boots it with (default: the target's, else qemu)
    #[arg(long, value_enum)]
    vmm: Option<vmm::Kind>,
    /// Where to write (default: the app's .kiln/pkg folder)
    #[arg(long, short = 'o', value_name = "DIR")]
    output: Option<PathBuf>,
    /// The image's (or libvirt domain's) name (default: the app's)
    #[arg(long)]
    name: Option<String>,
    /// The image's tag
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Disk formats: the firmware the image boots on (default: BIOS and
    /// UEFI on x86_64, UEFI on arm64)
    #[arg(long, value_enum)]
    firmware: Option<pkg::disk::Firmware>,
    /// Pack the Kraftfile's boot set NAME instead of the default (repeatable)
    #[arg(long = "boot", value_name = "NAME")]
    boot: Vec<String>,
    /// OCI: a separate initrd (a folder, packed, or a cpio file) beside the
    /// kernel in the image, named by com.urunc.unikernel.initrd; the
    /// runtime hands it to the kernel in place of the embedded one
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// libvirt: guest memory
    #[arg(long = "memory", short = 'M', default_value = "64M")]
    memory: String,
    /// libvirt: the network the guest joins (its address comes from the network's DHCP)
    #[arg(long, default_value = "default")]
    network: String,
    /// libvirt: where the console goes (default: <output>/<name>.console.log)
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Make a volume: an image of SIZE with an empty FAT file system
    Create {
        name: String,
        /// Its size (e.g. 64M, 1G)
        #[arg(long, default_value = "64M")]
        size: String,
    },
    /// Remove a volume and its data
    Rm { name: String },
    /// List volumes
    Ls,
}

#[derive(Subcommand)]
enum RootfsCmd {
    /// Copy programs with their shared libraries and dynamic loader into the
    /// app's rootfs folder (the Kraftfile's `rootfs:`), at their host paths
    Add {
        /// Programs to add (e.g. /usr/sbin/nginx)
        #[arg(required = true)]
        programs: Vec<PathBuf>,
        /// The app folder whose Kraftfile names the rootfs folder
        #[arg(long, default_value = ".")]
        app: PathBuf,
        /// Copy into this folder instead of the app's rootfs
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NetCmd {
    /// Create a bridge with an address for the host (needs root)
    Create {
        name: String,
        /// The bridge's subnet; the host takes its first address
        #[arg(long, default_value = "10.77.0.0/24")]
        subnet: String,
    },
    /// Remove a bridge made by `kiln net create`
    Rm { name: String },
    /// List bridges
    Ls,
}

#[derive(Args)]
struct PsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LogsArgs {
    /// Keep printing new output until the instance stops
    #[arg(long, short = 'f')]
    follow: bool,
    name: String,
}

#[derive(Args)]
struct NameArg {
    name: String,
}

#[derive(Args)]
struct RmArgs {
    /// Stop the instance first if it is running
    #[arg(long, short = 'f')]
    force: bool,
    name: String,
}

#[derive(Args)]
struct MenuArgs {
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args)]
struct KconfigArgs {
    /// The top Kconfig file; `source` paths are relative to $srctree, else the current folder
    file: PathBuf,
    /// Start from this .config (default: all defaults)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the minimal configuration instead (savedefconfig)
    #[arg(long)]
    savedefconfig: bool,
    /// Print the time spent parsing and resolving to stderr
    #[arg(long)]
    time: bool,
    /// Write the output here instead of standard output
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct ConfigArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print the resolved configuration (the default action)
    #[arg(long)]
    show: bool,
    /// Print the symbols whose value differs from the defaults
    #[arg(long)]
    diff: bool,
    /// Set a symbol (CONFIG_ prefix optional) and save the app's .config (repeatable)
    #[arg(long, value_name = "SYMBOL=VALUE")]
    set: Vec<String>,
    /// Return a symbol to its default and save the app's .config (repeatable)
    #[arg(long, value_name = "SYMBOL")]
    unset: Vec<String>,
    /// Re-resolve the saved .config against the current Kconfig files and save it
    #[arg(long)]
    olddefconfig: bool,
    /// Print a minimal configuration: only values that differ from the defaults
    #[arg(long)]
    savedefconfig: bool,
}

#[derive(Args)]
struct TargetArgs {
    /// App folder with a Kraftfile
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Platform to build for (default: the Kraftfile's first target)
    #[arg(long, value_name = "PLAT")]
    plat: Option<String>,
    /// Architecture to build for (x86_64)
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Print only errors (and, for `run`, only the app's output)
    #[arg(long, short = 'q')]
    quiet: bool,
    /// The Kraftfile to read instead of DIR's own; its paths are relative
    /// to DIR (as kraft's -K)
    #[arg(long = "kraftfile", short = 'K', value_name = "FILE")]
    kraftfile: Option<PathBuf>,
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Guest memory (e.g. 64M, 1G)
    #[arg(long = "memory", short = 'M', default_value = "64M")]
    memory: String,
    /// Disable hardware acceleration (use TCG even when KVM works; the same as --accel tcg)
    #[arg(long = "disable-acceleration", short = 'W')]
    no_kvm: bool,
    /// Accelerator: KVM when this host's KVM runs Kiln well, else TCG (auto);
    /// or KVM (an error when unusable) or TCG
    #[arg(long, value_enum, default_value = "auto")]
    accel: vmm::Accel,
    /// QEMU machine model
    #[arg(long, value_enum, default_value = "microvm")]
    machine: vmm::Machine,
    /// The virtual machine monitor (default: the target's, else qemu);
    /// firecracker and cloud-hypervisor need KVM and their program in PATH
    #[arg(long, value_enum)]
    vmm: Option<vmm::Kind>,
    /// Stop the guest after this many seconds (exit status 124)
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Environment variable for the app (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Boot with the Kraftfile's boot set NAME (its `boot:`; repeatable, applied left to right; `help` lists them)
    #[arg(long = "boot", value_name = "NAME")]
    boot: Vec<String>,
    /// Boot this kernel image instead of building the app
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Start the guest stopped, waiting for gdb on this port (default 1234); prints the gdb command (QEMU, under TCG unless --accel kvm)
    #[arg(long, value_name = "PORT", num_args = 0..=1, require_equals = true, default_missing_value = "1234")]
    gdb: Option<u16>,
    /// Run in the background as an instance (see kiln ps, logs, stop, rm)
    #[arg(long, short = 'd')]
    detach: bool,
    /// Name of the detached instance (default: the app's name)
    #[arg(long)]
    name: Option<String>,
    /// Remove the detached instance's record when it exits
    #[arg(long)]
    rm: bool,
    /// Forward a host port to the guest: HOST:GUEST[/tcp|udp] (repeatable);
    /// gives the guest a virtio-net device on QEMU's user network
    #[arg(long = "port", short = 'p', value_name = "HOST:GUEST")]
    ports: Vec<String>,
    /// The guest's network: `user` (QEMU user networking with -p forwards, the
    /// default) or `bridge:NAME` (a tap device on a bridge from `kiln net create`)
    #[arg(long, value_name = "user|bridge:NAME")]
    network: Option<String>,
    /// An initrd for this run instead of the embedded one: a cpio file or a folder
    #[arg(long, value_name = "FILE|DIR")]
    initrd: Option<PathBuf>,
    /// Mount a volume: HOST:GUEST[:ro], HOST an image file or a volume's name
    /// (kiln volume create); repeatable
    #[arg(long = "volume", short = 'v', value_name = "HOST:GUEST[:ro]")]
    volumes: Vec<String>,
    /// Extra kernel parameters (before the app's arguments)
    #[arg(long = "kernel-arg", value_name = "PARAM")]
    kernel_args: Vec<String>,
    /// Print every system call a Linux program makes (apps/elfloader)
    #[arg(long)]
    strace: bool,
    /// Arguments for the app (after `--`); default: the Kraftfile's `cmd`
    #[arg(last = true)]
    args: Vec<String>,
}

fn load(t: &TargetArgs, ui: &Ui) -> Result<(kraftfile::Kraftfile, kraftfile::Target)> {
    let mut kf = match &t.kraftfile {
        Some(f) => kraftfile::load_file(f, &t.dir)?,
        None => kraftfile::load(&t.dir)?,
    };
    // A Unikraft template or runtime (the ELF loader) is one of Kiln's apps.
    if let (Some(app), false) = (kf.template_app, kf.app_given) {
        kf.app_dir = builder::kiln_home().join("apps").join(app);
    }
    for n in &kf.notes {
        ui.note(n);
    }
    let target = kf.select_target(t.plat.as_deref(), t.arch.as_deref())?;
    let skipped = kf.unbuildable();
    if t.plat.is_none() && t.arch.is_none() && !skipped.is_empty() {
        ui.note(&format!(
            "{}: building {target}; Kiln cannot build {} (also listed)",
            builder::rel(&kf.path),
            skipped.join(", ")
        ));
    }
    ui.step(
        1,
        4,
        &format!("{}: {} for {target}", builder::rel(&kf.path), kf.name),
    );
    Ok((kf, target))
}

/// [`load`] for commands that build: a Dockerfile rootfs is built into
/// its folder first (and its ENTRYPOINT/CMD become the app's `cmd` when
/// the Kraftfile gives none).
fn load_to_build(t: &TargetArgs, ui: &Ui) -> Result<(kraftfile::Kraftfile, kraftfile::Target)> {
    let (mut kf, target) = load(t, ui)?;
    if let Some(name) = program::is_std_program(&kf) {
        program::prepare(&mut kf, &target, &name, &|m| ui.note(m))?;
    }
    if let Some(d) = kf.dockerfile.clone() {
        let say = |m: &str| ui.note(&format!("dockerfile: {m}"));
        let built = dockerfile::build(&d.file, &d.context, &target.arch, &say).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(building the rootfs that {}:{} names)",
                builder::rel(&kf.path),
                d.line
            )
        })?;
        kf.rootfs = Some(built.rootfs);
        if kf.cmd.is_empty() && !built.cmd.is_empty() {
            ui.note(&format!("cmd from the Dockerfile: {}", built.cmd.join(" ")));
            kf.cmd = built.cmd;
        }
        // A program's runtime: its program from this machine when the
        // Dockerfile's rootfs lacks it.
        match kraftfile::runtime_brings(
            kf.runtime_program.as_ref(),
            kf.rootfs.as_deref(),
            &kf.cmd,
            &mut kf.programs,
        ) {
            Ok(Some(note)) => ui.note(&format!("{}: {note}", builder::rel(&kf.path))),
            Ok(None) => {}
            Err(e) => anyhow::bail!("{}: {e}", builder::rel(&kf.path)),
        }
    }
    Ok((kf, target))
}

fn rootfs_add(
    programs: &[PathBuf],
    app: &std::path::Path,
    to: Option<&std::path::Path>,
) -> Result<i32> {
    let root = match to {
        Some(t) => t.to_path_buf(),
        None => {
            let kf = kraftfile::load(app)?;
            match kf.rootfs {
                Some(r) if r.is_dir() => r,
                Some(r) if r.exists() => anyhow::bail!("{}: rootfs {} is an archive, not a folder to copy into", kf.path.display(), r.display()),
                Some(r) => {
                    std::fs::create_dir_all(&r).with_context(|| format!("creating {}", r.display()))?;
                    r
                }
                None => anyhow::bail!("{}: no `rootfs:` folder to copy into; add `rootfs: ./rootfs`, or pass --to DIR", kf.path.display()),
            }
        }
    };
    let written = rootfs::add(&root, programs)?;
    for w in &written {
        println!("{}", w.display());
    }
    eprintln!("kiln: {} files in {}", written.len(), root.display());
    Ok(0)
}

fn config(a: &ConfigArgs) -> Result<i32> {
    let ui = Ui { quiet: true };
    let (kf, target) = load(&a.target, &ui)?;
    let action = if !a.set.is_empty() {
        config::Action::Set(a.set.clone())
    } else if !a.unset.is_empty() {
        config::Action::Unset(a.unset.clone())
    } else if a.diff {
        config::Action::Diff
    } else if a.olddefconfig {
        config::Action::OldDefConfig
    } else if a.savedefconfig {
        config::Action::SaveDefConfig
    } else {
        config::Action::Show
    };
    config::command(&kf, &target, action)?;
    Ok(0)
}

fn menu_cmd(a: &MenuArgs) -> Result<i32> {
    let ui = Ui { quiet: true };
    let (kf, target) = load(&a.target, &ui)?;
    let tree = config::tree(&kf, &target)?;
    let user = config::user_values(&kf, &target, &tree)?;
    menu::run(tree, user, config::saved_path(&kf))?;
    Ok(0)
}

fn kconfig_cmd(a: &KconfigArgs) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let root = match std::env::var_os("srctree") {
        Some(r) => PathBuf::from(r),
        None => std::env::current_dir()?,
    };
    // As kconfiglib, `$(shell,...)` runs (Linux's tree probes its compiler).
    let tree =
        kconfig::Tree::load_with_shell(&a.file, &text, &root, &std::env::vars().collect(), true)?;
    // Like kconfiglib, a tree with a dependency loop has no configuration.
    if let Some(l) = tree.dependency_loop() {
        anyhow::bail!("{l}");
    }
    let t1 = std::time::Instant::now();
    let mut user = kconfig::User::new();
    if let Some(c) = &a.config {
        let text =
            std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
        user = kconfig::user_from_config(&tree, kconfig::read_config(c, &text)?);
    }
    let eval = kconfig::Eval::new(&tree, &user);
    let out = if a.savedefconfig {
        eval.min_config_text(kconfig::HEADER)
    } else {
        eval.config_text(kconfig::HEADER)
    };
    let t2 = std::time::Instant::now();
    if a.time {
        eprintln!(
            "kiln: {} symbols, {} menu nodes; parse {:.3} ms, resolve and write {:.3} ms",
            tree.syms.len(),
            tree.nodes.len(),
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3
        );
    }
    match &a.output {
        Some(o) => std::fs::write(o, out).with_context(|| format!("writing {}", o.display()))?,
        None => print!("{out}"),
    }
    Ok(0)
}

/// `--initrd` for a kernel whose `.config` (beside it) says LIBINITRD is
/// off is refused: the kernel would boot without the files and fail
/// later, far from the cause. (A kernel without its `.config`, given by
/// `--kernel`, is taken as it is.)
fn needs_initrd_support(kernel: &std::path::Path, initrd: &std::path::Path) -> Result<()> {
    let off = std::fs::read_to_string(kernel.with_extension("config"))
        .is_ok_and(|c| c.lines().any(|l| l == "# CONFIG_LIBINITRD is not set"));
    if off {
        anyhow::bail!(
            "--initrd {}: {} was built without initrd support (LIBINITRD is off); select LIBINITRD in the app's Kconfig, or give the app a rootfs in its Kraftfile",
            initrd.display(),
            kernel.display()
        );
    }
    Ok(())
}

fn pkg_cmd(a: &PkgArgs) -> Result<i32> {
    let ui = Ui {
        quiet: a.target.quiet,
    };
    let (mut kf, mut target) = load_to_build(&a.target, &ui)?;
    // A package records one command line: the default set, or --boot's.
    (kf.cmd, kf.env) = kf.boot_with(&a.boot)?;
    if target.plat != "qemu" {
        if target.plat == "linuxu" {
            anyhow::bail!("kiln pkg: a {target} kernel is a host program (`kiln build --plat linuxu` makes it), not a machine image; package the qemu/{} target", target.arch);
        }
        anyhow::bail!("kiln pkg: the {target} target boots on a board, not under a VMM; package the qemu/{} target", target.arch);
    }
    let vmm = a
        .vmm
        .or_else(|| target.vmm.as_deref().and_then(vmm::Kind::from_plat))
        .unwrap_or_default();
    target = target.for_vmm(vmm.name());
    if vmm != vmm::Kind::Qemu && target.arch != "x86_64" && target.layout().is_none() {
        anyhow::bail!(
            "kiln pkg: {} runs Kiln's x86_64 image only (on arm64: firecracker and qemu)",
            vmm.name()
        );
    }
    if !a
        .tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || a.tag.is_empty()
        || a.tag.len() > 128
    {
        anyhow::bail!(
            "--tag {}: use letters, digits, '.', '_' and '-' (at most 128)",
            a.tag
        );
    }
    if a.firmware.is_some() && a.format.disk().is_none() {
        anyhow::bail!("--firmware: only disk images boot through firmware (--format raw, qcow2, vmdk, vhd, vhdx, vdi or gce)");
    }
    let firmware = pkg::disk::Firmware::for_arch(a.firmware, &target.arch)?;
    if let Some(f) = a.format.disk() {
        if a.vmm.is_some_and(|v| v != vmm::Kind::Qemu) {
            anyhow::bail!("kiln pkg --format {}: a disk image boots through firmware on any x86_64 hypervisor; leave out --vmm", f.name());
        }
        pkg::disk::check_tools(f, &target.arch)?;
    }
    if a.initrd.is_some() && a.format != PkgFormat::Oci {
        anyhow::bail!("--initrd: only an OCI image carries a separate initrd (--format oci); give the app a rootfs in its Kraftfile to embed one");
    }
    if let Some(i) = &a.initrd {
        if !i.exists() {
            anyhow::bail!("--initrd {}: no such file or folder", i.display());
        }
    }
    let kernel = builder::build(&kf, &target, &ui)?;
    let out = match &a.output {
        Some(o) => o.clone(),
        None => kf
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(".kiln")
            .join("pkg"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| kf.name.to_ascii_lowercase());
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        || name.starts_with(['.', '-'])
    {
        anyhow::bail!("--name {name}: use lowercase letters, digits, '.', '_' and '-' (at most 64), as image names allow");
    }
    // The separate initrd, packed next to the output like kiln run's; or
    // the rootfs the build kept out of the image.
    let apart = builder::apart_initrd(&kernel);
    if apart.is_some() && a.format != PkgFormat::Oci {
        anyhow::bail!(
            "--format {}: {} was built with its rootfs beside it (the program is linked where the image would lie), and only an OCI image carries a separate initrd; use --format oci, or build the program position-independent",
            clap::ValueEnum::to_possible_value(&a.format).map_or(String::new(), |v| v.get_name().to_string()),
            kernel.display()
        );
    }
    let initrd = match &a.initrd {
        None => match apart {
            Some(c) => {
                let packed = out.join(format!("{name}.initrd.cpio"));
                std::fs::copy(&c, &packed).with_context(|| format!("copying {}", c.display()))?;
                Some(packed)
            }
            None => None,
        },
        Some(i) => {
            needs_initrd_support(&kernel, i)?;
            let packed = out.join(format!("{name}.initrd.cpio"));
            initrd::prepare(i, &packed)?;
            Some(packed)
        }
    };
    let p = pkg::Package {
        name: &name,
        tag: &a.tag,
        kernel: &kernel,
        arch: &target.arch,
        hypervisor: vmm.name(),
        args: &kf.cmd,
        env: &kf.env,
        initrd: initrd.as_deref(),
    };
    match a.format {
        PkgFormat::Libvirt => {
            let memory_mib = vmm::parse_memory(&a.memory)?;
            let need = min_memory_mib(&kernel, &target.arch, 0)?;
            if memory_mib < need {
                anyhow::bail!("-M {}: this image needs at least {need} MiB", a.memory);
            }
            if vmm != vmm::Kind::Qemu {
                anyhow::bail!("--format libvirt: libvirt runs the image on QEMU; leave out --vmm");
            }
            let out = std::fs::canonicalize(&out)?;
            let log = a
                .console_log
                .clone()
                .unwrap_or_else(|| out.join(format!("{}.console.log", p.name)));
            let domain_type = match vmm::kvm_usable().and_then(|()| vmm::kvm_runs_kiln_well()) {
                Ok(()) if target.arch == std::env::consts::ARCH.replace("aarch64", "arm64") => {
                    "kvm"
                }
                _ => "qemu",
            };
            let mut params = vec!["netdev.ip=dhcp".to_string()];
            // Under TCG the guest's TSC runs at this host's rate, and no
            // CPUID leaf says what that is (KVM's does).
            if let (Some(hz), "qemu", "x86_64") = (host_tsc_hz(), domain_type, target.arch.as_str())
            {
                params.push(format!("clock.tsc_hz={hz}"));
            }
            let cmdline = kernel_cmdline(false, &params, &kf.env, &kf.cmd);
            let d = pkg::libvirt::Domain {
                memory_mib,
                network: &a.network,
                cmdline: &cmdline,
                domain_type,
                console_log: &log,
            };
            let xml = pkg::libvirt::write(&p, &d, &out)?;
            ui.note(&format!("libvirt domain {} ({}, {memory_mib} MiB, network {}); virsh define {} && virsh start {}", p.name, if domain_type == "kvm" { "KVM" } else { "TCG: this host's KVM cannot run it well" }, a.network, xml.display(), p.name));
            println!("{}", xml.display());
        }
        f if f.disk().is_some() => {
            let f = f.disk().unwrap();
            // Clouds and hypervisors hand out addresses by DHCP; the
            // console is COM1 either way.
            let mut words = vec!["netdev.ip=dhcp".to_string()];
            words.extend(kf.env.iter().map(|(k, v)| format!("env.{k}={v}")));
            words.push("--".into());
            words.extend(kf.cmd.iter().cloned());
            let image = pkg::disk::write(&p, &words, f, firmware, &out)?;
            let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
            let firmware = match (target.arch.as_str(), firmware) {
                ("arm64", _) => "UEFI firmware (QEMU virt: -machine virt,acpi=off)",
                (_, pkg::disk::Firmware::Bios) => "BIOS firmware",
                (_, pkg::disk::Firmware::Uefi) => "UEFI firmware",
                _ => "BIOS and UEFI firmware",
            };
            ui.note(&format!(
                "{} disk image of {} ({} KiB), boots on {firmware}",
                f.name(),
                p.name,
                size / 1024
            ));
            println!("{}", image.display());
        }
        PkgFormat::Oci => {
            let (layout, archive) = pkg::oci::write(&p, &out)?;
            ui.note(&format!(
                "OCI image {}:{} for urunc on {}",
                p.name, p.tag, p.hypervisor
            ));
            println!("{}", layout.display());
            println!("{}", archive.display());
        }
        _ => unreachable!("every disk format is handled above"),
    }
    Ok(0)
}

fn build(a: &BuildArgs) -> Result<i32> {
    let ui = Ui {
        quiet: a.target.quiet,
    };
    let (kf, target) = load_to_build(&a.target, &ui)?;
    builder::build(&kf, &target, &ui)?;
    Ok(0)
}

fn run(a: &RunArgs) -> Result<i32> {
    let ui = Ui {
        quiet: a.target.quiet,
    };
    let memory_mib = vmm::parse_memory(&a.memory)?;
    // Everything that can be checked before a build is.
    if a.name.is_some() || a.rm {
        if !a.detach {
            anyhow::bail!("--name and --rm are for detached instances (-d)");
        }
    }
    if let Some(n) = &a.name {
        instance::check_name(n)?;
        if instance::state_dir().join(n).exists() {
            anyhow::bail!("an instance named '{n}' exists already (kiln rm {n} removes it)");
        }
    }
    let timeout = match a.timeout {
        Some(t) if t > 0.0 && t.is_finite() => Some(Duration::from_secs_f64(t)),
        Some(t) => anyhow::bail!("--timeout {t}: must be a positive number of seconds"),
        None => None,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("-e {e}: expected KEY=VALUE"))?;
        env.push((k.into(), v.into()));
    }

    let mut ports = Vec::new();
    for p in &a.ports {
        ports.push(vmm::parse_port(p)?);
    }
    let mut volumes = Vec::new();
    for v in &a.volumes {
        volumes.push(volume::parse(v, std::path::Path::new("."))?);
    }
    let mut net_in_kernel = false;
    let mut app_name = String::from("kernel");
    let target_name: String;
    let mut vmm_kind = a.vmm;
    let (kernel, arch, cmd) = match &a.kernel {
        Some(_) if !a.boot.is_empty() => {
            anyhow::bail!("--boot names a set of the app's Kraftfile; with --kernel, give the arguments after -- and the environment with -e");
        }
        Some(k) => {
            if !k.is_file() {
                anyhow::bail!("{}: no such kernel image", k.display());
            }
            let arch = a.target.arch.clone().unwrap_or_else(|| "x86_64".into());
            target_name = format!("{}/{arch}", a.target.plat.as_deref().unwrap_or("qemu"));
            if a.target.plat.as_deref() == Some("linuxu") {
                vmm_kind = Some(linuxu_runs(a.vmm)?);
            }
            check_ports_free(&ports)?;
            (k.clone(), arch, Vec::new())
        }
        None => {
            let (mut kf, mut target) = load_to_build(&a.target, &ui)?;
            if a.boot.iter().any(|b| b == "help") {
                print!("{}", kf.boot_listing());
                return Ok(0);
            }
            (kf.cmd, kf.env) = kf.boot_with(&a.boot)?;
            // The Kraftfile's volumes, then -v's; any volume brings the
            // disk file system into the kernel.
            let mut all = volume::from_kraftfile(&kf)?;
            all.append(&mut volumes);
            volumes = all;
            volume::check(&volumes)?;
            if target.plat == "linuxu" && !volumes.is_empty() {
                anyhow::bail!(vmm::linuxu::NO_VOLUMES);
            }
            for lib in volume::libraries(&volumes) {
                kf.kconfig.push((lib.into(), "y".into(), 0));
            }
            // The target's VMM (`fc/x86_64`) unless --vmm says otherwise;
            // fail before compiling when it is missing.
            if vmm_kind.is_none() {
                vmm_kind = target.vmm.as_deref().and_then(vmm::Kind::from_plat);
            }
            if target.plat == "linuxu" {
                vmm_kind = Some(linuxu_runs(a.vmm)?);
            }
            // `--vmm firecracker` on a qemu/arm64 target: the image laid
            // out for Firecracker (Target::layout).
            if let Some(k) = vmm_kind {
                target = target.for_vmm(k.name());
                if matches!(k, vmm::Kind::Firecracker | vmm::Kind::CloudHypervisor) {
                    vmm::host_arch_only(k.title(), &target.arch)?;
                }
            }
            vmm_kind.unwrap_or_default().vmm().binary(&target.arch)?;
            let mut all_env = kf.env.clone();
            all_env.append(&mut env);
            env = all_env;
            let bridged = a
                .network
                .as_deref()
                .is_some_and(|n| n.starts_with("bridge:"));
            if a.ports.is_empty() && !bridged {
                for (p, line) in &kf.ports {
                    ports.push(
                        vmm::parse_port(p)
                            .map_err(|e| anyhow::anyhow!("{}:{line}: {e}", kf.path.display()))?,
                    );
                }
            }
            app_name = kf.name.clone();
            target_name = format!("{}/{}", target.plat, target.arch);
            if !bridged {
                check_ports_free(&ports)?;
            }
            let image = builder::build(&kf, &target, &ui)?;
            net_in_kernel = builder::BuildPaths::new(&kf, &target).config_has("LIBNET");
            (image, target.arch, kf.cmd)
        }
    };

    let vmm_kind = vmm_kind.unwrap_or_default();
    let native = arch == std::env::consts::ARCH.replace("aarch64", "arm64");
    if a.gdb.is_some() {
        if vmm_kind == vmm::Kind::Linuxu {
            anyhow::bail!("--gdb: a linuxu kernel is a host program; debug it as one: gdb --args {} linuxu.mem=64 -- ARGS", builder::rel(&kernel));
        }
        if vmm_kind != vmm::Kind::Qemu {
            anyhow::bail!("--gdb: {} has no gdb stub in the builds Kiln runs; debug on QEMU (leave out --vmm)", vmm_kind.name());
        }
        if a.detach {
            anyhow::bail!("--gdb runs in the foreground (leave out -d)");
        }
    }
    let kvm = match (a.accel, a.no_kvm) {
        // A host process: no machine to accelerate.
        _ if vmm_kind == vmm::Kind::Linuxu => false,
        // Firecracker and cloud-hypervisor have no emulator.
        (vmm::Accel::Tcg, _) | (_, true) if vmm_kind != vmm::Kind::Qemu => {
            anyhow::bail!("{}: {} runs guests on KVM only; leave out -W / --accel tcg, or run on QEMU (leave out --vmm)", if a.no_kvm { "-W" } else { "--accel tcg" }, vmm_kind.name())
        }
        _ if vmm_kind != vmm::Kind::Qemu => {
            // (A guest of another architecture is refused by the VMM's
            // check, which says why.)
            if let (true, Err(why)) = (native, vmm::kvm_runs_kiln_well()) {
                eprintln!(
                    "kiln: {why}; {} has no emulator to use instead, so the guest runs that slowly",
                    vmm_kind.name()
                );
            }
            true
        }
        (vmm::Accel::Tcg, _) | (_, true) => false,
        // Software breakpoints and single steps are exact under TCG.
        (vmm::Accel::Auto, false) if a.gdb.is_some() => false,
        (vmm::Accel::Kvm, false) => {
            if !native {
                anyhow::bail!("--accel kvm: KVM runs only {} guests on this host, not {arch}; leave --accel out to use TCG", std::env::consts::ARCH);
            }
            vmm::kvm_usable().map_err(|why| {
                anyhow::anyhow!(
                    "--accel kvm: KVM is unusable here ({why}); leave --accel out to use TCG"
                )
            })?;
            true
        }
        (vmm::Accel::Auto, false) if !native => false,
        (vmm::Accel::Auto, false) => match vmm::kvm_usable()
            .map_err(|why| format!("KVM unavailable ({why})"))
            .and_then(|()| vmm::kvm_runs_kiln_well())
        {
            Ok(()) => true,
            Err(why) => {
                eprintln!("kiln: {why}; using TCG emulation");
                false
            }
        },
    };

    let initrd = match &a.initrd {
        // A rootfs the build kept out of the image (see builder::build).
        None => builder::apart_initrd(&kernel),
        Some(p) if !p.exists() => anyhow::bail!("--initrd {}: no such file or folder", p.display()),
        Some(p) => {
            needs_initrd_support(&kernel, p)?;
            // Packed (or checked) next to the kernel image, one file per
            // `kiln run`, so runs of the same app with different initrds
            // do not overwrite each other's.
            let out = kernel.with_extension(format!("run-initrd-{}.cpio", std::process::id()));
            initrd::prepare(p, &out)?;
            Some(out)
        }
    };
    // Too little memory for the image is refused here: the guest would
    // not get as far as saying so.
    if !target_name.starts_with("raspi") {
        let initrd_bytes = initrd
            .as_deref()
            .and_then(|i| std::fs::metadata(i).ok())
            .map_or(0, |m| m.len());
        let need = min_memory_mib(&kernel, &arch, initrd_bytes)?;
        if memory_mib < need {
            if let (Some(i), Some(_)) = (&initrd, &a.initrd) {
                let _ = std::fs::remove_file(i);
            }
            anyhow::bail!(
                "-M {}: this image needs at least {need} MiB (its kernel image, {} and a heap of 2 MiB); give it -M {need}M or more",
                a.memory,
                if initrd_bytes > 0 { "the initrd" } else { "no initrd" }
            );
        }
    }
    let bridge_name = match a.network.as_deref() {
        None | Some("user") => None,
        Some(n) => match n.strip_prefix("bridge:") {
            Some(b) => Some(b.to_string()),
            None => anyhow::bail!("--network {n}: expected user or bridge:NAME"),
        },
    };
    if bridge_name.is_some() && !ports.is_empty() {
        anyhow::bail!("-p forwards ports on the user network; a bridged guest is reachable at its own address");
    }
    // QEMU on a bridge: its bridge helper makes the tap, Kiln picks the
    // guest's address.
    let attachment = match (&bridge_name, vmm_kind) {
        (Some(b), vmm::Kind::Qemu) => Some(network::Attachment::new(b)?),
        _ => None,
    };
    let mut kernel_args = a.kernel_args.clone();
    // The wall clock: guests have no battery-backed clock they read, so
    // CLOCK_REALTIME starts from the host's time at boot.
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        kernel_args.push(format!("clock.epoch={}", t.as_secs()));
    }
    // A seed for the guest's random generator from the host's, mixed with
    // whatever the guest's CPU offers (lib/random).
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let mut seed = [0u8; 32];
        if std::io::Read::read_exact(&mut f, &mut seed).is_ok() {
            kernel_args.push(format!(
                "random.seed={}",
                seed.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ));
        }
    }
    if arch == "x86_64" {
        if let Some(hz) = host_tsc_hz() {
            kernel_args.push(format!("clock.tsc_hz={hz}"));
        }
    }
    if a.strace {
        kernel_args.push("syscall.strace=1".into());
    }
    if !volumes.is_empty() && target_name.starts_with("raspi") {
        anyhow::bail!("volumes need a virtio-blk disk, which QEMU's Raspberry Pi boards do not have; run the qemu/{arch} target");
    }
    if let Some(p) = volume::fstab_param(&volumes, vmm_kind.disk_serials()) {
        // Entries given with --kernel-arg vfs.fstab=... are kept: the
        // volumes' entries join them.
        match kernel_args
            .iter_mut()
            .rev()
            .find(|a| a.starts_with("vfs.fstab="))
        {
            Some(given) => {
                let mine = p.trim_start_matches("vfs.fstab=");
                let theirs = given
                    .trim_start_matches("vfs.fstab=")
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim()
                    .to_string();
                *given = format!("vfs.fstab={theirs} {mine}");
            }
            None => kernel_args.push(p),
        }
    }
    // A network device when the kernel has a network stack, ports are
    // forwarded or the guest is on a bridge.
    let wants_net = net_in_kernel || !ports.is_empty() || bridge_name.is_some();
    let plat = target_name.split('/').next().unwrap_or("qemu").to_string();
    let mut spec = vmm::RunSpec {
        vmm: vmm_kind,
        kernel,
        arch: arch.clone(),
        plat,
        machine: a.machine,
        memory_mib,
        kvm,
        cmdline: String::new(),
        timeout,
        initrd,
        net: wants_net.then(|| ports.clone()),
        bridge: attachment
            .as_ref()
            .map(|t| (t.bridge.clone(), t.mac.clone())),
        tap: None,
        detached: None,
        volumes,
        gdb: a.gdb,
    };
    if let Some(port) = a.gdb {
        // The ELF with symbols beside the image (or the image itself).
        let elf = spec.kernel.with_extension("elf");
        let elf = if elf.is_file() {
            elf
        } else {
            spec.kernel.clone()
        };
        let gdb = if arch == "arm64" {
            "gdb-multiarch"
        } else {
            "gdb"
        };
        eprintln!("kiln: the guest is stopped before its first instruction, waiting for gdb on port {port}:");
        // The link crate keeps the app's entry as the symbol `main`.
        eprintln!(
            "kiln:   {gdb} -ex 'target remote localhost:{port}' -ex 'break main' -ex continue {}",
            builder::rel(&elf)
        );
    }
    // What the VMM cannot boot is refused before anything is made for it.
    spec.vmm.vmm().check(&spec)?;
    // A VMM without a user network gets a tap device of Kiln's.
    if vmm_kind != vmm::Kind::Qemu && wants_net {
        spec.tap = Some(network::Tap::create(bridge_name.as_deref())?);
    }
    let guest_ip = attachment
        .as_ref()
        .map(|t| t.guest_ip.clone())
        .or_else(|| spec.tap.as_ref().map(|t| t.netdev_ip.clone()));
    if let Some(ip) = &guest_ip {
        kernel_args.insert(0, format!("netdev.ip={ip}"));
        ui.note(&format!(
            "network: {}, guest address {ip}",
            match (&bridge_name, &spec.tap) {
                (Some(b), _) => format!("bridge {b}"),
                (None, Some(t)) => format!("tap {}", t.name),
                (None, None) => "user".into(),
            }
        ));
    }
    let args: &[String] = if a.args.is_empty() { &cmd } else { &a.args };
    spec.cmdline = kernel_cmdline(a.target.quiet, &kernel_args, &env, args);
    ui.note(&format!(
        "booting {} ({}, {}, {} MiB)",
        builder::rel(&spec.kernel),
        match (arch.as_str(), target_name.split('/').next(), vmm_kind) {
            (_, _, vmm::Kind::Firecracker | vmm::Kind::CloudHypervisor) => vmm_kind.name(),
            (_, _, vmm::Kind::Linuxu) => "a host process",
            ("arm64", Some("raspi"), _) => "raspi3b",
            ("arm64", Some("raspi4"), _) => "raspi4b",
            ("arm64", _, _) => "virt",
            _ => a.machine.name(),
        },
        match (vmm_kind, kvm) {
            (vmm::Kind::Linuxu, _) => "native",
            (_, true) => "KVM",
            _ => "TCG",
        },
        if target_name.starts_with("raspi4/") {
            2048
        } else if target_name.starts_with("raspi/") {
            1024
        } else {
            memory_mib
        }
    ));
    // TCP forwards go through Kiln's own listener (QEMU's has a backlog of
    // one): QEMU forwards a free loopback port instead; on a tap, Kiln
    // connects to the guest itself.
    for p in ports.iter_mut().filter(|p| !p.udp) {
        p.via = Some(match &spec.tap {
            Some(t) => std::net::SocketAddrV4::new(t.guest_addr(), p.guest),
            None => std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::LOCALHOST,
                forward::loopback_port()?,
            ),
        });
    }
    spec.net = wants_net.then_some(ports);
    let port_names: Vec<String> = spec
        .net
        .iter()
        .flatten()
        .map(|p| {
            format!(
                "{}:{}/{}",
                p.host,
                p.guest,
                if p.udp { "udp" } else { "tcp" }
            )
        })
        .collect();
    if a.detach {
        let name = match &a.name {
            Some(n) => n.clone(),
            None => instance::free_name(&app_name),
        };
        // `kiln ps` names the VMM when it is not QEMU.
        let shown = match vmm_kind {
            vmm::Kind::Qemu => target_name.clone(),
            other => format!("{}/{arch}", other.name()),
        };
        if let Err(e) = instance::start(&name, &app_name, &shown, &spec, &port_names, a.rm) {
            if let Some(t) = &spec.tap {
                t.remove();
            }
            return Err(e);
        }
        println!("{name}");
        return Ok(0);
    }
    let r = vmm::run(&spec);
    if let Some(t) = &spec.tap {
        t.remove();
    }
    // The VMM read the packed initrd at start; it is not needed any more.
    if let (Some(i), Some(_)) = (&spec.initrd, &a.initrd) {
        let _ = std::fs::remove_file(i);
    }
    r
}

/// The runner of a `--plat linuxu` kernel (the host itself), refusing a
/// `--vmm`: there is no machine to run it in.
fn linuxu_runs(vmm: Option<vmm::Kind>) -> Result<vmm::Kind> {
    match vmm {
        Some(v) => anyhow::bail!(
            "--vmm {}: a linuxu kernel is a host process, not a machine; leave out --vmm (or --plat linuxu)",
            v.name()
        ),
        None => Ok(vmm::Kind::Linuxu),
    }
}

/// Fails when a host port `-p` would forward is taken, naming the Kiln
/// instance that holds it when it is one (QEMU would only say that it
/// could not set up the forwarding rule, and a detached instance would
/// seem to start).
fn check_ports_free(ports: &[vmm::PortForward]) -> Result<()> {
    for p in ports {
        let free = if p.udp {
            std::net::UdpSocket::bind(("0.0.0.0", p.host)).is_ok()
        } else {
            std::net::TcpListener::bind(("0.0.0.0", p.host)).is_ok()
        };
        if free {
            continue;
        }
        let proto = if p.udp { "udp" } else { "tcp" };
        let holder = instance::list().unwrap_or_default().into_iter().find(|r| {
            r.state == "running"
                && r.ports
                    .iter()
                    .any(|q| q.starts_with(&format!("{}:", p.host)) && q.ends_with(proto))
        });
        match holder {
            Some(r) => anyhow::bail!("-p {}: host port {} ({proto}) is in use by Kiln instance '{}' (kiln stop {} frees it)", p.host, p.host, r.name, r.name),
            None => anyhow::bail!("-p {}: host port {} ({proto}) is in use by another program on this machine", p.host, p.host),
        }
    }
    Ok(())
}

/// The least guest memory (MiB) an image boots in: RAM up to the end of
/// its loaded segments (x86_64 loads at 1 MiB; arm64 virt's RAM starts at
/// 1 GiB), a loader-provided initrd, and 2 MiB of heap.
fn min_memory_mib(kernel: &std::path::Path, arch: &str, initrd_bytes: u64) -> Result<u64> {
    let bytes = std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let ram_base: u64 = if arch == "arm64" { 0x4000_0000 } else { 0 };
    let end = match goblin::elf::Elf::parse(&bytes) {
        Ok(elf) => elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
            .map(|p| p.p_paddr + p.p_memsz)
            .max()
            .unwrap_or(0),
        // A raw image (arm64 Image): its size, loaded near the start of RAM.
        Err(_) => ram_base + (2 << 20) + bytes.len() as u64,
    };
    let need = end.saturating_sub(ram_base) + initrd_bytes + (2 << 20);
    Ok(need.div_ceil(1 << 20))
}

/// Builds the kernel command line: `kernel-params -- app args`.
fn kernel_cmdline(
    quiet: bool,
    extra: &[String],
    env: &[(String, String)],
    args: &[String],
) -> String {
    use kiln_boot::cmdline::quote;
    let mut words: Vec<String> = Vec::new();
    if quiet {
        words.push("kiln.quiet".into());
    }
    words.extend(extra.iter().map(|p| quote(p)));
    words.extend(env.iter().map(|(k, v)| quote(&format!("env.{k}={v}"))));
    words.push("--".into());
    words.extend(args.iter().map(|a| quote(a)));
    words.join(" ")
}

fn main() {
    let cli = Cli::parse();
    let r = match &cli.command {
        Cmd::Build(a) => build(a),
        Cmd::Run(a) => run(a),
        Cmd::Config(a) => config(a),
        Cmd::Kconfig(a) => kconfig_cmd(a),
        Cmd::Rootfs(RootfsCmd::Add { programs, app, to }) => {
            rootfs_add(programs, app, to.as_deref())
        }
        Cmd::Menu(a) => menu_cmd(a),
        Cmd::Net(NetCmd::Create { name, subnet }) => network::create(name, subnet).map(|_| 0),
        Cmd::Net(NetCmd::Rm { name }) => network::remove(name).map(|_| 0),
        Cmd::Net(NetCmd::Ls) => network::list().map(|_| 0),
        Cmd::Volume(VolumeCmd::Create { name, size }) => volume::create(name, size).map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::Volume(VolumeCmd::Rm { name }) => volume::remove(name).map(|_| 0),
        Cmd::Volume(VolumeCmd::Ls) => volume::list().map(|_| 0),
        Cmd::Pkg(a) => pkg_cmd(a),
        Cmd::Ps(a) => instance::ps(a.json).map(|_| 0),
        Cmd::Logs(a) => instance::logs(&a.name, a.follow).map(|_| 0),
        Cmd::Stop(a) => instance::stop(&a.name).map(|_| 0),
        Cmd::Rm(a) => instance::rm(&a.name, a.force).map(|_| 0),
        Cmd::Supervise { dir } => instance::supervise(dir),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_round_trips_through_the_kernel_parser() {
        let env = vec![("GREETING".to_string(), "hi there".to_string())];
        let args = vec![
            "a".to_string(),
            "two words".to_string(),
            "--".to_string(),
            String::new(),
        ];
        let line = kernel_cmdline(true, &["kiln.loglevel=4".into()], &env, &args);
        let parsed = kiln_boot::cmdline::parse(&line).unwrap();
        assert!(parsed.flag("kiln.quiet"));
        assert_eq!(parsed.param("kiln.loglevel"), Some("4"));
        assert_eq!(parsed.env(), vec![("GREETING", "hi there")]);
        assert_eq!(parsed.args, args);
    }
}

/// The host's time-stamp counter frequency, measured over 10 ms. x86_64
/// guests' TSC runs at this rate under KVM and TCG alike; TCG guests have
/// no other way to learn it.
#[cfg(target_arch = "x86_64")]
fn host_tsc_hz() -> Option<u64> {
    // Measured once per host boot (10 ms of every run otherwise): the
    // rate is remembered beside the instances' state with the kernel's
    // boot ID, which changes when the host reboots.
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot_id = boot_id.trim();
    let cache = instance::state_dir().with_file_name("tsc_hz");
    if let Some(hz) = std::fs::read_to_string(&cache).ok().and_then(|t| {
        let (id, hz) = t.trim().split_once(' ')?;
        (id == boot_id).then(|| hz.parse().ok()).flatten()
    }) {
        return Some(hz);
    }
    let hz = measure_tsc_hz()?;
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, format!("{boot_id} {hz}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    Some(hz)
}

#[cfg(target_arch = "x86_64")]
fn measure_tsc_hz() -> Option<u64> {
    // SAFETY: rdtsc only reads the counter.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (std::time::Instant::now(), tsc());
    std::thread::sleep(std::time::Duration::from_millis(10));
    let (c1, dt) = (tsc(), t0.elapsed());
    let hz = (c1.wrapping_sub(c0) as f64 / dt.as_secs_f64()) as u64;
    // Rounded to 100 kHz: the measurement is not finer than that.
    (hz > 100_000_000).then(|| (hz + 50_000) / 100_000 * 100_000)
}

#[cfg(not(target_arch = "x86_64"))]
fn host_tsc_hz() -> Option<u64> {
    None
}
