//! Bound parameter values as reviewers and policies see them.
//!
//! A driver sends each value of a Bind as text or in binary (psycopg sends
//! integers in binary, tokio-postgres everything). Binary values of the
//! common built-in types are decoded by their type OID — the one the Parse
//! declared, else the one the server reported for the statement — into
//! what PostgreSQL would print; values of other types, and binary values
//! that do not decode, stay bytes (base64). Decoding is for reading only:
//! the action also carries [`wire_sha256`], a hash of the values exactly
//! as sent, so the digest binds what runs on the wire, not its rendering.

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Longest value shown in full; a longer one is shown by its SHA-256 and
/// length (the digest still binds it through [`wire_sha256`] or its text).
pub const MAX_SHOWN_BYTES: usize = 1024;

/// Largest integer a JSON number in an action may hold (2^53 − 1); larger
/// ones are shown as strings.
const SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Type OIDs of the built-in types decoded here (pg_type.dat).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// A bound value as the action shows it. `binary` is the format the
/// driver used; `type_oid` the parameter's type (0 when unknown).
pub fn display(v: Option<&[u8]>, binary: bool, type_oid: u32) -> Value {
    let Some(v) = v else { return Value::Null };
    if v.len() > MAX_SHOWN_BYTES {
        return json!({"sha256": hex::encode(Sha256::digest(v)), "bytes": v.len()});
    }
    if !binary {
        return match std::str::from_utf8(v) {
            Ok(s) => json!(s),
            Err(_) => bytes(v, type_oid),
        };
    }
    decode(v, type_oid).unwrap_or_else(|| bytes(v, type_oid))
}

/// SHA-256 (hex) over the values exactly as sent: for each parameter its
/// declared type OID (4 bytes, 0 when not declared), its format (1 byte),
/// its length (4 bytes, −1 for NULL) and its bytes. Two binds that decode
/// to the same display but differ on the wire hash differently.
pub fn wire_sha256(declared: &[u32], binary: &[bool], values: &[Option<&[u8]>]) -> String {
    let mut h = Sha256::new();
    for (i, v) in values.iter().enumerate() {
        h.update(declared.get(i).copied().unwrap_or(0).to_be_bytes());
        h.update([u8::from(binary.get(i).copied().unwrap_or(false))]);
        match v {
            None => h.update((-1i32).to_be_bytes()),
            Some(b) => {
                h.update((b.len() as u32).to_be_bytes());
                h.update(b);
            }
        }
    }
    hex::encode(h.finalize())
}

fn bytes(v: &[u8], type_oid: u32) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(v);
    if type_oid == 0 {
        json!({ "binary": b64 })
    } else {
        json!({ "binary": b64, "type_oid": type_oid })
    }
}

fn integer(n: i64) -> Value {
    if (-SAFE_INTEGER..=SAFE_INTEGER).contains(&n) {
        json!(n)
    } else {
        json!(n.to_string())
    }
}

fn be<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    v.try_into().ok()
}

/// The binary send format of `type_oid`, decoded; `None` when the type is
/// not one of ours or the bytes are not a valid value of it.
fn decode(v: &[u8], type_oid: u32) -> Option<Value> {
    use oid::*;
    Some(match type_oid {
        BOOL => match v {
            [0] => json!(false),
            [1] => json!(true),
            _ => return None,
        },
        INT2 => json!(i16::from_be_bytes(be(v)?)),
        INT4 => json!(i32::from_be_bytes(be(v)?)),
        INT8 => integer(i64::from_be_bytes(be(v)?)),
        OID => json!(u32::from_be_bytes(be(v)?)),
        FLOAT4 => {
            let f = f32::from_be_bytes(be(v)?);
            json!(float(f64::from(f), format!("{f:?}")))
        }
        FLOAT8 => {
            let f = f64::from_be_bytes(be(v)?);
            json!(float(f, format!("{f:?}")))
        }
        NUMERIC => json!(numeric(v)?),
        TEXT | VARCHAR | BPCHAR | NAME | CHAR | JSON | XML => json!(std::str::from_utf8(v).ok()?),
        JSONB => match v.split_first() {
            Some((1, rest)) => json!(std::str::from_utf8(rest).ok()?),
            _ => return None,
        },
        UUID => {
            let h = hex::encode(<[u8; 16]>::try_from(v).ok()?);
            json!(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        DATE => json!(date(i32::from_be_bytes(be(v)?))),
        TIMESTAMP => json!(timestamp(i64::from_be_bytes(be(v)?), "")),
        TIMESTAMPTZ => json!(timestamp(i64::from_be_bytes(be(v)?), "+00")),
        BYTEA => json!({ "hex": hex::encode(v), "bytes": v.len() }),
        _ => return None,
    })
}

/// A double as PostgreSQL prints it (shortest text that reads back).
/// Always a string: an action's numbers stay within ±(2^53 − 1), and a
/// float's text is what a reviewer should compare.
/// `shortest` is the value's shortest round-trip text in its own width.
fn float(f: f64, shortest: String) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        shortest
            .strip_suffix(".0")
            .map(str::to_string)
            .unwrap_or(shortest)
    }
}

