//! Log entries: one audit event each, encoded as RFC 8785 (JCS) canonical
//! JSON so that every party hashes exactly the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest encoded entry: tlog-tiles entry bundles prefix each entry
/// with a 16-bit length.
pub const MAX_ENTRY_SIZE: usize = 65535;

/// What is wrong with an entry.
#[derive(Debug, Error)]
pub enum EntryError {
    /// The encoded entry is larger than [`MAX_ENTRY_SIZE`].
    #[error("entry is {size} bytes, more than the {max} a log entry may hold; move large data out of the payload and log its digest instead")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a JSON entry with exactly the expected fields.
    #[error("entry is not valid entry JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The bytes decode but are not the canonical (RFC 8785) encoding.
    #[error("entry is not in canonical (RFC 8785) JSON form: keys must be sorted, no whitespace, no null optional fields")]
    NotCanonical,
    /// A field has an invalid value.
    #[error("entry field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// An entry encoded except for its index (see [`Entry::prepare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Everything up to and including `"index":`.
    head: Vec<u8>,
    /// Everything after the index digits.
    tail: Vec<u8>,
    /// The request the entry concerns (its `request` subject): what a
    /// store indexes so one request's entries are found without a scan.
    request: Option<String>,
}

impl Prepared {
    /// The entry's canonical bytes at log position `index` (at most
    /// 2^53 - 1), the same as [`Entry::to_bytes`] with that index.
    pub fn at(&self, index: u64) -> Vec<u8> {
        let digits = index.to_string();
        let mut out = Vec::with_capacity(self.head.len() + digits.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(digits.as_bytes());
        out.extend_from_slice(&self.tail);
        out
    }

    /// The entry's `request` subject, if it has one.
    pub fn request(&self) -> Option<&str> {
        self.request.as_deref()
    }
}

/// One audit-log entry: something that happened to a request, grant or
/// policy, attributed and timestamped.
///
/// `index` repeats the entry's position in the log inside the signed bytes,
/// so a verifier detects deleted, inserted or reordered entries even before
/// comparing hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position of this entry in the log (0-based).
    pub index: u64,
    /// When it happened: RFC 3339 in UTC, e.g. `2025-01-31T12:00:00Z`.
    pub time: String,
    /// What happened, e.g. `request.created`, `review.approved`.
    pub event: String,
    /// Who did it, e.g. `user:alice`; absent for the gateway's own events.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub actor: Option<String>,
    /// Ids of what it concerns: `request`, `grant`, `policy`, …
    pub subjects: BTreeMap<String, String>,
    /// The action digest (lowercase hex SHA-256), when an action is involved.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub digest: Option<String>,
    /// Event-specific details.
    pub payload: serde_json::Value,
}

/// An optional field that is present holds a value: `null` would be a
/// second byte form of the entry that omits the field (both read as
/// `None`), and the canonical scan alone cannot tell them apart.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(s) => Ok(Some(s)),
        None => Err(serde::de::Error::custom(
            "an optional field is null; the canonical entry omits it instead",
        )),
    }
}

/// The largest integer magnitude that survives RFC 8785 (I-JSON numbers are
/// IEEE 754 doubles): 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Whether every number in `v` survives JCS's conversion to a double and
/// reads back as itself: integers within 2^53 - 1, and doubles within the
/// same bound (past it a double is an integer whose canonical digits would
/// read back as an unsafe integer, and the entry could not be decoded).
fn numbers_are_safe(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u <= MAX_SAFE_INTEGER
            } else if let Some(i) = n.as_i64() {
                i.unsigned_abs() <= MAX_SAFE_INTEGER
            } else {
                n.as_f64()
                    .is_some_and(|f| f.abs() <= MAX_SAFE_INTEGER as f64)
            }
        }
        serde_json::Value::Array(a) => a.iter().all(numbers_are_safe),
        serde_json::Value::Object(o) => o.values().all(numbers_are_safe),
        _ => true,
    }
}

/// Accepts `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let seps = b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    let (Some(_y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    let frac = &b[19..b.len() - 1];
    let frac_ok = frac.is_empty()
        || (frac.len() >= 2 && frac[0] == b'.' && frac[1..].iter().all(u8::is_ascii_digit));
    seps && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && h < 24
        && mi < 60
        && sec <= 60
        && frac_ok
}

