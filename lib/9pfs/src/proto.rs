//! 9P2000.L messages: what Kiln sends and what it reads back. Each message
//! is `size[4] type[1] tag[2]` then its fields, little endian; strings are
//! `len[2]` and UTF-8 bytes. Replies are checked field by field: a short or
//! malformed reply is an error, never a panic.

use alloc::string::String;
use alloc::vec::Vec;

pub const TLERROR: u8 = 6;
pub const RLERROR: u8 = 7;
pub const TSTATFS: u8 = 8;
pub const TLOPEN: u8 = 12;
pub const TLCREATE: u8 = 14;
pub const TSYMLINK: u8 = 16;
pub const TREADLINK: u8 = 22;
pub const TGETATTR: u8 = 24;
pub const TSETATTR: u8 = 26;
pub const TREADDIR: u8 = 40;
pub const TFSYNC: u8 = 50;
pub const TLINK: u8 = 70;
pub const TMKDIR: u8 = 72;
pub const TRENAMEAT: u8 = 74;
pub const TUNLINKAT: u8 = 76;
pub const TVERSION: u8 = 100;
pub const TATTACH: u8 = 104;
pub const TWALK: u8 = 110;
pub const TREAD: u8 = 116;
pub const TWRITE: u8 = 118;
pub const TCLUNK: u8 = 120;

/// No fid (Tattach's afid).
pub const NOFID: u32 = !0;
/// Tgetattr: every basic field.
pub const GETATTR_BASIC: u64 = 0x7ff;
/// Tsetattr's valid bits.
pub const SETATTR_MODE: u32 = 0x1;
pub const SETATTR_SIZE: u32 = 0x8;
/// Tunlinkat: remove a directory.
pub const AT_REMOVEDIR: u32 = 0x200;

/// Bytes before a message's fields.
pub const HEADER: usize = 7;
/// Bytes before Rread's data and Twrite's data.
pub const IO_HEADER: usize = HEADER + 4 + 8 + 4;

/// A server's file identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Qid {
    pub kind: u8,
    pub version: u32,
    pub path: u64,
}

/// A message being built.
pub struct Msg(pub Vec<u8>);

impl Msg {
    pub fn new(kind: u8, tag: u16) -> Msg {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0, 0, 0, 0, kind]);
        v.extend_from_slice(&tag.to_le_bytes());
        Msg(v)
    }
    pub fn u8(mut self, v: u8) -> Msg {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Msg {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Msg {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Msg {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(mut self, s: &str) -> Msg {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.0.extend_from_slice(&(b.len() as u16).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Msg {
        self.0.extend_from_slice(b);
        self
    }
    /// The finished message, its size filled in.
    pub fn done(mut self) -> Vec<u8> {
        let n = self.0.len() as u32;
        self.0[..4].copy_from_slice(&n.to_le_bytes());
        self.0
    }
}

/// Why a reply could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server's Rlerror: a Linux errno.
    Errno(u32),
    /// A reply too short, of the wrong type, or with a bad field.
    Malformed,
}

/// A reply being read.
pub struct Reply<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reply<'a> {
    /// Checks the header: the size, `Rlerror` (its errno), and that the type
    /// is the reply to `sent` (sent + 1).
    pub fn parse(data: &'a [u8], sent: u8) -> Result<Reply<'a>, Error> {
        if data.len() < HEADER {
            return Err(Error::Malformed);
        }
        let size = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        if size < HEADER || size > data.len() {
            return Err(Error::Malformed);
        }
        let mut r = Reply {
            data: &data[..size],
            at: HEADER,
        };
        match data[4] {
            RLERROR => Err(Error::Errno(r.u32()?)),
            t if t == sent + 1 => Ok(r),
            _ => Err(Error::Malformed),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(Error::Malformed)?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn str(&mut self) -> Result<String, Error> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::Malformed)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        self.take(n)
    }
    pub fn qid(&mut self) -> Result<Qid, Error> {
        Ok(Qid {
            kind: self.u8()?,
            version: self.u32()?,
            path: self.u64()?,
        })
    }
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.at..]
    }
}

/// What Rgetattr says of a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub qid: Qid,
    pub mode: u32,
    pub nlink: u64,
    pub size: u64,
    pub blocks: u64,
    pub mtime: u64,
}

pub fn getattr(r: &mut Reply) -> Result<Attr, Error> {
    let _valid = r.u64()?;
    let qid = r.qid()?;
    let mode = r.u32()?;
    let (_uid, _gid) = (r.u32()?, r.u32()?);
    let nlink = r.u64()?;
    let _rdev = r.u64()?;
    let size = r.u64()?;
    let (_blksize, blocks) = (r.u64()?, r.u64()?);
    let (_atime, _atime_ns) = (r.u64()?, r.u64()?);
    let mtime = r.u64()?;
    Ok(Attr {
        qid,
        mode,
        nlink,
        size,
        blocks,
        mtime,
    })
}

/// One Rreaddir entry: (qid, offset of the next, type, name).
pub fn dirents(mut data: &[u8]) -> Result<Vec<(Qid, u64, u8, String)>, Error> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut r = Reply { data, at: 0 };
        let qid = r.qid()?;
        let off = r.u64()?;
        let kind = r.u8()?;
        let name = r.str()?;
        data = &data[r.at..];
        out.push((qid, off, kind, name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_their_size_and_replies_are_checked() {
        let m = Msg::new(TWALK, 1).u32(1).u32(2).u16(1).str("etc").done();
        assert_eq!(
            u32::from_le_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(m[4], TWALK);
        // Rlerror ENOENT.
        let e = Msg::new(RLERROR, 1).u32(2).done();
        assert_eq!(Reply::parse(&e, TWALK).err(), Some(Error::Errno(2)));
        // Wrong type, short, lying sizes.
        let wrong = Msg::new(TREAD + 1, 1).done();
        assert_eq!(Reply::parse(&wrong, TWALK).err(), Some(Error::Malformed));
        assert_eq!(Reply::parse(&[1, 0], TWALK).err(), Some(Error::Malformed));
        let mut lie = Msg::new(TWALK + 1, 1).u16(1).done();
        lie[0] = 200;
        assert_eq!(Reply::parse(&lie, TWALK).err(), Some(Error::Malformed));
        // A walk reply with one qid; a cut one fails field by field.
        let ok = Msg::new(TWALK + 1, 1).u16(1).u8(0x80).u32(3).u64(99).done();
        let mut r = Reply::parse(&ok, TWALK).unwrap();
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(
            r.qid().unwrap(),
            Qid {
                kind: 0x80,
                version: 3,
                path: 99
            }
        );
        assert_eq!(r.u8().err(), Some(Error::Malformed));
    }

    #[test]
    fn directory_entries() {
        let mut data = Vec::new();
        for (i, n) in ["a", "long name"].iter().enumerate() {
            data.extend_from_slice(
                &Msg(Vec::new())
                    .u8(0)
                    .u32(0)
                    .u64(i as u64 + 10)
                    .u64(i as u64 + 1)
                    .u8(8)
                    .str(n)
                    .0,
            );
        }
        let e = dirents(&data).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].3, "long name");
        assert_eq!(e[1].1, 2);
        assert!(dirents(&data[..data.len() - 1]).is_err());
    }
}
