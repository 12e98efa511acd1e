//! `kiln pkg --format oci` writes an OCI image (an image layout folder and a
//! docker-archive tarball of the same image) for urunc, the OCI runtime
//! that boots unikernels from container images: one layer holding the
//! kernel (with its embedded initrd) at [`KERNEL`], a separate initrd at
//! [`INITRD`] when `--initrd` gives one, and `/urunc.json`, and
//! the annotations urunc reads, on the manifest, as image labels and in
//! `/urunc.json` (whose values are `b64:`-encoded, as urunc's own tools
//! write them). The guest type is `unikraft`: urunc then builds the
//! command line Unikraft takes (`env.vars=[...] netdev.ip=... -- ARGS`),
//! which Kiln's kernel reads too. Everything is written deterministically
//! (no timestamps), so the same kernel gives the same digests.

use super::Package;
use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where the kernel lies in the image.
pub const KERNEL: &str = "/unikernel/kernel";
/// Where a separate initrd (`kiln pkg --initrd`) lies in the image.
pub const INITRD: &str = "/unikernel/initrd";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// urunc's annotations for `p`.
pub fn annotations(p: &Package) -> Vec<(&'static str, String)> {
    let cmdline = p
        .args
        .iter()
        .map(|a| kiln_boot::cmdline::quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let mut a = vec![
        ("com.urunc.unikernel.unikernelType", "unikraft".into()),
        ("com.urunc.unikernel.hypervisor", p.hypervisor.into()),
        ("com.urunc.unikernel.binary", KERNEL.into()),
        ("com.urunc.unikernel.cmdline", cmdline),
        ("com.urunc.unikernel.mountRootfs", "false".into()),
    ];
    if p.initrd.is_some() {
        a.push(("com.urunc.unikernel.initrd", INITRD.into()));
    }
    a
}

/// Base64 (standard alphabet, padded), for `/urunc.json`.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The layer, uncompressed: the kernel and `/urunc.json`.
fn layer(p: &Package) -> Result<Vec<u8>> {
    let kernel =
        std::fs::read(p.kernel).with_context(|| format!("reading {}", p.kernel.display()))?;
    let urunc: serde_json::Map<String, serde_json::Value> = annotations(p)
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!(format!("b64:{}", base64(v.as_bytes()))),
            )
        })
        .collect();
    let urunc = serde_json::to_vec_pretty(&urunc)?;
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8], mode: u32, kind: tar::EntryType| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(bytes.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        t.append_data(&mut h, path, bytes)?;
        Ok(())
    };
    add("unikernel/", &[], 0o755, tar::EntryType::Directory)?;
    add(
        KERNEL.trim_start_matches('/'),
        &kernel,
        0o755,
        tar::EntryType::Regular,
    )?;
    if let Some(i) = p.initrd {
        let bytes = std::fs::read(i).with_context(|| format!("reading {}", i.display()))?;
        add(
            INITRD.trim_start_matches('/'),
            &bytes,
            0o644,
            tar::EntryType::Regular,
        )?;
    }
    add("urunc.json", &urunc, 0o644, tar::EntryType::Regular)?;
    Ok(t.into_inner()?)
}

/// The OCI and Docker name of the architecture.
fn oci_arch(arch: &str) -> &'static str {
    if arch == "arm64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// The image configuration, naming the uncompressed layer's digest.
fn config(p: &Package, diff_id: &str) -> Result<Vec<u8>> {
    let labels: serde_json::Map<String, serde_json::Value> = annotations(p)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let env: Vec<String> = p.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(serde_json::to_vec(&json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": oci_arch(p.arch),
        "os": "linux",
        "config": { "Env": env, "Cmd": p.args, "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "kiln pkg --format oci" }],
    }))?)
}

/// Writes the OCI image of `p` as an image layout folder `<out>/<name>-oci`
/// and a docker-archive tarball `<out>/<name>-oci.tar`; returns both.
pub fn write(p: &Package, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let layer_tar = layer(p)?;
    let diff_id = sha256(&layer_tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &layer_tar)?;
    let layer_gz = gz.finish()?;
    let config = config(p, &diff_id)?;
    let annotations: serde_json::Map<String, serde_json::Value> = annotations(p)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256(&config)), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha256(&layer_gz)), "size": layer_gz.len() }],
        "annotations": annotations,
    }))?;
    let dir = out.join(format!("{}-oci", p.name));
    let _ = std::fs::remove_dir_all(&dir);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    for b in [&layer_gz, &config, &manifest] {
        std::fs::write(blobs.join(sha256(b)), b)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256(&manifest)),
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(p.arch), "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": p.tag },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;

    // The same image as `docker save` writes it.
    let archive = out.join(format!("{}-oci.tar", p.name));
    let config_name = format!("{}.json", sha256(&config));
    let layer_name = format!("{diff_id}/layer.tar");
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [format!("{}:{}", p.name, p.tag)],
        "Layers": [layer_name],
    }]))?;
    let mut t = tar::Builder::new(
        std::fs::File::create(&archive)
            .with_context(|| format!("writing {}", archive.display()))?,
    );
    for (path, bytes) in [
        (config_name.as_str(), &config),
        (layer_name.as_str(), &layer_tar),
        ("manifest.json", &docker_manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        t.append_data(&mut h, path, &bytes[..])?;
    }
    t.into_inner()?;
    Ok((dir, archive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_urunc_decodes_it() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"unikraft"), "dW5pa3JhZnQ=");
    }
}
