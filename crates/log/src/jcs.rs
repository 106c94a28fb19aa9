//! A fast path for RFC 8785 (JCS) canonical JSON.
//!
//! The log encodes every entry canonically when it is appended and again
//! when it is verified (to prove the stored bytes are the one canonical
//! form). Going through `serde_jcs` for that dominated both costs, so this
//! module writes the canonical form directly for values whose numbers are
//! all integers — every entry the gateway writes. A value holding a
//! non-integral number returns `None` and the caller falls back to
//! `serde_jcs`, which formats doubles the ECMAScript way RFC 8785 requires.
//! A property test checks both agree.

use serde_json::Value;

/// Appends the canonical form of `v` to `out`, or returns `None` (with
/// `out` in an unspecified state) if `v` holds a non-integral number.
pub(crate) fn write_value(v: &Value, out: &mut Vec<u8>) -> Option<()> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                write_int(i as i128, out);
            } else if let Some(u) = n.as_u64() {
                write_int(u as i128, out);
            } else {
                return None;
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
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| cmp_utf16(a, b));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write_value(&map[k.as_str()], out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

/// RFC 8785 §3.2.3: member names sort by their UTF-16 code units.
pub(crate) fn cmp_utf16(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

fn write_int(i: i128, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{i}");
}

/// RFC 8785 §3.2.2.2: only `"`, `\` and control characters are escaped;
/// the short forms where JSON has them, `\u00xx` (lowercase) otherwise.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
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
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(|i| Value::from(i)),
            any::<String>().prop_map(Value::String),
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

    proptest! {
        #[test]
        fn agrees_with_serde_jcs(v in arb_json()) {
            let mut fast = Vec::new();
            write_value(&v, &mut fast).unwrap();
            let reference = serde_jcs::to_vec(&v).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&reference));
        }
    }

    #[test]
    fn floats_take_the_slow_path() {
        let mut out = Vec::new();
        assert!(write_value(&serde_json::json!({"a": 1.5}), &mut out).is_none());
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