impl Entry {
    /// Checks field values that serde cannot.
    pub fn validate(&self) -> Result<(), EntryError> {
        if self.index > MAX_SAFE_INTEGER {
            return Err(EntryError::InvalidField {
                field: "index",
                reason: "must be at most 2^53 - 1 (canonical JSON numbers are doubles)",
            });
        }
        if !numbers_are_safe(&self.payload) {
            return Err(EntryError::InvalidField {
                field: "payload",
                reason: "holds an integer beyond 2^53 - 1, which canonical JSON cannot represent exactly; encode it as a string",
            });
        }
        if !is_rfc3339_utc(&self.time) {
            return Err(EntryError::InvalidField {
                field: "time",
                reason: "must be RFC 3339 in UTC, like 2025-01-31T12:00:00Z",
            });
        }
        if self.event.is_empty() {
            return Err(EntryError::InvalidField {
                field: "event",
                reason: "must not be empty",
            });
        }
        Ok(())
    }

    /// The canonical (RFC 8785) JSON bytes that are hashed into the log.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EntryError> {
        self.validate()?;
        let bytes = match self.canonical_fast() {
            Some(b) => b,
            None => serde_jcs::to_vec(self)?,
        };
        if bytes.len() > MAX_ENTRY_SIZE {
            return Err(EntryError::TooLarge {
                size: bytes.len(),
                max: MAX_ENTRY_SIZE,
            });
        }
        Ok(bytes)
    }

    /// The canonical bytes written directly (fields in their sorted order),
    /// or `None` if the payload holds a number JSON cannot carry.
    fn canonical_fast(&self) -> Option<Vec<u8>> {
        // Most entries are under 2 KiB: one allocation, no regrowth.
        let mut out = Vec::with_capacity(2048);
        out.push(b'{');
        if let Some(a) = &self.actor {
            out.extend_from_slice(b"\"actor\":");
            secondkey_jcs::write_str(a, &mut out);
            out.push(b',');
        }
        if let Some(d) = &self.digest {
            out.extend_from_slice(b"\"digest\":");
            secondkey_jcs::write_str(d, &mut out);
            out.push(b',');
        }
        out.extend_from_slice(b"\"event\":");
        secondkey_jcs::write_str(&self.event, &mut out);
        out.extend_from_slice(format!(",\"index\":{},\"payload\":", self.index).as_bytes());
        secondkey_jcs::write_value(&self.payload, &mut out)?;
        out.extend_from_slice(b",\"subjects\":{");
        let mut keys: Vec<&String> = self.subjects.keys().collect();
        keys.sort_by(|a, b| secondkey_jcs::cmp_utf16(a, b));
        for (i, k) in keys.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            secondkey_jcs::write_str(k, &mut out);
            out.push(b':');
            secondkey_jcs::write_str(&self.subjects[k], &mut out);
        }
        out.extend_from_slice(b"},\"time\":");
        secondkey_jcs::write_str(&self.time, &mut out);
        out.push(b'}');
        Some(out)
    }

    /// The canonical bytes of this entry for whatever index the log gives it
    /// later: everything is encoded now (off the log writer's thread), and
    /// [`Prepared::at`] only splices the index in. The size limit is checked
    /// for the largest index, so `at` cannot produce an entry too large.
    pub fn prepare(mut self) -> Result<Prepared, EntryError> {
        self.index = 0;
        let bytes = self.to_bytes()?;
        let request = self.subjects.remove("request");
        // Keys are sorted and quotes inside strings are escaped, so the first
        // `"index":0,` is the index field itself.
        const KEY: &[u8] = b"\"index\":0,";
        let at = bytes
            .windows(KEY.len())
            .position(|w| w == KEY)
            .map(|p| p + KEY.len() - 2)
            .ok_or(EntryError::NotCanonical)?;
        let widest = bytes.len() - 1 + MAX_SAFE_INTEGER.to_string().len();
        if widest > MAX_ENTRY_SIZE {
            return Err(EntryError::TooLarge {
                size: widest,
                max: MAX_ENTRY_SIZE,
            });
        }
        let mut bytes = bytes;
        let tail = bytes.split_off(at + 1);
        bytes.truncate(at);
        Ok(Prepared {
            head: bytes,
            tail,
            request,
        })
    }

    /// Decodes entry bytes strictly: unknown fields are rejected and the
    /// bytes must be exactly the canonical encoding, so one entry has one
    /// byte representation and one leaf hash.
    pub fn from_bytes(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY_SIZE {
            return Err(EntryError::TooLarge {
                size: bytes.len(),
                max: MAX_ENTRY_SIZE,
            });
        }
        let entry: Entry = serde_json::from_slice(bytes)?;
        entry.validate()?;
        match secondkey_jcs::scan(bytes) {
            // One pass proves the bytes canonical without re-encoding them.
            secondkey_jcs::Scan::Canonical => Ok(entry),
            secondkey_jcs::Scan::NotCanonical => Err(EntryError::NotCanonical),
            secondkey_jcs::Scan::Undecided => {
                if entry.to_bytes()? != bytes {
                    return Err(EntryError::NotCanonical);
                }
                Ok(entry)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn the_fast_encoding_is_the_canonical_one() {
        let mut e = sample();
        e.payload =
            json!({"z": 1, "a": [true, null, "x\u{1}\"\\"], "\u{e9}": {"b": -5, "a": "\u{1F600}"}});
        e.subjects.insert("\u{FF61}".into(), "y".into());
        e.subjects.insert("\u{1F600}".into(), "z".into());
        let fast = e.canonical_fast().expect("integers only");
        assert_eq!(fast, serde_jcs::to_vec(&e).unwrap());
        e.actor = None;
        e.digest = None;
        assert_eq!(e.canonical_fast().unwrap(), serde_jcs::to_vec(&e).unwrap());
    }

    fn sample() -> Entry {
        Entry {
            index: 7,
            time: "2025-01-31T12:00:00.123Z".into(),
            event: "request.created".into(),
            actor: Some("agent:report-bot".into()),
            subjects: BTreeMap::from([("request".into(), "req_1".into())]),
            digest: Some("ab".repeat(32)),
            payload: json!({"z": 1, "a": [true, null, "x"], "n": 1.5}),
        }
    }

    /// A double past 2^53 - 1 is refused like an integer there: written,
    /// 1e16 would be the canonical digits 10000000000000000, which decode
    /// as an unsafe integer, so the entry could be appended but never
    /// verified (found by fuzzing the canonical scan).
    #[test]
    fn large_doubles_are_rejected_like_large_integers() {
        for big in [1e16, -1e16, 6.505955555555555e20, 1e300] {
            let mut e = sample();
            e.payload = json!({"n": big});
            assert!(
                matches!(
                    e.to_bytes(),
                    Err(EntryError::InvalidField {
                        field: "payload",
                        ..
                    })
                ),
                "{big}"
            );
        }
        let mut e = sample();
        e.payload = json!({"n": 9007199254740990.5, "m": 4503599627370496.0});
        let bytes = e.to_bytes().unwrap();
        assert_eq!(
            Entry::from_bytes(&bytes).unwrap().to_bytes().unwrap(),
            bytes
        );
    }

    #[test]
    fn canonical_round_trip() {
        let e = sample();
        let bytes = e.to_bytes().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"actor":"agent:report-bot","digest":"#),
            "{text}"
        );
        assert!(text.contains(r#""payload":{"a":[true,null,"x"],"n":1.5,"z":1}"#));
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
    }

    #[test]
    fn optional_fields_are_omitted() {
        let mut e = sample();
        e.actor = None;
        e.digest = None;
        let bytes = e.to_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("actor") && !text.contains("digest"));
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        let with_null = text.replacen('{', r#"{"actor":null,"#, 1);
        assert!(Entry::from_bytes(with_null.as_bytes()).is_err());
    }

    /// An explicit `null` for an optional field is a second byte form of
    /// the entry that omits it: refused on the scan-only path too (a
    /// payload of integers only never re-encodes).
    #[test]
    fn explicit_null_optional_fields_are_refused() {
        let mut e = sample();
        e.actor = None;
        e.digest = None;
        e.payload = json!({"z": 1, "a": [true, null, "x"]});
        let bytes = e.to_bytes().unwrap();
        assert_eq!(secondkey_jcs::scan(&bytes), secondkey_jcs::Scan::Canonical);
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        let text = String::from_utf8(bytes).unwrap();
        let actor_null = text.replacen('{', r#"{"actor":null,"#, 1);
        let digest_null = text.replacen(r#""event""#, r#""digest":null,"event""#, 1);
        for forged in [actor_null, digest_null] {
            assert_eq!(
                secondkey_jcs::scan(forged.as_bytes()),
                secondkey_jcs::Scan::Canonical,
                "{forged}"
            );
            let err = Entry::from_bytes(forged.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("null"), "{forged}: {err}");
        }
    }

    #[test]
    fn strictness() {
        let bytes = sample().to_bytes().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        // Whitespace.
        let spaced = text.replacen(':', ": ", 1);
        assert!(matches!(
            Entry::from_bytes(spaced.as_bytes()),
            Err(EntryError::NotCanonical)
        ));
        // Unknown field.
        let extra = text.replacen('{', r#"{"aaa":1,"#, 1);
        assert!(matches!(
            Entry::from_bytes(extra.as_bytes()),
            Err(EntryError::Json(_))
        ));
        // Missing field.
        assert!(Entry::from_bytes(br#"{"index":0}"#).is_err());
        // Garbage.
        assert!(Entry::from_bytes(b"\xff\x00").is_err());
        // Bad time.
        let mut e = sample();
        e.time = "2025-01-31 12:00:00".into();
        assert!(matches!(
            e.to_bytes(),
            Err(EntryError::InvalidField { field: "time", .. })
        ));
        e.time = "2025-01-31T12:00:00+01:00".into();
        assert!(e.to_bytes().is_err());
        let mut e = sample();
        e.event.clear();
        assert!(e.to_bytes().is_err());
    }

    #[test]
    fn large_integers_are_rejected_not_rounded() {
        let mut e = sample();
        e.payload = json!({"n": 18704123126418137u64});
        assert!(matches!(
            e.to_bytes(),
            Err(EntryError::InvalidField {
                field: "payload",
                ..
            })
        ));
        e.payload = json!([-9007199254740992i64]);
        assert!(e.to_bytes().is_err());
        e.payload = json!([9007199254740991u64, -9007199254740991i64]);
        assert_eq!(Entry::from_bytes(&e.to_bytes().unwrap()).unwrap(), e);
        let mut e = sample();
        e.index = MAX_SAFE_INTEGER + 1;
        assert!(e.to_bytes().is_err());
    }

    #[test]
    fn size_limit() {
        let mut e = sample();
        e.payload = json!("x".repeat(MAX_ENTRY_SIZE));
        assert!(matches!(e.to_bytes(), Err(EntryError::TooLarge { .. })));
        assert!(matches!(
            Entry::from_bytes(&vec![b' '; MAX_ENTRY_SIZE + 1]),
            Err(EntryError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Entry::from_bytes(&bytes);
        }

        #[test]
        fn round_trips(index in 0..=MAX_SAFE_INTEGER, event in "[a-z.]{1,20}", actor in proptest::option::of("[a-z:]{1,10}"),
                       subjects in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,10}", 0..4),
                       s in "\\PC{0,30}", n in -(MAX_SAFE_INTEGER as i64)..=(MAX_SAFE_INTEGER as i64),
                       f in prop_oneof![-1e-3f64..1e-3, -1e6f64..1e6, -(MAX_SAFE_INTEGER as f64)..=(MAX_SAFE_INTEGER as f64)]) {
            let e = Entry {
                index, time: "2024-02-29T23:59:60Z".into(), event, actor, subjects, digest: None,
                payload: serde_json::json!({"s": s, "n": n, "f": f}),
            };
            let bytes = e.to_bytes().unwrap();
            // An integral double reads back as an integer (0.0 as 0): the
            // same canonical bytes, the same leaf.
            let back = Entry::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.to_bytes().unwrap(), bytes.clone());
            if f.fract() != 0.0 {
                prop_assert_eq!(&back, &e);
            }
            // Prepared without its index, then placed: the same bytes.
            let placed = e.clone().prepare().unwrap().at(index);
            prop_assert_eq!(placed, bytes);
        }

        #[test]
        fn prepared_entries_survive_hostile_strings(index in 0..=MAX_SAFE_INTEGER,
                       trap in prop_oneof![Just("\"index\":0,".to_string()), Just(",\"index\":0,\"payload\":".to_string()), "\\PC{1,20}"],
                       float in any::<bool>()) {
            // Strings that spell the index field must not fool the splice.
            let mut payload = serde_json::json!({"index": 0, "k": trap.clone()});
            if float {
                payload["f"] = serde_json::json!(0.5);
            }
            let e = Entry {
                index, time: "2024-02-29T23:59:60Z".into(), event: trap.clone(), actor: Some(trap.clone()),
                subjects: [("index".to_string(), trap.clone())].into_iter().collect(), digest: Some(trap), payload,
            };
            prop_assert_eq!(e.clone().prepare().unwrap().at(index), e.to_bytes().unwrap());
        }
    }
}
