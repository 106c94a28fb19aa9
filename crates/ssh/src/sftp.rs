//! The SFTP (version 3, draft-ietf-secsh-filexfer-02) requests the gateway
//! decides: framing of the client's packet stream and what each request
//! does to which path. Replies pass through untouched.

/// Largest packet accepted from a client (OpenSSH's own limit is 256 KiB).
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

pub const INIT: u8 = 1;
pub const OPEN: u8 = 3;
pub const VERSION: u8 = 2;
pub const CLOSE: u8 = 4;
pub const SETSTAT: u8 = 9;
pub const FSETSTAT: u8 = 10;
pub const OPENDIR: u8 = 11;
pub const REMOVE: u8 = 13;
pub const MKDIR: u8 = 14;
pub const RMDIR: u8 = 15;
pub const RENAME: u8 = 18;
pub const SYMLINK: u8 = 20;
pub const EXTENDED: u8 = 200;
pub const STATUS: u8 = 101;
pub const HANDLE: u8 = 102;
/// `SSH_FX_PERMISSION_DENIED`.
pub const FX_PERMISSION_DENIED: u32 = 3;

const PFLAG_READ: u32 = 0x1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("an SFTP packet of {0} bytes is larger than the gateway accepts")]
    TooLarge(usize),
    #[error("a malformed SFTP packet: {0}")]
    Malformed(&'static str),
}

/// Takes one whole packet (type byte and body, without the length) off
/// the front of `buf`, if it holds one.
pub fn take_packet(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, SftpError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_PACKET {
        return Err(SftpError::TooLarge(len));
    }
    if len == 0 {
        return Err(SftpError::Malformed("an empty packet"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let packet = buf[4..4 + len].to_vec();
    buf.drain(..4 + len);
    Ok(Some(packet))
}

/// What a request does, as the gateway decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub id: u32,
    /// `open`, `opendir`, `remove`, `mkdir`, `rmdir`, `rename`, `symlink`,
    /// `setstat`, or `extended:<name>`.
    pub name: String,
    /// `read` (listing), `export` (reading a file out), `write`, or
    /// `admin` (an extension the gateway does not know).
    pub class: crate::classify::Class,
    pub paths: Vec<String>,
    /// Open flags, for `open`.
    pub flags: Option<u32>,
    /// The handle, for `fsetstat`: its path is the one its `open` named.
    pub handle: Option<Vec<u8>>,
}

impl Op {
    /// Every class the request has: an open for reading and writing both
    /// reads a file out and changes it.
    pub fn classes(&self) -> Vec<crate::classify::Class> {
        use crate::classify::Class;
        match self.flags {
            Some(f) if self.name == "open" && f & PFLAG_READ != 0 && f & !PFLAG_READ != 0 => {
                vec![Class::Write, Class::Export]
            }
            _ => vec![self.class],
        }
    }
}

/// The handle in a `HANDLE` reply (`packet` without its length): the
/// request id and the handle's bytes.
pub fn handle_reply(packet: &[u8]) -> Option<(u32, Vec<u8>)> {
    let (&ty, body) = packet.split_first()?;
    if ty != HANDLE {
        return None;
    }
    let mut r = R(body);
    let id = r.u32().ok()?;
    Some((id, r.bytes().ok()?.to_vec()))
}

/// The handle a `CLOSE` request closes.
pub fn closed_handle(packet: &[u8]) -> Option<Vec<u8>> {
    let (&ty, body) = packet.split_first()?;
    if ty != CLOSE {
        return None;
    }
    let mut r = R(body);
    r.u32().ok()?;
    Some(r.bytes().ok()?.to_vec())
}

/// The protocol version a server's `VERSION` reply names.
pub fn server_version(packet: &[u8]) -> Option<u32> {
    let (&ty, body) = packet.split_first()?;
    if ty != VERSION {
        return None;
    }
    R(body).u32().ok()
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn u32(&mut self) -> Result<u32, SftpError> {
        if self.0.len() < 4 {
            return Err(SftpError::Malformed("truncated"));
        }
        let v = u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]);
        self.0 = &self.0[4..];
        Ok(v)
    }
    fn bytes(&mut self) -> Result<&[u8], SftpError> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(SftpError::Malformed("a string longer than its packet"));
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
    fn string(&mut self) -> Result<String, SftpError> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(SftpError::Malformed("a string longer than its packet"));
        }
        let s = std::str::from_utf8(&self.0[..n])
            .map_err(|_| SftpError::Malformed("a path that is not UTF-8"))?
            .to_string();
        self.0 = &self.0[n..];
        Ok(s)
    }
}

