//! RFC 5424 syslog over TCP (RFC 6587 octet counting), optionally TLS (RFC 5425).
//!
//! Each entry becomes one message:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME secondkey PROCID MSGID [secondkey@32473 index="…" actor="…" request="…" …] {entry JSON}
//! ```
//!
//! - PRI = facility × 8 + 5 (notice); the facility defaults to `authpriv` (10),
//!   where Unix systems route security/authorization messages.
//! - TIMESTAMP is the entry's own time (UTC, microseconds), not the send time,
//!   so a replayed entry keeps its time.
//! - MSGID is the event type (`request.approved`), cut to the 32 printable
//!   ASCII characters RFC 5424 allows.
//! - The structured data carries the log index, actor, digest and every
//!   subject (`request`, `grant`, …) so SIEM rules can filter without parsing
//!   the JSON; values are escaped per RFC 5424 §6.3.3.
//! - MSG is the canonical entry JSON exactly as logged, without a BOM (the
//!   `MSG-ANY` form), because SIEM JSON parsers reject a leading BOM.
//!
//! `32473` is the IANA example enterprise number (RFC 5612), reserved for
//! documentation; a registered PEN should replace it before the SD-ID is
//! relied on by third parties.
//!
//! **What "acknowledged" means here.** Syslog has no application-level
//! acknowledgement. A delivery counts as acknowledged when the frame is
//! written *and* (on Linux) the receiver's TCP stack has acknowledged every
//! byte (`SIOCOUTQ` reaches 0) while the connection is still open. This
//! catches a receiver that died since the last message — its socket is gone,
//! so the bytes are never acknowledged — instead of trusting the local write.
//! It cannot catch a receiver that accepted the bytes into its socket buffer
//! and was then killed before reading them; use the webhook sink when every
//! entry must be confirmed by the receiving application.

use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::{DeliverFuture, Sink, SinkError};

/// The SD-ID of our structured-data element.
pub const SD_ID: &str = "secondkey@32473";

/// RFC 5424 severity 5: normal but significant.
const SEVERITY_NOTICE: u8 = 5;

/// A syslog facility (0–23). Parsed from the usual names or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

impl Facility {
    /// `auth` (4): security/authorization messages.
    pub const AUTH: Facility = Facility(4);
    /// `authpriv` (10): security/authorization messages, private; the default.
    pub const AUTHPRIV: Facility = Facility(10);

    /// A facility from its numeric code, if it is in 0..=23.
    pub fn from_code(code: u8) -> Option<Facility> {
        (code <= 23).then_some(Facility(code))
    }

    /// Its numeric code.
    pub fn code(self) -> u8 {
        self.0
    }
}

impl Default for Facility {
    fn default() -> Self {
        Facility::AUTHPRIV
    }
}

impl std::str::FromStr for Facility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const NAMES: [&str; 16] = [
            "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
            "authpriv", "ftp", "ntp", "audit", "alert", "clock",
        ];
        let lower = s.trim().to_ascii_lowercase();
        if let Ok(code) = lower.parse::<u8>() {
            return Facility::from_code(code)
                .ok_or_else(|| format!("facility {code} is out of range; use 0..=23"));
        }
        if let Some(pos) = NAMES.iter().position(|n| *n == lower) {
            return Ok(Facility(pos as u8));
        }
        if let Some(n) = lower.strip_prefix("local") {
            if let Ok(n @ 0..=7) = n.parse::<u8>() {
                return Ok(Facility(16 + n));
            }
        }
        Err(format!(
            "unknown syslog facility {s:?}; use a name such as auth, authpriv, audit, local0..local7, or a number 0..=23"
        ))
    }
}

/// Builds RFC 5424 messages from log entries. Pure: no IO, no clock.
#[derive(Debug, Clone)]
pub struct SyslogFormatter {
    facility: Facility,
    hostname: String,
    app_name: String,
    procid: String,
}

/// Keeps the characters RFC 5424 allows in header fields (PRINTUSASCII,
/// 33..=126), truncated to `max`; `-` (NILVALUE) when nothing is left.
fn header_field(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| ('!'..='~').contains(c))
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "-".to_string()
    } else {
        cleaned
    }
}

