//! A conservative reader of POSIX shell command lines, made for
//! classification, not for running.
//!
//! It finds every simple command the shell would run — in lists (`;`,
//! `&`, `&&`, `||`, newlines), pipelines, `( … )` and `{ …; }` groups and
//! inside command substitutions (`$( … )`, backticks, also inside double
//! quotes and here-documents) — and gives each one's words after quote
//! removal, as far as they are known before the command runs. A word whose
//! value depends on the shell at run time (a parameter or arithmetic
//! expansion, a command substitution's output, an unquoted glob, a bash
//! brace expansion, `$'…'`) is [`Word::Dynamic`].
//!
//! What it does not model it refuses to guess about: compound commands
//! (`if`, `for`, `while`, `case`, …), function definitions, process
//! substitution, coprocesses, an unterminated quote or here-document —
//! each is recorded in [`Script::opaque`], and the classifier treats the
//! whole command line as the most privileged class. That is the design:
//! a mismatch between this reader and the real shell may only ever make a
//! command look *more* privileged than it is.
//!
//! Why not a parser crate: `yash-syntax` is GPL-3.0 (this project is
//! Apache-2.0); `conch-parser` has not been maintained since 2017;
//! `brush-parser` (MIT, maintained) parses bash for running it — it pulls
//! `insta`, `cached` and `bon` in as run-time dependencies, and a
//! classifier would still have to re-walk its words for quote removal and
//! expansions. A reader that refuses everything it does not fully model is
//! smaller and safer for this job (property-tested and fuzzed).

/// The longest command line read (bytes); longer is opaque.
pub const MAX_COMMAND: usize = 64 * 1024;
/// How deep command substitutions may nest.
const MAX_DEPTH: usize = 16;

/// One word of a simple command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// Known exactly: quotes removed, nothing left to expand.
    Lit(String),
    /// Known only when the shell runs it; the text as written.
    Dynamic(String),
}

impl Word {
    pub fn lit(&self) -> Option<&str> {
        match self {
            Word::Lit(s) => Some(s),
            Word::Dynamic(_) => None,
        }
    }
}

/// A redirection and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `<`, `>`, `>>`, `>|`, `<>`, `<&`, `>&`, `&>`, `&>>`, `<<`, `<<-`, `<<<`.
    pub op: String,
    pub target: Word,
}

impl Redirect {
    /// Whether it may create or change a file.
    pub fn writes(&self) -> bool {
        if matches!(&self.target, Word::Lit(t) if t == "/dev/null") {
            return false;
        }
        match self.op.as_str() {
            ">" | ">>" | ">|" | "<>" | "&>" | "&>>" => true,
            // `>&2` duplicates a descriptor; `>&file` (bash) writes a file.
            ">&" => {
                !matches!(&self.target, Word::Lit(t) if t == "-" || t.bytes().all(|b| b.is_ascii_digit()))
            }
            _ => false,
        }
    }

    /// Whether it reads a named file.
    pub fn reads(&self) -> bool {
        matches!(self.op.as_str(), "<" | "<>")
    }
}

/// A simple command: assignments, words and redirections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simple {
    /// `NAME=value` prefixes: (name, value).
    pub assignments: Vec<(String, Word)>,
    pub argv: Vec<Word>,
    pub redirects: Vec<Redirect>,
}

/// What a command line holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    /// Every simple command, substitutions' included, in reading order.
    pub commands: Vec<Simple>,
    /// Why (parts of) the line could not be modelled; non-empty means the
    /// line as a whole is treated as the most privileged class.
    pub opaque: Vec<String>,
}

/// Reads `src` as a shell command line. Never fails: what it cannot read
/// lands in [`Script::opaque`].
pub fn parse(src: &str) -> Script {
    let mut script = Script::default();
    if src.len() > MAX_COMMAND {
        script
            .opaque
            .push(format!("the command is longer than {MAX_COMMAND} bytes"));
        return script;
    }
    if src.contains('\0') {
        script.opaque.push("the command holds a NUL byte".into());
        return script;
    }
    let mut p = Reader {
        s: src.as_bytes(),
        i: 0,
        depth: 0,
        out: &mut script,
        last_word_quoted: false,
        heredocs: Vec::new(),
    };
    p.list(None);
    script
}

