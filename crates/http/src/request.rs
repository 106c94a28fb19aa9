//! Reading a client's request the one way it can be read: the target's
//! path and query, the headers that matter, the body. Everything here is
//! pure (no IO), so the bypass corpus is a table test.
//!
//! The rule: what the gateway decides on is a canonical form, and that
//! canonical form is what it forwards. Whatever an upstream might read in
//! more than one way is refused rather than guessed:
//! * path segments are percent-decoded strictly; `.`/`..` (plain or
//!   encoded), empty interior segments (`//`), encoded `/` or `\`, `;`
//!   parameters, control characters and segments ending in a dot are
//!   refused; the rest is re-encoded one way;
//! * query pairs are decoded (`+` is a space) and re-encoded one way; a key
//!   given twice (or in two letter cases) is refused unless the upstream
//!   reads it as a list (`query_lists`); a raw `;` and `_method` are refused;
//! * method-override headers, identity-changing headers (`Impersonate-*`),
//!   an `h2c` upgrade, absolute-form targets, two `Host` headers and encoded
//!   (compressed) bodies are refused.

use std::collections::BTreeSet;

use http::{HeaderMap, Method};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Why a request was refused before anything was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Stable, machine-readable (`dot_segment`, `ambiguous_query`, …).
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        code,
        message: message.into(),
    }
}

/// Request headers the gateway never forwards from a client (it sets its
/// own, or they are about the client's connection, or they carry the
/// client's credentials).
pub fn never_forwarded(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "forwarded"
            | "via"
            | "http2-settings"
            | "proxy-connection"
            // A compressed tunnel (permessage-deflate) would hide the
            // credential from the mask on the way back.
            | "sec-websocket-extensions"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("impersonate-")
        || name.starts_with("proxy-")
}

/// Headers that ask some frameworks to treat the request as another method.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Decoded path segments (no empty ones but a trailing slash's).
    pub segments: Vec<String>,
    /// The canonical path, encoded, starting with `/` (what is forwarded
    /// after the upstream's base path, and what the resource names).
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// The canonical query string (empty when there is none).
    pub query_string: String,
}

/// Bytes kept literally in a canonical path segment: RFC 3986 unreserved
/// characters and the sub-delimiters every server reads literally.
fn path_keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Bytes kept literally in a canonical query key or value.
fn query_keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b','
                | b':'
                | b'@'
                | b'/'
                | b'?'
        )
}

fn encode(s: &str, keep: fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Strict percent-decoding: every `%` starts two hex digits, and the result
/// is UTF-8. `plus_is_space` for query components.
fn decode(s: &str, plus_is_space: bool) -> Result<String, Refusal> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        refuse(
                            "bad_percent_encoding",
                            "a '%' in the target is not followed by two hex digits",
                        )
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        refuse(
            "bad_percent_encoding",
            "the target decodes to bytes that are not UTF-8",
        )
    })
}