/// A PARAM-NAME: PRINTUSASCII except `=`, space, `]` and `"`, at most 32.
fn sd_name(text: &str) -> Option<String> {
    let cleaned: String = text
        .chars()
        .filter(|c| ('!'..='~').contains(c) && !matches!(c, '=' | ']' | '"'))
        .take(32)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Escapes a PARAM-VALUE per RFC 5424 §6.3.3: `"`, `\` and `]` get a backslash.
pub fn escape_sd_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The entry time as an RFC 5424 TIMESTAMP (UTC, at most 6 fraction digits).
fn timestamp(text: Option<&str>) -> String {
    let Some(parsed) = text.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) else {
        return "-".to_string();
    };
    let utc = parsed.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.microsecond()
    )
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl SyslogFormatter {
    /// A formatter for `facility`; `hostname` defaults to this machine's name.
    pub fn new(facility: Facility, hostname: Option<&str>) -> Self {
        let host = hostname.map(str::to_string).unwrap_or_else(local_hostname);
        SyslogFormatter {
            facility,
            hostname: header_field(&host, 255),
            app_name: "secondkey".to_string(),
            procid: std::process::id().to_string(),
        }
    }

    /// Replaces the PROCID (tests and reproducible output).
    pub fn with_procid(mut self, procid: &str) -> Self {
        self.procid = header_field(procid, 128);
        self
    }

    /// One RFC 5424 message for the entry at `index` (`entry` = canonical JSON).
    ///
    /// Fields are read tolerantly: an entry that is not JSON still ships, with
    /// NILVALUE timestamp and MSGID and only the index in the structured data.
    pub fn format(&self, index: u64, entry: &[u8]) -> Vec<u8> {
        let parsed: Option<Value> = serde_json::from_slice(entry).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name));
        let pri = u16::from(self.facility.0) * 8 + u16::from(SEVERITY_NOTICE);
        let ts = timestamp(field("time").and_then(Value::as_str));
        let msgid = header_field(field("event").and_then(Value::as_str).unwrap_or(""), 32);

        let mut sd = format!("[{SD_ID} index=\"{index}\"");
        let mut param = |name: &str, value: &str| {
            if let Some(n) = sd_name(name) {
                sd.push_str(&format!(" {n}=\"{}\"", escape_sd_value(value)));
            }
        };
        if let Some(actor) = field("actor").and_then(Value::as_str) {
            param("actor", actor);
        }
        if let Some(digest) = field("digest").and_then(Value::as_str) {
            param("digest", digest);
        }
        if let Some(Value::Object(subjects)) = field("subjects") {
            for (k, v) in subjects {
                if matches!(k.as_str(), "index" | "actor" | "digest") {
                    continue;
                }
                match v {
                    Value::String(s) => param(k, s),
                    other => param(k, &other.to_string()),
                }
            }
        }
        sd.push(']');

        let mut out = format!(
            "<{pri}>1 {ts} {host} {app} {procid} {msgid} {sd} ",
            host = self.hostname,
            app = self.app_name,
            procid = self.procid,
        )
        .into_bytes();
        out.extend_from_slice(entry);
        out
    }
}

/// RFC 6587 §3.4.1 octet-counting frame: `MSG-LEN SP SYSLOG-MSG`.
///
/// Octet counting (not newline framing) because the message may legally
/// contain any byte; the receiver reads exactly MSG-LEN octets.
pub fn frame_octet_counted(message: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message);
    out
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

struct Conn {
    stream: Box<dyn Stream>,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

/// TLS settings for [`SyslogSink`].
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot load CA certificates from {path}: {reason}; point ca_file at a PEM file with the receiver's CA")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The server name is not a valid DNS name or IP address.
    #[error(
        "invalid TLS server name {0:?}; set server_name to the name in the receiver's certificate"
    )]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Rustls(String),
}

/// The Debian/Ubuntu system CA bundle, used when no CA file is configured.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds a rustls client config trusting the CAs in a PEM file.
///
/// Shared by the syslog and webhook sinks so both validate receivers alike.
pub fn client_config_from_ca_file(path: &Path) -> Result<rustls::ClientConfig, TlsSetupError> {
    let ca_err = |reason: String| TlsSetupError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| ca_err(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("bad certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no PEM certificate found".to_string()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

impl TlsSettings {
    /// TLS trusting the CAs in `ca_file` (or the system bundle), checking the
    /// receiver's certificate against `server_name`.
    pub fn new(ca_file: Option<&Path>, server_name: &str) -> Result<Self, TlsSetupError> {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let config = client_config_from_ca_file(path)?;
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsSetupError::ServerName(server_name.to_string()))?;
        Ok(TlsSettings {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// Ships entries to a syslog receiver over TCP or TLS, one persistent
/// connection, reconnecting after any failure.
pub struct SyslogSink {
    address: String,
    tls: Option<TlsSettings>,
    formatter: SyslogFormatter,
    timeout: Duration,
    conn: Option<Conn>,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SyslogSink {
    /// A sink for `address` (`host:port`). `timeout` bounds connecting, the
    /// TLS handshake, writing, and waiting for the TCP acknowledgement.
    pub fn new(
        address: &str,
        tls: Option<TlsSettings>,
        formatter: SyslogFormatter,
        timeout: Duration,
    ) -> Self {
        SyslogSink {
            address: address.to_string(),
            tls,
            formatter,
            timeout,
            conn: None,
        }
    }

    fn timeout_err(&self, during: &'static str) -> SinkError {
        SinkError::Timeout {
            address: self.address.clone(),
            during,
            after: self.timeout,
        }
    }

    fn io_err(&self, during: &'static str, source: io::Error) -> SinkError {
        SinkError::Io {
            address: self.address.clone(),
            during,
            source,
        }
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| self.timeout_err("connect"))?
            .map_err(|source| SinkError::Connect {
                address: self.address.clone(),
                source,
            })?;
        // Latency over throughput: one small audit message must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        #[cfg(target_os = "linux")]
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let handshake = connector.connect(tls.server_name.clone(), tcp);
                let stream = tokio::time::timeout(self.timeout, handshake)
                    .await
                    .map_err(|_| self.timeout_err("TLS handshake"))?
                    .map_err(|source| SinkError::Tls {
                        address: self.address.clone(),
                        source,
                    })?;
                Box::new(stream)
            }
        };
        Ok(Conn {
            stream,
            #[cfg(target_os = "linux")]
            fd,
        })
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), SinkError> {
        let existing = match self.conn.take() {
            Some(mut c) => alive(&mut c).await.then_some(c),
            None => None,
        };
        let mut conn = match existing {
            Some(c) => c,
            None => self.connect().await?,
        };
        let write = async {
            conn.stream.write_all(frame).await?;
            conn.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Err(_) => return Err(self.timeout_err("write")),
            Ok(Err(e)) => return Err(self.io_err("write", e)),
            Ok(Ok(())) => {}
        }
        #[cfg(target_os = "linux")]
        {
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                match unsent_bytes(conn.fd) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(self.io_err("waiting for TCP acknowledgement", e)),
                }
                if !alive(&mut conn).await {
                    return Err(self.io_err(
                        "waiting for TCP acknowledgement",
                        io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "receiver closed the connection before acknowledging",
                        ),
                    ));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(self.timeout_err("waiting for TCP acknowledgement"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.conn = Some(conn);
        Ok(())
    }
}

/// Bytes written but not yet acknowledged by the peer's TCP stack.
#[cfg(target_os = "linux")]
fn unsent_bytes(fd: std::os::fd::RawFd) -> io::Result<i32> {
    let mut pending: libc::c_int = 0;
    // SAFETY: `fd` is the open socket owned by the live connection we hold,
    // and TIOCOUTQ (= SIOCOUTQ) writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut pending as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pending)
}

/// Whether the connection is still open: polls a read once without waiting.
/// Syslog receivers never send application data; whatever arrives (TLS
/// session tickets, stray bytes) is consumed and ignored.
async fn alive(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let polled = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut conn.stream).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(rb.filled().len()))),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            }
        })
        .await;
        match polled {
            None => return true,
            Some(Ok(0)) | Some(Err(_)) => return false,
            Some(Ok(_)) => continue,
        }
    }
}

impl Sink for SyslogSink {
    fn kind(&self) -> &'static str {
        "syslog"
    }

    fn deliver<'a>(&'a mut self, index: u64, entry: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let frame = frame_octet_counted(&self.formatter.format(index, entry));
            let result = self.send(&frame).await;
            if result.is_err() {
                self.conn = None;
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn fmt() -> SyslogFormatter {
        SyslogFormatter::new(Facility::AUTHPRIV, Some("gw-1")).with_procid("42")
    }

    #[test]
    fn formats_an_rfc5424_message() {
        let entry = br#"{"actor":"user:bob","digest":"ab","event":"request.approved","index":3,"subjects":{"grant":"g1","request":"r1"},"time":"2025-03-01T12:00:00.1234567+01:00"}"#;
        let msg = String::from_utf8(fmt().format(3, entry)).unwrap();
        assert_eq!(
            msg,
            format!(
                "<85>1 2025-03-01T11:00:00.123456Z gw-1 secondkey 42 request.approved \
                 [secondkey@32473 index=\"3\" actor=\"user:bob\" digest=\"ab\" grant=\"g1\" request=\"r1\"] {}",
                std::str::from_utf8(entry).unwrap()
            )
        );
    }

    #[test]
    fn escapes_sd_values_and_sanitizes_names_and_msgid() {
        let entry = serde_json::json!({
            "event": "weird event]\"with spaces and a very long tail that goes on",
            "subjects": {"re=q ue\"st]": "a\"b\\c]d", "": "dropped"},
            "time": "not a time"
        })
        .to_string();
        let msg = String::from_utf8(fmt().format(9, entry.as_bytes())).unwrap();
        assert!(msg.starts_with("<85>1 - gw-1 secondkey 42 weirdevent]\"withspacesandaverylo [secondkey@32473 index=\"9\" request=\"a\\\"b\\\\c\\]d\"] "), "{msg}");
        assert!(msg.ends_with(&entry));
    }

    #[test]
    fn non_json_entries_still_ship() {
        let msg = fmt().format(1, b"\xffnot json");
        assert!(msg.starts_with(b"<85>1 - gw-1 secondkey 42 - [secondkey@32473 index=\"1\"] "));
        assert!(msg.ends_with(b"\xffnot json"));
    }

    #[test]
    fn facilities_parse() {
        assert_eq!("auth".parse::<Facility>().unwrap().code(), 4);
        assert_eq!("AuthPriv".parse::<Facility>().unwrap().code(), 10);
        assert_eq!("local7".parse::<Facility>().unwrap().code(), 23);
        assert_eq!("13".parse::<Facility>().unwrap().code(), 13);
        assert!("24".parse::<Facility>().is_err());
        assert!("local8".parse::<Facility>().is_err());
        assert!("nope".parse::<Facility>().is_err());
    }

    #[test]
    fn octet_frame_counts_bytes_not_chars() {
        assert_eq!(frame_octet_counted("é".as_bytes()), b"2 \xc3\xa9".to_vec());
        assert_eq!(frame_octet_counted(b""), b"0 ".to_vec());
    }

    /// Splits a stream of octet-counted frames (the receiver side).
    fn deframe(mut data: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let sp = data.iter().position(|b| *b == b' ')?;
            let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
            let rest = &data[sp + 1..];
            if rest.len() < len {
                return None;
            }
            out.push(rest[..len].to_vec());
            data = &rest[len..];
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn frames_roundtrip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8)) {
            let stream: Vec<u8> = msgs.iter().flat_map(|m| frame_octet_counted(m)).collect();
            prop_assert_eq!(deframe(&stream), Some(msgs));
        }

        #[test]
        fn escaped_values_never_end_the_param_early(value in "\\PC*") {
            let escaped = escape_sd_value(&value);
            // Unescape and compare; every `"`, `]` must be preceded by `\`.
            let mut unescaped = String::new();
            let mut chars = escaped.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => unescaped.push(chars.next().unwrap()),
                    '"' | ']' => prop_assert!(false, "unescaped {c} in {escaped}"),
                    other => unescaped.push(other),
                }
            }
            prop_assert_eq!(unescaped, value);
        }
    }

    fn sink(addr: &str, timeout_ms: u64) -> SyslogSink {
        SyslogSink::new(addr, None, fmt(), Duration::from_millis(timeout_ms))
    }

    #[tokio::test]
    async fn delivers_frames_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            buf
        });
        let mut sink = sink(&addr, 5000);
        sink.deliver(0, br#"{"event":"a"}"#).await.unwrap();
        sink.deliver(1, br#"{"event":"b"}"#).await.unwrap();
        drop(sink);
        let frames = deframe(&reader.await.unwrap()).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(frames[1].ends_with(br#"{"event":"b"}"#));
    }

    #[tokio::test]
    async fn a_receiver_that_never_reads_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let holder = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            // Hold the socket open and never read.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(s);
        });
        let mut sink = sink(&addr, 300);
        let big = vec![b'x'; 64 << 20];
        let err = sink.deliver(0, &big).await.unwrap_err();
        assert!(matches!(err, SinkError::Timeout { .. }), "{err}");
        holder.abort();
    }

    #[tokio::test]
    async fn a_receiver_that_closes_mid_frame_is_a_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 16];
            s.read_exact(&mut buf).await.unwrap();
            drop(s); // close with most of the frame unread
        });
        let mut sink = sink(&addr, 5000);
        let big = vec![b'y'; 8 << 20];
        let err = sink.deliver(0, &big).await.unwrap_err();
        assert!(!matches!(err, SinkError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_dead_receiver_is_detected_before_the_next_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
            drop(listener); // nobody listens any more
        });
        let mut sink = sink(&addr, 5000);
        sink.deliver(0, b"{}").await.unwrap();
        accepted.await.unwrap();
        // The old connection is closed and the port refuses: this must fail,
        // not be counted as delivered into a dead socket.
        assert!(sink.deliver(1, b"{}").await.is_err());
    }
}