const RESERVED: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
    "in", "function", "select", "coproc", "[[", "]]", "!",
];

/// A lexed token.
#[derive(Debug)]
enum Tok {
    Word(Word, bool),
    Op(&'static str),
    Newline,
    End,
}

struct Reader<'a, 'o> {
    s: &'a [u8],
    i: usize,
    depth: usize,
    out: &'o mut Script,
    /// Whether the last word read had quotes or escapes (a quoted
    /// here-document delimiter, a quoted reserved word).
    last_word_quoted: bool,
    /// Here-documents whose bodies start after the next newline: (strip
    /// tabs, delimiter, delimiter quoted). Shared with `( … )` groups — the
    /// shell reads a body at the next newline wherever it is — but not with
    /// command substitutions, which the shell reads on their own.
    heredocs: Vec<(bool, String, bool)>,
}

impl Reader<'_, '_> {
    fn opaque(&mut self, why: impl Into<String>) {
        let why = why.into();
        if !self.out.opaque.contains(&why) {
            self.out.opaque.push(why);
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn at(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }

    /// Reads commands until `close` (`)` for a substitution or group) or
    /// the end.
    fn list(&mut self, close: Option<u8>) {
        let mut cur = Simple::default();
        let mut expect_target: Option<&'static str> = None;
        let mut words_seen = false;
        // bash reads `a &> f b` as one command; dash as `a &` then `> f b`,
        // which runs `b`: words after an `&>` target are opaque.
        let mut amp_redirect = false;
        loop {
            let tok = self.token(close);
            match tok {
                Tok::End => {
                    if let Some(op) = expect_target {
                        self.opaque(format!("a redirection `{op}` without a target"));
                    }
                    if close.is_none() && !self.heredocs.is_empty() {
                        self.opaque("a here-document without its body");
                    }
                    self.finish(&mut cur);
                    return;
                }
                Tok::Newline => {
                    if let Some(op) = expect_target.take() {
                        self.opaque(format!("a redirection `{op}` without a target"));
                    }
                    self.finish(&mut cur);
                    words_seen = false;
                    amp_redirect = false;
                    for (strip, delim, quoted) in std::mem::take(&mut self.heredocs) {
                        self.heredoc_body(strip, &delim, quoted);
                    }
                }
                Tok::Op(op) => {
                    if let Some(t) = expect_target.take() {
                        self.opaque(format!("a redirection `{t}` without a target"));
                    }
                    match op {
                        ";" | "&" | "&&" | "||" | "|" | "|&" => {
                            self.finish(&mut cur);
                            words_seen = false;
                            amp_redirect = false;
                        }
                        ")" => {
                            // Only reached without an open group: a stray `)`.
                            self.opaque("an unmatched `)`");
                            self.finish(&mut cur);
                            return;
                        }
                        "(" => {
                            if words_seen {
                                // `name ( )`: a function definition (or a syntax error).
                                self.opaque("a function definition");
                                self.skip_to_end();
                                return;
                            }
                            self.finish(&mut cur);
                            amp_redirect = false;
                            self.depth += 1;
                            if self.depth > MAX_DEPTH {
                                self.opaque("groups nested too deep");
                                self.skip_to_end();
                                return;
                            }
                            self.list(Some(b')'));
                            self.depth -= 1;
                            if self.peek() == Some(b')') {
                                self.i += 1;
                            } else {
                                self.opaque("an unterminated `(` group");
                                return;
                            }
                        }
                        "<(" | ">(" => {
                            self.opaque("process substitution");
                            self.skip_to_end();
                            return;
                        }
                        redirect => {
                            if redirect.starts_with("&>") {
                                amp_redirect = true;
                            }
                            expect_target = Some(redirect);
                        }
                    }
                }
                Tok::Word(w, assignment_like) => {
                    if let Some(op) = expect_target.take() {
                        if op == "<<" || op == "<<-" {
                            let (delim, quoted) = match &w {
                                Word::Lit(d) => (d.clone(), self.last_word_quoted),
                                Word::Dynamic(d) => (d.clone(), true),
                            };
                            self.heredocs.push((op == "<<-", delim, quoted));
                        }
                        cur.redirects.push(Redirect {
                            op: op.to_string(),
                            target: w,
                        });
                        continue;
                    }
                    if amp_redirect {
                        self.opaque("words after an `&>` redirection (bash and dash differ)");
                    }
                    if cur.argv.is_empty() {
                        if let Word::Lit(text) = &w {
                            if !self.last_word_quoted
                                && (RESERVED.contains(&text.as_str())
                                    || (text == "{" || text == "}"))
                            {
                                if text == "{" || text == "}" {
                                    // A brace group: its commands are read as a list.
                                    words_seen = false;
                                    continue;
                                }
                                self.opaque(format!("a compound command (`{text}`)"));
                                self.skip_to_end();
                                return;
                            }
                        }
                        if assignment_like {
                            let (Word::Lit(text) | Word::Dynamic(text)) = &w;
                            {
                                if let Some((name, value)) = text.split_once('=') {
                                    let value = match &w {
                                        Word::Lit(_) => Word::Lit(value.to_string()),
                                        Word::Dynamic(_) => Word::Dynamic(value.to_string()),
                                    };
                                    cur.assignments.push((name.to_string(), value));
                                    words_seen = true;
                                    continue;
                                }
                            }
                        }
                    }
                    cur.argv.push(w);
                    words_seen = true;
                }
            }
        }
    }

    fn skip_to_end(&mut self) {
        self.i = self.s.len();
    }

    fn finish(&mut self, cur: &mut Simple) {
        let c = std::mem::take(cur);
        if !c.argv.is_empty() || !c.assignments.is_empty() || !c.redirects.is_empty() {
            self.out.commands.push(c);
        }
    }

    /// Reads the body of a here-document that starts at the current
    /// position (just after a newline).
    fn heredoc_body(&mut self, strip: bool, delim: &str, quoted: bool) {
        loop {
            if self.i >= self.s.len() {
                self.opaque(format!("a here-document not closed by `{delim}`"));
                return;
            }
            let end = self.s[self.i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.s.len(), |p| self.i + p);
            let line = String::from_utf8_lossy(&self.s[self.i..end]).to_string();
            self.i = (end + 1).min(self.s.len());
            let cmp = if strip {
                line.trim_start_matches('\t')
            } else {
                line.as_str()
            };
            if cmp == delim {
                return;
            }
            if !quoted && (line.contains('`') || line.contains("$(")) {
                // The body is expanded: a substitution in it runs. Read it
                // as the shell would, a double-quoted string.
                let body = format!("\"{}\"", line.replace('"', "\\\""));
                let mut sub = Reader {
                    s: body.as_bytes(),
                    i: 0,
                    depth: self.depth + 1,
                    out: self.out,
                    last_word_quoted: false,
                    heredocs: Vec::new(),
                };
                let _ = sub.word_from_quotes_only();
            }
        }
    }

    /// Reads one double-quoted string as a word (used for here-document
    /// lines); registers any substitutions in it.
    fn word_from_quotes_only(&mut self) -> Word {
        self.last_word_quoted = false;
        match self.token(None) {
            Tok::Word(w, _) => w,
            _ => Word::Dynamic(String::new()),
        }
    }
}

impl Reader<'_, '_> {
    /// Next token; `close` is the byte that ends the current group.
    fn token(&mut self, close: Option<u8>) -> Tok {
        // Blanks, comments and line continuations.
        loop {
            match self.peek() {
                // Only space and tab are blanks to the shell; `\r` is an
                // ordinary character (opaque below).
                Some(b' ' | b'\t') => self.i += 1,
                Some(b'\\') if self.at(1) == Some(b'\n') => self.i += 2,
                Some(b'#') => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
        let Some(c) = self.peek() else {
            return Tok::End;
        };
        if Some(c) == close {
            return Tok::End;
        }
        if c == b'\n' {
            self.i += 1;
            return Tok::Newline;
        }
        const OPS: &[&str] = &[
            "&>>", "<<<", "<<-", ";;&", "&&", "||", "|&", ";;", ";&", ">>", "<<", "<&", ">&", "<>",
            ">|", "&>", "<(", ">(", ";", "&", "|", "(", ")", "<", ">",
        ];
        for op in OPS {
            if self.s[self.i..].starts_with(op.as_bytes()) {
                self.i += op.len();
                if matches!(*op, ";;" | ";&" | ";;&") {
                    self.opaque("a `case` clause terminator");
                }
                return Tok::Op(op);
            }
        }
        self.word()
    }
}

/// Whether a word's unquoted structure (see `Reader::word`) may undergo
/// bash brace expansion: an unquoted `{`, later an unquoted `,` or `..`,
/// later an unquoted `}`. A superset of what bash expands.
fn brace_expansion(structure: &[u8]) -> bool {
    let Some(open) = structure.iter().position(|&b| b == b'{') else {
        return false;
    };
    let Some(close) = structure.iter().rposition(|&b| b == b'}') else {
        return false;
    };
    close > open && {
        let inner = &structure[open + 1..close];
        inner.contains(&b',') || inner.windows(2).any(|w| w == b"..")
    }
}

/// Whether the inside of `${…}` is a name (or special parameter), alone or
/// followed by one of the operators whose word is only substituted or
/// matched, with a word holding nothing that expands or quotes.
fn plain_parameter(body: &[u8]) -> bool {
    let body = body
        .strip_prefix(b"#")
        .filter(|b| !b.is_empty())
        .unwrap_or(body);
    let name_len = match body.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => body
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(body.len()),
        Some(b) if b.is_ascii_digit() => body
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(body.len()),
        Some(b) if b"@*#?$!-".contains(b) => 1,
        _ => return false,
    };
    let rest = &body[name_len..];
    if rest.is_empty() {
        return true;
    }
    const OPS: &[&[u8]] = &[
        b":-", b":=", b":?", b":+", b"-", b"=", b"?", b"+", b"##", b"#", b"%%", b"%", b"//", b"/",
        b"^^", b"^", b",,", b",",
    ];
    let Some(op) = OPS.iter().find(|op| rest.starts_with(op)) else {
        return false;
    };
    rest[op.len()..]
        .iter()
        .all(|b| !b"{}'\"\\$`[\n".contains(b))
}

/// Word reading.
impl Reader<'_, '_> {
    fn word(&mut self) -> Tok {
        let start = self.i;
        let mut lit = String::new();
        let mut dynamic = false;
        let mut quoted = false;
        let mut bytes: Vec<u8> = Vec::new();
        // The word's unquoted structure: unquoted bytes as they are, each
        // quoted part as `q`, each expansion as `$` (for brace expansion,
        // which only unquoted `{`, `,`/`..` and `}` make).
        let mut structure: Vec<u8> = Vec::new();
        let flush = |bytes: &mut Vec<u8>, lit: &mut String| {
            lit.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        };
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')' => {
                    // `2>` : an IO number belongs to the redirection.
                    break;
                }
                b'\r' | 0x0b | 0x0c => {
                    // A word character to the shell, a blank to the eye
                    // (and to readers that split on all white space).
                    self.opaque("a carriage return, vertical tab or form feed outside quotes");
                    bytes.push(c);
                    structure.push(c);
                    self.i += 1;
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'\n') => self.i += 1,
                        Some(n) => {
                            bytes.push(n);
                            structure.push(b'q');
                            self.i += 1;
                            quoted = true;
                        }
                        None => {
                            // A trailing backslash stands for itself.
                            bytes.push(b'\\');
                        }
                    }
                }
                b'\'' => {
                    quoted = true;
                    structure.push(b'q');
                    self.i += 1;
                    match self.s[self.i..].iter().position(|&b| b == b'\'') {
                        Some(p) => {
                            bytes.extend_from_slice(&self.s[self.i..self.i + p]);
                            self.i += p + 1;
                        }
                        None => {
                            self.opaque("an unterminated single quote");
                            self.skip_to_end();
                            return Tok::End;
                        }
                    }
                }
                b'"' => {
                    quoted = true;
                    structure.push(b'q');
                    self.i += 1;
                    loop {
                        match self.peek() {
                            None => {
                                self.opaque("an unterminated double quote");
                                self.skip_to_end();
                                return Tok::End;
                            }
                            Some(b'"') => {
                                self.i += 1;
                                break;
                            }
                            Some(b'\\') => {
                                match self.at(1) {
                                    Some(b'\n') => {}
                                    Some(n @ (b'$' | b'`' | b'"' | b'\\')) => bytes.push(n),
                                    Some(n) => {
                                        bytes.push(b'\\');
                                        bytes.push(n);
                                    }
                                    None => {
                                        self.opaque("an unterminated double quote");
                                        self.skip_to_end();
                                        return Tok::End;
                                    }
                                }
                                self.i += 2;
                            }
                            Some(b'$') | Some(b'`') => {
                                if !self.expansion(true) {
                                    return Tok::End;
                                }
                                dynamic = true;
                            }
                            Some(n) => {
                                bytes.push(n);
                                self.i += 1;
                            }
                        }
                    }
                }
                b'$' | b'`' => {
                    if !self.expansion(false) {
                        return Tok::End;
                    }
                    structure.push(b'$');
                    dynamic = true;
                }
                b'*' | b'?' | b'[' => {
                    // Pathname expansion: the file names are known only
                    // when it runs.
                    dynamic = true;
                    bytes.push(c);
                    structure.push(c);
                    self.i += 1;
                }
                b'~' if self.i == start => {
                    // Tilde expansion: a home directory, known to the host.
                    bytes.push(c);
                    structure.push(c);
                    self.i += 1;
                }
                _ => {
                    bytes.push(c);
                    structure.push(c);
                    self.i += 1;
                }
            }
        }
        if brace_expansion(&structure) {
            // bash brace expansion `{a,b}` / `{1..3}`, quoted parts and all
            // (`{"x y",-exec}`): the words are known only when it runs.
            dynamic = true;
        }
        flush(&mut bytes, &mut lit);
        self.last_word_quoted = quoted;
        let raw = String::from_utf8_lossy(&self.s[start..self.i]).to_string();
        // An assignment: NAME= at the start, the name unquoted.
        let assignment_like = {
            let r = raw.as_bytes();
            match r.iter().position(|&b| b == b'=') {
                Some(p) if p > 0 => {
                    (r[0].is_ascii_alphabetic() || r[0] == b'_')
                        && r[..p]
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
                }
                _ => false,
            }
        };
        // An IO number (`2>`): digits right before a redirection.
        if !quoted
            && !dynamic
            && !lit.is_empty()
            && lit.bytes().all(|b| b.is_ascii_digit())
            && matches!(self.peek(), Some(b'<' | b'>'))
        {
            // Read the redirection operator now; the number is its fd.
            return match self.token(None) {
                Tok::Op(op) => Tok::Op(op),
                other => other,
            };
        }
        if dynamic {
            // Keep the assignment split for `NAME=$x`: the value is what is dynamic.
            if assignment_like {
                let text = raw;
                return Tok::Word(Word::Dynamic(text), true);
            }
            Tok::Word(Word::Dynamic(raw), false)
        } else {
            Tok::Word(Word::Lit(lit), assignment_like)
        }
    }

