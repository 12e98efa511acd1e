//! The kernel command line from the process's arguments: each argument
//! becomes one word, quoted the way `kiln_boot::cmdline` reads quotes, so
//! it arrives byte for byte; a bare `--` stays the separator. Written into
//! a fixed buffer (the heap does not exist yet).

/// A command line being written into `buf`.
pub struct Line<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> Line<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Line {
            buf,
            len: 0,
            overflow: false,
        }
    }

    fn push(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    /// Appends `word` as one word (the separator `--` when `separator`).
    pub fn word(&mut self, word: &[u8], separator: bool) {
        if self.len > 0 {
            self.push(b' ');
        }
        let plain = !word.is_empty()
            && (separator || word != b"--")
            && !word
                .iter()
                .any(|&c| c == b'"' || c == b'\\' || c.is_ascii_whitespace());
        if plain {
            word.iter().for_each(|&c| self.push(c));
            return;
        }
        self.push(b'"');
        for &c in word {
            if c == b'"' || c == b'\\' {
                self.push(b'\\');
            }
            self.push(c);
        }
        self.push(b'"');
    }

    /// The line, or None when it did not fit.
    pub fn finish(self) -> Option<&'a str> {
        if self.overflow {
            return None;
        }
        core::str::from_utf8(&self.buf[..self.len]).ok()
    }
}

/// Writes the command line for `args` (argv without the program name):
/// a `clock.epoch=` default first (a later one given wins), then the
/// arguments, the first bare `--` as the separator.
pub fn command_line<'a, 'b>(
    buf: &'a mut [u8],
    epoch_secs: u64,
    args: impl Iterator<Item = &'b [u8]>,
) -> Option<&'a str> {
    let mut line = Line::new(buf);
    let mut n = [0u8; 32];
    let mut w = Writer(&mut n, 0);
    let _ = core::fmt::write(&mut w, format_args!("clock.epoch={epoch_secs}"));
    let len = w.1;
    line.word(&n[..len], false);
    let mut separated = false;
    for a in args {
        let sep = !separated && a == b"--";
        separated |= sep;
        line.word(a, sep);
    }
    line.finish()
}

struct Writer<'a>(&'a mut [u8], usize);

impl core::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.1 + s.len();
        self.0
            .get_mut(self.1..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.1 = end;
        Ok(())
    }
}

/// The value of `name=` among the arguments before `--` (the last one).
pub fn arg_value<'a>(args: &[&'a [u8]], name: &[u8]) -> Option<&'a [u8]> {
    let end = args.iter().position(|a| *a == b"--").unwrap_or(args.len());
    args[..end]
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix(name)?.strip_prefix(b"="))
}

/// `52:54:00:12:34:56`.
pub fn parse_mac(s: &[u8]) -> Option<[u8; 6]> {
    let s = core::str::from_utf8(s).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> String {
        let mut buf = [0u8; 256];
        command_line(&mut buf, 7, args.iter().map(|a| a.as_bytes()))
            .unwrap()
            .to_string()
    }

    #[test]
    fn arguments_arrive_byte_for_byte() {
        let l = line(&["netdev.ip=10.0.0.2/24", "--", "a b", "--", "", "q\"\\"]);
        assert_eq!(
            l,
            r#"clock.epoch=7 netdev.ip=10.0.0.2/24 -- "a b" "--" "" "q\"\\""#
        );
        let parsed = kiln_boot::cmdline::parse(&l).unwrap();
        assert_eq!(parsed.args, ["a b", "--", "", "q\"\\"]);
        assert_eq!(parsed.param("netdev.ip"), Some("10.0.0.2/24"));
    }

    #[test]
    fn platform_parameters_come_before_the_separator() {
        let args: [&[u8]; 5] = [
            b"linuxu.mem=8",
            b"x",
            b"linuxu.mem=16",
            b"--",
            b"linuxu.mem=1",
        ];
        assert_eq!(arg_value(&args, b"linuxu.mem"), Some(&b"16"[..]));
        assert_eq!(arg_value(&args, b"linuxu.tap"), None);
        assert_eq!(
            parse_mac(b"52:54:00:0a:bc:ff"),
            Some([0x52, 0x54, 0, 0xa, 0xbc, 0xff])
        );
        assert_eq!(parse_mac(b"52:54:00:0a:bc"), None);
        assert_eq!(parse_mac(b"52:54:00:0a:bc:ff:00"), None);
    }

    #[test]
    fn a_line_too_long_is_refused() {
        let mut buf = [0u8; 16];
        assert!(command_line(&mut buf, 1, ["0123456789"].iter().map(|a| a.as_bytes())).is_none());
    }
}
