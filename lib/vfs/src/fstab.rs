//! `vfs.fstab=`: the file systems to mount at boot, in the format Unikraft
//! and urunc pass on the kernel command line.
//!
//! The value is a list of entries separated by blanks, optionally in
//! brackets, each entry optionally quoted:
//! `vfs.fstab=[ "vda:/data:vfat" "vdb:/logs:vfat:ro" ]`. An entry is
//! `SOURCE:DESTINATION:TYPE[:FLAGS[:OPTIONS[:...]]]`: SOURCE is a device
//! (`vda`) or a 9p tag, DESTINATION an absolute path, TYPE the file system
//! (`vfat`, `fat`, `msdos`; `9pfs`). FLAGS and OPTIONS are comma-separated
//! words; Kiln understands `ro` (mount read-only) and `nofail` (boot on
//! without this mount if it cannot be mounted) in either. Unknown words are
//! refused, so a typo is not silently ignored.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub source: String,
    pub destination: String,
    pub fstype: String,
    pub read_only: bool,
    /// Boot on without it if it cannot be mounted.
    pub optional: bool,
}

/// Parses the value of `vfs.fstab=`. The error names the entry and what is
/// wrong with it.
pub fn parse(value: &str) -> Result<Vec<Entry>, String> {
    let body = value.trim();
    let body = body.strip_prefix('[').unwrap_or(body);
    let body = body.strip_suffix(']').unwrap_or(body);
    let mut out = Vec::new();
    for word in body.split_ascii_whitespace() {
        let word = word.trim_matches('"');
        if word.is_empty() {
            continue;
        }
        out.push(entry(word)?);
    }
    Ok(out)
}

fn entry(word: &str) -> Result<Entry, String> {
    let bad = |what: &str| alloc::format!("vfs.fstab: entry '{word}': {what}");
    let mut parts = word.split(':');
    let source = parts.next().unwrap_or("");
    let (Some(destination), Some(fstype)) = (parts.next(), parts.next()) else {
        return Err(bad("expected SOURCE:DESTINATION:TYPE[:FLAGS[:OPTIONS]]"));
    };
    if source.is_empty() {
        return Err(bad("the source (a disk such as vda, or a 9p tag) is empty"));
    }
    if !destination.starts_with('/') {
        return Err(bad("the destination must be an absolute path"));
    }
    if fstype.is_empty() {
        return Err(bad("the file system type is empty (vfat, 9pfs)"));
    }
    let mut e = Entry {
        source: source.to_string(),
        destination: destination.to_string(),
        fstype: fstype.to_string(),
        read_only: false,
        optional: false,
    };
    for w in parts.flat_map(|p| p.split(',')) {
        match w {
            "" | "rw" | "mkmp" => {}
            "ro" => e.read_only = true,
            "nofail" => e.optional = true,
            other => {
                return Err(bad(&alloc::format!(
                    "unknown flag or option '{other}' (known: ro, rw, nofail)"
                )))
            }
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_in_unikraft_and_plain_forms() {
        let e = parse("[ \"vda:/data:vfat\" \"vdb:/logs:vfat:ro\" ]").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].source, "vda");
        assert_eq!(e[0].destination, "/data");
        assert_eq!(e[0].fstype, "vfat");
        assert!(!e[0].read_only);
        assert!(e[1].read_only);
        let e = parse("vda:/data:vfat::nofail,ro").unwrap();
        assert!(e[0].optional && e[0].read_only);
        let e = parse("fs0:/:9pfs:::").unwrap();
        assert_eq!(e[0].fstype, "9pfs");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        assert!(parse("vda")
            .unwrap_err()
            .contains("expected SOURCE:DESTINATION:TYPE"));
        assert!(parse("vda:data:vfat")
            .unwrap_err()
            .contains("absolute path"));
        assert!(parse(":/data:vfat").unwrap_err().contains("source"));
        assert!(parse("vda:/data:").unwrap_err().contains("type is empty"));
        assert!(parse("vda:/data:vfat:rx")
            .unwrap_err()
            .contains("unknown flag or option 'rx'"));
    }
}