    /// Reads an expansion starting at `$` or a backtick. Command
    /// substitutions are read as nested lists (their commands count);
    /// returns false when it made the line opaque and stopped.
    fn expansion(&mut self, in_dquote: bool) -> bool {
        let c = self.peek();
        if c == Some(b'`') {
            self.i += 1;
            // Up to the next unescaped backtick; `\`` `\\` `\$` unescape.
            let mut inner = Vec::new();
            loop {
                match self.peek() {
                    None => {
                        self.opaque("an unterminated backquote");
                        self.skip_to_end();
                        return false;
                    }
                    Some(b'`') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        match self.at(1) {
                            Some(n @ (b'`' | b'\\' | b'$')) => inner.push(n),
                            Some(b'"') if in_dquote => inner.push(b'"'),
                            Some(n) => {
                                inner.push(b'\\');
                                inner.push(n);
                            }
                            None => inner.push(b'\\'),
                        }
                        self.i += 2;
                    }
                    Some(n) => {
                        inner.push(n);
                        self.i += 1;
                    }
                }
            }
            return self.nested(&inner);
        }
        // `$`
        match self.at(1) {
            Some(b'(') if self.at(2) == Some(b'(') => {
                // Arithmetic. Only numbers and operators are modelled: a
                // name is evaluated as an expression in turn (`$((_))` runs
                // `$(…)` held in the last argument, through an array
                // subscript), and a `$((` that does not close with `))` is
                // a command substitution to bash.
                let Some(end) = self.matching(self.i + 1, b'(', b')') else {
                    self.opaque("an unterminated arithmetic expansion");
                    self.skip_to_end();
                    return false;
                };
                let body = &self.s[self.i + 3..end];
                let closes_twice = self.matching(self.i + 2, b'(', b')') == Some(end - 1);
                if !closes_twice
                    || !body[..body.len().saturating_sub(1)]
                        .iter()
                        .all(|b| b.is_ascii_digit() || b" \t+-*/%()<>=!&|^~?:,".contains(b))
                {
                    self.opaque("an arithmetic expansion with more than numbers and operators");
                }
                self.i = end + 1;
                true
            }
            Some(b'(') => {
                // Read with the same reader, up to the `)` that closes it
                // as the shell sees it (comments, quotes, groups and all).
                if self.depth + 1 > MAX_DEPTH {
                    self.opaque("command substitutions nested too deep");
                    self.skip_to_end();
                    return false;
                }
                self.i += 2;
                self.depth += 1;
                // The shell reads a substitution's here-documents on their
                // own: an outer one pending waits for a newline after it.
                let outer = std::mem::take(&mut self.heredocs);
                self.list(Some(b')'));
                if !self.heredocs.is_empty() {
                    self.opaque("a here-document without its body");
                }
                self.heredocs = outer;
                self.depth -= 1;
                if self.peek() == Some(b')') {
                    self.i += 1;
                    true
                } else {
                    self.opaque("an unterminated command substitution");
                    self.skip_to_end();
                    false
                }
            }
            Some(b'{') => {
                // Up to the first `}`; only `${name}` and `${name<op>word}`
                // with a plain word are modelled. Quotes inside differ
                // between bash and dash, subscripts and substring offsets
                // are arithmetic, `${!x}` and `${x@P}` expand again.
                let Some(len) = self.s[self.i..].iter().position(|&b| b == b'}') else {
                    self.opaque("an unterminated parameter expansion");
                    self.skip_to_end();
                    return false;
                };
                let end = self.i + len;
                if !plain_parameter(&self.s[self.i + 2..end]) {
                    self.opaque("a parameter expansion with more than a name and a plain word");
                }
                self.i = end + 1;
                true
            }
            Some(b'[') => {
                // bash's old `$[…]` arithmetic.
                self.opaque("bash `$[…]` arithmetic");
                self.skip_to_end();
                false
            }
            Some(b'\'') | Some(b'"') if !in_dquote => {
                // bash's $'…' (escapes) and $"…" (translation).
                self.opaque("bash `$'…'` or `$\"…\"` quoting");
                self.skip_to_end();
                false
            }
            Some(n) if n.is_ascii_alphanumeric() || b"_@*#?$!-".contains(&n) => {
                self.i += 1;
                if n.is_ascii_alphabetic() || n == b'_' {
                    while matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
                        self.i += 1;
                    }
                } else {
                    self.i += 1;
                }
                true
            }
            _ => {
                // A lone `$` is itself.
                self.i += 1;
                true
            }
        }
    }

    /// The index of the byte closing the bracket opened at `open_at`,
    /// skipping quotes and escapes; `None` if it is not closed.
    fn matching(&self, open_at: usize, open: u8, close: u8) -> Option<usize> {
        let mut depth = 0usize;
        let mut i = open_at;
        while i < self.s.len() {
            let b = self.s[i];
            match b {
                b'\\' => i += 1,
                b'\'' if open != b'{' || depth > 0 => {
                    i += 1;
                    while i < self.s.len() && self.s[i] != b'\'' {
                        i += 1;
                    }
                }
                b'"' => {
                    i += 1;
                    while i < self.s.len() && self.s[i] != b'"' {
                        if self.s[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                _ if b == open => depth += 1,
                _ if b == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        None
    }

    fn nested(&mut self, inner: &[u8]) -> bool {
        if self.depth + 1 > MAX_DEPTH {
            self.opaque("command substitutions nested too deep");
            self.skip_to_end();
            return false;
        }
        let mut sub = Reader {
            s: inner,
            i: 0,
            depth: self.depth + 1,
            out: self.out,
            last_word_quoted: false,
            heredocs: Vec::new(),
        };
        sub.list(None);
        if !sub.heredocs.is_empty() {
            self.opaque("a here-document without its body");
        }
        true
    }
}
