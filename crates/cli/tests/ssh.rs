//! The SSH gateway end to end, with real OpenSSH on both sides: `sshd`
//! (started here on a loopback port with its own host keys and config, as
//! the current user — root in CI) is the upstream host; `ssh`, `scp` and
//! `sftp` are the agent. The upstream user's PATH starts with a directory
//! of harmless stand-ins for `sudo` and `systemctl` (scripts that log
//! their arguments), so "restart postgresql" really runs — once — without
//! touching the machine.
//!
//! One gateway and one sshd serve every scenario of the main test; the
//! scenarios that need a short `hold_timeout` start their own.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const POLICY: &str = r#"
@id("agents-ssh")
permit(principal in Group::"agents", action in Action::"ssh", resource);

@id("admin-needs-review")
@reason("administrative commands on hosts are approved by a data owner")
@review("data-owners")
forbid(principal, action == Action::"ssh.admin", resource);

@id("no-shadow")
@reason("password hashes never leave a host")
forbid(principal, action == Action::"ssh.export", resource)
when { context.gateway has paths && context.gateway.paths.contains("/etc/shadow") };
"#;

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn keygen(path: &Path, comment: &str) -> String {
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn user_name() -> String {
    let out = run(Command::new("id").arg("-un"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_port(port: u16, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "{what} exited with {s}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct World {
    g: Gateway,
    sshd: Child,
    dir: PathBuf,
    port: u16,
    agent_key: PathBuf,
    known_hosts: PathBuf,
    upstream_user: String,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// A fresh sshd and gateway. `sshd_port`'s host key is `host_key`; the
/// gateway pins it for `prod-db-1` and pins another key for `bad-pin`.
fn world(tmp: &Path) -> World {
    world_with(tmp, "90s", "")
}

/// A world with its own `hold_timeout` and policies added to [`POLICY`].
fn world_with(tmp: &Path, hold_timeout: &str, policy: &str) -> World {
    world_full(tmp, hold_timeout, policy, "")
}

/// [`world_with`], with more `[ssh_gateway]` keys.
fn world_full(tmp: &Path, hold_timeout: &str, policy: &str, gateway_keys: &str) -> World {
    let dir = tmp.to_path_buf();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        run(Command::new("chmod").arg("755").arg(&p));
    };
    script(
        "systemctl",
        &format!(
            "#!/bin/sh\necho \"$*\" >> {}/systemctl.log\necho \"systemctl $*: done\"\n",
            dir.display()
        ),
    );
    script("sudo", "#!/bin/sh\nexec \"$@\"\n");
    std::fs::write(dir.join("readme.txt"), "hello from the host\n").unwrap();
    // The upstream sshd.
    let host_pub = keygen(&dir.join("sshd_host_key"), "sshd");
    let other_pub = keygen(&dir.join("other_host_key"), "not-the-host");
    let upstream_pub = keygen(&dir.join("gateway_upstream_key"), "secondkey-gateway");
    std::fs::write(dir.join("authorized_keys"), format!("{upstream_pub}\n")).unwrap();
    let sshd_port = free_port();
    let user = user_name();
    // HOME is the test's directory so the upstream shell reads no dotfiles
    // of the user running the tests: a login script that waits (a stale
    // lock in root's ~/.bashrc held every command for 60 s) is not ours.
    let cfg = format!(
        "Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {d}/sshd_host_key\nPidFile none\nUsePAM no\n\
         AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
         AllowUsers {user}\nSubsystem sftp internal-sftp\nSetEnv HOME={d} PATH={d}/bin:/usr/local/bin:/usr/bin:/bin\n\
         LogLevel VERBOSE\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), cfg).unwrap();
    if user == "root" {
        // Privilege separation needs its empty directory when sshd starts as root.
        let _ = std::fs::create_dir_all("/run/sshd");
    }
    let sshd_log = dir.join("sshd.log");
    let mut sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(std::fs::File::create(&sshd_log).unwrap())
        .spawn()
        .expect("OpenSSH sshd (apt-get install openssh-server)");
    wait_port(sshd_port, "sshd", &mut sshd, &sshd_log);
    // The agent's keys: one registered, one certified by a configured CA.
    let agent_pub = keygen(&dir.join("agent_key"), "report-bot");
    let ca_pub = keygen(&dir.join("ca_key"), "agents-ca");
    keygen(&dir.join("other_key"), "other-bot");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(dir.join("ca_key"))
        .args([
            "-I",
            "other-bot-cert",
            "-n",
            "agent:other-bot",
            "-V",
            "-5m:+1h",
        ])
        .arg(dir.join("other_key.pub")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    keygen(&dir.join("stranger_key"), "stranger");
    // A certificate narrowed by a critical option the gateway does not
    // enforce (force-command): refused rather than widened.
    keygen(&dir.join("forced_key"), "forced");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(dir.join("ca_key"))
        .args([
            "-I",
            "forced",
            "-n",
            "agent:other-bot",
            "-O",
            "force-command=true",
            "-V",
            "-5m:+1h",
        ])
        .arg(dir.join("forced_key.pub")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The gateway's own host key, so the agent can pin it.
    let gw_pub = keygen(&dir.join("gateway_host_key"), "gateway");
    let port = free_port();
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {gw_pub}\n")).unwrap();
    let extra = format!(
        r#"
[[environments]]
name = "prod"
resources = ["ssh://prod-db-1/*"]

[ssh_gateway]
listen = "127.0.0.1:{port}"
host_key_file = "{d}/gateway_host_key"
hold_timeout = "{hold_timeout}"
recording_retention = "7d"
{gateway_keys}

[[ssh_gateway.keys]]
principal = "agent:report-bot"
key = "{agent_pub}"

[[ssh_gateway.authorities]]
key = "{ca_pub}"

[[ssh]]
name = "prod-db-1"
address = "127.0.0.1:{sshd_port}"
host_key = "[127.0.0.1]:{sshd_port} {host_pub}"
user = "{user}"
key_file = "{d}/gateway_upstream_key"

[[ssh]]
name = "bad-pin"
address = "127.0.0.1:{sshd_port}"
host_key = "bad-pin {other_pub}"
user = "{user}"
key_env = "GATEWAY_UPSTREAM_KEY"
"#,
        d = dir.display()
    );
    let key_text = std::fs::read_to_string(dir.join("gateway_upstream_key")).unwrap();
    let policy = format!("{POLICY}\n{policy}");
    let g = Gateway::start_full(
        &dir.join("gw"),
        &policy,
        "",
        &extra,
        &[
            ("GATEWAY_UPSTREAM_KEY", key_text.as_str()),
            // The gateway's log keeps its info lines (clients that left).
            ("SECONDKEY_LOG", "warn,secondkey_ssh=info"),
        ],
    );
    World {
        g,
        sshd,
        agent_key: dir.join("agent_key"),
        known_hosts,
        port,
        dir,
        upstream_user: user,
    }
}

impl World {
    fn opts(&self, key: &Path) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-i".into(),
            key.display().to_string(),
        ]
    }

    /// `ssh -l <user> gateway <args…>` with `key`.
    fn ssh(&self, key: &Path, user: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.opts(key))
            .args(["-p", &self.port.to_string(), "-l", user, "127.0.0.1"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn scp(&self, args: &[&str]) -> Command {
        let mut c = Command::new("scp");
        c.args(self.opts(&self.agent_key))
            .args(["-P", &self.port.to_string(), "-o", "User=prod-db-1"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn systemctl_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("systemctl.log")).unwrap_or_default()
    }

    fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.g.dir.join("gateway.log")).unwrap_or_default()
    }
}

#[test]
fn ssh_gateway_with_openssh_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let key = w.agent_key.clone();

    // An allowed read runs at once, with the gateway's key upstream.
    let out = run(&mut w.ssh(
        &key,
        "prod-db-1",
        &["cat", &format!("{}/readme.txt", w.dir.display())],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the host\n"
    );
    // The exit status of the upstream command comes back.
    let out = run(&mut w.ssh(&key, "agent:report-bot+prod-db-1", &["ls /nonexistent-dir"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = w.g.wait_log("the read's result", |e| {
        e["event"] == "action.result" && e["payload"]["summary"]["exit_status"] == 0
    });
    assert!(
        entry["payload"]["summary"]["bytes_out"].as_u64().unwrap() > 0,
        "{entry}"
    );

    // Done when: sudo systemctl restart postgresql on a prod host is held,
    // approved, and run once with the gateway's key.
    let cmd = "sudo systemctl restart postgresql";
    let mut child = Watched::spawn(w.ssh(&key, "prod-db-1", &[cmd]));
    let held = child.wait_line("held for review as request");
    assert!(
        held.contains(&w.g.url),
        "the line names the request's URL: {held}"
    );
    let id = request_id(&held);
    assert_eq!(w.systemctl_log(), "", "nothing ran while held");
    let (_, req) =
        w.g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(req["action"]["operation"], "admin", "{req}");
    assert_eq!(
        req["action"]["resource"],
        format!("ssh://prod-db-1/{}", w.upstream_user),
        "{req}"
    );
    assert_eq!(req["action"]["params"]["command"], cmd, "{req}");
    let (s, v) = w.g.review("user:bob", &id, "approve");
    assert_eq!(s, 200, "{v}");
    let (code, stdout, err) = child.finish(60);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(stdout, "systemctl restart postgresql: done\n");
    assert_eq!(
        w.systemctl_log(),
        "restart postgresql\n",
        "ran exactly once"
    );
    let detail = w.g.wait_log("the approved command's result", |e| {
        e["event"] == "action.result.detail" && e["subjects"]["request"] == id.as_str()
    });
    let summary = &detail["payload"]["summary"];
    assert_eq!(summary["exit_status"], 0, "{detail}");
    assert!(
        summary["duration_ms"].is_u64() && summary["bytes_out"].as_u64() == Some(35),
        "{detail}"
    );
    let (_, req) =
        w.g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(req["state"], "executed", "{req}");

    // The same command again is a new request (the approval was used);
    // denied, it exits 100 and nothing runs.
    let mut child = Watched::spawn(w.ssh(&key, "prod-db-1", &[cmd]));
    let id2 = request_id(&child.wait_line("held for review as request"));
    assert_ne!(id2, id);
    w.g.review("user:bob", &id2, "deny");
    let denied = child.wait_line("was denied");
    assert!(denied.contains("user:bob"), "{denied}");
    assert_eq!(child.finish(30).0, 100);
    assert_eq!(w.systemctl_log(), "restart postgresql\n");

    // scp of /etc/shadow is denied — over SFTP (OpenSSH's default) and
    // the legacy protocol (`scp -O`, an exec of `scp -f`).
    for legacy in [false, true] {
        let dst = w.dir.join(format!("shadow-{legacy}"));
        let mut c = w.scp(&[]);
        if legacy {
            c.arg("-O");
        }
        let out = run(c.arg("127.0.0.1:/etc/shadow").arg(&dst));
        assert!(!out.status.success(), "legacy={legacy}");
        assert!(!dst.exists(), "nothing was copied (legacy={legacy})");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.contains("denied") || err.contains("Permission denied"),
            "legacy={legacy}: {err}"
        );
    }
    let denials: Vec<Value> =
        w.g.log_entries()
            .into_iter()
            .filter(|e| e["event"] == "action.denied" && e["payload"]["action"]["kind"] == "ssh")
            .collect();
    assert!(
        denials
            .iter()
            .any(|e| e["payload"]["action"]["params"]["sftp"] == "open")
            && denials
                .iter()
                .any(|e| e["payload"]["action"]["params"]["scp"] == "from"),
        "{denials:?}"
    );
    // An ordinary download and an upload pass (export, write).
    let got = w.dir.join("readme-copy.txt");
    let out = run(w
        .scp(&[])
        .arg(format!("127.0.0.1:{}/readme.txt", w.dir.display()))
        .arg(&got));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "hello from the host\n"
    );
    let up = w.dir.join("upload.txt");
    std::fs::write(&up, "uploaded\n").unwrap();
    let out = run(w
        .scp(&[])
        .arg(&up)
        .arg(format!("127.0.0.1:{}/uploaded.txt", w.dir.display())));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(w.dir.join("uploaded.txt")).unwrap(),
        "uploaded\n"
    );

    // sftp: each operation on its own.
    let batch = w.dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "ls {d}\n-get /etc/shadow {d}/s2\nrm {d}/uploaded.txt\n",
            d = w.dir.display()
        ),
    )
    .unwrap();
    let mut c = Command::new("sftp");
    c.args(w.opts(&key))
        .args(["-P", &w.port.to_string(), "-b"])
        .arg(&batch)
        .arg("prod-db-1@127.0.0.1");
    let out = run(c.stdin(Stdio::null()));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("readme.txt"), "the listing passed: {text}");
    assert!(!w.dir.join("s2").exists(), "{text}");
    assert!(
        !w.dir.join("uploaded.txt").exists(),
        "the removal passed: {text}"
    );

    // An interactive session is decided as a whole, recorded, and replays.
    let mut c = w.ssh(&key, "prod-db-1", &["-tt"]);
    c.stdin(Stdio::piped());
    let mut child = Watched::spawn(c);
    {
        let mut stdin = child.child.stdin.take().unwrap();
        stdin.write_all(b"echo recorded-$((6*7))\nexit\n").unwrap();
    }
    let (code, out, err) = child.finish(30);
    assert!(
        code == 0 && out.contains("recorded-42"),
        "{code}: {out} {err:?}"
    );
    let result = w.g.wait_log("the session's result", |e| {
        e["event"] == "action.result" && e["payload"]["summary"]["recording"].is_object()
    });
    let rec = &result["payload"]["summary"]["recording"];
    let rec_id = rec["id"].as_str().unwrap().to_string();
    let (code, list, err) = run_cli(
        &[
            "recording",
            "list",
            "--config",
            w.g.config.to_str().unwrap(),
        ],
        &w.g.url,
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        list.contains(&rec_id) && list.contains(rec["sha256"].as_str().unwrap()),
        "{list} vs {rec}"
    );
    let (code, played, err) = run_cli(
        &[
            "recording",
            "play",
            &rec_id,
            "--config",
            w.g.config.to_str().unwrap(),
            "--speed",
            "50",
        ],
        &w.g.url,
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(played.contains("recorded-42"), "{played}");
    assert!(err.contains(rec["sha256"].as_str().unwrap()), "{err}");
    // What a terminal showed is the gateway user's alone to read.
    {
        use std::os::unix::fs::PermissionsExt;
        let cast = find_file(&w.dir, &format!("{rec_id}.cast")).expect("the recording's file");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cast), 0o600, "{}", cast.display());
        assert_eq!(mode(cast.parent().unwrap()), 0o700, "{}", cast.display());
    }
    let (code, _, err) = run_cli(
        &[
            "recording",
            "play",
            "../../etc/passwd",
            "--config",
            w.g.config.to_str().unwrap(),
        ],
        &w.g.url,
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("not a recording id"), "{err}");

    // A user certificate of a configured authority logs its principal in.
    let other = w.dir.join("other_key");
    let out = run(&mut w.ssh(&other, "agent:other-bot+prod-db-1", &["echo cert-ok"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cert-ok\n");

    // OpenSSH's jump-host form: `ssh -J gateway prod-db-1 …` — the inner
    // session is the gateway's own (its host key, pinned for prod-db-1),
    // decided like any other.
    let jump_hosts = w.dir.join("known_hosts_jump");
    let gw_pub = std::fs::read_to_string(w.dir.join("gateway_host_key.pub")).unwrap();
    std::fs::write(
        &jump_hosts,
        format!("[127.0.0.1]:{} {}prod-db-1 {}", w.port, gw_pub, gw_pub),
    )
    .unwrap();
    let cfg = w.dir.join("ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {}\n  User agent:report-bot+jump\nHost *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
            w.port,
            key.display(),
            jump_hosts.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["-J", "gw", "-l", "ops", "prod-db-1", "echo via-jump"])
        .stdin(Stdio::null()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-jump\n");
    // A jump to anything but a configured host is refused.
    let out = run(Command::new("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["-J", "gw", "-p", &w.port.to_string(), "127.0.0.1", "true"])
        .stdin(Stdio::null()));
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused with a clear error, logged, and nothing runs: a wrong key…
    let marker = w.dir.join("pwned");
    let touch = format!("touch {}", marker.display());
    let out = run(&mut w.ssh(&w.dir.join("stranger_key"), "prod-db-1", &[&touch]));
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(
        w.gateway_log().contains("unknown key"),
        "{}",
        w.gateway_log()
    );
    // …a certificate used for another principal than it names…
    let out = run(&mut w.ssh(&other, "agent:report-bot+prod-db-1", &[&touch]));
    assert_eq!(out.status.code(), Some(255));
    // …a certificate with a critical option…
    let out = run(&mut w.ssh(
        &w.dir.join("forced_key"),
        "agent:other-bot+prod-db-1",
        &[&touch],
    ));
    assert_eq!(out.status.code(), Some(255));
    assert!(w.gateway_log().contains("critical options"), "logged");
    // …an unknown host…
    let out = run(&mut w.ssh(&key, "no-such-host", &[&touch]));
    assert_eq!(out.status.code(), Some(104));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown host \"no-such-host\"") && err.contains("prod-db-1"),
        "{err}"
    );
    // …an upstream whose host key is not the pinned one…
    let out = run(&mut w.ssh(&key, "bad-pin", &[&touch]));
    assert_eq!(out.status.code(), Some(104));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the pinned key"), "{err}");
    assert!(
        w.gateway_log().contains("does not match the pinned key"),
        "logged"
    );
    // …malformed SFTP packets…
    let mut c = w.ssh(&key, "prod-db-1", &["-s", "sftp"]);
    c.stdin(Stdio::piped());
    let mut child = Watched::spawn(c);
    let mut stdin = child.child.stdin.take().unwrap();
    stdin
        .write_all(&[0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0, 1])
        .unwrap();
    drop(stdin);
    let (code, _, err) = child.finish(30);
    assert_eq!(code, 104, "{err:?}");
    assert!(
        err.iter()
            .any(|l| l.contains("larger than the gateway accepts")),
        "{err:?}"
    );
    // A client that connects and leaves mid-greeting (a port scan, a
    // health check) is logged as having left, not as refused.
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
        s.write_all(b"SSH-2.0-half").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w
        .gateway_log()
        .contains("ssh client left before its session started")
    {
        assert!(Instant::now() < deadline, "{}", w.gateway_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !w.gateway_log().contains("ssh connection refused"),
        "{}",
        w.gateway_log()
    );
    // …and garbage instead of SSH.
    {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"SSH-2.0-x\r\n\x00\x00\x00\x10garbage-packet!!")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    assert!(!marker.exists(), "nothing ran");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w
        .gateway_log()
        .contains("ssh connection ended by a protocol error")
    {
        assert!(
            Instant::now() < deadline,
            "the garbage was not logged: {}",
            w.gateway_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The gateway still serves.
    let out = run(&mut w.ssh(&key, "prod-db-1", &["true"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Forwarding the agent or a port back to the client is refused and
/// logged with the peer, and the command still runs (an agent forwarding
/// request wants no answer: the gateway's refusal once took the place of
/// the command's own answer, and OpenSSH gave up with "exec request
/// failed").
#[test]
fn forwarding_back_to_the_client_is_refused_and_logged_and_the_command_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let sock = w.dir.join("agent.sock");
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Killed(
        Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let key = w.agent_key.clone();
    for (opts, logged) in [
        (&["-A"][..], "agent forwarding refused"),
        // Pipelined: an environment variable and agent forwarding before
        // the command, each answered in its turn (or not, as asked; a
        // command with a terminal is held, so none here).
        (
            &["-A", "-o", "SendEnv=LANG"][..],
            "agent forwarding refused",
        ),
        (
            &["-R", "0:127.0.0.1:9"][..],
            "remote port forwarding refused",
        ),
    ] {
        let out = run(Command::new("ssh")
            .args(w.opts(&key))
            .args(["-o", "ExitOnForwardFailure=no"])
            .args(opts)
            .args(["-p", &w.port.to_string(), "-l", "prod-db-1", "127.0.0.1"])
            .args(["echo", "ran"])
            .env("SSH_AUTH_SOCK", &sock)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null()));
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
            (Some(0), "ran"),
            "{opts:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = w.gateway_log();
        let line = log
            .lines()
            .find(|l| l.contains(logged))
            .unwrap_or_else(|| panic!("{logged}: {log}"));
        assert!(line.contains("127.0.0.1"), "with the peer: {line}");
    }
}

/// The connection to the host breaks while an allowed command runs: the
/// agent is told that whether it took effect is unknown (exit 104), and
/// the result is recorded so.
#[test]
fn a_host_connection_lost_mid_command_says_the_outcome_is_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    // `cat` with its input left open runs until its connection ends.
    let mut c = w.ssh(&w.agent_key.clone(), "prod-db-1", &["cat"]);
    c.stdin(Stdio::piped());
    let mut agent = Watched::spawn(c);
    let _input = agent.child.stdin.take().unwrap();
    let sshd = w.sshd.id();
    let descendants = || {
        let mut all = children(sshd);
        let mut i = 0;
        while i < all.len() {
            let more = children(all[i]);
            all.extend(more);
            i += 1;
        }
        all
    };
    // The command itself, not only the login's processes (those exist
    // before the session channel is opened).
    common::wait_until("the command to run on the host", || {
        descendants().iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cat")
        })
    });
    // Every process of the host's session, killed at once.
    let all = descendants();
    for pid in all {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let (code, _, err) = agent.finish(30);
    assert_eq!(code, 104, "{err:?}");
    assert!(
        err.iter().any(
            |l| l.contains("secondkey: the connection to the host ended")
                && l.contains("whether it took effect is unknown")
        ),
        "{err:?}"
    );
    common::wait_until("the result to be logged", || {
        common::log_entries(&w.g).iter().any(|e| {
            e["event"] == "action.result" && e.to_string().contains("\"status\":\"unknown\"")
        })
    });
}

/// `[ssh_gateway] max_connections_per_address`: a connection past it is
/// closed before the SSH greeting and logged; one that ends frees its
/// place. `login_timeout`: a client that never logs in is disconnected.
#[test]
fn connections_past_the_cap_and_clients_that_never_log_in_are_closed() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let w = world_full(
        tmp.path(),
        "90s",
        "",
        "max_connections_per_address = 2\nlogin_timeout = \"2s\"",
    );
    let greeting = |s: &mut std::net::TcpStream| -> String {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut a = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    assert!(greeting(&mut a).starts_with("SSH-2.0-secondkey"));
    let mut b = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    assert!(greeting(&mut b).starts_with("SSH-2.0-secondkey"));
    // A third from the same address: closed, no greeting.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    assert_eq!(greeting(&mut c), "", "closed before the greeting");
    assert!(w.gateway_log().contains("max_connections_per_address"));
    // Neither of the first two logs in: both are closed after
    // login_timeout, one after its SSH greeting, one without sending any.
    a.write_all(b"SSH-2.0-lingering\r\n").unwrap();
    let started = Instant::now();
    for s in [&mut a, &mut b] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(r.is_ok(), "closed by the gateway, not timed out: {r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        w.gateway_log()
            .contains("not logged in within ssh_gateway.login_timeout"),
        "{}",
        w.gateway_log()
    );
    // Their places are free again: an agent logs in and runs a command.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(&mut w.ssh(&w.agent_key.clone(), "prod-db-1", &["echo", "in"]));
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "in");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a terminal is requested is part of what is approved: an
/// approval given for a command without one is not used by the same
/// command with one (a pager on a terminal starts a shell), and any
/// command with a terminal is `admin`.
#[test]
fn a_terminal_is_part_of_what_is_approved() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world_with(tmp.path(), "2s", "");
    let key = w.agent_key.clone();
    let cmd = "sudo systemctl restart postgresql";
    // Held without a terminal, not decided within hold_timeout: 102, and
    // the request stays pending.
    let mut child = Watched::spawn(w.ssh(&key, "prod-db-1", &[cmd]));
    let id = request_id(&child.wait_line("held for review as request"));
    assert_eq!(child.finish(30).0, 102);
    let (s, v) = w.g.review("user:bob", &id, "approve");
    assert_eq!(s, 200, "{v}");
    // The identical command with a terminal is a new request; nothing runs.
    let mut child = Watched::spawn(w.ssh(&key, "prod-db-1", &["-tt", cmd]));
    let id2 = request_id(&child.wait_line("held for review as request"));
    assert_ne!(id2, id, "the approval without a terminal was not used");
    assert_eq!(child.finish(30).0, 102);
    assert_eq!(w.systemctl_log(), "", "nothing ran");
    let (_, req) =
        w.g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
    assert_eq!(req["action"]["params"]["pty"], false, "{req}");
    let (_, req) = w.g.call(
        "GET",
        &format!("/v1/requests/{id2}"),
        Some("user:bob"),
        None,
    );
    assert_eq!(req["action"]["params"]["pty"], true, "{req}");
    assert!(req["action"]["params"]["term"].is_string(), "{req}");
    // A read with a terminal is admin: held, not run.
    let readme = format!("cat {}/readme.txt", w.dir.display());
    let mut child = Watched::spawn(w.ssh(&key, "prod-db-1", &["-tt", &readme]));
    let id3 = request_id(&child.wait_line("held for review as request"));
    let (code, out, _) = child.finish(30);
    assert_eq!(code, 102);
    assert!(!out.contains("hello from the host"), "{out}");
    let (_, req) = w.g.call(
        "GET",
        &format!("/v1/requests/{id3}"),
        Some("user:bob"),
        None,
    );
    assert_eq!(req["action"]["operation"], "admin", "{req}");
    // The approved command, sent again as approved, runs once, and says
    // which approval it used.
    let out = run(&mut w.ssh(&key, "prod-db-1", &[cmd]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "secondkey: request {id} approved; running it once"
        )),
        "{err}"
    );
    assert_eq!(w.systemctl_log(), "restart postgresql\n");
}

/// A policy for [`sftp_attributes_through_a_read_handle_are_a_write`].
const NO_FSETSTAT: &str = r#"
@id("no-fsetstat")
forbid(principal, action == Action::"ssh.write", resource)
when { context.gateway has sftp && context.gateway.sftp == "fsetstat" };
"#;

fn sftp_packet(ty: u8, id: Option<u32>, fields: &[&[u8]]) -> Vec<u8> {
    let mut body = vec![ty];
    if let Some(id) = id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    for f in fields {
        body.extend_from_slice(f);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn sftp_string(x: &[u8]) -> Vec<u8> {
    let mut v = (x.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(x);
    v
}

fn read_sftp_packet(r: &mut impl std::io::Read) -> Vec<u8> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).unwrap();
    let mut p = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut p).unwrap();
    p
}

/// `FSETSTAT` changes the file behind a handle — one opened for reading
/// included — so it is decided as a write on the path its open named.
#[test]
fn sftp_attributes_through_a_read_handle_are_a_write() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let w = world_with(tmp.path(), "2s", NO_FSETSTAT);
    let file = w.dir.join("readme.txt");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = w.ssh(&w.agent_key, "prod-db-1", &["-s", "sftp"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let path = file.display().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let open_path = path.clone();
    std::thread::spawn(move || {
        stdin
            .write_all(&sftp_packet(1, None, &[&3u32.to_be_bytes()]))
            .unwrap();
        let version = read_sftp_packet(&mut stdout);
        assert_eq!(version[0], 2, "VERSION");
        // Open for reading: an export, allowed.
        stdin
            .write_all(&sftp_packet(
                3,
                Some(1),
                &[
                    &sftp_string(open_path.as_bytes()),
                    &1u32.to_be_bytes(),
                    &0u32.to_be_bytes(),
                ],
            ))
            .unwrap();
        let handle = read_sftp_packet(&mut stdout);
        assert_eq!(handle[0], 102, "HANDLE: {handle:?}");
        let h = handle[9..].to_vec();
        // Permissions 0777 through that handle.
        stdin
            .write_all(&sftp_packet(
                10,
                Some(2),
                &[
                    &sftp_string(&h),
                    &4u32.to_be_bytes(),
                    &0o777u32.to_be_bytes(),
                ],
            ))
            .unwrap();
        let status = read_sftp_packet(&mut stdout);
        drop(stdin);
        let _ = tx.send(status);
    });
    let status = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the SFTP exchange finished");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status[0], 101, "STATUS: {status:?}");
    assert_eq!(&status[1..5], &2u32.to_be_bytes());
    assert_eq!(&status[5..9], &3u32.to_be_bytes(), "PERMISSION_DENIED");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the mode did not change");
    let denial = w.g.wait_log("the fsetstat's denial", |e| {
        e["event"] == "action.denied" && e["payload"]["action"]["params"]["sftp"] == "fsetstat"
    });
    assert_eq!(
        denial["payload"]["action"]["params"]["paths"][0],
        path.as_str(),
        "{denial}"
    );
}

/// RSA is not built in: an RSA key where the gateway reads one (an agent's
/// key, the gateway's own upstream key) is refused at start with the key
/// named, not taken and then never able to log in.
/// The first file named `name` under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// A gateway's configuration in `dir` with the test policies and an
/// `[ssh_gateway]` table left open for more keys.
fn ssh_gateway_only(dir: &Path) -> String {
    let pdir = dir.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("p.cedar"), POLICY).unwrap();
    format!(
        "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\n\
         [[principals]]\nid = \"agent:deploy-bot\"\ngroups = [\"agents\"]\n\
         [[principals]]\nid = \"user:dora\"\ngroups = [\"data-owners\"]\n\
         [ssh_gateway]\nlisten = \"127.0.0.1:{}\"\n",
        free_port(),
        dir.join("data").display(),
        pdir.display(),
        free_port()
    )
}

/// A recordings directory the gateway cannot use stops its start: no
/// shell would run, since none runs unrecorded.
#[test]
fn a_recordings_dir_that_cannot_hold_recordings_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "{}recordings_dir = \"{}/rec\"\n",
            ssh_gateway_only(dir),
            file.display()
        ),
    )
    .unwrap();
    let err = serve_refusal(&config, &[]).expect("a recordings_dir under a file is refused");
    assert!(
        err.contains("ssh_gateway.recordings_dir") && err.contains("a-file/rec"),
        "{err}"
    );
}

/// A `hold_timeout` over a day, or one that is not a duration, stops the
/// start and names the key.
#[test]
fn a_hold_timeout_over_a_day_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (value, says) in [("24h1s", "at most 24h"), ("10 minutes", "hold_timeout")] {
        let config = dir.join("hold.toml");
        std::fs::write(
            &config,
            format!("{}hold_timeout = \"{value}\"\n", ssh_gateway_only(dir)),
        )
        .unwrap();
        let err = serve_refusal(&config, &[])
            .unwrap_or_else(|_| panic!("serve accepted hold_timeout = {value:?}"));
        assert!(
            err.contains("ssh_gateway.hold_timeout") && err.contains(says),
            "{value}: {err}"
        );
    }
}

/// The listener's limits out of their ranges, or of the wrong type, stop
/// the start and name the key.
#[test]
fn listener_limits_out_of_range_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (line, key, says) in [
        (
            "login_timeout = \"0s\"",
            "ssh_gateway.login_timeout",
            "zero",
        ),
        (
            "login_timeout = \"500ms\"",
            "ssh_gateway.login_timeout",
            "1s to 10m",
        ),
        (
            "login_timeout = \"11m\"",
            "ssh_gateway.login_timeout",
            "1s to 10m",
        ),
        (
            "max_connections = 0",
            "ssh_gateway.max_connections",
            "1 to 100000",
        ),
        (
            "max_connections_per_address = 101",
            "ssh_gateway.max_connections_per_address",
            "1 to max_connections",
        ),
        (
            "max_connections = 10\nmax_connections_per_address = 11",
            "ssh_gateway.max_connections_per_address",
            "1 to max_connections",
        ),
        (
            "max_connections = \"ten\"",
            "ssh_gateway.max_connections",
            "invalid type",
        ),
    ] {
        let config = dir.join("limits.toml");
        std::fs::write(&config, format!("{}{line}\n", ssh_gateway_only(dir))).unwrap();
        let err = serve_refusal(&config, &[]).unwrap_or_else(|_| panic!("serve accepted {line}"));
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(says),
            "{line}: {err}"
        );
    }
}

