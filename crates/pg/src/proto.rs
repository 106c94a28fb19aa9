//! The PostgreSQL v3 wire protocol, as much as the gateway needs: framing,
//! the frontend messages it inspects, and the backend messages it writes.
//! Parsing never panics; a malformed message is an error that closes the
//! connection.

use bytes::{Buf, BufMut, BytesMut};

/// Largest message read during login, and the default bound of tests; a
/// session's own limit is `max_message_bytes` (configuration).
pub const MAX_MESSAGE: usize = 64 << 20;
/// How much room a partial message may reserve ahead of its bytes: a
/// header announcing a large message allocates only as the bytes arrive.
const RESERVE_AHEAD: usize = 1 << 20;
/// Largest startup packet.
pub const MAX_STARTUP: usize = 10_000;

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
pub const PROTOCOL_3: i32 = 196608;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("a string in the {0} message is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("message of {0} bytes is larger than the gateway accepts")]
    TooLarge(usize),
}

/// One complete message from the buffer: its type byte and body (without
/// the length). `None` if more bytes are needed.
pub fn take_message(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, BytesMut)>, ProtoError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtoError::Malformed("framed"));
    }
    let len = len as usize;
    if len > max {
        return Err(ProtoError::TooLarge(len));
    }
    if buf.len() < 1 + len {
        buf.reserve((1 + len - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let ty = buf[0];
    let mut m = buf.split_to(1 + len);
    m.advance(5);
    Ok(Some((ty, m)))
}

/// The type and length (the header's, which counts itself) of the message
/// at the front of `buf`, once its header is there.
pub fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, ProtoError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtoError::Malformed("framed"));
    }
    Ok(Some((buf[0], len as usize)))
}

/// Checks the header of every message in `buf` (complete or not) against
/// `max`, without taking anything: what a client sends while it may not be
/// read yet is refused as soon as its header says it is too large.
pub fn check_headers(buf: &[u8], max: usize) -> Result<(), ProtoError> {
    let mut at = 0;
    while let Some((_, len)) = peek_header(&buf[at..])? {
        if len > max {
            return Err(ProtoError::TooLarge(len));
        }
        at += 1 + len;
        if at >= buf.len() {
            break;
        }
    }
    Ok(())
}

/// The untyped startup-phase packet (startup, SSL, GSS or cancel request).
pub fn take_startup(buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP as i32).contains(&len) {
        return Err(ProtoError::Malformed("startup"));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut m = buf.split_to(len);
    m.advance(4);
    Ok(Some(m))
}

/// Reads fields out of a message body.
pub struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }
    fn err(&self) -> ProtoError {
        ProtoError::Malformed(self.what)
    }
    pub fn cstr(&mut self) -> Result<&'a str, ProtoError> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| self.err())?;
        let s = std::str::from_utf8(&self.b[..end]).map_err(|_| ProtoError::NotUtf8(self.what))?;
        self.b = &self.b[end + 1..];
        Ok(s)
    }
    pub fn i16(&mut self) -> Result<i16, ProtoError> {
        let v = self.b.get(..2).ok_or_else(|| self.err())?;
        let n = i16::from_be_bytes([v[0], v[1]]);
        self.b = &self.b[2..];
        Ok(n)
    }
    pub fn i32(&mut self) -> Result<i32, ProtoError> {
        let v = self.b.get(..4).ok_or_else(|| self.err())?;
        let n = i32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        self.b = &self.b[4..];
        Ok(n)
    }
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        let v = *self.b.first().ok_or_else(|| self.err())?;
        self.b = &self.b[1..];
        Ok(v)
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let v = self.b.get(..n).ok_or_else(|| self.err())?;
        self.b = &self.b[n..];
        Ok(v)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// Ends a message that must have nothing after its last field (the
    /// server refuses such a message too; the gateway does not forward
    /// bytes it did not read).
    pub fn end(&self) -> Result<(), ProtoError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
    /// A count of fields that follow: PostgreSQL reads it as unsigned 16
    /// bits (libpq sends up to 65,535 parameters).
    pub fn count(&mut self) -> Result<usize, ProtoError> {
        Ok(self.i16()? as u16 as usize)
    }
}

