//! The classifier's corpus: ordinary commands get their class, and every
//! known way to smuggle a privileged command past a command-line classifier
//! (quoting, `$IFS`, escapes, function and alias definitions, wrappers,
//! here-documents, `;` and newline smuggling, absolute paths, globs, brace
//! and ANSI-C expansion, assignments, compound commands) is at least as
//! privileged as what it really runs — here, `admin`.

use proptest::prelude::*;
use secondkey_ssh::classify::{Class, Classifier};
use secondkey_ssh::shell::{self, Word};

fn class_of(c: &str) -> Class {
    Classifier::new(vec![]).classify_str(c).class
}

#[test]
fn ordinary_commands_get_their_class() {
    use Class::*;
    let cases: &[(&str, Class)] = &[
        ("ls -la /var/log", Read),
        ("cat /etc/hostname", Read),
        ("journalctl -u postgresql --since today", Read),
        ("systemctl status postgresql", Read),
        ("systemctl st\"\"atus postgresql", Read),
        ("ps aux | grep postgres | wc -l", Read),
        ("uptime; df -h", Read),
        ("echo $HOME", Read),
        ("LANG=C ls", Read),
        ("ls 2>/dev/null", Read),
        ("ls 2>&1 | head", Read),
        ("time ls", Read),
        ("/usr/bin/cat /etc/hostname", Read),
        ("(cd /srv && ls)", Read),
        ("echo $((1 + 2))", Read),
        ("cat <<< hello", Read),
        ("cat <<'EOF'\nhello $(rm -rf /)\nEOF", Read),
        ("echo sudo reboot", Read),
        ("ls # ; sudo reboot", Read),
        ("ls $(echo /)", Read),
        ("find /var/log -name '*.gz'", Read),
        ("ip addr show", Read),
        ("ip a", Read),
        ("ip -br addr sh", Read),
        ("ip r", Read),
        ("ip route get 1.1.1.1", Read),
        ("ip -6 route list table main", Read),
        ("date +%s", Read),
        ("date -d yesterday +%F", Read),
        ("hostname -f", Read),
        ("uniq -c x", Read),
        ("sort -k2 -n x", Read),
        ("printf '%s\n' x", Read),
        ("test -f x && test -d y", Read),
        ("journalctl --since today --output=json", Read),
        ("sort -o sorted x", Write),
        ("sort --output=sorted x", Write),
        ("sort --out sorted x", Write),
        ("uniq in out", Write),
        ("ss -D /tmp/dump", Write),
        ("ss -tanD /tmp/dump", Write),
        ("ss --diag=/tmp/dump", Write),
        ("journalctl --cursor-file=/tmp/c -n 5", Write),
        ("dmesg -n 1", Admin),
        ("dmesg --console-level=1", Admin),
        ("dmesg -D", Admin),
        ("dmesg --console-off", Admin),
        ("dmesg -E", Admin),
        ("ss -tan", Read),
        ("dmesg -T", Read),
        ("file -C -m x", Write),
        ("echo hi > /tmp/x", Write),
        ("cat /etc/hostname > /etc/motd", Write),
        ("rm /tmp/x", Write),
        ("touch a && mv a b", Write),
        ("ls -la | tee /tmp/x", Write),
        ("ls >& /tmp/x", Write),
        ("tar czf - /var/lib/postgresql", Export),
        ("base64 /etc/ssl/private/key.pem", Export),
        ("pg_dump app", Export),
        ("sudo systemctl restart postgresql", Admin),
        ("systemctl restart postgresql", Admin),
        ("systemctl stop nginx", Admin),
        ("systemctl --no-pager status x", Admin),
        ("apt-get install -y nginx", Admin),
        ("git push", Admin),
        ("ip route add default via 10.0.0.1", Admin),
        ("rm -rf /srv/data", Admin),
        ("rm -r -f x", Admin),
        ("rm --recursive x", Admin),
        ("rm -fR x", Admin),
        ("some-unknown-tool --flag", Admin),
    ];
    let c = Classifier::new(vec![]);
    for (cmd, want) in cases {
        let a = c.classify_str(cmd);
        assert_eq!(a.class, *want, "{cmd:?}: {a:?}");
    }
}