/// Extensions that only read metadata or flush.
const HARMLESS_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "fsync@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
];

/// What `packet` asks for, if it is a request the gateway decides.
/// Handle-based requests (read, write, close, readdir, fstat), stat,
/// realpath and readlink pass: they act only on what an earlier decided
/// open authorized, or read metadata.
pub fn decided_op(packet: &[u8]) -> Result<Option<Op>, SftpError> {
    use crate::classify::Class;
    let (&ty, body) = packet
        .split_first()
        .ok_or(SftpError::Malformed("an empty packet"))?;
    if ty == INIT {
        return Ok(None);
    }
    let mut r = R(body);
    let id = r.u32()?;
    let one = |r: &mut R, name: &str, class: Class| -> Result<Option<Op>, SftpError> {
        Ok(Some(Op {
            id,
            name: name.into(),
            class,
            paths: vec![r.string()?],
            flags: None,
            handle: None,
        }))
    };
    match ty {
        OPEN => {
            let path = r.string()?;
            let flags = r.u32()?;
            let class = if flags & !PFLAG_READ != 0 {
                // Writing (and read-write) changes the file.
                if flags & PFLAG_READ != 0 {
                    Class::Export.max(Class::Write)
                } else {
                    Class::Write
                }
            } else {
                Class::Export
            };
            Ok(Some(Op {
                id,
                name: "open".into(),
                class,
                paths: vec![path],
                flags: Some(flags),
                handle: None,
            }))
        }
        OPENDIR => one(&mut r, "opendir", Class::Read),
        REMOVE => one(&mut r, "remove", Class::Write),
        MKDIR => one(&mut r, "mkdir", Class::Write),
        RMDIR => one(&mut r, "rmdir", Class::Write),
        SETSTAT => one(&mut r, "setstat", Class::Write),
        // Changes the file behind a handle (an open for reading included):
        // the caller fills in the path its open named.
        FSETSTAT => Ok(Some(Op {
            id,
            name: "fsetstat".into(),
            class: Class::Write,
            paths: vec![],
            flags: None,
            handle: Some(r.bytes()?.to_vec()),
        })),
        RENAME | SYMLINK => {
            let a = r.string()?;
            let b = r.string()?;
            Ok(Some(Op {
                id,
                name: if ty == RENAME { "rename" } else { "symlink" }.into(),
                class: Class::Write,
                paths: vec![a, b],
                flags: None,
                handle: None,
            }))
        }
        EXTENDED => {
            let name = r.string()?;
            if HARMLESS_EXTENSIONS.contains(&name.as_str()) {
                return Ok(None);
            }
            let (class, paths) = match name.as_str() {
                "posix-rename@openssh.com" | "hardlink@openssh.com" => {
                    (Class::Write, vec![r.string()?, r.string()?])
                }
                "lsetstat@openssh.com" => (Class::Write, vec![r.string()?]),
                _ => (Class::MOST, vec![]),
            };
            Ok(Some(Op {
                id,
                name: format!("extended:{name}"),
                class,
                paths,
                flags: None,
                handle: None,
            }))
        }
        // Everything else (handles, stat, realpath, readlink, and unknown
        // types, which the server answers as unsupported) passes.
        _ => Ok(None),
    }
}