/// The key/value parameters of a startup message.
pub fn startup_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtoError> {
    let mut r = Reader::new(body, "startup");
    let mut out = Vec::new();
    loop {
        let k = r.cstr()?;
        if k.is_empty() {
            break;
        }
        let v = r.cstr()?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A Parse message.
pub struct Parse<'a> {
    pub name: &'a str,
    pub query: &'a str,
    pub types: Vec<u32>,
}

pub fn parse_parse(body: &[u8]) -> Result<Parse<'_>, ProtoError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let n = r.count()?;
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        types.push(r.i32()? as u32);
    }
    r.end()?;
    Ok(Parse { name, query, types })
}

/// A Bind message.
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
}

impl Bind<'_> {
    /// Whether parameter `i` was sent in binary.
    pub fn is_binary(&self, i: usize) -> bool {
        match self.formats.len() {
            0 => false,
            1 => self.formats[0] == 1,
            _ => self.formats.get(i) == Some(&1),
        }
    }
}

pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, ProtoError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let nf = r.count()?;
    let mut formats = Vec::with_capacity(nf);
    for _ in 0..nf {
        formats.push(r.i16()?);
    }
    let nv = r.count()?;
    if nf > 1 && nf != nv {
        return Err(ProtoError::Malformed("Bind"));
    }
    let mut values = Vec::with_capacity(nv);
    for _ in 0..nv {
        let len = r.i32()?;
        if len < 0 {
            values.push(None);
        } else {
            values.push(Some(r.bytes(len as usize)?));
        }
    }
    let nr = r.count()?;
    for _ in 0..nr {
        r.i16()?;
    }
    r.end()?;
    Ok(Bind {
        portal,
        statement,
        formats,
        values,
    })
}

/// A Bind body naming `statement` instead of the statement it named (the
/// portal name and everything after the statement name unchanged). The
/// body must have been read by [`parse_bind`].
pub fn rebind(body: &[u8], statement: &str) -> BytesMut {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr().unwrap_or("");
    let _ = r.cstr();
    let mut out = BytesMut::with_capacity(body.len() + statement.len());
    put_cstr(&mut out, portal);
    put_cstr(&mut out, statement);
    out.put_slice(r.rest());
    out
}

/// `(kind, name)` of a Describe or Close message: kind is `S` or `P`.
pub fn parse_target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), ProtoError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtoError::Malformed(what));
    }
    let name = r.cstr()?;
    r.end()?;
    Ok((kind, name))
}

/// `(portal, max_rows)` of an Execute message.
pub fn parse_execute(body: &[u8]) -> Result<(&str, i32), ProtoError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    let max_rows = r.i32()?;
    r.end()?;
    Ok((portal, max_rows))
}

/// The text of a Query message: one NUL-terminated string and nothing
/// after it, so that what is classified is all that is forwarded.
pub fn query_text(body: &[u8]) -> Result<&str, ProtoError> {
    let mut r = Reader::new(body, "Query");
    let text = r.cstr()?;
    r.end()?;
    Ok(text)
}

// ---- writing ------------------------------------------------------------

