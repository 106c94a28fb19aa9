//! Server-side syntax highlighting and diffs for the request page: plain
//! HTML spans, no script. Every byte of the input is shown (escaped) — a
//! reviewer must see the whole statement, never a truncated one.

use std::fmt::Write;

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    esc_into(&mut out, s);
    out
}

/// [`esc`] appending to `out`.
pub fn esc_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn span(out: &mut String, class: &str, text: &str) {
    let _ = write!(out, "<span class=\"{class}\">");
    esc_into(out, text);
    out.push_str("</span>");
}

const SQL_KEYWORDS: &[&str] = &[
    "ADD",
    "ALL",
    "ALTER",
    "AND",
    "ANY",
    "AS",
    "ASC",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "COLUMN",
    "COMMIT",
    "CONSTRAINT",
    "COPY",
    "CREATE",
    "CROSS",
    "DATABASE",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DROP",
    "ELSE",
    "END",
    "EXCEPT",
    "EXISTS",
    "FALSE",
    "FETCH",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "FUNCTION",
    "GRANT",
    "GROUP",
    "HAVING",
    "IF",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
    "INTERSECT",
    "INTO",
    "IS",
    "JOIN",
    "KEY",
    "LEFT",
    "LIKE",
    "LIMIT",
    "NOT",
    "NULL",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "PRIMARY",
    "REFERENCES",
    "RETURNING",
    "REVOKE",
    "RIGHT",
    "ROLE",
    "ROLLBACK",
    "SCHEMA",
    "SELECT",
    "SET",
    "TABLE",
    "THEN",
    "TO",
    "TRUE",
    "TRUNCATE",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USING",
    "VALUES",
    "VIEW",
    "WHEN",
    "WHERE",
    "WITH",
];

/// Highlights SQL: keywords, strings, quoted identifiers, numbers, comments.
pub fn sql(src: &str) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            span(&mut out, "c", &src[start..i]);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
            span(&mut out, "c", &src[start..i]);
        } else if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() {
                if b[i] == c {
                    // A doubled quote is an escaped quote.
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            span(&mut out, if c == b'\'' { "s" } else { "i" }, &src[start..i]);
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            span(&mut out, "n", &src[start..i]);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            let word = &src[start..i];
            if SQL_KEYWORDS
                .binary_search(&word.to_ascii_uppercase().as_str())
                .is_ok()
            {
                span(&mut out, "k", word);
            } else {
                esc_into(&mut out, word);
            }
        } else {
            // Advance one whole character (multi-byte UTF-8 stays intact).
            let ch = src[i..].chars().next().map_or(1, char::len_utf8);
            i += ch;
            esc_into(&mut out, &src[start..i]);
        }
    }
    out
}

/// Highlights JSON text (as produced by `serde_json::to_string_pretty`):
/// keys, strings, numbers, literals.
pub fn json(src: &str) -> String {
    let mut out = String::with_capacity(src.len() * 2);
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                let class = if b.get(j) == Some(&b':') { "p" } else { "s" };
                span(&mut out, class, &src[start..i]);
            }
            b'-' | b'0'..=b'9' => {
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                span(&mut out, "n", &src[start..i]);
            }
            b't' | b'f' | b'n' => {
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                span(&mut out, "k", &src[start..i]);
            }
            _ => {
                let ch = src[i..].chars().next().map_or(1, char::len_utf8);
                i += ch;
                esc_into(&mut out, &src[start..i]);
            }
        }
    }
    out
}

/// Lines of unchanged context kept around each change in [`diff`].
pub const DIFF_CONTEXT: usize = 3;

/// A unified line diff from `old` to `new` as the rows of an HTML table:
/// old and new line numbers, a `-`/`+`/` ` sign, the line (SQL-highlighted
/// when `sql`). Unchanged runs beyond [`DIFF_CONTEXT`] lines of a change
/// collapse into one row that says how many lines it hides. `None` when
/// the texts are equal.
pub fn diff(old: &str, new: &str, sql_lines: bool) -> Option<String> {
    if old == new {
        return None;
    }
    let d = similar::TextDiff::from_lines(old, new);
    let mut out = String::new();
    let old_lines = old.lines().count();
    let mut shown_to = 0usize; // old lines up to here are accounted for
    for group in d.grouped_ops(DIFF_CONTEXT) {
        let Some(first) = group.first() else { continue };
        let start = first.old_range().start;
        if start > shown_to {
            gap(&mut out, start - shown_to);
        }
        for op in &group {
            for change in d.iter_changes(op) {
                let (class, sign) = match change.tag() {
                    similar::ChangeTag::Delete => ("del", '-'),
                    similar::ChangeTag::Insert => ("ins", '+'),
                    similar::ChangeTag::Equal => ("eq", ' '),
                };
                let num = |n: Option<usize>| n.map(|n| (n + 1).to_string()).unwrap_or_default();
                let line = change.value().trim_end_matches('\n');
                let _ = write!(
                    out,
                    "<tr class=\"{class}\"><td class=\"ln\">{}</td><td class=\"ln\">{}</td><td class=\"sign\">{sign}</td><td>",
                    num(change.old_index()),
                    num(change.new_index())
                );
                if sql_lines {
                    out.push_str(&sql(line));
                } else {
                    esc_into(&mut out, line);
                }
                out.push_str("</td></tr>");
            }
        }
        if let Some(last) = group.last() {
            shown_to = last.old_range().end;
        }
    }
    if old_lines > shown_to {
        gap(&mut out, old_lines - shown_to);
    }
    Some(out)
}