/// Each of these really runs something privileged (or something the
/// classifier cannot know): none may be classified below `admin`.
const BYPASSES: &[&str] = &[
    // Quoting tricks.
    "'sudo' ls",
    "\"sudo\" ls",
    "s'u'do ls",
    "s\"u\"do ls",
    "'systemctl' restart postgresql",
    "systemctl re'start' postgresql",
    "systemctl 'status'; systemctl restart x",
    // $IFS and other expansions in the command name.
    "cat${IFS}/etc/shadow",
    "sudo${IFS}reboot",
    "ls${IFS}-la",
    "$SHELL -c id",
    "${PAGER:-sudo} reboot",
    "$(echo sudo) reboot",
    "`echo sudo` reboot",
    // Backslash-escaped names.
    "\\sudo reboot",
    "s\\udo reboot",
    "\\rm -rf /",
    "r\\m -r x",
    // Function and alias definitions.
    "ls() { rm -rf /; }; ls",
    "function ls { rm -rf /; }; ls",
    "ls () { sudo reboot; }\nls",
    "alias ls='rm -rf /'; ls",
    // Wrappers.
    "env rm -rf /",
    "env -i sudo reboot",
    "env PATH=/tmp ls",
    "xargs rm -rf",
    "echo / | xargs rm",
    "find / -name x -exec rm {} \\;",
    "find / -delete",
    "sh -c 'ls'",
    "bash -c 'cat /etc/shadow'",
    "python3 -c 'import os; os.system(\"rm -rf /\")'",
    "perl -e 'system(\"reboot\")'",
    "busybox rm -rf /",
    "busybox sh",
    "nohup rm -rf / &",
    "timeout 5 sudo reboot",
    "nice sudo reboot",
    "nice -n 5 ls",
    "command rm -rf /",
    "exec sudo reboot",
    "eval 'sudo reboot'",
    ". /tmp/script.sh",
    "source /tmp/script.sh",
    "awk 'BEGIN{system(\"reboot\")}'",
    "sed -n '1e reboot' /etc/hostname",
    // Here-documents.
    "sh <<EOF\nrm -rf /\nEOF",
    "bash <<'EOF'\nsudo reboot\nEOF",
    "cat <<EOF\n$(sudo reboot)\nEOF",
    "cat <<EOF\n`sudo reboot`\nEOF",
    "cat <<EOF\nunterminated",
    // `;`, `&`, `|` and newline smuggling.
    "ls; sudo reboot",
    "ls\nsudo reboot",
    "ls\r\nsudo reboot",
    "ls && sudo reboot",
    "ls || sudo reboot",
    "ls | sudo tee /etc/x",
    "ls & sudo reboot",
    "ls #\nsudo reboot",
    "ls;sudo reboot",
    "ls&&sudo reboot",
    // Substitutions anywhere.
    "echo $(sudo reboot)",
    "echo `sudo reboot`",
    "echo \"$(rm -rf /)\"",
    "echo \"`rm -rf /`\"",
    "echo ${x:-$(sudo reboot)}",
    "echo $(( a[$(reboot)] ))",
    "cat <(sudo cat /etc/shadow)",
    "ls > >(sudo tee /etc/x)",
    "echo $(echo $(echo $(sudo reboot)))",
    // Absolute and relative paths of binaries.
    "/usr/bin/sudo reboot",
    "/bin/rm -rf /",
    "/usr/bin/systemctl restart postgresql",
    "/tmp/cat /etc/shadow",
    "./ls",
    "/usr/bin/../bin/sudo reboot",
    "//usr/bin/cat /etc/shadow",
    // Globs and brace expansion.
    "/???/??t /etc/shadow",
    "/bin/c?t /etc/shadow",
    "{sudo,reboot}",
    "rm {-rf,/}",
    "rm -[r] x",
    // ANSI-C and locale quoting.
    "$'\\x73udo' reboot",
    "$\"sudo\" reboot",
    // Assignments that change what runs.
    "PATH=/tmp:$PATH ls",
    "LD_PRELOAD=/tmp/x.so ls",
    "IFS=/; ls",
    "BASH_ENV=/tmp/x bash",
    // Compound commands.
    "if true; then sudo reboot; fi",
    "for i in 1; do rm -rf /; done",
    "while :; do :; done",
    "until false; do :; done",
    "case x in x) sudo reboot;; esac",
    "[[ -f x ]] && ls",
    "! ls",
    "coproc sudo reboot",
    // Groups.
    "(sudo reboot)",
    "{ sudo reboot; }",
    "( ls; (sudo reboot) )",
    // Unparseable input.
    "echo 'abc",
    "echo \"abc",
    "echo $(ls",
    "echo `ls",
    "ls )",
    "ls\0sudo reboot",
    // Read programs that run programs or change the system.
    "sort -S 1K --compress-program=sh x",
    "sort --compress-prog sh -S 1K x",
    "sort --co=sh x",
    "printf -v 'a[$(sudo reboot)]' x",
    "test -v 'a[$(sudo reboot)]'",
    "[ -v 'a[$(sudo reboot)]' ]",
    "[ -R x ]",
    "git status",
    "git log",
    "git diff",
    "git show HEAD",
    "journalctl --vacuum-size=1M",
    "journalctl --rot",
    "date -s 2020-01-01",
    "date 010100002020",
    "hostname evil",
    "ss -K dst 10.0.0.9",
    // Abbreviated options and words.
    "rm --rec x",
    "rm --rec -f /srv/data",
    "rm --r x",
    "chmod --rec 777 x",
    "chown --recursive=x a x",
    "chown --rec a x",
    "ip a a 10.0.0.9/24 dev eth0",
    "ip r d default",
    "ip l s eth0 down",
    "ip -4 addr del 10.0.0.9/24 dev eth0",
    "ip netns exec x sudo reboot",
    "ip -batch x",
    "ip -n x a a 10.0.0.9/24 dev eth0",
    // Where a reader and the real shell disagree (each verified in bash and
    // dash; see `the_shells_run_nothing_above_the_class`).
    // `\r` is a word character to the shell, so `#` is not a comment.
    "ls\r#;sudo reboot",
    "true\r#;sudo reboot",
    "scp -t x\r#;sudo reboot",
    // A here-document's body is read at the next newline, inside a group.
    "cat <<true; ( ls\ntrue\n)\nsudo reboot\ntrue",
    // A comment inside `$( … )` hides its `)`.
    "echo $(true # ) '\nsudo reboot\n#';(\n)",
    // Brace expansion with quoted or escaped blanks makes `-exec` a word.
    "find {\"x y\",.,-exec} sudo reboot \\;",
    "find {x\\ y,.,-exec} sudo reboot \\;",
    // `$((` not closed by `))` is a command substitution to bash.
    "echo $((sudo reboot) )",
    // Arithmetic evaluates a name's value, subscripts and all.
    "echo 'a[$(sudo reboot)]'; echo $((_))",
    "echo 'a[$(sudo reboot)]'; echo $[_]",
    // Indirect and prompt expansions expand again.
    "echo 'a[$(sudo reboot)]'; echo ${!_}",
    "echo '$(sudo reboot)'; echo ${_@P}",
    // Single quotes inside a double-quoted `${…}`: dash reads them as
    // characters (and runs `sudo reboot`), bash as quotes.
    "echo \"${x-'}\"; sudo reboot; echo \"'}\"",
    // dash reads `a &> f b` as `a &` then `> f b`: `b` runs.
    "true &>x sudo reboot",
];

