//! RFC 8785 (JCS) canonical JSON, fast: shared by action digests (core)
//! and log entries (log).
//!
//! The log encodes every entry canonically when it is appended and again
//! when it is verified (to prove the stored bytes are the one canonical
//! form). Going through `serde_jcs` for that dominated both costs, so this
//! crate writes the canonical form directly. Integers up to 2^53 - 1 are
//! written as plain digits; every other number (non-integral, or an integer
//! beyond that) is written the ECMAScript way RFC 8785 §3.2.2.3 requires,
//! by `ryu-js` — the formatter `serde_jcs` itself uses, so both agree
//! byte for byte. A property test checks they do, floats included.

use serde_json::Value;

/// Largest integer magnitude RFC 8785 writes as plain digits (2^53 - 1):
/// beyond it the ECMAScript number form takes over, which only `serde_jcs`
/// produces.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The RFC 8785 canonical form of `v`.
pub fn to_vec(v: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(1024);
    match write_value(v, &mut out) {
        Some(()) => Ok(out),
        None => serde_jcs::to_vec(v),
    }
}

/// Appends the canonical form of `v` to `out`, or returns `None` (with
/// `out` in an unspecified state) if `v` holds a number JSON cannot carry
/// (never, for a `serde_json::Value` built without `arbitrary_precision`).
pub fn write_value(v: &Value, out: &mut Vec<u8>) -> Option<()> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let i = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Some(i as i128),
                (None, Some(u)) => Some(u as i128),
                _ => None,
            };
            match i {
                Some(i) if i.unsigned_abs() <= MAX_SAFE_INTEGER as u128 => write_int(i, out),
                // RFC 8785 §3.2.2.3: the number as an IEEE 754 double,
                // written as ECMAScript's Number.prototype.toString does.
                _ => {
                    let f = n.as_f64().filter(|f| f.is_finite())?;
                    out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes());
                }
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Members with their values, sorted once: no lookup by key
            // afterwards.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| cmp_utf16(a.0, b.0));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