/// The row standing for `n` collapsed unchanged lines.
fn gap(out: &mut String, n: usize) {
    let _ = write!(
        out,
        "<tr class=\"gap\"><td colspan=\"4\">⋯ {n} unchanged line{} ⋯</td></tr>",
        if n == 1 { "" } else { "s" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        let mut k = SQL_KEYWORDS.to_vec();
        k.sort_unstable();
        assert_eq!(k, SQL_KEYWORDS);
    }

    #[test]
    fn sql_is_escaped_and_complete() {
        let src =
            "SELECT * FROM t WHERE a = 'x''<b>' -- </pre><script>\nAND \"Col\" > 10 /* c */ é";
        let html = sql(src);
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(html.contains("<span class=\"k\">SELECT</span>"));
        assert!(html.contains("<span class=\"s\">&#39;x&#39;&#39;&lt;b&gt;&#39;</span>"));
        assert!(html.contains("<span class=\"c\">-- &lt;/pre&gt;&lt;script&gt;</span>"));
        assert!(html.contains("<span class=\"n\">10</span>"));
        assert!(html.ends_with("é"));
        // Stripping the tags and unescaping gives back every byte.
        let text = strip(&html);
        assert_eq!(text, src);
        // Unterminated strings and comments do not lose text.
        for s in ["'abc", "/* x", "\"q", "--"] {
            assert_eq!(strip(&sql(s)), s);
        }
    }

    #[test]
    fn json_highlights_keys_and_values() {
        let v = serde_json::json!({"sql": "DROP </script>", "n": -1.5e3, "ok": true, "x": null, "a": ["\"q\\"]});
        let src = serde_json::to_string_pretty(&v).unwrap();
        let html = json(&src);
        assert!(html.contains("<span class=\"p\">&quot;sql&quot;</span>"));
        assert!(html.contains("<span class=\"n\">-1500.0</span>"));
        assert!(html.contains("<span class=\"k\">true</span>"));
        assert!(!html.contains("</script>"));
        assert_eq!(strip(&html), src);
    }

    #[test]
    fn diffs_mark_lines_and_collapse_context() {
        assert_eq!(diff("a\n", "a\n", false), None);
        let d = diff("a\nb\n", "a\nc\n", false).unwrap();
        assert!(d.contains("<tr class=\"del\"><td class=\"ln\">2</td><td class=\"ln\"></td><td class=\"sign\">-</td><td>b</td></tr>"), "{d}");
        assert!(d.contains("<tr class=\"ins\"><td class=\"ln\"></td><td class=\"ln\">2</td><td class=\"sign\">+</td><td>c</td></tr>"), "{d}");
        assert!(
            d.contains("<tr class=\"eq\"><td class=\"ln\">1</td><td class=\"ln\">1</td>"),
            "{d}"
        );
        // 60 lines, one changed in the middle: 3 lines of context each side,
        // the rest collapsed and counted.
        let old: String = (1..=60).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 30\n", "line 30 OR true\n");
        let d = diff(&old, &new, true).unwrap();
        assert_eq!(d.matches("<tr class=\"eq\">").count(), 6, "{d}");
        assert!(
            d.contains("⋯ 26 unchanged lines ⋯") && d.contains("⋯ 27 unchanged lines ⋯"),
            "{d}"
        );
        assert!(d.contains("<span class=\"k\">OR</span>"), "{d}");
        // Hostile text stays text.
        let d = diff("x\n", "</table><script>\n", false).unwrap();
        assert!(!d.contains("<script>") && d.contains("&lt;/table&gt;&lt;script&gt;"));
    }

    fn strip(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }
}
