//! A throwaway PostgreSQL 15 cluster for this crate's tests: started once
//! per test binary on a free port, one fresh database per test, stopped and
//! removed when the binary exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::PgOptions;

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
pub const USER: &str = "sk";
pub const PASSWORD: &str = "store-test-secret";

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    as_postgres: bool,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static STOPPED: Mutex<bool> = Mutex::new(false);
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_at_exit() {
    if let Some(c) = CLUSTER.get() {
        if let Ok(mut s) = STOPPED.lock() {
            if !*s {
                *s = true;
                c.stop("immediate");
                let _ = std::fs::remove_dir_all(&c.dir);
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    pub fn get() -> &'static Cluster {
        CLUSTER.get_or_init(|| {
            let c = Cluster::start();
            // SAFETY: registers a plain extern "C" function with no
            // arguments; it runs once at process exit.
            unsafe {
                libc::atexit(stop_at_exit);
            }
            c
        })
    }

    /// A cluster of the caller's own (to stop and start), removed on drop.
    pub fn start_private() -> Cluster {
        Cluster::start_with(None)
    }

    /// A cluster of the caller's own that presents `cert_pem` (its key
    /// `key_pem`) to TLS clients.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Cluster {
        Cluster::start_with(Some((cert_pem, key_pem)))
    }

    fn start() -> Cluster {
        Cluster::start_with(None)
    }

    fn start_with(tls: Option<(&str, &str)>) -> Cluster {
        assert!(
            Path::new(BIN_DIR).join("initdb").exists(),
            "PostgreSQL 15 is not installed; run: apt-get install -y postgresql-15"
        );
        let dir = std::env::temp_dir().join(format!(
            "secondkey-store-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() == 0 };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown the cluster dir");
        }
        let c = Cluster {
            port: free_port(),
            dir,
            as_postgres,
        };
        let data = c.dir.join("data").display().to_string();
        c.run(
            "initdb",
            &[
                "-D",
                &data,
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
            use std::io::Write as _;
            use std::os::unix::fs::PermissionsExt as _;
            let data = c.dir.join("data");
            std::fs::write(data.join("server.crt"), cert).expect("server.crt");
            std::fs::write(data.join("server.key"), key).expect("server.key");
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod server.key");
            if c.as_postgres {
                let ok = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join("server.crt"))
                    .arg(data.join("server.key"))
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "chown the server certificate");
            }
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .expect("postgresql.conf");
            conf.write_all(b"\nssl = on\n")
                .expect("write postgresql.conf");
        }
        c.pg_start();
        c.sql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'"),
        );
        c
    }

    pub fn pg_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.dir.join("data").display().to_string(),
                "-o",
                &opts,
                "-l",
                &self.dir.join("server.log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    pub fn stop(&self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &self.dir.join("data").display().to_string(),
                "-m",
                mode,
                "-w",
                "stop",
            ])
            .output();
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

    fn run(&self, program: &str, args: &[&str]) -> String {
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
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs SQL as the superuser; psql's unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.dir.display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
        )
    }

    /// A fresh, empty database owned by the test role.
    pub fn database(&self) -> String {
        let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        self.sql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"));
        name
    }

    /// Options to reach `db` as the test role, over loopback without TLS.
    pub fn options(&self, db: &str) -> PgOptions {
        PgOptions {
            url: format!(
                "postgres://{USER}@127.0.0.1:{}/{db}?sslmode=disable",
                self.port
            ),
            password: Some(PASSWORD.into()),
            ca_file: None,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
