//! What the gateway's in-process test suites share: a gateway as
//! `secondkey serve` builds it, on a throwaway directory, with a clock the
//! test moves (nothing sleeps), and ways to read what it did.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secondkey_core::principal::Principal;
use secondkey_core::time::Timestamp;
use secondkey_log::entry::Entry;
use secondkey_server::gateway::system_now;
use secondkey_server::{Config, Gateway};

pub struct Env {
    pub gateway: Arc<Gateway>,
    pub clock: Arc<AtomicI64>,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Moves the gateway's clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

/// A gateway with `policies` (one file) and `config` (TOML; `data_dir` and
/// `policy_dir` are set here), its clock starting now and moving only when
/// the test advances it.
pub async fn gateway(policies: &str, config: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::write(pol.join("p.cedar"), policies).unwrap();
    let toml = format!("data_dir = \"data\"\npolicy_dir = \"policies\"\n{config}");
    let config = Config::from_toml(&toml, "test.toml", dir.path(), &HashMap::new()).unwrap();
    let clock = Arc::new(AtomicI64::new(system_now().0));
    let c = clock.clone();
    let gateway = secondkey_server::build_with(config, move |g| {
        g.with_clock(move || Timestamp(c.load(Ordering::SeqCst)))
    })
    .await
    .unwrap();
    Env {
        gateway,
        clock,
        dir,
    }
}

/// The configured principal `id`.
pub fn who(g: &Gateway, id: &str) -> Principal {
    g.config.principals[id].clone()
}

/// Every entry of the log, decoded.
pub fn entries(g: &Gateway) -> Vec<Entry> {
    let n = g.store.log_size();
    g.store
        .entries(0, n)
        .unwrap()
        .iter()
        .map(|b| Entry::from_bytes(b).unwrap())
        .collect()
}
