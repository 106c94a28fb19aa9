//! Test support: a throwaway PostgreSQL 15 cluster on a free port in a
//! temporary directory, removed when dropped. Used by this crate's tests
//! and the black-box tests of the `secondkey` binary.
//!
//! It needs Debian's `postgresql-15` (`apt-get install -y postgresql-15`);
//! without it, starting a cluster panics with that command. As root the
//! server runs as the `postgres` system user (PostgreSQL refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where Debian installs the server binaries.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The application role the gateway logs in as, and its password.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "upstream-secret-never-shown";
/// The database the tests use.
pub const DATABASE: &str = "analytics";

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    as_postgres: bool,
}

/// A port on 127.0.0.1 for a test server to listen on: free when asked,
/// and given to no other caller in this process.
///
/// Asking the kernel for port 0 and releasing it races: the tests of one
/// binary run in parallel, and a second caller (or any outgoing connection,
/// whose local port comes from the same ephemeral range) could be handed
/// the same port before the server binds it. Then one server fails to
/// start while the test's readiness check reaches the other one. So ports
/// come from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), where no outgoing connection
/// takes one, and each is handed out once. The walk starts at a place
/// derived from the process id so that two test processes rarely overlap.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static RANGE: OnceLock<(u32, u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span, start) = *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        // At least 2,000 ports; if the ephemeral range starts too low for
        // that, share it (the bind check below still applies).
        let (low, high) = if ephemeral_low >= 12_000 {
            (10_000, ephemeral_low)
        } else {
            (10_000, 32_768)
        };
        let span = high - low;
        (
            low,
            span,
            std::process::id().wrapping_mul(2_654_435_761) % span,
        )
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left in {low}..{}", low + span);
        let port = (low + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// initdb, start, create the `app` role (SCRAM password) and the
    /// `analytics` database with a `customers` table of `rows` rows.
    pub fn start(rows: usize) -> Cluster {
        Cluster::start_with(rows, None)
    }

    /// Like [`Cluster::start`], with TLS on (`ssl = on`): the server
    /// presents `cert_pem` (its private key `key_pem`, both PEM) and still
    /// accepts plain connections. It also logs every connection and every
    /// statement, so a test can tell what reached it ([`Cluster::server_log`]).
    pub fn start_tls(rows: usize, cert_pem: &str, key_pem: &str) -> Cluster {
        Cluster::start_with(rows, Some((cert_pem, key_pem)))
    }

    fn start_with(rows: usize, tls: Option<(&str, &str)>) -> Cluster {
        let initdb = Path::new(BIN_DIR).join("initdb");
        assert!(
            initdb.exists(),
            "PostgreSQL 15 is not installed ({} is missing); run: apt-get install -y postgresql-15",
            initdb.display()
        );
        let tmp = tempfile::Builder::new()
            .prefix("secondkey-pg-")
            .tempdir()
            .expect("a temp dir");
        let as_postgres = is_root();
        let dir = tmp.path().join("data");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(tmp.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cannot chown the cluster dir to the postgres user");
        }
        let c = Cluster {
            port: free_port(),
            dir,
            _tmp: tmp,
            as_postgres,
        };
        c.run(
            "initdb",
            &[
                "-D",
                &c.dir.display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if let Some((cert, key)) = tls {
            c.enable_tls(cert, key);
        }
        c.pg_start();
        c.superuser_sql(
            "postgres",
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
        );
        c.superuser_sql(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {APP_USER}"),
        );
        c.superuser_sql(
            DATABASE,
            &format!(
                "SET ROLE {APP_USER}; CREATE TABLE customers (id int PRIMARY KEY, email text); \
                 INSERT INTO customers SELECT g, 'c' || g || '@example.com' FROM generate_series(1, {rows}) g; \
                 CREATE TABLE orders (id int PRIMARY KEY, customer int, total numeric); \
                 INSERT INTO orders SELECT g, g % 7 + 1, g * 1.5 FROM generate_series(1, 20) g;"
            ),
        );
        c
    }

    /// Writes `server.crt` and `server.key` into the data directory (the
    /// key readable by the server's user only, as PostgreSQL demands) and
    /// turns TLS and connection/statement logging on.
    fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let cert = self.dir.join("server.crt");
        let key = self.dir.join("server.key");
        std::fs::write(&cert, cert_pem).expect("write server.crt");
        std::fs::write(&key, key_pem).expect("write server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        if self.as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cert)
                .arg(&key)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "cannot chown the server certificate to the postgres user"
            );
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        conf.write_all(b"\nssl = on\nlog_connections = on\nlog_statement = 'all'\n")
            .expect("write postgresql.conf");
    }

    /// What the server wrote to its log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.socket_dir().join("server.log")).unwrap_or_default()
    }

    fn pg_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200",
            self.port,
            self.socket_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.dir.display().to_string(),
                "-o",
                &opts,
                "-l",
                &self.dir.join("../server.log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.parent().unwrap_or(Path::new("/tmp")).to_path_buf()
    }

    fn command(&self, program: &str) -> Command {
        let path = Path::new(BIN_DIR).join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs SQL as the superuser over the Unix socket; returns psql's
    /// unaligned, tuples-only output.
    pub fn superuser_sql(&self, db: &str, sql: &str) -> String {
        let out = self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.socket_dir().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (fast shutdown) until [`Cluster::start_server`].
    pub fn stop_server(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.dir.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Freezes the server and its backends (`SIGSTOP`): connections stay
    /// open and nothing answers, as with a hung database host.
    pub fn pause_server(&self) {
        self.signal_all("-STOP");
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume_server(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
            .expect("postmaster.pid names the server");
        // The backends first, then the postmaster (and the reverse order
        // would not matter for SIGCONT).
        let _ = std::process::Command::new("pkill")
            .args([sig, "-P", &pid])
            .status();
        let _ = std::process::Command::new("kill")
            .args([sig, &pid])
            .status();
    }

    /// Starts the server again after [`Cluster::stop_server`].
    pub fn start_server(&self) {
        self.pg_start();
    }

    /// Restarts the server (fast shutdown): clients see their connections end.
    pub fn restart(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.dir.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        self.pg_start();
    }

    /// Waits until `sql` (run as superuser) returns `want`, for state
    /// changes caused by other connections.
    pub fn wait_for(&self, sql: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.superuser_sql(DATABASE, sql);
            if got == want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Logs in to a gateway listener on 127.0.0.1:`port` as `user` with
/// `password` (SCRAM), for tests that speak the protocol themselves.
pub async fn raw_login(port: u16, user: &str, password: &str) -> crate::upstream::Session {
    let login = crate::config::Upstream {
        host: "127.0.0.1".into(),
        port,
        database: DATABASE.into(),
        user: user.into(),
        password: Some(crate::config::Secret(password.into())),
        tls: false,
        ca_file: None,
    };
    crate::upstream::connect(&login, None, &[])
        .await
        .unwrap_or_else(|e| panic!("raw login as {user} on port {port}: {e}"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &self.dir.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice_nor_ephemeral() {
        let ports: Vec<u16> = std::thread::scope(|s| {
            let w: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..250).map(|_| super::free_port()).collect::<Vec<_>>()))
                .collect();
            w.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if ephemeral_low >= 12_000 {
            assert!(ports.iter().all(|&p| p < ephemeral_low), "{ports:?}");
        }
    }
}