/// RFC 8785 §3.2.3: member names sort by their UTF-16 code units.
pub fn cmp_utf16(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// Plain decimal digits of an integer within ±(2^53 - 1).
fn write_int(i: i128, out: &mut Vec<u8>) {
    if i < 0 {
        out.push(b'-');
    }
    let mut n = i.unsigned_abs() as u64;
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Eight bytes at a time: does any of them need escaping (a control
/// character, `"` or `\`)? Exact, never a false answer either way
/// (the "has a byte less than n" and "has a zero byte" bit tricks).
#[inline]
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q & HIGH;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b & HIGH;
    below_space | quote | backslash != 0
}

/// RFC 8785 §3.2.2.2: only `"`, `\` and control characters are escaped;
/// the short forms where JSON has them, `\u00xx` (lowercase) otherwise.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // `bytes[start..i]` is plain and not yet copied; plain runs are
    // skipped eight bytes at a time and copied whole.
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use super::tests_support::arb_json;

    proptest! {
        #[test]
        fn agrees_with_serde_jcs(v in arb_json()) {
            let mut fast = Vec::new();
            write_value(&v, &mut fast).unwrap();
            let reference = serde_jcs::to_vec(&v).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&reference));
        }

        #[test]
        fn agrees_with_serde_jcs_on_every_number(v in super::tests_support::arb_json_numbers()) {
            let mut fast = Vec::new();
            write_value(&v, &mut fast).unwrap();
            let reference = serde_jcs::to_vec(&v).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&reference));
        }
    }

    /// RFC 8785 Appendix B's sample numbers (IEEE 754 bit patterns and their
    /// canonical text), written without `serde_jcs`.
    #[test]
    fn rfc8785_appendix_b_numbers() {
        for (bits, text) in [
            (0x0000000000000000u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ] {
            let mut out = Vec::new();
            write_value(&Value::from(f64::from_bits(bits)), &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), text, "{bits:#018x}");
        }
    }

    /// The eight-bytes-at-a-time skip: every character that needs escaping
    /// (and some neighbours that do not), at every offset of strings
    /// around the word size, is written as `serde_jcs` writes it.
    #[test]
    fn escapes_found_at_every_offset() {
        let specials = [
            '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\0', '\u{1f}', ' ', '!', '#', '[', ']',
            '\u{7f}', 'é', '€', '😀',
        ];
        for len in 0..20 {
            for at in 0..len.max(1) {
                for &c in &specials {
                    let s: String = (0..len)
                        .map(|i| if i == at { c } else { 'a' })
                        .chain((len == 0).then_some(c))
                        .collect();
                    let mut fast = Vec::new();
                    write_str(&s, &mut fast);
                    let reference = serde_jcs::to_vec(&Value::from(s.clone())).unwrap();
                    assert_eq!(fast, reference, "{s:?}");
                }
            }
        }
        for n in [
            0i128,
            7,
            -7,
            10,
            100,
            -1_000_000,
            MAX_SAFE_INTEGER as i128,
            -(MAX_SAFE_INTEGER as i128),
        ] {
            let mut out = Vec::new();
            write_int(n, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn utf16_order_differs_from_utf8_order() {
        // U+FF61 sorts after U+1F600 in UTF-8 bytes but before it in UTF-16.
        let v = serde_json::json!({"\u{1F600}": 1, "\u{FF61}": 2});
        let mut out = Vec::new();
        write_value(&v, &mut out).unwrap();
        assert_eq!(out, serde_jcs::to_vec(&v).unwrap());
    }
}

/// What a single pass over some JSON bytes found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The bytes are the RFC 8785 form of the value they encode.
    Canonical,
    /// The bytes hold a non-integral number; only re-encoding can tell.
    Undecided,
    /// The bytes are not canonical (or not JSON).
    NotCanonical,
}

/// Checks in one pass, without building a value, that `bytes` are canonical
/// JSON: no whitespace, members sorted by UTF-16 code units with no
/// duplicates, minimal string escapes, integers written plainly. Used by
/// verification, where re-encoding every entry dominated the cost.
pub fn scan(bytes: &[u8]) -> Scan {
    if std::str::from_utf8(bytes).is_err() {
        return Scan::NotCanonical;
    }
    let mut p = Scanner {
        b: bytes,
        i: 0,
        undecided: false,
    };
    match p.value(0) {
        Some(()) if p.i == bytes.len() => {
            if p.undecided {
                Scan::Undecided
            } else {
                Scan::Canonical
            }
        }
        _ => Scan::NotCanonical,
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    undecided: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn lit(&mut self, s: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + s.len())? == s {
            self.i += s.len();
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > 128 {
            return None;
        }
        match self.peek()? {
            b'n' => self.lit(b"null"),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'"' => self.string().map(|_| ()),
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                let mut prev: Option<std::borrow::Cow<'_, str>> = None;
                loop {
                    let (start, end, escaped) = self.string()?;
                    let key = if escaped {
                        std::borrow::Cow::Owned(decode(&self.b[start..end])?)
                    } else {
                        std::borrow::Cow::Borrowed(std::str::from_utf8(&self.b[start..end]).ok()?)
                    };
                    if let Some(p) = &prev {
                        if cmp_utf16(p, &key) != std::cmp::Ordering::Less {
                            return None;
                        }
                    }
                    prev = Some(key);
                    if self.peek()? != b':' {
                        return None;
                    }
                    self.i += 1;
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            // A double: ECMAScript formatting decides; leave it to re-encoding.
            while matches!(
                self.peek(),
                Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            ) {
                self.i += 1;
            }
            self.undecided = true;
            return Some(());
        }
        let d = &self.b[digits..self.i];
        let neg = digits > start;
        // Canonical integers: no leading zeros, no "-0".
        if d.is_empty() || (d[0] == b'0' && (d.len() > 1 || neg)) {
            return None;
        }
        // Beyond 2^53 - 1 an integer is a double, which ECMAScript writes
        // as plain digits below 1e21 (9007199254740992 is canonical,
        // 9007199254740993 is not): leave it to re-encoding.
        if d.len() > 16 {
            self.undecided = true;
            return Some(());
        }
        let v: u64 = std::str::from_utf8(d).ok()?.parse().ok()?;
        if v > MAX_SAFE_INTEGER {
            self.undecided = true;
        }
        Some(())
    }

    /// A canonical string: returns the span of its contents (without the
    /// quotes) and whether it holds escapes. Allocates nothing.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some((start, end, escaped));
                }
                0x00..=0x1f => return None,
                b'\\' => {
                    escaped = true;
                    match *self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            // Only control characters without a short form
                            // are \u-escaped, in lowercase hex.
                            // (from_str_radix alone would take "+0").
                            if &hex[..2] != b"00"
                                || !hex[2..]
                                    .iter()
                                    .all(|h| h.is_ascii_digit() || (b'a'..=b'f').contains(h))
                            {
                                return None;
                            }
                            let v = u8::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16)
                                .ok()?;
                            if v > 0x1f || matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => self.i += 1,
            }
        }
    }
}