/// Parses the path (still encoded, as sent) and query of a request.
/// `query_lists`: keys the upstream reads as lists, which may repeat.
pub fn parse_target(
    raw_path: &str,
    raw_query: Option<&str>,
    query_lists: &BTreeSet<String>,
) -> Result<Target, Refusal> {
    if raw_path.len() > 8192 {
        return Err(refuse(
            "target_too_long",
            "the path is longer than 8192 bytes",
        ));
    }
    let rest = match raw_path.strip_prefix('/') {
        Some(r) => r,
        None if raw_path.is_empty() => "",
        None => return Err(refuse("bad_target", "the path must start with '/'")),
    };
    if rest.contains(';') {
        return Err(refuse(
            "path_parameter",
            "';' parameters in a path are read differently by different servers (some strip them, some do not); encode ';' as %3B if it is part of a name",
        ));
    }
    if rest.contains('\\') {
        return Err(refuse(
            "backslash",
            "a '\\' in the path is read as '/' by some servers",
        ));
    }
    let mut segments = Vec::new();
    let raw_segments: Vec<&str> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('/').collect()
    };
    let n = raw_segments.len();
    for (i, raw) in raw_segments.iter().enumerate() {
        let seg = decode(raw, false)?;
        if seg.is_empty() {
            if i + 1 == n {
                // One trailing slash: a distinct path every server keeps.
                segments.push(seg);
                continue;
            }
            return Err(refuse(
                "empty_segment",
                "the path has an empty segment ('//'); some servers merge slashes and some do not",
            ));
        }
        if seg == "." || seg == ".." {
            return Err(refuse(
                "dot_segment",
                "the path has a '.' or '..' segment (plain or percent-encoded); send the path it resolves to",
            ));
        }
        if seg.contains('/') || seg.contains('\\') {
            return Err(refuse(
                "encoded_slash",
                "a segment holds an encoded '/' or '\\' (%2F, %5C); servers disagree on whether it splits the path",
            ));
        }
        if seg.chars().any(|c| c.is_control()) {
            return Err(refuse(
                "control_character",
                "the path holds a control character",
            ));
        }
        if seg.ends_with('.') || seg.ends_with(' ') {
            return Err(refuse(
                "trailing_dot",
                "a path segment ends in '.' or a space, which some servers strip",
            ));
        }
        segments.push(seg);
    }
    let path = format!(
        "/{}",
        segments
            .iter()
            .map(|s| encode(s, path_keeps))
            .collect::<Vec<_>>()
            .join("/")
    );
    let mut query = Vec::new();
    if let Some(q) = raw_query {
        if q.contains(';') {
            return Err(refuse(
                "query_semicolon",
                "a raw ';' in the query is a separator to some servers and not to others; encode it as %3B",
            ));
        }
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k, true)?, decode(v, true)?);
            if k.is_empty() {
                return Err(refuse("ambiguous_query", "a query pair has no key"));
            }
            if k.chars().chain(v.chars()).any(|c| c.is_control()) {
                return Err(refuse(
                    "control_character",
                    "the query holds a control character",
                ));
            }
            if k.eq_ignore_ascii_case("_method") {
                return Err(refuse(
                    "method_override",
                    "`_method` in the query asks some frameworks to change the method; send the method itself",
                ));
            }
            let folded = k.to_ascii_lowercase();
            if !seen.insert(folded) && !query_lists.contains(&k) {
                return Err(refuse(
                    "ambiguous_query",
                    format!(
                        "the query key {k:?} is given more than once (or in two letter cases); servers disagree on which one counts"
                    ),
                ));
            }
            query.push((k, v));
        }
    }
    let query_string = query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k, query_keeps), encode(v, query_keeps)))
        .collect::<Vec<_>>()
        .join("&");
    Ok(Target {
        segments,
        path,
        query,
        query_string,
    })
}

/// The query as the action shows it: each key once, a string value, or a
/// list for the keys read as lists.
pub fn query_value(t: &Target, lists: &BTreeSet<String>) -> Value {
    let mut m = Map::new();
    for (k, v) in &t.query {
        if lists.contains(k) {
            match m.entry(k.clone()).or_insert_with(|| Value::Array(vec![])) {
                Value::Array(a) => a.push(json!(v)),
                other => *other = json!([v]),
            }
        } else {
            m.insert(k.clone(), json!(v));
        }
    }
    Value::Object(m)
}

/// The methods the gateway relays, as a `405`'s `Allow` lists them.
pub const RELAYED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The methods the gateway relays.
pub fn check_method(m: &Method) -> Result<(), Refusal> {
    match *m {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => Ok(()),
        _ => Err(Refusal {
            status: 405,
            code: "method_not_supported",
            message: format!("secondkey relays {RELAYED_METHODS}, not {m}"),
        }),
    }
}