/// An `SSH_FXP_STATUS` reply refusing request `id`, framed.
pub fn denied(id: u32, message: &str) -> Vec<u8> {
    let mut body = vec![STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&FX_PERMISSION_DENIED.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(&0u32.to_be_bytes()); // language tag ""
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;
    use proptest::prelude::*;

    fn frame(ty: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![ty];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    #[test]
    fn requests_are_classified_by_what_they_do() {
        let attrs = 0u32.to_be_bytes();
        type Want<'a> = Option<(&'a str, Class, Vec<&'a str>)>;
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (
                frame(OPEN, 1, &[&s("/etc/shadow"), &1u32.to_be_bytes(), &attrs]),
                Some(("open", Class::Export, vec!["/etc/shadow"])),
            ),
            (
                frame(OPEN, 2, &[&s("up.txt"), &0x1au32.to_be_bytes(), &attrs]),
                Some(("open", Class::Write, vec!["up.txt"])),
            ),
            (
                frame(OPEN, 3, &[&s("rw"), &3u32.to_be_bytes(), &attrs]),
                Some(("open", Class::Export, vec!["rw"])),
            ),
            (
                frame(REMOVE, 4, &[&s("x")]),
                Some(("remove", Class::Write, vec!["x"])),
            ),
            (
                frame(RENAME, 5, &[&s("a"), &s("b")]),
                Some(("rename", Class::Write, vec!["a", "b"])),
            ),
            (
                frame(OPENDIR, 6, &[&s("/var/log")]),
                Some(("opendir", Class::Read, vec!["/var/log"])),
            ),
            (
                frame(
                    EXTENDED,
                    7,
                    &[&s("posix-rename@openssh.com"), &s("a"), &s("b")],
                ),
                Some((
                    "extended:posix-rename@openssh.com",
                    Class::Write,
                    vec!["a", "b"],
                )),
            ),
            (
                frame(EXTENDED, 8, &[&s("copy-data"), &[0u8; 8]]),
                Some(("extended:copy-data", Class::Admin, vec![])),
            ),
            (
                frame(EXTENDED, 9, &[&s("statvfs@openssh.com"), &s("/")]),
                None,
            ),
            (frame(17, 10, &[&s("/etc/shadow")]), None), // STAT: metadata
            (
                frame(FSETSTAT, 11, &[&s("h1"), &attrs]),
                Some(("fsetstat", Class::Write, vec![])),
            ),
        ];
        for (bytes, want) in cases {
            let mut buf = bytes.clone();
            let p = take_packet(&mut buf).unwrap().unwrap();
            assert!(buf.is_empty());
            let got = decided_op(&p).unwrap();
            match (got, want) {
                (None, None) => {}
                (Some(op), Some((name, class, paths))) => {
                    assert_eq!((op.name.as_str(), op.class), (name, class));
                    assert_eq!(op.paths, paths);
                }
                (g, w) => panic!("{bytes:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn a_read_write_open_has_both_classes_and_handles_are_read() {
        let attrs = 0u32.to_be_bytes();
        let mut buf = frame(OPEN, 3, &[&s("rw"), &3u32.to_be_bytes(), &attrs]);
        let op = decided_op(&take_packet(&mut buf).unwrap().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(op.classes(), vec![Class::Write, Class::Export]);
        let mut buf = frame(FSETSTAT, 4, &[&s("h1"), &attrs]);
        let op = decided_op(&take_packet(&mut buf).unwrap().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(op.handle.as_deref(), Some(&b"h1"[..]));
        let mut buf = frame(HANDLE, 3, &[&s("h1")]);
        let p = take_packet(&mut buf).unwrap().unwrap();
        assert_eq!(handle_reply(&p), Some((3, b"h1".to_vec())));
        let mut buf = frame(CLOSE, 5, &[&s("h1")]);
        let p = take_packet(&mut buf).unwrap().unwrap();
        assert_eq!(closed_handle(&p), Some(b"h1".to_vec()));
        assert_eq!(server_version(&[VERSION, 0, 0, 0, 6]), Some(6));
    }

    #[test]
    fn hostile_framing_is_refused() {
        let mut big = ((MAX_PACKET + 1) as u32).to_be_bytes().to_vec();
        assert_eq!(
            take_packet(&mut big),
            Err(SftpError::TooLarge(MAX_PACKET + 1))
        );
        let mut empty = 0u32.to_be_bytes().to_vec();
        assert!(take_packet(&mut empty).is_err());
        // A string claiming more bytes than the packet has.
        let p = [OPEN, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert_eq!(
            decided_op(&p),
            Err(SftpError::Malformed("a string longer than its packet"))
        );
        // Not UTF-8.
        let mut p = vec![REMOVE, 0, 0, 0, 1];
        p.extend_from_slice(&s("x"));
        *p.last_mut().unwrap() = 0xff;
        assert!(decided_op(&p).is_err());
        // Partial packets wait for more.
        let mut part = frame(REMOVE, 1, &[&s("x")]);
        part.truncate(6);
        assert_eq!(take_packet(&mut part), Ok(None));
    }

    #[test]
    fn a_denial_is_a_well_formed_status_reply() {
        let mut d = denied(42, "no");
        let p = take_packet(&mut d).unwrap().unwrap();
        assert_eq!(p[0], STATUS);
        assert_eq!(&p[1..5], &42u32.to_be_bytes());
        assert_eq!(&p[5..9], &FX_PERMISSION_DENIED.to_be_bytes());
    }

    proptest! {
        /// Any bytes: framing and decoding never panic, and a packet taken
        /// is exactly its declared length.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = data.clone();
            while let Ok(Some(p)) = take_packet(&mut buf) {
                let _ = decided_op(&p);
            }
            let _ = decided_op(&data);
        }
    }
}
