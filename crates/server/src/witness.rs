//! Witnessed checkpoints, both sides of C2SP `tlog-witness`.
//!
//! The gateway side ([`spawn`], [`submit_once`]): each new checkpoint goes,
//! with a consistency proof from the size a witness cosigned last, to every
//! `[[log.witnesses]]` entry; the cosignature lines that verify under the
//! configured witness key are kept (records namespace `log.witnessed`) and
//! served after the operator's signature on `GET /v1/log/checkpoint`. A
//! witness that refuses (a fork, a rollback) is reported on `/healthz` and
//! in the gateway's log, and retried with backoff; nothing is cosigned for
//! a history the witness has not seen grow.
//!
//! The witness side ([`WitnessService`], `secondkey witness serve`): keeps
//! the latest cosigned checkpoint per log in a state file, written and
//! synced before it answers, and refuses to cosign a checkpoint that is not
//! consistent with it. The decision itself is
//! [`secondkey_log::witness::Witness::check`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secondkey_log::checkpoint::Checkpoint;
use secondkey_log::witness::{add_signatures, AddCheckpoint, Cosigned, Refusal, Witness};
use serde::{Deserialize, Serialize};

use crate::config::WitnessConfig;
use crate::error::ApiError;
use crate::limits::conn::{ConnLimits, LimitedListener};
use crate::Gateway;

/// Records namespace of cosigned checkpoints: key `latest` holds the newest
/// checkpoint note with every cosignature collected for its size; key
/// `size:<witness>` the size that witness cosigned last.
pub const WITNESSED_NS: &str = "log.witnessed";

/// How one witness is doing, as `/healthz` shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct WitnessStatus {
    pub name: String,
    /// The size it cosigned last (0: none yet).
    pub cosigned_size: u64,
    /// Why the last submission failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    failures: u32,
    #[serde(skip)]
    retry_at: Option<Instant>,
}

/// The gateway's view of its witnesses.
#[derive(Debug, Default)]
pub struct Witnessing {
    status: Mutex<Vec<WitnessStatus>>,
}