/// Appends a message with type `ty` whose body `f` writes.
pub fn put(out: &mut BytesMut, ty: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(ty);
    let at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Appends a raw message unchanged.
pub fn put_raw(out: &mut BytesMut, ty: u8, body: &[u8]) {
    out.put_u8(ty);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

pub fn auth(out: &mut BytesMut, code: i32, data: &[u8]) {
    put(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, k: &str, v: &str) {
    put(out, b'S', |b| {
        put_cstr(b, k);
        put_cstr(b, v);
    });
}

pub fn ready(out: &mut BytesMut, status: u8) {
    put(out, b'Z', |b| b.put_u8(status));
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put(out, b'C', |b| put_cstr(b, tag));
}

/// A diagnostic for the client: an ErrorResponse (`E`) or NoticeResponse
/// (`N`).
pub struct Diag<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

pub fn diag(out: &mut BytesMut, ty: u8, d: &Diag) {
    put(out, ty, |b| {
        for (f, v) in [
            (b'S', Some(d.severity)),
            (b'V', Some(d.severity)),
            (b'C', Some(d.code)),
            (b'M', Some(d.message)),
            (b'D', d.detail),
            (b'H', d.hint),
        ] {
            if let Some(v) = v {
                b.put_u8(f);
                put_cstr(b, v);
            }
        }
        b.put_u8(0);
    });
}

pub fn error(
    out: &mut BytesMut,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    diag(
        out,
        b'E',
        &Diag {
            severity: "ERROR",
            code,
            message,
            detail,
            hint,
        },
    );
}

pub fn fatal(out: &mut BytesMut, code: &str, message: &str) {
    diag(
        out,
        b'E',
        &Diag {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint: None,
        },
    );
}

/// The `C` (SQLSTATE) and `M` (message) fields of an ErrorResponse.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut msg = String::new();
    let mut r = Reader::new(body, "ErrorResponse");
    while let Ok(f) = r.u8() {
        if f == 0 {
            break;
        }
        let Ok(v) = r.cstr() else { break };
        match f {
            b'C' => code = v.to_string(),
            b'M' => msg = v.to_string(),
            _ => {}
        }
    }
    (code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_waits_for_whole_messages_and_rejects_bad_lengths() {
        let mut b = BytesMut::new();
        put(&mut b, b'Q', |b| put_cstr(b, "SELECT 1"));
        let full = b.clone();
        let mut part = BytesMut::from(&full[..7]);
        assert!(take_message(&mut part, MAX_MESSAGE).unwrap().is_none());
        let (ty, body) = take_message(&mut b, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(ty, b'Q');
        assert_eq!(query_text(&body).unwrap(), "SELECT 1");
        let mut bad = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(take_message(&mut bad, MAX_MESSAGE).is_err());
        let mut huge = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert!(matches!(
            take_message(&mut huge, MAX_MESSAGE),
            Err(ProtoError::TooLarge(_))
        ));
    }

    #[test]
    fn headers_are_checked_before_the_body_arrives() {
        let mut b = BytesMut::new();
        put(&mut b, b'Q', |b| put_cstr(b, "SELECT 1"));
        put(&mut b, b'Q', |b| put_cstr(b, "SELECT 2"));
        assert!(check_headers(&b, 64).is_ok());
        // A second message announcing 1 GiB, of which 3 bytes arrived.
        b.extend_from_slice(&[b'Q', 0x40, 0, 0, 0, 1, 2, 3]);
        assert!(matches!(
            check_headers(&b, 1 << 20),
            Err(ProtoError::TooLarge(0x4000_0000))
        ));
        assert_eq!(peek_header(&b).unwrap(), Some((b'Q', 13)));
        assert!(peek_header(&[b'Q', 0, 0]).unwrap().is_none());
        assert!(check_headers(&[b'Q', 0, 0, 0, 1], 64).is_err());
        // Taking a partial large message reserves only a bounded amount.
        let mut big = BytesMut::from(&[b'd', 0x10, 0, 0, 0][..]);
        assert!(take_message(&mut big, 1 << 30).unwrap().is_none());
        assert!(big.capacity() <= 2 * RESERVE_AHEAD);
    }

    #[test]
    fn bind_parses_and_malformed_bind_is_an_error() {
        let mut b = BytesMut::new();
        put_cstr(&mut b, "p");
        put_cstr(&mut b, "s");
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(2);
        b.put_i32(3);
        b.put_slice(b"abc");
        b.put_i32(-1);
        b.put_i16(0);
        let bind = parse_bind(&b).unwrap();
        assert_eq!(bind.values, vec![Some(&b"abc"[..]), None]);
        assert!(!bind.is_binary(0));
        let moved = rebind(&b, "other");
        let again = parse_bind(&moved).unwrap();
        assert_eq!((again.portal, again.statement), ("p", "other"));
        assert_eq!(again.values, bind.values);
        for cut in 0..b.len() - 2 {
            assert!(parse_bind(&b[..cut]).is_err(), "cut at {cut}");
        }
        // 65,535 format codes announced (0xffff), none sent.
        let mut short = BytesMut::new();
        put_cstr(&mut short, "");
        put_cstr(&mut short, "");
        short.put_i16(-1);
        assert!(parse_bind(&short).is_err());
    }

    #[test]
    fn error_fields_round_trip() {
        let mut b = BytesMut::new();
        error(&mut b, "42501", "no", Some("d"), None);
        let (_, body) = take_message(&mut b, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(error_fields(&body), ("42501".into(), "no".into()));
    }

    #[test]
    fn trailing_bytes_and_bad_utf8_are_refused() {
        assert_eq!(query_text(b"SELECT 1\0").unwrap(), "SELECT 1");
        // PostgreSQL refuses the whole message (08P01, it runs nothing);
        // the gateway refuses it before classifying the first string.
        assert!(matches!(
            query_text(b"SELECT 1\0DROP TABLE t\0"),
            Err(ProtoError::Malformed("Query"))
        ));
        assert!(matches!(
            query_text(b"SELECT 1"),
            Err(ProtoError::Malformed("Query"))
        ));
        assert!(matches!(
            query_text(b"SELECT '\xff'\0"),
            Err(ProtoError::NotUtf8("Query"))
        ));
        assert!(parse_execute(b"\0\0\0\0\0").is_ok());
        assert!(parse_execute(b"\0\0\0\0\0x").is_err());
        assert!(parse_target(b"Sname\0", "Describe").is_ok());
        assert!(parse_target(b"Sname\0x", "Describe").is_err());
        assert!(parse_target(b"Xname\0", "Describe").is_err());
        let mut p = BytesMut::new();
        put_cstr(&mut p, "s");
        put_cstr(&mut p, "SELECT $1");
        p.put_i16(1);
        p.put_i32(23);
        assert_eq!(parse_parse(&p).unwrap().types, vec![23]);
        p.put_u8(0);
        assert!(parse_parse(&p).is_err());
    }

    #[test]
    fn counts_are_unsigned_as_postgresql_reads_them() {
        let n = 40_000;
        let values = vec![Some(b"1".to_vec()); n];
        let body = bind_body("", "s", &[], &values, &[]);
        assert_eq!(parse_bind(&body).unwrap().values.len(), n);
        let mut p = BytesMut::new();
        put_cstr(&mut p, "");
        put_cstr(&mut p, "SELECT 1");
        p.put_u16(40_000);
        for _ in 0..40_000 {
            p.put_i32(0);
        }
        assert_eq!(parse_parse(&p).unwrap().types.len(), 40_000);
    }

    fn bind_body(
        portal: &str,
        stmt: &str,
        formats: &[i16],
        values: &[Option<Vec<u8>>],
        results: &[i16],
    ) -> BytesMut {
        let mut b = BytesMut::new();
        put_cstr(&mut b, portal);
        put_cstr(&mut b, stmt);
        b.put_u16(formats.len() as u16);
        for f in formats {
            b.put_i16(*f);
        }
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(results.len() as i16);
        for r in results {
            b.put_i16(*r);
        }
        b
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn cstring() -> impl Strategy<Value = String> {
            "[^\\x00]{0,12}"
        }

        proptest! {
            /// Hostile bytes, mostly near a valid frame (a type, a length
            /// off by a little from the body's, a body): every parser
            /// answers, none panics, and framing takes exactly one whole
            /// message or nothing.
            #[test]
            fn no_parser_panics_on_any_bytes(
                raw in proptest::collection::vec(any::<u8>(), 0..64),
                framed in any::<bool>(),
                off in -5i32..5,
                max in 0usize..100,
            ) {
                let bytes = if framed && !raw.is_empty() {
                    let mut v = vec![raw[0]];
                    v.extend_from_slice(&(raw.len() as i32 + 3 + off).to_be_bytes());
                    v.extend_from_slice(&raw[1..]);
                    v
                } else {
                    raw
                };
                let mut b = BytesMut::from(&bytes[..]);
                match take_message(&mut b, max) {
                    Ok(Some((ty, body))) => {
                        prop_assert_eq!(ty, bytes[0]);
                        prop_assert_eq!(1 + 4 + body.len() + b.len(), bytes.len());
                        prop_assert!(body.len() + 4 <= max);
                    }
                    Ok(None) => prop_assert_eq!(&b[..], &bytes[..]),
                    Err(_) => {}
                }
                let mut b = BytesMut::from(bytes.get(1..).unwrap_or_default());
                if let Ok(Some(body)) = take_startup(&mut b) {
                    prop_assert_eq!(4 + body.len() + b.len(), bytes.len() - 1);
                    prop_assert!(body.len() + 4 <= MAX_STARTUP);
                }
                let _ = startup_params(&bytes);
                let _ = parse_parse(&bytes);
                let _ = parse_bind(&bytes);
                let _ = parse_target(&bytes, "Describe");
                let _ = parse_execute(&bytes);
                let _ = query_text(&bytes);
                let _ = error_fields(&bytes);
            }

            /// A message arriving in pieces is taken once it is whole, and
            /// not before, whatever the cut.
            #[test]
            fn a_message_is_taken_only_when_whole(text in cstring(), cut in 0usize..40) {
                let mut whole = BytesMut::new();
                put(&mut whole, b'Q', |b| put_cstr(b, &text));
                let cut = cut.min(whole.len());
                let mut b = BytesMut::from(&whole[..cut]);
                if cut < whole.len() {
                    prop_assert!(take_message(&mut b, MAX_MESSAGE).unwrap().is_none());
                    b.extend_from_slice(&whole[cut..]);
                }
                let (ty, body) = take_message(&mut b, MAX_MESSAGE).unwrap().unwrap();
                prop_assert_eq!(ty, b'Q');
                prop_assert_eq!(query_text(&body).unwrap(), text.as_str());
                prop_assert!(b.is_empty());
            }

            /// A well-formed Bind reads back as sent; cut short or with a
            /// byte more it is refused.
            #[test]
            fn bind_round_trips_and_is_refused_cut_or_padded(
                portal in cstring(),
                stmt in cstring(),
                values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)), 0..4),
                shape in 0u8..4,
                per in proptest::collection::vec(0i16..2, 4),
                results in proptest::collection::vec(0i16..2, 0..3),
                cut in any::<proptest::sample::Index>(),
            ) {
                // No format codes (all text), one for all, one per value,
                // or a count that matches neither (refused).
                let formats: Vec<i16> = match shape {
                    0 => vec![],
                    1 => vec![per[0]],
                    2 => per[..values.len()].to_vec(),
                    _ => vec![0; values.len() + 2],
                };
                let body = bind_body(&portal, &stmt, &formats, &values, &results);
                if shape == 3 {
                    prop_assert!(parse_bind(&body).is_err());
                    return Ok(());
                }
                let b = parse_bind(&body).unwrap();
                prop_assert_eq!(b.portal, portal.as_str());
                prop_assert_eq!(b.statement, stmt.as_str());
                let got: Vec<Option<Vec<u8>>> = b.values.iter().map(|v| v.map(|v| v.to_vec())).collect();
                prop_assert_eq!(got, values.clone());
                for i in 0..values.len() {
                    let want = match shape {
                        0 => false,
                        1 => per[0] == 1,
                        _ => per[i] == 1,
                    };
                    prop_assert_eq!(b.is_binary(i), want);
                }
                let at = cut.index(body.len());
                prop_assert!(parse_bind(&body[..at]).is_err(), "cut at {} of {}", at, body.len());
                let mut padded = body.clone();
                padded.put_u8(0);
                prop_assert!(parse_bind(&padded).is_err());
            }
        }
    }
}
