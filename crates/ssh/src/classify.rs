//! Classifies a command line by rules on each simple command's argv; the
//! line's class is the highest of its parts, and anything the rules do not
//! know — or the reader could not model — is the most privileged class.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::shell::{self, Script, Simple, Word};

/// Operation classes of an SSH command, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Read,
    Write,
    Export,
    Admin,
}

impl Class {
    /// The most privileged class: what unknown commands get.
    pub const MOST: Class = Class::Admin;

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Export => "export",
            Class::Admin => "admin",
        }
    }
}

/// One classification rule: a command (program and leading words) and,
/// optionally, arguments of which one must be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub class: Class,
    /// The program's name and the words that must follow it, e.g.
    /// `["systemctl", "status"]`.
    pub command: Vec<String>,
    /// If non-empty, the rule applies only when one of these is among the
    /// arguments: `-r` matches any short-option cluster holding `r`
    /// (`-rf`), `--recursive` also matches `--recursive=…` and every
    /// abbreviation GNU `getopt_long` accepts (`--rec`, `--r=…`), anything
    /// else matches a word exactly (`-exec`).
    pub when_any: Vec<String>,
}

/// The rules as configured: `[[ssh_gateway.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub class: Class,
    /// The command words, space-separated: `"systemctl status"`.
    pub command: String,
    #[serde(default)]
    pub when_any: Vec<String>,
}

impl RawRule {
    pub fn rule(&self) -> Result<Rule, String> {
        let command: Vec<String> = self
            .command
            .split_whitespace()
            .map(str::to_string)
            .collect();
        match command.first() {
            None => Err("`command` is empty".into()),
            Some(p) if p.contains('/') => Err(format!(
                "`command` names a program by its name, not a path ({p:?})"
            )),
            Some(_) => Ok(Rule {
                class: self.class,
                command,
                when_any: self.when_any.clone(),
            }),
        }
    }
}

fn r(class: Class, command: &str, when_any: &[&str]) -> Rule {
    Rule {
        class,
        command: command.split_whitespace().map(str::to_string).collect(),
        when_any: when_any.iter().map(|s| s.to_string()).collect(),
    }
}