/// What the headers say, once checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderFacts {
    /// The recorded headers (lowercase name → value; repeated ones joined
    /// with ", " as RFC 9110 lists are).
    pub recorded: Vec<(String, String)>,
    /// `websocket` or `spdy/3.1` when the client asks to upgrade.
    pub upgrade: Option<String>,
    /// The body's media type (lowercase, without parameters).
    pub media_type: Option<String>,
}

/// Checks the headers of a request; `recorded` are the headers recorded in
/// the action (and forwarded).
pub fn check_headers(h: &HeaderMap, recorded: &BTreeSet<String>) -> Result<HeaderFacts, Refusal> {
    for name in METHOD_OVERRIDES {
        if h.contains_key(name) {
            return Err(refuse(
                "method_override",
                format!("the {name} header asks some frameworks to change the method; send the method itself"),
            ));
        }
    }
    if h.keys().any(|k| k.as_str().starts_with("impersonate-")) {
        return Err(refuse(
            "impersonation",
            "Impersonate-* headers would act as someone else with the gateway's credentials",
        ));
    }
    if h.get_all(http::header::HOST).iter().count() > 1 {
        return Err(refuse(
            "ambiguous_host",
            "the request has more than one Host header",
        ));
    }
    if h.contains_key("http2-settings") {
        return Err(refuse("upgrade_refused", "an h2c upgrade is not relayed"));
    }
    let mut facts = HeaderFacts::default();
    let upgrades: Vec<&http::HeaderValue> = h.get_all(http::header::UPGRADE).iter().collect();
    if !upgrades.is_empty() {
        let v = upgrades
            .iter()
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",");
        let connection_upgrade = h
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        match v.as_str() {
            "websocket" | "spdy/3.1" if connection_upgrade => facts.upgrade = Some(v),
            "websocket" | "spdy/3.1" => {
                return Err(refuse(
                    "bad_upgrade",
                    "an Upgrade header without `Connection: upgrade`",
                ))
            }
            _ => {
                return Err(refuse(
                    "upgrade_refused",
                    format!("an upgrade to {v:?} is not relayed (only websocket and SPDY/3.1)"),
                ))
            }
        }
    }
    if let Some(ce) = h.get(http::header::CONTENT_ENCODING) {
        if !ce.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(Refusal {
                status: 415,
                code: "encoded_body",
                message: "a compressed request body (Content-Encoding) cannot be inspected; send it uncompressed".into(),
            });
        }
    }
    let cts: Vec<&http::HeaderValue> = h.get_all(http::header::CONTENT_TYPE).iter().collect();
    if cts.len() > 1 {
        return Err(refuse(
            "ambiguous_content_type",
            "the request has more than one Content-Type",
        ));
    }
    if let Some(ct) = cts.first() {
        let s = ct
            .to_str()
            .map_err(|_| refuse("bad_header", "the Content-Type is not text"))?;
        let mut parts = s.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            if k.trim().eq_ignore_ascii_case("charset")
                && !v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
                && is_json(&essence)
            {
                return Err(refuse("bad_charset", "JSON bodies must be UTF-8"));
            }
        }
        facts.media_type = Some(essence);
    }
    for name in recorded {
        let values: Vec<&http::HeaderValue> = h.get_all(name.as_str()).iter().collect();
        if values.is_empty() {
            continue;
        }
        let mut texts = Vec::new();
        for v in values {
            texts.push(
                v.to_str()
                    .map_err(|_| refuse("bad_header", format!("the {name} header is not text")))?
                    .trim()
                    .to_string(),
            );
        }
        facts.recorded.push((name.clone(), texts.join(", ")));
    }
    Ok(facts)
}

/// Whether a media type is JSON (`application/json`, `…+json`).
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Longest JSON body (serialized) shown to policy inside the action; larger
/// ones are bound by digest only.
pub const MAX_INLINE_JSON: usize = 32 * 1024;

