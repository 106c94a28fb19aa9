//! Several gateway replicas on one PostgreSQL store.
//!
//! - **One set of keys.** Replicas sign checkpoints, grants and web
//!   sessions; a grant signed on A is consumed on B, a checkpoint from A
//!   and one from B over the same size must be the same note. The first
//!   replica records the fingerprints of its keys in the store (`meta`
//!   `replica.keys`); a replica started with other keys refuses to start.
//! - **Wake-ups.** The store hears other replicas' request changes
//!   (`LISTEN`); [`spawn`] turns each into a change on this gateway's feed,
//!   so long-polls, event streams and adapters waiting here wake when a
//!   reviewer decided on another replica. When some may have been missed
//!   (the `LISTEN` connection was re-made, or the forwarder lagged), it
//!   puts a [`RequestChange::RESYNC`](crate::gateway::RequestChange::RESYNC)
//!   on the feed instead: every waiter re-reads its request, the chat
//!   followers catch up from the store.
//! - **Background work once.** The lease `background` (held in the store,
//!   renewed every half second, 5 s long) says which replica runs the
//!   expiry and escalation sweep, the chat followers, the log sinks (their
//!   cursors kept in the store, so the next holder goes on where the last
//!   one stopped), the request webhooks and the submissions to witnesses;
//!   the others wait to take over when it lapses, or at once when its
//!   holder stops ([`Keeper::stop`] releases it).

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::gateway::Gateway;

/// The lease background work runs under.
pub const LEASE: &str = "background";
/// How long a lease lasts without renewal.
pub const LEASE_TTL_MS: i64 = 5_000;

/// How long a renewal may take before the holder stands down: half the
/// lease's life, so it stops before another replica may take over.
const RENEWAL_TIMEOUT: Duration = Duration::from_millis(LEASE_TTL_MS as u64 / 2);

/// How long a holder that stands down at shutdown waits for its chat posts
/// on their way ([`Replica::hold`]) to be answered and recorded before it
/// releases the lease. Well within what is left of the lease's life (the
/// last renewal began at most one tick, half a second, plus that renewal's
/// time before), so no other replica can take it over meanwhile; a Slack
/// or Teams post answers in well under a second when the chat is well.
const STAND_DOWN_WAIT: Duration = Duration::from_secs(3);

/// This replica's identity and whether it holds the background lease.
pub struct Replica {
    /// Unique per process: what the lease records as its holder.
    pub id: String,
    /// Whether it holds the lease; tasks that wait for their turn (the
    /// sinks) follow it through [`Replica::leading`].
    leading: tokio::sync::watch::Sender<bool>,
    /// How many [`Hold`]s are alive: chat posts on their way.
    in_flight: tokio::sync::watch::Sender<usize>,
}