/// PostgreSQL's binary numeric: digit count, weight (of the first base-10000
/// digit), sign, display scale, then the digits.
fn numeric(v: &[u8]) -> Option<String> {
    let word = |i: usize| {
        v.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i64;
    let sign = word(2)?;
    let dscale = word(3)? as usize;
    if v.len() != 8 + 2 * ndigits || dscale > 0x3fff {
        return None;
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xc000 => return Some("NaN".into()),
        0xd000 => return Some("Infinity".into()),
        0xf000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return None;
    }
    // The digit of 10000^p.
    let at = |p: i64| -> u16 {
        let i = weight - p;
        if (0..ndigits as i64).contains(&i) {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut int = String::new();
    let mut p = weight;
    while p >= 0 {
        if int.is_empty() {
            let d = at(p);
            if d != 0 {
                int.push_str(&d.to_string());
            }
        } else {
            int.push_str(&format!("{:04}", at(p)));
        }
        p -= 1;
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut p = -1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", at(p)));
        p -= 1;
    }
    frac.truncate(dscale);
    let negative = sign == 0x4000 && digits.iter().any(|&d| d != 0);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&int);
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (with ` BC` before year 1).
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => civil(i64::from(d)),
    }
}

/// The proleptic Gregorian date `days` after 2000-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> String {
    let (y, m, d) = secondkey_core::time::civil_from_days(days + 10_957);
    if y >= 1 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    }
}