/// The built-in rules (configured rules come first and, being as specific,
/// win ties by class). Programs not named here are unknown: most privileged.
pub fn default_rules() -> Vec<Rule> {
    use Class::*;
    let mut v = Vec::new();
    for p in [
        "cat",
        "ls",
        "head",
        "tail",
        "grep",
        "egrep",
        "fgrep",
        "wc",
        "stat",
        "file",
        "df",
        "du",
        "free",
        "uptime",
        "whoami",
        "id",
        "hostname",
        "uname",
        "date",
        "ps",
        "pwd",
        "echo",
        "printf",
        "true",
        "false",
        "test",
        "[",
        "journalctl",
        "sort",
        "uniq",
        "cut",
        "tr",
        "md5sum",
        "sha256sum",
        "sha1sum",
        "diff",
        "cmp",
        "basename",
        "dirname",
        "realpath",
        "readlink",
        "which",
        "nproc",
        "lsblk",
        "ss",
        "netstat",
        "ip",
        "cd",
        "sleep",
        "seq",
        "getent",
        "findmnt",
        "dmesg",
    ] {
        v.push(r(Read, p, &[]));
    }
    for c in [
        "systemctl status",
        "systemctl is-active",
        "systemctl is-enabled",
        "systemctl is-failed",
        "systemctl list-units",
        "systemctl list-unit-files",
        "systemctl list-timers",
        "systemctl show",
        "systemctl cat",
        "docker ps",
        "docker logs",
        "docker inspect",
    ] {
        v.push(r(Read, c, &[]));
    }
    // Read programs that run other programs, change the system or write
    // files with some options. (`ip` is read by `ip_changes`: its words
    // are abbreviated.)
    // dmesg also sets the console's log level and turns console logging
    // off or on.
    v.push(r(
        Admin,
        "dmesg",
        &[
            "-c",
            "-C",
            "--clear",
            "--read-clear",
            "-n",
            "--console-level",
            "-D",
            "--console-off",
            "-E",
            "--console-on",
        ],
    ));
    // sort pipes its temporary files through the program named.
    v.push(r(Admin, "sort", &["--compress-program"]));
    v.push(r(Write, "sort", &["-o", "--output"]));
    // bash evaluates array subscripts (and the `$(…)` in them) in the name
    // given to `printf -v` and `test -v`/`-R`.
    v.push(r(Admin, "printf", &["-v"]));
    v.push(r(Admin, "test", &["-v", "-R"]));
    v.push(r(Admin, "[", &["-v", "-R"]));
    v.push(r(
        Admin,
        "journalctl",
        &[
            "--vacuum-size",
            "--vacuum-time",
            "--vacuum-files",
            "--rotate",
            "--flush",
            "--sync",
            "--relinquish-var",
            "--smart-relinquish-var",
            "--setup-keys",
            "--update-catalog",
        ],
    ));
    v.push(r(Admin, "date", &["-s", "--set"]));
    v.push(r(Admin, "hostname", &["-F", "--file", "-b", "--boot"]));
    v.push(r(Admin, "ss", &["-K", "--kill"]));
    // `ss -D FILE` dumps raw TCP information into FILE; journalctl
    // `--cursor-file` writes the cursor it ended at.
    v.push(r(Write, "ss", &["-D", "--diag"]));
    v.push(r(Write, "journalctl", &["--cursor-file"]));
    v.push(r(Write, "file", &["-C", "--compile"]));
    v.push(r(Read, "find", &[]));
    v.push(r(
        Admin,
        "find",
        &[
            "-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf",
            "-fls",
        ],
    ));
    for p in [
        "rm", "mv", "cp", "mkdir", "rmdir", "touch", "chmod", "chown", "chgrp", "ln", "tee",
        "truncate", "install",
    ] {
        v.push(r(Write, p, &[]));
    }
    v.push(r(Admin, "rm", &["-r", "-R", "--recursive"]));
    v.push(r(Admin, "chmod", &["-R", "--recursive"]));
    v.push(r(Admin, "chown", &["-R", "--recursive"]));
    for p in [
        "tar",
        "zip",
        "gzip",
        "gunzip",
        "zcat",
        "bzip2",
        "bzcat",
        "xz",
        "xzcat",
        "zstd",
        "zstdcat",
        "base64",
        "base32",
        "xxd",
        "od",
        "hexdump",
        "pg_dump",
        "pg_dumpall",
        "mysqldump",
        "cpio",
    ] {
        v.push(r(Export, p, &[]));
    }
    for p in [
        "sudo",
        "su",
        "doas",
        "pkexec",
        "systemctl",
        "service",
        "apt",
        "apt-get",
        "aptitude",
        "dpkg",
        "yum",
        "dnf",
        "rpm",
        "zypper",
        "apk",
        "pacman",
        "snap",
        "pip",
        "pip3",
        "reboot",
        "shutdown",
        "halt",
        "poweroff",
        "kill",
        "killall",
        "pkill",
        "useradd",
        "userdel",
        "usermod",
        "groupadd",
        "passwd",
        "mount",
        "umount",
        "iptables",
        "nft",
        "crontab",
        "docker",
        "kubectl",
        "git",
    ] {
        v.push(r(Admin, p, &[]));
    }
    v
}

/// How certainly a rule applies to a command whose words may be dynamic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fit {
    No,
    Maybe,
    Yes,
}

/// What the classifier found in a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The highest class: the action's operation.
    pub class: Class,
    /// Every class a part of the line has (the highest hides the others:
    /// `base64 x; rm y` is `export` and writes).
    pub classes: BTreeSet<Class>,
    /// Program names of the simple commands (as normalized), for policy.
    pub commands: BTreeSet<String>,
    /// Literal arguments that look like paths, and redirection targets.
    pub paths: BTreeSet<String>,
    /// Why parts were classified as most privileged (empty when the rules
    /// knew everything).
    pub unknown: Vec<String>,
}

/// Directories whose programs are named by their base name
/// (`/usr/bin/cat` is `cat`); a program run by any other path is unknown.
const SYSTEM_DIRS: &[&str] = &[
    "/bin/",
    "/usr/bin/",
    "/sbin/",
    "/usr/sbin/",
    "/usr/local/bin/",
    "/usr/local/sbin/",
];

/// Assignments that change nothing about which program runs or how.
fn harmless_assignment(name: &str) -> bool {
    matches!(
        name,
        "LANG" | "TZ" | "COLUMNS" | "LINES" | "NO_COLOR" | "SYSTEMD_COLORS"
    ) || name.starts_with("LC_")
}

/// Wrappers that run their argument as a command when given no options.
const PLAIN_WRAPPERS: &[&str] = &["nice", "nohup", "env", "time", "command"];

pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// `configured` rules come first, then the defaults.
    pub fn new(configured: Vec<Rule>) -> Classifier {
        let mut rules = configured;
        rules.extend(default_rules());
        Classifier { rules }
    }

    pub fn classify_str(&self, command: &str) -> Analysis {
        self.classify(&shell::parse(command))
    }

    pub fn classify(&self, script: &Script) -> Analysis {
        let mut a = Analysis {
            class: Class::Read,
            classes: BTreeSet::new(),
            commands: BTreeSet::new(),
            paths: BTreeSet::new(),
            unknown: script.opaque.clone(),
        };
        for c in &script.commands {
            let class = self.simple(c, &mut a);
            a.class = a.class.max(class);
            a.classes.insert(class);
        }
        if !a.unknown.is_empty() {
            a.class = Class::MOST;
        }
        // An empty line (or one of comments) still has its class.
        a.classes.insert(a.class);
        a
    }

    fn simple(&self, c: &Simple, a: &mut Analysis) -> Class {
        let mut class = Class::Read;
        for rd in &c.redirects {
            if let Word::Lit(t) = &rd.target {
                if rd.writes() || rd.reads() {
                    a.paths.insert(t.clone());
                }
            }
            if rd.writes() {
                class = class.max(Class::Write);
            }
        }
        for (name, _) in &c.assignments {
            if !harmless_assignment(name) {
                a.unknown
                    .push(format!("the assignment {name}=… can change what runs"));
                return Class::MOST;
            }
        }
        let argv: &[Word] = &c.argv;
        class.max(self.argv(argv, a, 0))
    }

    fn argv(&self, argv: &[Word], a: &mut Analysis, depth: usize) -> Class {
        let Some(first) = argv.first() else {
            return Class::Read;
        };
        let Some(name) = first.lit() else {
            a.unknown
                .push("a command name known only when it runs".into());
            return Class::MOST;
        };
        let program = match program_name(name) {
            Some(p) => p,
            None => {
                a.unknown
                    .push(format!("a program run by its path ({name})"));
                return Class::MOST;
            }
        };
        a.commands.insert(program.to_string());
        for w in &argv[1..] {
            if let Word::Lit(s) = w {
                if s.contains('/') || s.starts_with('~') {
                    a.paths.insert(s.clone());
                }
            }
        }
        if PLAIN_WRAPPERS.contains(&program) && depth < 4 {
            // Without options, `nice cmd …` runs `cmd …`: classify that.
            let mut rest = &argv[1..];
            if program == "env" {
                while let Some(Word::Lit(w)) = rest.first() {
                    match w.split_once('=') {
                        Some((n, _)) if harmless_assignment(n) => rest = &rest[1..],
                        _ => break,
                    }
                }
            }
            return match rest.first() {
                None => Class::Read,
                Some(Word::Lit(w)) if !w.starts_with('-') && !w.contains('=') => {
                    self.argv(rest, a, depth + 1)
                }
                _ => {
                    a.unknown
                        .push(format!("`{program}` with options or assignments"));
                    Class::MOST
                }
            };
        }
        if program == "timeout" && depth < 4 {
            if let (Some(Word::Lit(d)), true) = (argv.get(1), argv.len() > 2) {
                if d.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
                    return self.argv(&argv[2..], a, depth + 1);
                }
            }
        }
        let mut best: Option<(usize, Class)> = None;
        let mut maybe: Vec<(usize, Class)> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.command[0] == program) {
            let fit = fit(rule, argv);
            let spec = rule.command.len() * 2 + usize::from(!rule.when_any.is_empty());
            match fit {
                Fit::Yes => {
                    if best.is_none_or(|(s, c)| spec > s || (spec == s && rule.class > c)) {
                        best = Some((spec, rule.class));
                    }
                }
                Fit::Maybe => maybe.push((spec, rule.class)),
                Fit::No => {}
            }
        }
        let Some((spec, mut class)) = best else {
            a.unknown.push(format!("no rule for `{program}`"));
            return Class::MOST;
        };
        for (s, c) in maybe {
            if s >= spec {
                class = class.max(c);
            }
        }
        class.max(positional_rules(program, argv))
    }
}

/// The name a program is classified by: its own, or the base name of a
/// path into a system directory. `None` for any other path.
fn program_name(name: &str) -> Option<&str> {
    if !name.contains('/') {
        return Some(name);
    }
    SYSTEM_DIRS.iter().find_map(|d| {
        name.strip_prefix(d)
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
    })
}