impl Witnessing {
    /// A snapshot for `/healthz`.
    pub fn status(&self) -> Vec<WitnessStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What one submission came back with.
enum Answer {
    Cosigned(String),
    /// 409 with the size the witness cosigned last.
    Size(u64),
    Refused(String),
}

fn send(w: &WitnessConfig, body: String) -> Answer {
    let agent = ureq::AgentBuilder::new().timeout(w.timeout).build();
    let r = agent
        .post(&format!("{}/add-checkpoint", w.url))
        .set("Content-Type", "text/plain; charset=utf-8")
        .send_string(&body);
    match r {
        Ok(resp) => match resp.into_string() {
            Ok(t) => Answer::Cosigned(t),
            Err(e) => Answer::Refused(format!("reading the answer: {e}")),
        },
        Err(ureq::Error::Status(409, resp)) if resp.content_type() == "text/x.tlog.size" => {
            let text = resp.into_string().unwrap_or_default();
            match text.trim_end_matches('\n').parse::<u64>() {
                Ok(n) => Answer::Size(n),
                Err(_) => Answer::Refused(format!("409 with an unreadable size {text:?}")),
            }
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text: String = resp
                .into_string()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            Answer::Refused(format!("HTTP {code}: {}", text.trim()))
        }
        Err(e) => Answer::Refused(format!("unreachable: {e}")),
    }
}

/// Submits checkpoint `note` (of size `size`) to witness `w`, which is
/// believed to have cosigned `old` last; follows one 409 to the size the
/// witness names. Returns the verified cosignature line and the size.
fn submit_to(
    g: &Gateway,
    w: &WitnessConfig,
    note: &str,
    size: u64,
    mut old: u64,
) -> Result<String, String> {
    for _ in 0..2 {
        if old > size {
            return Err(format!(
                "the witness cosigned size {old} but this log has only {size} entries: the log was rolled back or forked"
            ));
        }
        let proof = g
            .store
            .with_tree(|t| t.consistency_proof(old, size))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let body = AddCheckpoint {
            old_size: old,
            proof,
            checkpoint: note.to_string(),
        }
        .to_body();
        match send(w, body) {
            Answer::Cosigned(lines) => {
                let with = add_signatures(note, &lines);
                return match w.key.verify(&with) {
                    Some(_) => Ok(lines
                        .lines()
                        .find(|l| {
                            w.key
                                .verify(&add_signatures(note, &format!("{l}\n")))
                                .is_some()
                        })
                        .map(|l| format!("{l}\n"))
                        .unwrap_or_default()),
                    None => {
                        Err("the answer carries no valid cosignature by the configured key".into())
                    }
                };
            }
            Answer::Size(n) if n != old => old = n,
            Answer::Size(n) => return Err(format!("409: the witness is at size {n}")),
            Answer::Refused(why) => return Err(why),
        }
    }
    Err("the witness's size kept changing".into())
}

/// One round: submits the current checkpoint to every witness that has not
/// cosigned it (and is not backing off), keeps what they cosigned.
pub async fn submit_once(g: &Arc<Gateway>) -> Result<(), ApiError> {
    if g.config.witnesses.is_empty() {
        return Ok(());
    }
    let note = g.checkpoint().await?;
    let size = Checkpoint::parse_note_unverified(&note)
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .size;
    if size == 0 {
        return Ok(());
    }
    let now = Instant::now();
    let due: Vec<(usize, u64)> = {
        let mut st = g
            .witnessing
            .status
            .lock()
            .map_err(|_| ApiError::unavailable("witness status poisoned"))?;
        if st.len() != g.config.witnesses.len() {
            *st = g
                .config
                .witnesses
                .iter()
                .map(|w| WitnessStatus {
                    name: w.name.clone(),
                    cosigned_size: stored_size(g, &w.name),
                    ..Default::default()
                })
                .collect();
        }
        st.iter()
            .enumerate()
            .filter(|(_, s)| s.cosigned_size != size && s.retry_at.is_none_or(|t| t <= now))
            .map(|(i, s)| (i, s.cosigned_size))
            .collect()
    };
    if due.is_empty() {
        return Ok(());
    }
    let mut tasks = Vec::new();
    for (i, old) in due {
        let g2 = g.clone();
        let n2 = note.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let w = &g2.config.witnesses[i];
            (i, submit_to(&g2, w, &n2, size, old))
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            results.push(r);
        }
    }
    let lines: String = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let names: Vec<String> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| g.config.witnesses[*i].name.clone())
        .collect();
    // The cosignatures are stored before the status says so: whoever sees
    // a witness at this size finds its cosignature on the checkpoint.
    if !lines.is_empty() {
        g.store
            .transact(move |tx| {
                let base = match tx.get_record(WITNESSED_NS, "latest")? {
                    Some(prev) if same_checkpoint(&prev, &note) => prev,
                    _ => note.clone(),
                };
                tx.put_record(WITNESSED_NS, "latest", &add_signatures(&base, &lines))?;
                for name in &names {
                    tx.put_record(WITNESSED_NS, &format!("size:{name}"), &size.to_string())?;
                }
                Ok(())
            })
            .await?;
    }
    let mut st = g
        .witnessing
        .status
        .lock()
        .map_err(|_| ApiError::unavailable("witness status poisoned"))?;
    for (i, r) in results {
        let s = &mut st[i];
        match r {
            Ok(_) => {
                s.cosigned_size = size;
                s.error = None;
                s.failures = 0;
                s.retry_at = None;
            }
            Err(why) => {
                tracing::error!(witness = %s.name, size, error = %why, "a witness did not cosign the checkpoint");
                s.failures = s.failures.saturating_add(1);
                let wait = Duration::from_secs(1u64 << s.failures.min(6));
                s.retry_at = Some(Instant::now() + wait);
                s.error = Some(why);
            }
        }
    }
    Ok(())
}

