//! The kernel command line, Unikraft style: `kernel-params -- app args`.
//!
//! Words are separated by blanks; a word may be put in double quotes to hold
//! blanks, and inside quotes `\"` and `\\` stand for `"` and `\`. Everything
//! before the first bare `--` is a kernel parameter (`name` or `name=value`),
//! everything after it an argument for the app. Without `--`, all words are
//! kernel parameters. [`quote`] is the inverse the host tool uses to build
//! the line, so an argument always arrives byte for byte.

use alloc::string::String;
use alloc::vec::Vec;

/// A parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CmdLine {
    /// Kernel parameters, in order, as `(name, value)`; `value` is `None` for a bare name.
    pub params: Vec<(String, Option<String>)>,
    /// Arguments for the app (after `--`).
    pub args: Vec<String>,
}

/// Why a command line was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// A `"` opened at this byte offset was never closed.
    UnterminatedQuote(usize),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::UnterminatedQuote(at) => write!(f, "unterminated quote at byte {at}"),
        }
    }
}

/// Splits a line into words, honouring quotes. Returns each word with a flag
/// telling whether any part of it was quoted (a quoted `"--"` is an argument,
/// not the separator).
pub fn split(line: &str) -> Result<Vec<(String, bool)>, Error> {
    let mut words = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&(i, c)) = chars.peek() {
            if c.is_ascii_whitespace() {
                break;
            }
            chars.next();
            if c != '"' {
                word.push(c);
                continue;
            }
            quoted = true;
            loop {
                match chars.next() {
                    None => return Err(Error::UnterminatedQuote(i)),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.peek() {
                        Some(&(_, n @ ('"' | '\\'))) => {
                            word.push(n);
                            chars.next();
                        }
                        _ => word.push('\\'),
                    },
                    Some((_, ch)) => word.push(ch),
                }
            }
        }
        words.push((word, quoted));
    }
}

/// The parameter a machine appends to list its virtio-mmio devices.
pub const PLATFORM_PREFIX: &str = "virtio_mmio.device=";

/// Parameters VMMs append to the command line after the app's arguments:
/// QEMU's microvm and Firecracker list virtio-mmio devices, Firecracker
/// adds `pci=off` (and `earlycon=` on arm64). Unquoted, they are never
/// the app's; [`quote`] quotes an argument that looks like one.
pub fn machine_appended(word: &str) -> bool {
    word.starts_with(PLATFORM_PREFIX) || word == "pci=off" || word.starts_with("earlycon=")
}

/// Parses a whole command line.
pub fn parse(line: &str) -> Result<CmdLine, Error> {
    let mut out = CmdLine::default();
    let mut in_args = false;
    let mut words = split(line)?.into_iter();
    while let Some((mut w, quoted)) = words.next() {
        // A list value in brackets, `name=[ a b ]` (Unikraft's form for
        // vfs.fstab=), is one parameter: its words are gathered up to `]`.
        if !in_args
            && w.split_once('=')
                .is_some_and(|(_, v)| v.starts_with('[') && !v.ends_with(']'))
        {
            for (next, _) in words.by_ref() {
                w.push(' ');
                w.push_str(&next);
                if next.ends_with(']') {
                    break;
                }
            }
        }
        // The machine may append its own parameters after the app's
        // arguments (QEMU's microvm adds virtio_mmio.device=...): those are
        // never the app's.
        if in_args && !(machine_appended(&w) && !quoted) {
            out.args.push(w);
        } else if w == "--" && !quoted {
            in_args = true;
        } else {
            match w.split_once('=') {
                Some((k, v)) => out.params.push((k.into(), Some(v.into()))),
                None => out.params.push((w, None)),
            }
        }
    }
    Ok(out)
}

/// Quotes one word so that [`split`] gives it back unchanged.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word != "--"
        && !machine_appended(word)
        && !word
            .chars()
            .any(|c| c.is_ascii_whitespace() || c == '"' || c == '\\');
    if plain {
        return word.into();
    }
    let mut s = String::with_capacity(word.len() + 2);
    s.push('"');
    for c in word.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

impl CmdLine {
    /// The value of the last parameter called `name` (`Some("")` for a bare name).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// True when the parameter is present as a bare name or with a value other
    /// than `0`, `n` or `false`.
    pub fn flag(&self, name: &str) -> bool {
        self.param(name)
            .is_some_and(|v| !matches!(v, "0" | "n" | "no" | "false"))
    }