#[test]
fn an_rsa_key_is_refused_where_it_is_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rsa = dir.join("rsa");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&rsa));
    assert!(out.status.success());
    let rsa_pub = std::fs::read_to_string(rsa.with_extension("pub")).unwrap();
    let ed_pub = keygen(&dir.join("ed"), "ed");
    let base = ssh_gateway_only(dir);
    let host = |key_file: &Path| {
        format!(
            "[[ssh]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\nhost_key = \"127.0.0.1 {}\"\nuser = \"u\"\nkey_file = \"{}\"\n",
            ed_pub.trim(),
            key_file.display()
        )
    };
    for (extra, key) in [
        (
            format!(
                "[[ssh_gateway.keys]]\nprincipal = \"agent:deploy-bot\"\nkey = \"{}\"\n",
                rsa_pub.trim()
            ),
            "ssh_gateway.keys[0].key",
        ),
        (host(&rsa), "ssh[0].key_file"),
        (
            format!("host_key_file = \"{}\"\n", rsa.display()),
            "ssh_gateway.host_key_file",
        ),
    ] {
        let config = dir.join("rsa.toml");
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let err = serve_refusal(&config, &[])
            .unwrap_or_else(|_| panic!("serve accepted an RSA key as {key}"));
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(err.contains("not supported"), "{err}");
    }
}