/// Microseconds since 2000-01-01 00:00 as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn timestamp(us: i64, zone: &str) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        us => {
            let day = us.div_euclid(86_400_000_000);
            let t = us.rem_euclid(86_400_000_000);
            let (s, frac) = (t / 1_000_000, t % 1_000_000);
            let mut out = civil(day);
            let bc = out.ends_with(" BC");
            if bc {
                out.truncate(out.len() - 3);
            }
            out.push_str(&format!(
                " {:02}:{:02}:{:02}",
                s / 3600,
                s / 60 % 60,
                s % 60
            ));
            if frac != 0 {
                let f = format!("{frac:06}");
                out.push('.');
                out.push_str(f.trim_end_matches('0'));
            }
            out.push_str(zone);
            if bc {
                out.push_str(" BC");
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::oid::*;
    use super::*;

    fn bin(v: &[u8], t: u32) -> Value {
        display(Some(v), true, t)
    }

    #[test]
    fn binary_values_decode_by_type() {
        let cases: Vec<(Vec<u8>, u32, Value)> = vec![
            (vec![1], BOOL, json!(true)),
            (vec![0], BOOL, json!(false)),
            (vec![0xff, 0xfe], INT2, json!(-2)),
            (3i32.to_be_bytes().to_vec(), INT4, json!(3)),
            (
                i64::MAX.to_be_bytes().to_vec(),
                INT8,
                json!("9223372036854775807"),
            ),
            ((-42i64).to_be_bytes().to_vec(), INT8, json!(-42)),
            (1.5f32.to_be_bytes().to_vec(), FLOAT4, json!("1.5")),
            (0.1f32.to_be_bytes().to_vec(), FLOAT4, json!("0.1")),
            (2.0f64.to_be_bytes().to_vec(), FLOAT8, json!("2")),
            (1e300f64.to_be_bytes().to_vec(), FLOAT8, json!("1e300")),
            (f64::NAN.to_be_bytes().to_vec(), FLOAT8, json!("NaN")),
            (
                f64::NEG_INFINITY.to_be_bytes().to_vec(),
                FLOAT8,
                json!("-Infinity"),
            ),
            (b"caf\xc3\xa9".to_vec(), TEXT, json!("café")),
            (b"\x01{\"a\": 1}".to_vec(), JSONB, json!("{\"a\": 1}")),
            (
                hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap(),
                UUID,
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ),
            (0i32.to_be_bytes().to_vec(), DATE, json!("2000-01-01")),
            ((-1i32).to_be_bytes().to_vec(), DATE, json!("1999-12-31")),
            (8_843i32.to_be_bytes().to_vec(), DATE, json!("2024-03-18")),
            (
                (-730_119i32).to_be_bytes().to_vec(),
                DATE,
                json!("0001-01-01"),
            ),
            (
                (-730_120i32).to_be_bytes().to_vec(),
                DATE,
                json!("0001-12-31 BC"),
            ),
            (i32::MAX.to_be_bytes().to_vec(), DATE, json!("infinity")),
            (
                (86_400_000_000i64 + 3_723_000_450).to_be_bytes().to_vec(),
                TIMESTAMP,
                json!("2000-01-02 01:02:03.00045"),
            ),
            (
                (-1i64).to_be_bytes().to_vec(),
                TIMESTAMPTZ,
                json!("1999-12-31 23:59:59.999999+00"),
            ),
            (vec![0xde, 0xad], BYTEA, json!({"hex": "dead", "bytes": 2})),
            (
                vec![1, 2, 3],
                600,
                json!({"binary": "AQID", "type_oid": 600}),
            ),
            (vec![1, 2, 3], 0, json!({"binary": "AQID"})),
            // Not a valid value of the type: the bytes.
            (vec![2], BOOL, json!({"binary": "Ag==", "type_oid": 16})),
            (
                vec![0, 0, 3],
                INT4,
                json!({"binary": "AAAD", "type_oid": 23}),
            ),
            (
                b"\xff".to_vec(),
                TEXT,
                json!({"binary": "/w==", "type_oid": 25}),
            ),
        ];
        for (v, t, want) in cases {
            assert_eq!(bin(&v, t), want, "{v:?} as {t}");
        }
        assert_eq!(display(None, true, INT4), Value::Null);
        assert_eq!(display(Some(b"42"), false, INT4), json!("42"));
        let long = vec![7u8; MAX_SHOWN_BYTES + 1];
        assert_eq!(bin(&long, BYTEA)["bytes"], json!(MAX_SHOWN_BYTES + 1));
        assert!(bin(&long, BYTEA)["sha256"].is_string());
    }

    /// Binary numerics as PostgreSQL 15 sends them (`numeric_send`).
    #[test]
    fn numerics_decode_as_postgresql_prints_them() {
        fn num(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
            let mut v = Vec::new();
            for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
                v.extend_from_slice(&w.to_be_bytes());
            }
            v
        }
        for (bytes, want) in [
            (num(0, 0, 0, 0, &[]), "0"),
            (num(0, 0, 0, 2, &[]), "0.00"),
            (num(1, 0, 0, 0, &[42]), "42"),
            (num(2, 1, 0x4000, 0, &[12, 3456]), "-123456"),
            (num(2, 0, 0, 2, &[1, 5000]), "1.50"),
            (num(1, -1, 0, 4, &[5]), "0.0005"),
            (num(1, -2, 0, 8, &[12]), "0.00000012"),
            (num(1, 2, 0, 0, &[7]), "700000000"),
            (num(0, 0, 0xc000, 0, &[]), "NaN"),
            (num(0, 0, 0xd000, 0, &[]), "Infinity"),
        ] {
            assert_eq!(bin(&bytes, NUMERIC), json!(want), "{bytes:?}");
        }
        // A digit above 9999, a wrong length or sign: bytes.
        for bad in [
            num(1, 0, 0, 0, &[10_000]),
            num(2, 0, 0, 0, &[1]),
            num(0, 0, 0x1234, 0, &[]),
        ] {
            assert!(bin(&bad, NUMERIC)["binary"].is_string(), "{bad:?}");
        }
    }

    #[test]
    fn the_wire_hash_tells_apart_what_displays_alike() {
        let one_text = wire_sha256(&[0], &[false], &[Some(b"1")]);
        let one_bin = wire_sha256(&[23], &[true], &[Some(&1i32.to_be_bytes())]);
        let one_bin8 = wire_sha256(&[20], &[true], &[Some(&1i64.to_be_bytes())]);
        assert_ne!(one_text, one_bin);
        assert_ne!(one_bin, one_bin8);
        assert_ne!(
            wire_sha256(&[], &[], &[None]),
            wire_sha256(&[], &[], &[Some(b"")])
        );
        assert_eq!(
            one_bin,
            wire_sha256(&[23], &[true], &[Some(&1i32.to_be_bytes())])
        );
    }

    proptest::proptest! {
        /// Any bytes under any type: a value, never a panic.
        #[test]
        fn decoding_never_panics(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), t in 0u32..4000) {
            let _ = display(Some(&v), true, t);
            let _ = display(Some(&v), false, t);
        }
    }
}