/// Background work under way that the lease is not let go before (a chat
/// post sent and not yet recorded); see [`Replica::hold`].
pub struct Hold<'a>(&'a Replica);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Replica {
    /// A replica that leads at once when the store is its own (SQLite), and
    /// only once it holds the lease when the store is shared.
    pub fn new(shared: bool) -> Replica {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        Replica {
            id: format!("replica-{}-{}", std::process::id(), hex::encode(b)),
            leading: tokio::sync::watch::Sender::new(!shared),
            in_flight: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Whether this replica runs the background work now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    pub(crate) fn set_leader(&self, v: bool) {
        self.leading
            .send_if_modified(|l| std::mem::replace(l, v) != v);
    }

    /// Follows [`Replica::is_leader`].
    pub fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Work that must not be done twice across replicas (a chat post and
    /// the record of where it went) runs under a hold: `None` once this replica does
    /// not lead, and a clean stand-down waits (up to [`STAND_DOWN_WAIT`])
    /// for the holds alive before it releases the lease. Check
    /// [`Replica::is_leader`] again before each further call: a stand-down
    /// lets what was sent finish, and nothing new start.
    pub fn hold(&self) -> Option<Hold<'_>> {
        // Counted before leadership is read, and the keeper stands down
        // before it reads the count: either this sees the stand-down, or
        // the keeper waits for this hold.
        self.in_flight.send_modify(|n| *n += 1);
        let hold = Hold(self);
        self.is_leader().then_some(hold)
    }

    /// Waits until no [`Hold`] is alive, for at most `within`; whether none is.
    async fn settled(&self, within: Duration) -> bool {
        let mut count = self.in_flight.subscribe();
        let none = tokio::time::timeout(within, count.wait_for(|n| *n == 0)).await;
        none.is_ok()
    }
}

/// Fingerprints of the keys every replica must share: the log's verifier
/// key, the grant key id and a hash of the web session key.
pub fn key_fingerprints(log_verifier: &str, grant_kid: &str, session_key: &[u8; 32]) -> String {
    let session = hex::encode(Sha256::digest(session_key));
    serde_json::json!({"log": log_verifier, "grant": grant_kid, "session_sha256": session})
        .to_string()
}

/// Records this replica's key fingerprints in a shared store, or checks
/// them against those recorded: replicas must sign with the same keys. A
/// replica with other keys refuses to start, naming the files to replace.
pub async fn check_keys(g: &Gateway, fingerprints: String) -> anyhow::Result<()> {
    if !g.store.is_shared() {
        return Ok(());
    }
    let mine = fingerprints.clone();
    let recorded = g
        .store
        .transact(move |tx| {
            if let Some(v) = tx.get_meta("replica.keys")? {
                return Ok(Some(v));
            }
            tx.put_meta("replica.keys", &mine)?;
            Ok(None)
        })
        .await?;
    let Some(recorded) = recorded.filter(|r| *r != fingerprints) else {
        return Ok(());
    };
    let files = [
        ("log", g.config.log_key_file.clone()),
        ("grant", g.config.grant_key_file.clone()),
        ("session_sha256", g.config.data_dir.join("keys/session.key")),
    ];
    anyhow::bail!(
        "this replica's keys differ from those the other replicas sign with: replace {} \
         with the other replicas' copy (every replica holds the same [log] key_file, \
         [grants] key_file and data_dir/keys/session.key; see docs/replicas.md)",
        differing_key_files(&recorded, &fingerprints, &files)
    )
}

/// The files (of `files`, by fingerprint field) whose fingerprints differ
/// between `recorded` and `mine`; all of them when that cannot be told.
fn differing_key_files(recorded: &str, mine: &str, files: &[(&str, std::path::PathBuf)]) -> String {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    let (r, m) = (parse(recorded), parse(mine));
    let differs = |field: &str| match (&r, &m) {
        (Some(r), Some(m)) => r.get(field) != m.get(field),
        _ => true,
    };
    let mut names: Vec<String> = files
        .iter()
        .filter(|(field, _)| differs(field))
        .map(|(_, path)| path.display().to_string())
        .collect();
    if names.is_empty() {
        names = files.iter().map(|(_, p)| p.display().to_string()).collect();
    }
    names.join(", ")
}

/// The lease keeper of a replica on a shared store, until
/// [`Keeper::stop`].
pub struct Keeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Hands the background work over at shutdown: the keeper stops
    /// renewing, this replica stands down (its background work stops, and
    /// chat posts already sent are answered and recorded: [`Replica::hold`]),
    /// and the lease is released, so another replica takes it at its next
    /// renewal instead of after the lease lapses. Returns once done; no
    /// renewal can follow the release, since the keeper makes them.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts what a replica on a shared store runs: the lease keeper and the
/// forwarder of other replicas' request changes. Nothing on SQLite.
pub fn spawn(g: Arc<Gateway>) -> Option<Keeper> {
    let mut remote = g.store.remote_changes()?;
    let fwd = g.clone();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match remote.recv().await {
                Ok(id) if id == secondkey_store::REMOTE_RESYNC => {
                    tracing::info!(
                        "listening to other replicas again; waiters and followers re-read"
                    );
                    fwd.announce_resync();
                }
                Ok(id) => fwd.announce_remote(&id).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "missed changes from other replicas; waiters and followers re-read"
                    );
                    fwd.announce_resync();
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Stopped, or the keeper dropped.
                _ = &mut stopped => break,
                _ = tick.tick() => {}
            }
            let now = g.now().0;
            // A renewal that hangs (the database paused, a half-open
            // connection) must not leave this replica leading while the
            // lease lapses and another takes it: past half the lease's
            // life it stands down, and leads again once a renewal succeeds.
            let renewal = g.store.lease(LEASE, &g.replica.id, now, LEASE_TTL_MS);
            let held = tokio::time::timeout(RENEWAL_TIMEOUT, renewal).await;
            let lead = match held {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the background lease; standing down");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        "renewing the background lease takes over {RENEWAL_TIMEOUT:?}; standing down"
                    );
                    false
                }
            };
            if lead != g.replica.is_leader() {
                tracing::info!(replica = %g.replica.id, lead, "background lease changed hands");
            }
            g.replica.set_leader(lead);
        }
        // Stand down first, then let go: once another replica may hold the
        // lease, this one runs no background work, and has recorded the chat
        // posts it sent (the next holder posts those it finds unrecorded).
        g.replica.set_leader(false);
        if !g.replica.settled(STAND_DOWN_WAIT).await {
            tracing::warn!(
                "chat posts still unanswered after {STAND_DOWN_WAIT:?}; releasing the background lease anyway (the next holder may post them again)"
            );
        }
        if let Err(e) = g.store.release_lease(LEASE, &g.replica.id).await {
            tracing::warn!(error = %e, "could not release the background lease");
        }
    });
    Some(Keeper { stop, task })
}