fn same_checkpoint(a: &str, b: &str) -> bool {
    match (
        secondkey_log::note::text_unverified(a),
        secondkey_log::note::text_unverified(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn stored_size(g: &Gateway, name: &str) -> u64 {
    g.store
        .get_record(WITNESSED_NS, &format!("size:{name}"))
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The newest checkpoint witnesses cosigned (the operator's signature and
/// theirs), if any.
pub fn latest_witnessed(g: &Gateway) -> Option<String> {
    g.store.get_record(WITNESSED_NS, "latest").ok().flatten()
}

impl Gateway {
    /// The checkpoint as published: the current one, followed by the
    /// cosignatures witnesses gave for this very checkpoint (none yet right
    /// after it grew; a second later once they answered).
    pub async fn published_checkpoint(&self) -> Result<String, ApiError> {
        let note = self.checkpoint().await?;
        Ok(match latest_witnessed(self) {
            Some(w) if same_checkpoint(&w, &note) => w,
            _ => note,
        })
    }

    /// How the witnesses are doing (`/healthz`).
    pub fn witness_status(&self) -> Vec<WitnessStatus> {
        self.witnessing.status()
    }
}

/// Submits new checkpoints every half second (a no-op without witnesses).
pub fn spawn(g: Arc<Gateway>) {
    if g.config.witnesses.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One replica submits (the lease holder); what witnesses
            // return is kept in the shared store for all of them.
            if !g.replica.is_leader() {
                continue;
            }
            if let Err(e) = submit_once(&g).await {
                tracing::warn!(error = %e, "could not submit the checkpoint to witnesses; will retry");
            }
        }
    });
}

// ------------------------------------------------------------- the witness

/// What a witness keeps: per origin, the latest checkpoint it cosigned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateFile {
    logs: BTreeMap<String, LogState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogState {
    size: u64,
    /// Base64 root hash.
    root: String,
}

/// A running witness: its key, its logs, its state on disk.
pub struct WitnessService {
    witness: Witness,
    dir: PathBuf,
    state: tokio::sync::Mutex<StateFile>,
}

impl WitnessService {
    /// Opens (or starts) the state in `dir`. The state is the witness's
    /// memory: lose it and the witness could be made to cosign a fork, so
    /// a witness whose state is gone must get a new key.
    pub fn open(witness: Witness, dir: &Path) -> anyhow::Result<WitnessService> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("state.json");
        let state = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(WitnessService {
            witness,
            dir: dir.to_path_buf(),
            state: tokio::sync::Mutex::new(state),
        })
    }

    fn persist(&self, st: &StateFile) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join("state.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(st)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("state.json"))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Keeps a refused request (possible evidence of a misbehaving log).
    fn keep_refused(&self, body: &[u8], why: &Refusal) {
        use std::io::Write;
        let line = serde_json::json!({"refused": why.to_string(), "status": why.status(),
            "request": String::from_utf8_lossy(body)});
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("refused.jsonl"))
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Handles one `add-checkpoint` body: check and persist under one lock
    /// (so two requests cannot roll each other back), then answer.
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<String, Refusal> {
        let req = AddCheckpoint::parse(body)?;
        let mut st = self.state.lock().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let latest = |origin: &str| {
            st.logs.get(origin).and_then(|l| {
                let root = STANDARD.decode(&l.root).ok()?.try_into().ok()?;
                Some(Cosigned { size: l.size, root })
            })
        };
        match self.witness.check(&req, latest, now) {
            Ok((origin, new, line)) => {
                let mut next = st.clone();
                next.logs.insert(
                    origin,
                    LogState {
                        size: new.size,
                        root: STANDARD.encode(new.root),
                    },
                );
                self.persist(&next).map_err(|e| {
                    Refusal::BadRequest(format!("the witness cannot persist its state: {e}"))
                })?;
                *st = next;
                Ok(line)
            }
            Err(why) => {
                if matches!(
                    why,
                    Refusal::Inconsistent { .. } | Refusal::SameSizeOtherRoot
                ) {
                    tracing::error!(error = %why, "refused to cosign a checkpoint inconsistent with one already cosigned");
                    self.keep_refused(body, &why);
                }
                Err(why)
            }
        }
    }
}

async fn add_checkpoint(
    State(svc): State<Arc<WitnessService>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_refused(&e),
    };
    match svc.add_checkpoint(&body).await {
        Ok(line) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response(),
        Err(Refusal::Conflict { latest, .. }) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{latest}\n"),
        )
            .into_response(),
        Err(why) => {
            let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let status = if why.to_string().contains("cannot persist") {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                status
            };
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{why}\n"),
            )
                .into_response()
        }
    }
}

/// The witness's routes: `POST /add-checkpoint`, `GET /healthz`.
pub fn router(svc: Arc<WitnessService>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(
            secondkey_log::witness::MAX_REQUEST_BYTES,
        ))
        .with_state(svc)
}

/// A body that could not be read: `408` when it did not arrive within the
/// listener's body timeout, `413` when too large, else `400`.
fn body_refused(e: &axum::extract::rejection::BytesRejection) -> Response {
    if let Some(t) = crate::limits::conn::BodyTimedOut::in_causes(e) {
        return (StatusCode::REQUEST_TIMEOUT, format!("{t}\n")).into_response();
    }
    (e.status(), format!("{}\n", e.body_text())).into_response()
}

/// Serves a witness on `listen` until SIGINT/SIGTERM, under the
/// connection limits of the gateway's listener at their defaults
/// ([`ConnLimits`]): a witness is reached by anyone, so a client that
/// trickles a request head, idles or floods connections is cut off as it
/// would be there.
pub async fn serve(listen: std::net::SocketAddr, svc: WitnessService) -> anyhow::Result<()> {
    // Connection caps that fit the open files this process may hold, as
    // the gateway's: a flood must not leave no descriptor for state.json.
    let limits = crate::limits::conn::fit_to_open_files(
        ConnLimits::default(),
        crate::limits::conn::raise_open_files_limit(),
    );
    let listener = crate::limits::conn::bind(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    eprintln!(
        "secondkey witness {} listening on http://{}",
        svc.witness.cosigner.verifier(),
        listener.local_addr()?
    );
    let app = router(Arc::new(svc));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let listener = LimitedListener::new(listener, limits);
    crate::limits::conn::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
