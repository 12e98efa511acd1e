//! Base images (`FROM IMAGE`) from OCI registries over the registry HTTP
//! API, with the `oci-client` crate: Docker Hub (`debian` is
//! `docker.io/library/debian:latest`), GHCR or any other. Registries on
//! `localhost`/`127.0.0.1`, and those named in `KILN_INSECURE_REGISTRIES`
//! (comma-separated `host:port`), are spoken to over plain HTTP, as
//! Docker does for local ones. `KILN_REGISTRY_MIRROR` sends a registry's
//! pulls to a mirror (as Docker's `registry-mirrors`).
//!
//! An image index (a multi-platform image) resolves to the `linux` image
//! of the target's architecture. Layers are unpacked in order into one
//! folder, honouring whiteouts (`.wh.NAME` removes NAME from the layers
//! below, `.wh..wh..opq` empties its folder). Each image is unpacked once,
//! under its manifest's digest; the tag's digest is remembered, so a
//! later build needs no network (delete the cache's `refs` folder to look
//! the tag up again).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// What a stage takes from its base image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<(String, String)>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub workdir: String,
}

/// An unpacked image: its root folder, configuration and digest.
pub struct Image {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    pub digest: String,
}

/// The OCI architecture name of a Kiln architecture.
fn oci_arch(arch: &str) -> &'static str {
    match arch {
        "arm64" => "arm64",
        _ => "amd64",
    }
}

/// `KILN_REGISTRY_MIRROR=REGISTRY=HOST:PORT[,...]` (e.g.
/// `docker.io=127.0.0.1:5000`): images named for REGISTRY are pulled from
/// the mirror, under the same repository and tag.
fn mirror_for(registry: &str) -> Option<String> {
    let v = std::env::var("KILN_REGISTRY_MIRROR").ok()?;
    v.split(',')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(from, _)| *from == registry)
        .map(|(_, to)| to.to_string())
}

fn insecure(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        || std::env::var("KILN_INSECURE_REGISTRIES")
            .is_ok_and(|v| v.split(',').any(|r| r.trim() == registry))
}

/// The image `reference` for `arch`, pulled into `cache` unless it is there.
pub fn pull(reference: &str, arch: &str, cache: &Path, say: &dyn Fn(&str)) -> Result<Image> {
    use oci_client::{
        client::ClientConfig, client::ClientProtocol, secrets::RegistryAuth, Client, Reference,
    };
    let mut r: Reference = reference
        .parse()
        .map_err(|e| anyhow::anyhow!("{reference}: not an image reference ({e})"))?;
    let full = r.whole();
    if let Some(m) = mirror_for(r.registry()) {
        r.set_mirror_registry(m);
    }
    let ref_file = cache.join("refs").join(format!(
        "{}@{}",
        full.replace(['/', ':'], "_"),
        oci_arch(arch)
    ));
    if let Ok(digest) = std::fs::read_to_string(&ref_file) {
        let dir = cache.join("images").join(digest.trim().replace(':', "_"));
        if let Ok(meta) = std::fs::read(dir.join("config.json")) {
            if let Ok(config) = serde_json::from_slice(&meta) {
                return Ok(Image {
                    rootfs: dir.join("rootfs"),
                    config,
                    digest: digest.trim().to_string(),
                });
            }
        }
    }
    let registry = r.resolve_registry().to_string();
    let want = oci_arch(arch).to_string();
    let config = ClientConfig {
        protocol: if insecure(&registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        platform_resolver: Some(Box::new(
            move |entries: &[oci_client::manifest::ImageIndexEntry]| {
                entries
                    .iter()
                    .find(|e| {
                        e.platform.as_ref().is_some_and(|p| {
                            p.os.to_string() == "linux" && p.architecture.to_string() == want
                        })
                    })
                    .map(|e| e.digest.clone())
            },
        )),
        ..Default::default()
    };
    let client = Client::new(config);
    say(&format!("pulling {full} from {registry}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the registry client")?;
    use oci_client::manifest as m;
    let media = vec![
        m::IMAGE_LAYER_MEDIA_TYPE,
        m::IMAGE_LAYER_GZIP_MEDIA_TYPE,
        m::IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
        m::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
    ];
    let pulled = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(900),
                client.pull(&r, &RegistryAuth::Anonymous, media),
            )
            .await
        })
        .map_err(|_| {
            anyhow::anyhow!("pulling {full}: no answer from {registry} within 15 minutes")
        })?
        .map_err(|e| registry_error(&full, &registry, e))?;
    let digest = pulled.digest.clone().unwrap_or_else(|| {
        use sha2::Digest;
        format!("sha256:{:x}", sha2::Sha256::digest(&pulled.config.data))
    });
    let dir = cache.join("images").join(digest.replace(':', "_"));
    let image_config = read_config(&pulled.config.data);
    if !dir.join("config.json").is_file() {
        let tmp = cache.join("images").join(format!(
            ".{}-{}",
            digest.replace(':', "_"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("rootfs"))
            .with_context(|| format!("creating {}", tmp.display()))?;
        for (n, layer) in pulled.layers.iter().enumerate() {
            unpack_layer(&layer.data, &tmp.join("rootfs"))
                .with_context(|| format!("{full}: layer {} of {}", n + 1, pulled.layers.len()))?;
        }
        std::fs::write(tmp.join("config.json"), serde_json::to_vec(&image_config)?)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).with_context(|| format!("storing {}", dir.display()))?;
    }
    std::fs::create_dir_all(ref_file.parent().unwrap())?;
    std::fs::write(&ref_file, &digest)?;
    Ok(Image {
        rootfs: dir.join("rootfs"),
        config: image_config,
        digest,
    })
}