    /// Environment variables, in order: each `env.KEY=VALUE` parameter,
    /// and each `KEY=VALUE` of an `env.vars=[ K=V ... ]` list (the form
    /// urunc passes; an item without `=` is a variable with an empty value).
    pub fn env(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        for (k, v) in &self.params {
            let v = v.as_deref().unwrap_or("");
            if k == "env.vars" {
                let list = v.trim();
                let list = list.strip_prefix('[').unwrap_or(list);
                let list = list.strip_suffix(']').unwrap_or(list);
                out.extend(
                    list.split_ascii_whitespace()
                        .map(|item| item.split_once('=').unwrap_or((item, ""))),
                );
            } else if let Some(name) = k.strip_prefix("env.") {
                out.push((name, v));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_parameters_after_the_arguments_are_not_arguments() {
        let c =
            parse("kiln.quiet -- a virtio_mmio.device=512@0xfeb00e00:12 \"virtio_mmio.device=x\"")
                .unwrap();
        assert_eq!(c.args, ["a", "virtio_mmio.device=x"]);
        assert_eq!(c.param("virtio_mmio.device"), Some("512@0xfeb00e00:12"));
        // Firecracker's own addition.
        let c = parse("-- a pci=off virtio_mmio.device=4K@0xc0001000:5").unwrap();
        assert_eq!(c.args, ["a"]);
        assert_eq!(
            parse(&alloc::format!("-- {}", quote("pci=off")))
                .unwrap()
                .args,
            ["pci=off"]
        );
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    #[test]
    fn a_bracketed_list_is_one_parameter() {
        let c = parse("vfs.fstab=[ \"vda:/data:vfat\" \"vdb:/x:vfat:ro\" ] netdev.ip=dhcp -- a")
            .unwrap();
        assert_eq!(
            c.params[0],
            (
                "vfs.fstab".into(),
                Some("[ vda:/data:vfat vdb:/x:vfat:ro ]".into())
            )
        );
        assert_eq!(c.params[1].0, "netdev.ip");
        assert_eq!(c.args, ["a"]);
    }

    #[test]
    fn params_and_args() {
        let c = parse("Unikraft env.vars=[ PATH=/bin HOME=/ ] env.X=1 -- a").unwrap();
        assert_eq!(c.env(), [("PATH", "/bin"), ("HOME", "/"), ("X", "1")]);
        assert_eq!(c.args, ["a"]);
        let c = parse("kiln.quiet env.A=1 x=y=z -- a  b").unwrap();
        assert_eq!(c.param("kiln.quiet"), Some(""));
        assert_eq!(c.param("x"), Some("y=z"));
        assert!(c.flag("kiln.quiet"));
        assert_eq!(c.env(), [("A", "1")]);
        assert_eq!(strs(&c.args), ["a", "b"]);
    }

    #[test]
    fn no_separator_means_no_args() {
        let c = parse("  a b ").unwrap();
        assert_eq!(c.params.len(), 2);
        assert!(c.args.is_empty());
        assert_eq!(parse("").unwrap(), CmdLine::default());
    }

    #[test]
    fn quotes_and_escapes() {
        let c = parse(r#"-- "hello world" "" "a\"b\\c" x"y z"w "\n" -- "--""#).unwrap();
        assert_eq!(
            strs(&c.args),
            ["hello world", "", "a\"b\\c", "xy zw", "\\n", "--", "--"]
        );
        assert_eq!(parse("a \"b"), Err(Error::UnterminatedQuote(2)));
    }

    #[test]
    fn flag_values() {
        let c = parse("a=0 b=n c=1 d").unwrap();
        assert!(!c.flag("a") && !c.flag("b") && c.flag("c") && c.flag("d") && !c.flag("e"));
    }

    #[test]
    fn quote_round_trips() {
        let words = [
            "plain",
            "",
            "two words",
            "q\"uote",
            "back\\slash",
            "--",
            "tab\there",
            "ünï",
        ];
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        let line = alloc::format!("-- {}", line.join(" "));
        assert_eq!(strs(&parse(&line).unwrap().args), words);
        assert_eq!(quote("plain"), "plain");
    }
}