/// The SSH gateway's private keys (its host key, its keys for the
/// upstream hosts) are refused at start when others may read them, as
/// the log's key is.
#[test]
fn an_ssh_private_key_others_may_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ed_pub = keygen(&dir.join("host"), "host");
    keygen(&dir.join("login"), "login");
    let base = ssh_gateway_only(dir);
    let host = format!(
        "[[ssh]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\nhost_key = \"127.0.0.1 {}\"\nuser = \"u\"\nkey_file = \"{}\"\n",
        ed_pub.trim(),
        dir.join("login").display()
    );
    for (file, key) in [
        ("login", "ssh[0].key_file"),
        ("host", "ssh_gateway.host_key_file"),
    ] {
        let path = dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = dir.join("perm.toml");
        std::fs::write(
            &config,
            format!(
                "{base}host_key_file = \"{}\"\n{host}",
                dir.join("host").display()
            ),
        )
        .unwrap();
        let err = serve_refusal(&config, &[])
            .unwrap_or_else(|_| panic!("serve accepted {key} readable by others"));
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// `recording play` only prints: a reader that leaves early (`| head`)
/// ends it quietly, as it ends `recording list`, not with "error: Broken
/// pipe".
#[test]
fn recording_play_ends_quietly_when_its_reader_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let id = "act_01a242c7ef063f9cf8d072e4cc20b8f5";
    let mut cast = String::from("{\"version\":2,\"width\":80,\"height\":24}\n");
    for i in 0..5 {
        cast.push_str(&format!("[{}.{i}, \"o\", \"frame {i}\\r\\n\"]\n", 0));
    }
    std::fs::write(tmp.path().join(format!("{id}.cast")), cast).unwrap();
    let mut child = Command::new(BIN)
        .args(["recording", "play", id, "--dir"])
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 5];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("error"), "{err}");
}

/// A command that is not UTF-8 shows its invalid bytes as U+FFFD, so two
/// such commands can read the same: the exact bytes are part of the action
/// (`command_hex`), so each is its own request and one's approval cannot
/// run the other.
#[test]
fn a_command_that_is_not_utf8_is_decided_on_its_exact_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let key = w.agent_key.clone();
    let mut seen = Vec::new();
    for byte in [0xffu8, 0xc0] {
        let mut cmd = b"printf %s ".to_vec();
        cmd.push(byte);
        let mut c = w.ssh(&key, "prod-db-1", &[]);
        c.arg(std::ffi::OsStr::from_bytes(&cmd));
        let mut child = Watched::spawn(c);
        let id = request_id(&child.wait_line("held for review as request"));
        let (_, req) =
            w.g.call("GET", &format!("/v1/requests/{id}"), Some("user:bob"), None);
        let params = &req["action"]["params"];
        assert_eq!(params["command"], "printf %s \u{fffd}", "{req}");
        assert_eq!(params["command_hex"], hex::encode(&cmd), "{req}");
        seen.push((id, req["digest"].clone()));
        let _ = child.child.kill();
        let _ = child.child.wait();
    }
    assert_ne!(seen[0], seen[1], "two requests, two digests");
}