fn fit(rule: &Rule, argv: &[Word]) -> Fit {
    let mut f = Fit::Yes;
    for (k, want) in rule.command.iter().enumerate().skip(1) {
        match argv.get(k) {
            None => return Fit::No,
            Some(Word::Lit(w)) if w == want => {}
            Some(Word::Lit(_)) => return Fit::No,
            Some(Word::Dynamic(_)) => f = Fit::Maybe,
        }
    }
    if rule.when_any.is_empty() {
        return f;
    }
    let mut cond = Fit::No;
    for w in &argv[1..] {
        match w {
            Word::Dynamic(_) => cond = cond.max(Fit::Maybe),
            Word::Lit(w) => {
                if rule.when_any.iter().any(|p| arg_matches(p, w)) {
                    cond = Fit::Yes;
                }
            }
        }
    }
    f.min(cond)
}

fn arg_matches(pattern: &str, word: &str) -> bool {
    let short = pattern.len() == 2 && pattern.starts_with('-') && pattern != "--";
    if short {
        let letter = &pattern[1..];
        return word.starts_with('-') && !word.starts_with("--") && word[1..].contains(letter);
    }
    if pattern.starts_with("--") {
        // GNU getopt_long takes any unambiguous abbreviation: `--rec` is
        // `--recursive`. Ambiguous ones match too (more privileged).
        let name = word.split_once('=').map_or(word, |(n, _)| n);
        return name.len() > 2 && word.starts_with("--") && pattern.starts_with(name);
    }
    word == pattern
}

/// Classes that depend on positional words, which rules cannot express:
/// `ip OBJECT COMMAND` (abbreviated: `ip a a` is `ip address add`),
/// `uniq IN OUT` (writes OUT), `hostname NAME` and `date MMDDhhmm` (set
/// them). Dynamic words count as what they might be.
fn positional_rules(program: &str, argv: &[Word]) -> Class {
    let args = &argv[1..];
    match program {
        "ip" => ip_class(args),
        "uniq" if positional(args, &["-f", "-s", "-w"]).len() >= 2 => Class::Write,
        "hostname" if !positional(args, &[]).is_empty() => Class::Admin,
        "date"
            if positional(args, &["-d", "--date", "-f", "--file", "-r", "--reference"])
                .iter()
                .any(|w| !matches!(w, Word::Lit(s) if s.starts_with('+'))) =>
        {
            Class::Admin
        }
        _ => Class::Read,
    }
}

/// The words that are not options nor the argument of one in `takes_arg`.
fn positional<'w>(args: &'w [Word], takes_arg: &[&str]) -> Vec<&'w Word> {
    let mut out = Vec::new();
    let mut skip = false;
    for w in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        match w {
            Word::Lit(s) if s.starts_with('-') && s.len() > 1 => {
                skip = takes_arg.contains(&s.as_str());
            }
            _ => out.push(w),
        }
    }
    out
}

/// `ip [OPTIONS] OBJECT [COMMAND …]`: read only for no command or one that
/// abbreviates `show`, `list` or `get` and nothing that changes state
/// (iproute2 matches any prefix, and `s` is `set` to `ip link`).
/// `-batch` runs commands from a file, `netns exec` a program.
fn ip_class(args: &[Word]) -> Class {
    const FLAGS: &[&str] = &[
        "-4",
        "-6",
        "-s",
        "-d",
        "-c",
        "-j",
        "-p",
        "-o",
        "-h",
        "-br",
        "-brief",
        "-details",
        "-stats",
        "-statistics",
        "-color",
        "-json",
        "-pretty",
        "-oneline",
        "-human",
        "-resolve",
        "-r",
    ];
    const READ: &[&str] = &["show", "list", "lst", "get"];
    const CHANGE: &[&str] = &[
        "add", "append", "change", "chg", "delete", "del", "exec", "flush", "prepend", "replace",
        "restore", "save", "set", "update", "attach", "detach",
    ];
    let mut words = args.iter();
    // Options, then the object.
    loop {
        match words.next() {
            None => return Class::Read,
            Some(Word::Dynamic(_)) => return Class::Admin,
            Some(Word::Lit(w)) if w.starts_with('-') => {
                if !FLAGS.contains(&w.as_str()) {
                    return Class::Admin;
                }
            }
            Some(Word::Lit(_)) => break,
        }
    }
    match words.next() {
        None => Class::Read,
        Some(Word::Lit(c))
            if READ.iter().any(|r| r.starts_with(c.as_str()))
                && !CHANGE.iter().any(|w| w.starts_with(c.as_str())) =>
        {
            Class::Read
        }
        Some(_) => Class::Admin,
    }
}