/// Decodes the contents of a string already checked by `Scanner::string`.
fn decode(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let mut run = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            out.push_str(std::str::from_utf8(&raw[run..i]).ok()?);
            let (ch, len) = match raw[i + 1] {
                b'"' => ('"', 2),
                b'\\' => ('\\', 2),
                b'b' => ('\u{8}', 2),
                b'f' => ('\u{c}', 2),
                b'n' => ('\n', 2),
                b'r' => ('\r', 2),
                b't' => ('\t', 2),
                _ => (
                    u8::from_str_radix(std::str::from_utf8(raw.get(i + 4..i + 6)?).ok()?, 16)
                        .ok()? as char,
                    6,
                ),
            };
            out.push(ch);
            i += len;
            run = i;
        } else {
            i += 1;
        }
    }
    out.push_str(std::str::from_utf8(&raw[run..]).ok()?);
    Some(out)
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_canonical_and_refuses_the_rest() {
        for ok in [
            &b"{}"[..],
            b"[]",
            b"{\"a\":1,\"b\":[true,null,\"x\\n\\u001f\"]}",
            b"-5",
            b"0",
            b"\"\\\"\"",
        ] {
            assert_eq!(scan(ok), Scan::Canonical, "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"{ }"[..],
            b"{\"b\":1,\"a\":2}",
            b"{\"a\":1,\"a\":2}",
            b"01",
            b"-0",
            b"\"\\u0041\"",
            b"\"\\u001F\"",
            b"\"\\/\"",
            b"\"\\u000a\"",
            b"[1,]",
            b"tru",
            b"{\"a\":1}x",
            b"0123456789012345678901",
            b"\"\\u00+0\"",
            b"\"\\u00-1\"",
        ] {
            assert_eq!(
                scan(bad),
                Scan::NotCanonical,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(scan(b"{\"a\":1.5}"), Scan::Undecided);
        // Integers past 2^53 - 1: re-encoding decides (found by fuzzing;
        // the scan used to call all of them not canonical, so a log
        // holding one failed verification).
        for big in [
            &b"9007199254740992"[..],
            b"9007199254740993",
            b"12345678901234567000",
            b"650595555555555500000",
            b"-9007199254740993",
        ] {
            assert_eq!(
                scan(big),
                Scan::Undecided,
                "{}",
                String::from_utf8_lossy(big)
            );
        }
    }

    proptest! {
        /// Any integer, of any size JSON can carry: its canonical form is
        /// never called not canonical, and a non-canonical spelling of a
        /// large one is never called canonical.
        #[test]
        fn large_integers_are_left_to_reencoding(n in any::<i128>(), scale in 0u32..8) {
            let text = format!("{n}{}", "0".repeat(scale as usize));
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let canonical = to_vec(&v).unwrap();
            prop_assert_ne!(scan(&canonical), Scan::NotCanonical, "{}", String::from_utf8_lossy(&canonical));
            if canonical != text.as_bytes() {
                prop_assert_ne!(scan(text.as_bytes()), Scan::Canonical, "{}", text);
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reencoding(v in any::<u32>().prop_flat_map(|_| super::tests_support::arb_json())) {
            let canonical = serde_jcs::to_vec(&v).unwrap();
            prop_assert_eq!(scan(&canonical), Scan::Canonical);
            let pretty = serde_json::to_vec_pretty(&v).unwrap();
            if pretty != canonical {
                prop_assert_eq!(scan(&pretty), Scan::NotCanonical);
            }
        }
    }
}

#[cfg(test)]
#[cfg(test)]
pub(crate) mod tests_support {
    use proptest::prelude::*;
    use serde_json::Value;

    pub fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(Value::from),
            "[\\x00-\\x20\"\\\\a-z\u{e9}\u{1F600}\u{FFFF}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-zA-Z\u{e9}\u{1F600}\u{FF61}_]{0,4}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Numbers of every kind — doubles of every class, integers beyond
    /// 2^53 — alone and inside arrays and objects.
    pub fn arb_json_numbers() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<f64>().prop_map(Value::from),
            (prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO)
                .prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{0,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}