#[test]
fn the_bypass_corpus_is_never_below_admin() {
    let mut failures = Vec::new();
    for b in BYPASSES {
        let c = class_of(b);
        if c != Class::Admin {
            failures.push(format!("{b:?} → {c:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "classified below admin:\n{}",
        failures.join("\n")
    );
}

#[test]
fn oversized_commands_are_most_privileged() {
    let long = format!("ls {}", "a".repeat(shell::MAX_COMMAND));
    assert_eq!(class_of(&long), Class::Admin);
    let deep = format!("{}ls{}", "$(echo ".repeat(40), ")".repeat(40));
    assert_eq!(class_of(&deep), Class::Admin);
}

#[test]
fn configured_rules_extend_the_defaults() {
    use secondkey_ssh::classify::RawRule;
    let raw: Vec<RawRule> = toml::from_str::<toml::Value>(
        r#"
        [[rules]]
        class = "read"
        command = "deploy-status"
        [[rules]]
        class = "write"
        command = "systemctl reload"
        [[rules]]
        class = "admin"
        command = "cat"
        when_any = ["/etc/shadow"]
        "#,
    )
    .unwrap()["rules"]
        .clone()
        .try_into()
        .unwrap();
    let c = Classifier::new(raw.iter().map(|r| r.rule().unwrap()).collect());
    assert_eq!(c.classify_str("deploy-status --json").class, Class::Read);
    assert_eq!(c.classify_str("systemctl reload nginx").class, Class::Write);
    assert_eq!(c.classify_str("cat /etc/shadow").class, Class::Admin);
    assert_eq!(c.classify_str("cat /etc/hostname").class, Class::Read);
    // A dynamic argument might be /etc/shadow: the stricter rule counts.
    assert_eq!(c.classify_str("cat $F").class, Class::Admin);
    let bad: RawRule = toml::from_str("class = \"read\"\ncommand = \"/usr/bin/x\"").unwrap();
    assert!(bad.rule().is_err());
}

#[test]
fn facts_name_programs_and_paths() {
    let a = Classifier::new(vec![])
        .classify_str("sudo systemctl restart postgresql && cat /etc/x > /tmp/out");
    assert_eq!(a.class, Class::Admin);
    assert!(a.commands.contains("sudo") && a.commands.contains("cat"));
    assert!(a.paths.contains("/etc/x") && a.paths.contains("/tmp/out"));
}

fn quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\\''"))
}

proptest! {
    /// Any text: the reader and classifier never panic.
    #[test]
    fn any_text_is_read_without_panicking(s in "\\PC{0,200}") {
        let _ = Classifier::new(vec![]).classify_str(&s);
    }

    /// Any text followed by a privileged command on a new line: the
    /// privileged command is seen (the same property as the `ssh_shell`
    /// fuzz target), unless the text continues onto that line as the shell
    /// would read it (a trailing backslash). Comments and here-documents
    /// included: an unclosed here-document is opaque.
    #[test]
    fn any_text_then_a_privileged_line_is_admin(s in "[ -~\t]{0,60}") {
        let s = s.trim_end_matches('\\');
        let line = format!("{s}\nsudo reboot");
        prop_assert_eq!(class_of(&line), Class::Admin, "{:?}", line);
    }

    /// Words quoted with single quotes read back exactly.
    #[test]
    fn quoted_words_round_trip(words in proptest::collection::vec("[^\\x00]{1,12}", 1..6)) {
        let line = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
        let s = shell::parse(&line);
        prop_assert!(s.opaque.is_empty(), "{:?}", s.opaque);
        prop_assert_eq!(s.commands.len(), 1);
        let got: Vec<Word> = s.commands[0].argv.clone();
        let want: Vec<Word> = words.iter().map(|w| Word::Lit(w.clone())).collect();
        prop_assert_eq!(got, want);
    }

    /// Whatever comes first on the line, a privileged command on the next
    /// line is seen.
    #[test]
    fn a_privileged_next_line_is_always_seen(parts in proptest::collection::vec(prop_oneof![
        Just("ls"), Just("-la"), Just("'a b'"), Just("\"x y\""), Just("$HOME"), Just("|"),
        Just("&&"), Just(";"), Just("$(echo hi)"), Just("2>/dev/null"), Just("cat"), Just("("),
        Just(")"), Just("{"), Just("}"), Just("<<EOF"), Just("\"$(date)\""), Just("`id`"), Just("&"),
    ], 0..10)) {
        let line = format!("{}\nsudo reboot", parts.join(" "));
        prop_assert_eq!(class_of(&line), Class::Admin, "{:?}", line);
    }
}

/// Programs the differential test provides as stubs: each appends its
/// argv to a log and exits.
const STUBS: &[&str] = &[
    "ls", "cat", "sudo", "reboot", "rm", "find", "tar", "sort", "grep", "head", "scp",
];

/// The pieces generated command lines are made of: words, operators,
/// quotes, comments, here-documents, groups, substitutions and expansions,
/// and the bytes where readers and shells have disagreed.
const PIECES: &[&str] = &[
    "ls",
    "sudo reboot",
    "sudo",
    "reboot",
    "cat",
    "rm -r x",
    "rm --rec x",
    "find . -exec",
    "grep",
    "x",
    "E",
    "true",
    "echo",
    " ",
    " ",
    " ",
    "\t",
    "\n",
    "\r",
    "#",
    ";",
    "&",
    "&&",
    "||",
    "|",
    "(",
    ")",
    "{",
    "}",
    "{ ",
    " }",
    "$(",
    "`",
    "\"",
    "'",
    "\\",
    "<<E",
    "<<-E",
    "<<'E'",
    "<x",
    ">x",
    "&>",
    "2>&1",
    "{x,y}",
    "{\"a b\",-r}",
    "{a\\ b,c}",
    "$((",
    "))",
    "1",
    "${x-",
    "${x}",
    "$x",
    "$_",
    "*",
    "?",
    "[",
    "]",
    "=",
    "LANG=C ",
    "\\\n",
    "!",
    "%",
];

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn line(&mut self) -> String {
        let n = 1 + (self.next() % 9) as usize;
        (0..n)
            .map(|_| PIECES[(self.next() % PIECES.len() as u64) as usize])
            .collect()
    }
}

/// Whether a line is safe to hand to a real shell whose PATH holds only
/// the stubs and whose working directory and HOME are a fresh temporary
/// directory: no paths (a `/` reaches real programs and files), no
/// builtins that leave the directory or reach other processes.
fn safe_to_run(line: &str) -> bool {
    !line.contains('/')
        && !line.contains('\0')
        && [
            "cd", "kill", "ulimit", "umask", "pushd", "popd", "trap", "wait",
        ]
        .iter()
        .all(|w| !line.contains(w))
}

struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let log = root.path().join("log");
        for name in STUBS {
            let stub = bin.join(name);
            std::fs::write(
                &stub,
                format!(
                    "#!/bin/sh\n{{ printf '%s\\037' {name}; for a do printf '%s\\037' \"$a\"; done; printf '\\036'; }} >> '{}'\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Sandbox { root }
    }

    /// Runs `line` under `shell -c` and returns the argv of every stub
    /// that ran.
    fn run(&self, shell: &str, line: &str) -> Vec<Vec<String>> {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let work = self.root.path().join("work");
        let log = self.root.path().join("log");
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_file(&log);
        std::fs::create_dir(&work).unwrap();
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(line)
            .env_clear()
            .env("PATH", self.root.path().join("bin"))
            .env("HOME", &work)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // Reading stdout to its end also waits for background stubs.
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
            let _ = tx.send(());
        });
        if rx.recv_timeout(std::time::Duration::from_secs(2)).is_err() {
            // A loop: stop the whole process group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
        }
        let _ = child.wait();
        let text = std::fs::read(&log).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .split('\u{1e}')
            .filter(|r| !r.is_empty())
            .map(|r| {
                r.split('\u{1f}')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }
}

/// The shell's path (the stubs' PATH would not find it).
fn find_shell(name: &str) -> Option<String> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

/// The reader against the real shells: every line of the corpus and a few
/// thousand generated ones run under `bash -c` and `dash -c` with stub
/// programs; every program that actually ran must be among the line's
/// commands, and the line's class no lower than that of what ran — or the
/// line is `admin` as a whole.
#[test]
fn the_shells_run_nothing_above_the_class() {
    let shells: Vec<String> = ["bash", "dash"]
        .into_iter()
        .filter_map(find_shell)
        .collect();
    assert!(!shells.is_empty(), "neither bash nor dash is installed");
    let sandbox = Sandbox::new();
    let c = Classifier::new(vec![]);
    let mut lines: Vec<String> = BYPASSES.iter().map(|s| s.to_string()).collect();
    let mut gen = Gen(0x5eed_2b6b_0d1f_f00d);
    lines.extend((0..6000).map(|_| gen.line()));
    let mut failures = Vec::new();
    for line in lines.iter().filter(|l| safe_to_run(l)) {
        let a = c.classify_str(line);
        if a.class == Class::Admin {
            continue;
        }
        for shell in &shells {
            for argv in sandbox.run(shell, line) {
                let ran = argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
                let want = c.classify_str(&ran).class;
                if !a.commands.contains(&argv[0]) || a.class < want {
                    failures.push(format!(
                        "{shell} -c {line:?} ran `{ran}` ({want:?}); the line is {:?} with {:?}",
                        a.class, a.commands
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The highest class hides the lower ones: `classes` lists them all, so a
/// policy on writes sees the write in a line that also exports.
#[test]
fn every_class_of_a_line_is_listed() {
    let c = Classifier::new(vec![]);
    let a = c.classify_str("base64 /dev/null; rm -f /srv/app/config");
    assert_eq!(a.class, Class::Export);
    assert!(a.classes.contains(&Class::Export) && a.classes.contains(&Class::Write));
    let a = c.classify_str("cat x > y; ls");
    assert_eq!(
        a.classes.iter().copied().collect::<Vec<_>>(),
        vec![Class::Read, Class::Write]
    );
    assert_eq!(c.classify_str("").classes.len(), 1);
    let a = c.classify_str("tar cf - x; sh -c y");
    assert!(a.classes.contains(&Class::Export) && a.classes.contains(&Class::Admin));
}