/// The body as the action shows it: its size, SHA-256 and media type, and
/// for a JSON body the parsed value (strictly parsed: a repeated key, a
/// comment, a byte-order mark or trailing bytes are refused).
pub fn body_value(body: &[u8], media_type: Option<&str>) -> Result<Option<Value>, Refusal> {
    if body.is_empty() {
        return Ok(None);
    }
    let mut m = Map::new();
    m.insert("bytes".into(), json!(body.len()));
    m.insert("sha256".into(), json!(hex::encode(Sha256::digest(body))));
    if let Some(mt) = media_type {
        m.insert("media_type".into(), json!(mt));
    }
    match media_type {
        Some(mt) if is_json(mt) => {
            let v = secondkey_core::action::parse_strict(body).map_err(|why| {
                // The answer adds that nothing was forwarded.
                refuse(
                    "invalid_json",
                    format!(
                        "the JSON body is not one strict JSON value ({why}): a repeated key, a comment, a byte-order mark or trailing bytes are refused, since two readers could see two bodies"
                    ),
                )
            })?;
            if body.len() <= MAX_INLINE_JSON {
                m.insert("json".into(), v);
            } else {
                m.insert("json_omitted".into(), json!("too_large"));
            }
        }
        Some("application/x-www-form-urlencoded")
            if form_urlencoded::parse(body).any(|(k, _)| k.eq_ignore_ascii_case("_method")) =>
        {
            return Err(refuse(
                "method_override",
                "`_method` in a form body asks some frameworks to change the method; send the method itself",
            ));
        }
        Some("multipart/form-data") if multipart_names_method(body) => {
            return Err(refuse(
                "method_override",
                "`_method` in a form body asks some frameworks to change the method; send the method itself",
            ));
        }
        _ => {}
    }
    Ok(Some(Value::Object(m)))
}

