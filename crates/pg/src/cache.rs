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
    scan(sql, None)
}

/// `sql` cut at the literals [`shape_key`] masks: the pieces between them
/// (whitespace and all, exactly as written) and the literals' own text, so
/// that the pieces interleaved with the literals are `sql` again. `None`
/// when [`shape_key`] is `None`.
pub fn split_literals(sql: &str) -> Option<(Vec<String>, Vec<String>)> {
    let mut spans = Vec::new();
    scan(sql, Some(&mut spans))?;
    let mut pieces = Vec::with_capacity(spans.len() + 1);
    let mut literals = Vec::with_capacity(spans.len());
    let mut at = 0;
    for (start, end) in spans {
        pieces.push(sql.get(at..start)?.to_string());
        literals.push(sql.get(start..end)?.to_string());
        at = end;
    }
    pieces.push(sql.get(at..)?.to_string());
    Some((pieces, literals))
}

/// The scanner behind [`shape_key`]; records each masked literal's byte
/// range in `spans` when given.
fn scan(sql: &str, mut spans: Option<&mut Vec<(usize, usize)>>) -> Option<Vec<u8>> {
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
                let start = i;
                i += 1;
                loop {
                    match s.get(i) {
                        None => return None,
                        Some(b'\'') if s.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        // classify refuses a NUL anywhere, so a shape must too.
                        Some(b'\\') | Some(0) => return None,
                        Some(_) => i += 1,
                    }
                }
                if let Some(sp) = spans.as_deref_mut() {
                    sp.push((start, i));
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
                if let Some(sp) = spans.as_deref_mut() {
                    sp.push((start, i));
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
    use proptest::prelude::*;

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
    fn split_literals_cuts_exactly_where_the_key_masks() {
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 73819;";
        let (pieces, literals) = split_literals(sql).unwrap();
        assert_eq!(
            pieces,
            ["SELECT abalance FROM pgbench_accounts WHERE aid = ", ";"]
        );
        assert_eq!(literals, ["73819"]);
        let sql = "select  a,'x''y' from t\nwhere b = -1.5 and c=$1 and d IN (2,'')";
        let (pieces, literals) = split_literals(sql).unwrap();
        assert_eq!(literals, ["'x''y'", "1.5", "2", "''"]);
        let mut back = pieces[0].clone();
        for (l, p) in literals.iter().zip(&pieces[1..]) {
            back.push_str(l);
            back.push_str(p);
        }
        assert_eq!(back, sql);
        assert_eq!(split_literals("SELECT 1 -- c"), None);
        assert_eq!(
            split_literals("BEGIN").unwrap(),
            (vec!["BEGIN".to_string()], vec![])
        );
    }

    proptest! {
        /// Pieces and literals always put the text back together, and two
        /// texts with the same pieces have the same cache key.
        #[test]
        fn split_literals_round_trips(
            template in proptest::sample::select(TEMPLATES),
            values in proptest::collection::vec(literal(), 4),
        ) {
            let sql = render(template, &values);
            prop_assert_eq!(split_literals(&sql).is_some(), shape_key(&sql).is_some());
            if let Some((pieces, literals)) = split_literals(&sql) {
                prop_assert_eq!(pieces.len(), literals.len() + 1);
                let mut back = pieces[0].clone();
                for (l, p) in literals.iter().zip(&pieces[1..]) {
                    back.push_str(l);
                    back.push_str(p);
                }
                prop_assert_eq!(&back, &sql);
                let zeroed: Vec<String> = literals.iter().map(|l| if l.starts_with('\'') { "'0'".to_string() } else { "0".to_string() }).collect();
                let mut other = pieces[0].clone();
                for (l, p) in zeroed.iter().zip(&pieces[1..]) {
                    other.push_str(l);
                    other.push_str(p);
                }
                // Same pieces, other values: the same shape when both are integers/strings.
                if literals.iter().all(|l| l.starts_with('\'') || l.bytes().all(|b| b.is_ascii_digit())) {
                    prop_assert_eq!(shape_key(&other), shape_key(&sql));
                }
            }
        }
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

    /// Statement shapes with `{}` where a literal goes: reads, writes,
    /// deletes and side-effect functions (cached), settings and COPY (never
    /// cached: their classification depends on the value), and literals
    /// glued together or to operators.
    const TEMPLATES: &[&str] = &[
        "SELECT a FROM t WHERE b = {}",
        "SELECT {}, {} FROM customers WHERE id > {} LIMIT {}",
        "select * from customers where email = {} or id = {}",
        "INSERT INTO orders VALUES ({}, {}, {})",
        "INSERT INTO t (a) VALUES ({}) ON CONFLICT (a) DO UPDATE SET b = {}",
        "UPDATE accounts SET balance = {} WHERE id = {}",
        "DELETE FROM sessions WHERE id = {} OR token = {}",
        "WITH d AS (DELETE FROM t WHERE id = {} RETURNING *) SELECT {} FROM d",
        "MERGE INTO t USING s ON t.id = {} WHEN MATCHED THEN DELETE",
        "SELECT lower({}) || {}, {}::text",
        "SELECT * FROM t WHERE a IN ({}, {}, {}) FOR UPDATE",
        "SELECT {}; DELETE FROM t WHERE id = {}",
        "BEGIN; SELECT {}; COMMIT",
        "SELECT {} {}",
        "SELECT {}\n{}",
        "SELECT a FROM t WHERE b = {}{}",
        "SELECT a FROM t WHERE b ={}",
        "SELECT $1, {} FROM t",
        "SELECT pg_read_file({})",
        "SELECT nextval({})",
        "SET application_name = {}",
        "SET client_encoding = {}",
        "SET standard_conforming_strings = {}",
        "COPY t TO {}",
    ];

    /// String contents an attacker would try: quotes, statement
    /// separators, comment openers, dollar quotes, backslashes, NUL.
    const NASTY: &[&str] = &[
        "",
        "x",
        "it''s",
        "'",
        "; DROP TABLE t; --",
        "'; DELETE FROM customers; --",
        "/* x",
        "*/ DROP TABLE t; /*",
        "--",
        "$$",
        "$$; DROP TABLE t; $$",
        "$q$ DROP $q$",
        "\\",
        "\\'; DROP TABLE t; --",
        "\"",
        "\n\n",
        "é; ü",
        "\0",
        "UTF8",
        "SJIS",
        "off",
        "on",
        "/tmp/x",
        "STDOUT",
    ];

    /// Every way a value can be written: numbers, plain strings, strings
    /// with prefixes, dollar quotes, typed literals.
    fn literal() -> impl Strategy<Value = String> {
        let content = prop_oneof![
            proptest::sample::select(NASTY).prop_map(str::to_string),
            r#"[a-z '";/*$\\\n\-é\x00]{0,12}"#,
        ]
        .boxed();
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0u32..1000).prop_map(|n| n.to_string()),
            (0u32..1000, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
            (0u32..1000).prop_map(|n| format!(".{n}")),
            (0u32..1000).prop_map(|n| format!("-{n}")),
            (0u32..1000).prop_map(|n| format!("{n}e3")),
            content
                .clone()
                .prop_map(|c| format!("'{}'", c.replace('\'', "''"))),
            (
                proptest::sample::select(
                    &["E", "e", "U&", "B", "X", "N", "interval ", "text "][..]
                ),
                content.clone()
            )
                .prop_map(|(p, c)| format!("{p}'{}'", c.replace('\'', "''"))),
            (proptest::sample::select(&["$$", "$q$"][..]), content)
                .prop_filter("a dollar quote cannot hold its own tag", |(t, c)| {
                    !c.contains(*t)
                })
                .prop_map(|(t, c)| format!("{t}{c}{t}")),
        ]
    }

    fn render(template: &str, values: &[String]) -> String {
        let mut out = String::new();
        let mut parts = template.split("{}");
        let mut values = values.iter();
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        for p in parts {
            out.push_str(values.next().map(String::as_str).unwrap_or("0"));
            out.push_str(p);
        }
        out
    }

    /// A wrong cache hit would decide a statement as another one: whatever
    /// the literals, the answer through the shared cache (warmed by every
    /// earlier variant of the same shape) equals a fresh classification —
    /// operation, tables read and written, functions, or the error.
    #[test]
    fn a_cached_classification_equals_a_fresh_one() {
        let opts = Options::default();
        let cache = ClassCache::new(opts.clone(), 1 << 20);
        let hits = std::cell::Cell::new(0u32);
        let seen = std::cell::RefCell::new(std::collections::HashSet::new());
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(
                &(
                    proptest::sample::select(TEMPLATES),
                    proptest::collection::vec(literal(), 4),
                ),
                |(template, values)| {
                    let sql = render(template, &values);
                    let fresh = classify(&sql, &opts);
                    if let (Some(k), Ok(c)) = (shape_key(&sql), &fresh) {
                        if c.literal_independent && !seen.borrow_mut().insert(k) {
                            hits.set(hits.get() + 1);
                        }
                    }
                    let cached = cache.classify(&sql).map(|c| (*c).clone());
                    prop_assert_eq!(cached, fresh, "{:?}", sql);
                    Ok(())
                },
            )
            .unwrap();
        // The test means something only if shapes were shared.
        assert!(hits.get() > 300, "only {} cache hits", hits.get());
    }

    /// The same for each nasty string in each literal position, whichever
    /// of the two variants the cache saw first.
    #[test]
    fn nasty_strings_never_change_a_cached_answer() {
        let opts = Options::default();
        let quote = |c: &str| format!("'{}'", c.replace('\'', "''"));
        for template in TEMPLATES {
            let holes = template.matches("{}").count();
            let plain = render(template, &vec![quote("x"); holes]);
            for at in 0..holes {
                for nasty in NASTY {
                    let mut values = vec![quote("x"); holes];
                    values[at] = quote(nasty);
                    let sql = render(template, &values);
                    for (first, then) in [(&plain, &sql), (&sql, &plain)] {
                        let cache = ClassCache::new(opts.clone(), 10);
                        let _ = cache.classify(first);
                        let cached = cache.classify(then).map(|c| (*c).clone());
                        assert_eq!(cached, classify(then, &opts), "{then:?} after {first:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_nul_in_a_string_needs_a_full_parse() {
        assert_eq!(shape_key("SELECT a FROM t WHERE b = 'x\0y'"), None);
        let c = ClassCache::new(Options::default(), 10);
        c.classify("SELECT a FROM t WHERE b = 'xy'").unwrap();
        assert!(c.classify("SELECT a FROM t WHERE b = 'x\0y'").is_err());
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
