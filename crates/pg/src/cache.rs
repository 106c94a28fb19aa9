//! A classification cache that also hits when only literal values differ.
//!
//! Parsing costs ~20 µs; an agent (or pgbench) sends the same statement
//! shapes with different constants over and over. [`shape_key`] is a small,
//! conservative scanner that masks plain numbers and plain strings and
//! keeps every other byte (identifiers, keywords, operators, punctuation,
//! parameter markers) exactly. Two texts with the same key lex into the
//! same tokens apart from constant values, so — for statements whose
//! classification does not depend on constants (plain SELECT/INSERT/
//! UPDATE/DELETE/MERGE and transaction control; see
//! [`Classification::literal_independent`]) — they classify the same. For
//! anything the scanner does not fully understand (comments, quoted
//! identifiers, dollar quotes, escape-string prefixes, backslashes,
//! exponents, non-ASCII, adjacent strings) it returns `None`, and the
//! statement is parsed in full every time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::classify::{classify, Classification, ClassifyError, Options};

const STRING: u8 = 0x01;
const INTEGER: u8 = 0x02;
const DECIMAL: u8 = 0x03;

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// The cache key of `sql`, or `None` when the text needs a full parse.
pub fn shape_key(sql: &str) -> Option<Vec<u8>> {
    let s = sql.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    // The last significant byte written, and whether whitespace followed it.
    let mut last: u8 = 0;
    let mut spaced = true;
    while i < s.len() {
        let b = s[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => {
                if !spaced {
                    out.push(b' ');
                    spaced = true;
                }
                i += 1;
                continue;
            }
            b'\'' => {
                // A prefix glued to the quote (E'', B'', X'', U&'', N'')
                // changes how the string is read; a string right after a
                // string may be a continuation.
                if (!spaced && (ident_byte(last) || last == b'&')) || last == STRING {
                    return None;
                }
                i += 1;
                loop {
                    match s.get(i) {
                        None => return None,
                        Some(b'\'') if s.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => return None,
                        Some(_) => i += 1,
                    }
                }
                out.push(STRING);
                last = STRING;
            }
            b'0'..=b'9' if spaced || !ident_byte(last) => {
                let start = i;
                while i < s.len() && s[i].is_ascii_digit() {
                    i += 1;
                }
                let mut kind = INTEGER;
                if s.get(i) == Some(&b'.') && s.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < s.len() && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    kind = DECIMAL;
                }
                // Exponents, hex/octal/binary, underscores, trailing junk.
                if s.get(i)
                    .is_some_and(|&c| ident_byte(c) || c == b'.' || c == b'\'')
                    || (start > 0 && s[start - 1] == b'.' && kind == DECIMAL)
                {
                    return None;
                }
                out.push(kind);
                last = kind;
            }
            b'$' if !ident_byte(last) || spaced => {
                // A parameter marker $n is kept as is; anything else is a
                // dollar quote.
                let start = i;
                i += 1;
                while i < s.len() && s[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start + 1 || s.get(i).is_some_and(|&c| ident_byte(c)) {
                    return None;
                }
                out.extend_from_slice(&s[start..i]);
                last = b'0';
            }
            b'"' | b'\\' => return None,
            b'-' if s.get(i + 1) == Some(&b'-') => return None,
            b'/' if s.get(i + 1) == Some(&b'*') => return None,
            0x21..=0x7e => {
                out.push(b);
                last = b;
                i += 1;
            }
            _ => return None,
        }
        spaced = false;
    }
    Some(out)
}

/// Shared by every session of a connection.
pub struct ClassCache {
    opts: Options,
    map: RwLock<HashMap<Vec<u8>, Arc<Classification>>>,
    capacity: usize,
}

impl ClassCache {
    pub fn new(opts: Options, capacity: usize) -> Self {
        ClassCache {
            opts,
            map: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// Classifies `sql`, from the cache when its shape was seen before.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        let key = shape_key(sql);
        if let Some(k) = &key {
            if let Ok(m) = self.map.read() {
                if let Some(c) = m.get(k) {
                    return Ok(c.clone());
                }
            }
        }
        let c = Arc::new(classify(sql, &self.opts)?);
        if let (Some(k), true) = (key, c.literal_independent) {
            if let Ok(mut m) = self.map.write() {
                if m.len() >= self.capacity {
                    m.clear();
                }
                m.insert(k, c.clone());
            }
        }
        Ok(c)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_masked_and_structure_kept() {
        let a = shape_key("SELECT abalance FROM pgbench_accounts WHERE aid = 73819;").unwrap();
        let b = shape_key("SELECT abalance FROM pgbench_accounts WHERE aid = 1;").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            shape_key("select  a from t where b = 'x''y'"),
            shape_key("select a\nfrom t where b = 'other'")
        );
        // Different structure, different key.
        assert_ne!(shape_key("SELECT 1"), shape_key("SELECT 1.5"));
        assert_ne!(shape_key("SELECT a FROM t"), shape_key("SELECT a FROM u"));
        assert_ne!(shape_key("SELECT $1"), shape_key("SELECT $2"));
        assert_ne!(shape_key("SELECT a-1"), shape_key("SELECT a- 1"));
        assert_eq!(
            shape_key("SELECT t1.a2 FROM t1").unwrap(),
            b"SELECT t1.a2 FROM t1"
        );
    }

    #[test]
    fn anything_unusual_needs_a_full_parse() {
        for sql in [
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT \"A\" FROM t",
            "SELECT $$x$$",
            "SELECT $tag$x$tag$",
            "SELECT E'\\x'",
            "SELECT e'x'",
            "SELECT x'1f'",
            "SELECT U&'x'",
            "SELECT 'a\\'",
            "SELECT 'a' 'b'",
            "SELECT 'a'\n'b'",
            "SELECT 1e5",
            "SELECT 0x1f",
            "SELECT 1_000",
            "SELECT 1.",
            "SELECT 'unterminated",
            "SELECT é FROM t",
            "SELECT \u{7f}",
            "SELECT 1\0",
        ] {
            assert_eq!(shape_key(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn only_literal_independent_statements_are_cached() {
        let c = ClassCache::new(Options::default(), 100);
        c.classify("SELECT a FROM t WHERE b = 1").unwrap();
        assert_eq!(c.len(), 1);
        c.classify("SELECT a FROM t WHERE b = 2").unwrap();
        assert_eq!(c.len(), 1);
        c.classify("SET client_encoding = 'UTF8'").unwrap();
        assert_eq!(c.len(), 1);
        // A cached SET would let SJIS through under the UTF8 shape.
        assert!(c.classify("SET client_encoding = 'SJIS'").is_err());
        // Errors are never cached.
        assert!(c.classify("SELEC a FROM t").is_err());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let c = ClassCache::new(Options::default(), 2);
        for t in ["a", "b", "c"] {
            c.classify(&format!("SELECT x FROM {t}")).unwrap();
        }
        assert_eq!(c.len(), 1);
    }
}