/// Whether any line of a multipart body is a part header naming the field
/// `_method` (`Content-Disposition: form-data; name="_method"`, also as
/// `name*=`), as Rack and Rails read it. Lines are not tied to the
/// boundary: a file holding such a line is refused too, the ambiguous
/// case counting against the request.
fn multipart_names_method(body: &[u8]) -> bool {
    body.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        let Some((name, rest)) = line.split_once(':') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("content-disposition")
            && rest.split(';').skip(1).any(|param| {
                let Some((k, v)) = param.split_once('=') else {
                    return false;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => v.eq_ignore_ascii_case("_method"),
                    // RFC 2231: charset'language'value.
                    "name*" => v
                        .rsplit('\'')
                        .next()
                        .is_some_and(|v| v.eq_ignore_ascii_case("_method")),
                    _ => false,
                }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lists() -> BTreeSet<String> {
        ["command".to_string()].into()
    }

    fn t(path: &str, q: Option<&str>) -> Result<Target, Refusal> {
        parse_target(path, q, &lists())
    }

    /// The path and query tricks of the bypass corpus, each with what the
    /// gateway makes of it: the canonical form it decides on and forwards,
    /// or the refusal code.
    #[test]
    fn path_and_query_tricks_are_canonical_or_refused() {
        for (path, query, want) in [
            ("/repos/a/b", None, Ok("/repos/a/b")),
            ("/", None, Ok("/")),
            ("", None, Ok("/")),
            ("/repos/a/b/", None, Ok("/repos/a/b/")),
            // Percent-encoded unreserved characters mean the characters.
            ("/rep%6Fs/a/b", None, Ok("/repos/a/b")),
            ("/repos/%61/b", None, Ok("/repos/a/b")),
            // Case is kept: the upstream's paths are case-sensitive.
            ("/REPOS/a/b", None, Ok("/REPOS/a/b")),
            ("/files/a%20b", None, Ok("/files/a%20b")),
            ("/files/a+b", None, Ok("/files/a%2Bb")),
            ("/users/system:admin", None, Ok("/users/system:admin")),
            ("/files/%3B", None, Ok("/files/%3B")),
            ("/repos/../admin", None, Err("dot_segment")),
            ("/repos/./a", None, Err("dot_segment")),
            ("/repos/%2e%2e/admin", None, Err("dot_segment")),
            ("/repos/.%2E/admin", None, Err("dot_segment")),
            ("/repos//a", None, Err("empty_segment")),
            ("//repos/a", None, Err("empty_segment")),
            ("/repos/a;x=1/b", None, Err("path_parameter")),
            ("/repos/..;/admin", None, Err("path_parameter")),
            ("/repos/a%2Fb", None, Err("encoded_slash")),
            ("/repos/a%2fb", None, Err("encoded_slash")),
            ("/repos/a%5Cb", None, Err("encoded_slash")),
            ("/repos/a\\b", None, Err("backslash")),
            ("/repos/a.", None, Err("trailing_dot")),
            ("/repos./a", None, Err("trailing_dot")),
            ("/repos/a%2E", None, Err("trailing_dot")),
            ("/repos/a%00", None, Err("control_character")),
            ("/repos/%zz", None, Err("bad_percent_encoding")),
            ("/repos/%c3", None, Err("bad_percent_encoding")),
            ("repos", None, Err("bad_target")),
            ("/x", Some("a=1&a=2"), Err("ambiguous_query")),
            ("/x", Some("a=1&A=2"), Err("ambiguous_query")),
            ("/x", Some("a=1;b=2"), Err("query_semicolon")),
            ("/x", Some("_method=DELETE"), Err("method_override")),
            ("/x", Some("=1"), Err("ambiguous_query")),
            ("/x", Some("a=%zz"), Err("bad_percent_encoding")),
        ] {
            let got = t(path, query).map(|t| t.path).map_err(|r| r.code);
            assert_eq!(got.as_deref().map_err(|e| *e), want, "{path} {query:?}");
        }
    }

    #[test]
    fn the_query_is_decoded_and_reencoded_one_way() {
        let q = t(
            "/x",
            Some("b=a+b&c=%41%2b&command=ls&command=-l&flag&&d=x%26y"),
        )
        .unwrap();
        assert_eq!(
            q.query_string,
            "b=a%20b&c=A%2B&command=ls&command=-l&flag=&d=x%26y"
        );
        assert_eq!(
            query_value(&q, &lists()),
            json!({"b": "a b", "c": "A+", "command": ["ls", "-l"], "flag": "", "d": "x&y"})
        );
        // Two spellings of one query are one canonical form.
        let other = t(
            "/x",
            Some("b=a%20b&c=A%2B&command=ls&command=-l&flag=&d=x%26y"),
        )
        .unwrap();
        assert_eq!(q, other);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_tricks_are_refused() {
        let rec: BTreeSet<String> = ["content-type".to_string(), "accept".to_string()].into();
        for (pairs, want) in [
            (
                vec![("X-HTTP-Method-Override", "DELETE")],
                "method_override",
            ),
            (vec![("X-HTTP-Method", "DELETE")], "method_override"),
            (vec![("X-Method-Override", "PUT")], "method_override"),
            (vec![("Impersonate-User", "admin")], "impersonation"),
            (
                vec![("Impersonate-Group", "system:masters")],
                "impersonation",
            ),
            (vec![("Host", "a"), ("Host", "b")], "ambiguous_host"),
            (
                vec![
                    ("Upgrade", "h2c"),
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
                "upgrade_refused",
            ),
            (
                vec![("Upgrade", "h2c"), ("Connection", "Upgrade")],
                "upgrade_refused",
            ),
            (vec![("Upgrade", "websocket")], "bad_upgrade"),
            (vec![("Content-Encoding", "gzip")], "encoded_body"),
            (
                vec![
                    ("Content-Type", "application/json"),
                    ("Content-Type", "text/plain"),
                ],
                "ambiguous_content_type",
            ),
            (
                vec![("Content-Type", "application/json; charset=utf-16")],
                "bad_charset",
            ),
        ] {
            let got = check_headers(&headers(&pairs), &rec).map_err(|r| r.code);
            assert_eq!(got.err(), Some(want), "{pairs:?}");
        }
        let ok = check_headers(
            &headers(&[
                ("Content-Type", "Application/JSON; charset=UTF-8"),
                ("Accept", "a"),
                ("Accept", "b"),
                ("Upgrade", "websocket"),
                ("Connection", "keep-alive, Upgrade"),
            ]),
            &rec,
        )
        .unwrap();
        assert_eq!(ok.media_type.as_deref(), Some("application/json"));
        assert_eq!(ok.upgrade.as_deref(), Some("websocket"));
        assert!(ok
            .recorded
            .contains(&("accept".to_string(), "a, b".to_string())));
    }

    #[test]
    fn json_bodies_are_parsed_strictly_and_others_bound_by_digest() {
        let v = body_value(br#"{"a":1}"#, Some("application/merge-patch+json"))
            .unwrap()
            .unwrap();
        assert_eq!(v["json"], json!({"a": 1}));
        assert_eq!(v["bytes"], 7);
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            b"\xef\xbb\xbf{\"a\":1}",
            b"{\"a\":1} // c",
            b"/* c */ {}",
            b"{\"a\":1} x",
            b"{\"a\":",
        ] {
            let e = body_value(bad, Some("application/json")).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{:?}", String::from_utf8_lossy(bad));
        }
        let v = body_value(b"\x00\x01", Some("application/octet-stream"))
            .unwrap()
            .unwrap();
        assert!(v.get("json").is_none());
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
        let e = body_value(
            b"a=1&_method=DELETE",
            Some("application/x-www-form-urlencoded"),
        )
        .unwrap_err();
        assert_eq!(e.code, "method_override");
        // The same field in a multipart form (as curl -F sends it), in any
        // spelling Rack would read; other fields, and a file field whose
        // name only ends like it, pass.
        for part in [
            "Content-Disposition: form-data; name=\"_method\"",
            "content-disposition: form-data; NAME=_method",
            "Content-Disposition: form-data; name*=utf-8''_method",
        ] {
            let body = format!("--xyz\r\n{part}\r\n\r\nDELETE\r\n--xyz--\r\n");
            let e = body_value(body.as_bytes(), Some("multipart/form-data")).unwrap_err();
            assert_eq!(e.code, "method_override", "{part}");
        }
        let ok = "--xyz\r\nContent-Disposition: form-data; name=\"title\"; filename=\"_method\"\r\n\r\nx\r\n--xyz\r\nContent-Disposition: form-data; name=\"my_method\"\r\n\r\nDELETE\r\n--xyz--\r\n";
        assert!(body_value(ok.as_bytes(), Some("multipart/form-data")).is_ok());
        assert_eq!(body_value(b"", Some("application/json")).unwrap(), None);
        let big = format!("[{}1]", "1,".repeat(MAX_INLINE_JSON));
        let v = body_value(big.as_bytes(), Some("application/json"))
            .unwrap()
            .unwrap();
        assert_eq!(v["json_omitted"], "too_large");
    }

    proptest! {
        /// Whatever the client sends, the canonical form reads back as
        /// itself: forwarding it and reading it again decides the same.
        #[test]
        fn the_canonical_form_is_a_fixed_point(path in "(/[a-zA-Z0-9%;.+~:@ -]{0,6}){0,5}", query in proptest::option::of("[a-zA-Z0-9%=&+;._]{0,20}")) {
            if let Ok(once) = t(&path, query.as_deref()) {
                let q = (!once.query_string.is_empty()).then_some(once.query_string.as_str());
                let twice = t(&once.path, q).unwrap();
                prop_assert_eq!(&twice.path, &once.path);
                prop_assert_eq!(&twice.segments, &once.segments);
                prop_assert_eq!(&twice.query_string, &once.query_string);
            }
        }
    }
}