/// A registry's refusal or silence, said plainly with its own words.
fn registry_error(
    full: &str,
    registry: &str,
    e: oci_client::errors::OciDistributionError,
) -> anyhow::Error {
    let text = e.to_string();
    let chain = {
        let mut s = String::new();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    };
    if text.contains("error sending request")
        || chain.contains("onnection refused")
        || chain.contains("dns error")
        || chain.contains("timed out")
    {
        return anyhow::anyhow!("pulling {full}: cannot reach the registry {registry}{chain}");
    }
    anyhow::anyhow!("pulling {full}: the registry {registry} answered: {text}{chain}")
}

/// Env, Cmd, Entrypoint and WorkingDir of an image configuration.
fn read_config(data: &[u8]) -> ImageConfig {
    let v: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let c = &v["config"];
    let words = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    ImageConfig {
        env: words("Env")
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cmd: words("Cmd"),
        entrypoint: words("Entrypoint"),
        workdir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
    }
}

/// A layer's path as a relative path with no `..`, or None.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Unpacks one layer (a tar, gzip'd or not) over `root`: its whiteouts
/// first (they remove what the layers below left), then its entries.
pub fn unpack_layer(data: &[u8], root: &Path) -> Result<()> {
    let raw: Vec<u8> = if data.starts_with(&[0x1f, 0x8b]) {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut v)
            .context("decompressing")?;
        v
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        bail!("zstd-compressed layers are not supported; push the image with gzip layers");
    } else {
        data.to_vec()
    };
    let mut ar = tar::Archive::new(raw.as_slice());
    for e in ar.entries().context("reading the layer")? {
        let e = e?;
        let Some(p) = clean(&e.path()?) else { continue };
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let parent = root.join(p.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for c in rd.flatten() {
                    remove(&c.path());
                }
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            remove(&parent.join(hidden));
        }
    }
    let mut ar = tar::Archive::new(raw.as_slice());
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    // Files keep their owners where this runs as root.
    // SAFETY: geteuid has no preconditions and cannot fail.
    ar.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    ar.set_overwrite(true);
    for e in ar.entries()? {
        let mut e = e?;
        let p = e.path()?.into_owned();
        let Some(cp) = clean(&p) else { continue };
        if cp
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".wh."))
        {
            continue;
        }
        if matches!(
            e.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            // Device nodes are the run time's business (RUN binds /dev).
            continue;
        }
        // A file replacing a folder (or the reverse) between layers.
        let target = root.join(&cp);
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            // A folder entry keeps a folder (or a link to one, as merged
            // /usr's `lib -> usr/lib`); anything else replaces what was there.
            let replace = if e.header().entry_type().is_dir() {
                !target.is_dir()
            } else {
                m.is_dir() || m.file_type().is_symlink()
            };
            if replace {
                remove(&target);
            }
        }
        e.unpack_in(root)
            .with_context(|| format!("unpacking {}", p.display()))?;
    }
    Ok(())
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_remove_what_lower_layers_left() {
        let root = std::env::temp_dir().join(format!("kiln-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        unpack_layer(
            &layer(&[
                ("etc/", None),
                ("etc/a", Some(b"1")),
                ("etc/b", Some(b"2")),
                ("var/", None),
                ("var/x", Some(b"x")),
                ("var/y", Some(b"y")),
            ]),
            &root,
        )
        .unwrap();
        // The second layer (gzip'd) removes etc/a, empties var and adds var/z.
        let l2 = layer(&[
            ("var/z", Some(b"z")),
            ("etc/.wh.a", Some(b"")),
            ("var/.wh..wh..opq", Some(b"")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &l2).unwrap();
        unpack_layer(&gz.finish().unwrap(), &root).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"2");
        let mut var: Vec<String> = std::fs::read_dir(root.join("var"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        var.sort();
        assert_eq!(var, ["z"]);
        assert!(!root.join("var/.wh..wh..opq").exists());
        // A path that climbs out is skipped.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.as_gnu_mut().unwrap().name[..8].copy_from_slice(b"../evil\0");
        h.set_cksum();
        b.append(&h, &b"e"[..]).unwrap();
        unpack_layer(&b.into_inner().unwrap(), &root).unwrap();
        assert!(!root.parent().unwrap().join("evil").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
