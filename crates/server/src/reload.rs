//! Policy reload on SIGHUP and on file change, atomically: the new set is
//! loaded and validated in full — annotations, values, placement, groups
//! and quorums against the configuration — before it replaces the old one;
//! a broken set is rejected, the old one stays in force, and both outcomes
//! are logged (the refusal as `policy.rejected` in the audit log, with every
//! problem, and as an error line).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secondkey_policy::PolicyEngine;
use serde_json::json;

use crate::Gateway;

/// A cheap fingerprint of the policy directory: names, sizes, mtimes.
pub fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(m) = e.metadata() {
                v.push((name, m.len(), m.modified().ok()));
            }
        }
    }
    v.sort();
    v
}

/// Loads the directory and swaps it in, or records the rejection.
pub async fn reload_now(gateway: &Gateway) -> Result<(), String> {
    let dir = gateway.config.policy_dir.clone();
    let options = gateway.config.policy_options();
    let loaded = tokio::task::spawn_blocking(move || PolicyEngine::load_dir_with(&dir, &options))
        .await
        .map_err(|e| e.to_string())?;
    match loaded {
        Ok(engine) => {
            for w in engine.warnings() {
                tracing::warn!(warning = %w, "policy warning");
            }
            let summary = json!({"policies": engine.len(), "policy_set": engine.fingerprint()});
            gateway
                .replace_policy(engine, summary)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!("policy reloaded");
            Ok(())
        }
        Err(e) => {
            // Only a reload has previous policies to keep.
            tracing::error!(error = %e, "policy reload rejected; the previous policy set stays in force");
            let msg = format!("{e}; the previous policies stay in effect until then");
            let _ = gateway.policy_rejected(msg.clone()).await;
            Err(msg)
        }
    }
}

/// Watches for SIGHUP and polls the directory once a second.
pub fn spawn(gateway: Arc<Gateway>) {
    let g = gateway.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; file changes still reload policy");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = reload_now(&g).await;
        }
    });
    tokio::spawn(async move {
        let dir = gateway.config.policy_dir.clone();
        let mut last = fingerprint(&dir);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = fingerprint(&dir);
            if now != last {
                // Let an editor finish writing before reading.
                tokio::time::sleep(Duration::from_millis(200)).await;
                last = fingerprint(&dir);
                let _ = reload_now(&gateway).await;
            }
        }
    });
}
