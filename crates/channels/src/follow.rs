//! The background task: follows the gateway's change feed and keeps every
//! channel message true.
//!
//! - `request.created`: post to the channels routed for the request's
//!   reviewer groups and resource; remember where (a `msg` record).
//! - `escalation_due` (from the gateway's sweeper): if a route names groups
//!   to escalate to, escalate through [`Gateway::escalate`] (the core
//!   transition, logged as `request.escalated`).
//! - `request.escalated`: post to the escalation groups' channels too, and
//!   redraw the others.
//! - anything else (reviews, decisions, expiry, withdrawal, revocation,
//!   execution): redraw every message of the request.
//! - every second: reminders `routing.remind_before` ahead of expiry.
//! - at start, on taking the background lease over, after a lag and on a
//!   re-sync (other replicas' changes may have been missed): every pending
//!   request without a message yet is posted, and every message whose
//!   request changed is redrawn — read from the store, so a request created
//!   while no replica that saw it led is still posted, once.
//!
//! Posts and reminders run under a [`hold`](secondkey_server::replicas::Replica::hold)
//! on the lease: a replica that stands down sends none, and one stopped
//! cleanly records those it sent before another replica takes over.
//!
//! Channel calls that fail are logged and skipped: a chat outage never
//! blocks a decision, which the API, the web and other channels still take.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use secondkey_core::request::{Request, RequestState};
use secondkey_server::gateway::RequestChange;
use secondkey_server::Gateway;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::slack::api::Posted;
use crate::teams::connector::PostedActivity;
use crate::{records, Inner};

/// Where a request's messages are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Messages {
    #[serde(default)]
    pub slack: Vec<Posted>,
    #[serde(default)]
    pub teams: Vec<PostedActivity>,
    #[serde(default)]
    pub reminded: bool,
    /// What the messages last showed ([`fingerprint`]), so a restart or a
    /// lagging feed redraws exactly the ones that are out of date.
    #[serde(default)]
    pub drawn: Option<String>,
}

/// What a message shows that can change: state, reviews, escalation.
pub fn fingerprint(req: &Request) -> String {
    format!(
        "{}:{}:{}",
        req.state.as_str(),
        req.reviews.len(),
        req.escalated_to.len()
    )
}

/// The most pending requests one catch-up checks for a missing post.
const MAX_CATCH_UP: usize = 10_000;

struct Follower {
    gateway: Arc<Gateway>,
    inner: Arc<Inner>,
    /// Pending requests with messages: id → expires_at (ms).
    pending: BTreeMap<String, i64>,
}

/// Spawns the follower; it ends when the gateway's change feed closes.
pub fn spawn(gateway: Arc<Gateway>, inner: Arc<Inner>) {
    let rx = gateway.subscribe();
    let f = Follower {
        gateway,
        inner,
        pending: BTreeMap::new(),
    };
    tokio::spawn(f.run(rx));
}

/// Every group that may review now, escalation groups included (their
/// routes get the request once it is escalated).
fn groups_of(req: &Request) -> BTreeSet<String> {
    req.requirements
        .iter()
        .flat_map(|r| r.all_groups())
        .map(str::to_owned)
        .collect()
}

impl Follower {
    async fn run(mut self, mut rx: tokio::sync::broadcast::Receiver<RequestChange>) {
        // Replicas on one store: only the holder of the background lease
        // posts, updates and reminds, so a message goes out once. Whether
        // this replica leads is read where each event is handled (the lease
        // may change hands while the loop waits); a replica that takes the
        // lease over catches up from the store first (`reconcile`),
        // so what changed while it did not lead is posted or redrawn.
        let mut lease = self.gateway.replica.leading();
        let mut leading = *lease.borrow_and_update();
        if leading {
            self.reconcile().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Ok(()) = lease.changed() => {
                    let now = *lease.borrow_and_update();
                    if now && !leading {
                        self.reconcile().await;
                    }
                    leading = now;
                }
                c = rx.recv() => {
                    let lead = self.gateway.replica.is_leader();
                    match c {
                        Ok(_) if !lead => {}
                        Ok(c) if c.is_resync() => self.reconcile().await,
                        Ok(c) => self.on_change(c).await,
                        Err(RecvError::Lagged(n)) => {
                            if lead {
                                tracing::warn!(missed = n, "channel follower lagged; catching up from the store");
                                self.reconcile().await;
                            }
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
                _ = tick.tick() => {
                    if self.gateway.replica.is_leader() {
                        self.remind().await
                    }
                }
            }
        }
    }

    async fn load(&self, id: &str) -> Option<Request> {
        let store = self.gateway.store.clone();
        let id = id.to_string();
        match tokio::task::spawn_blocking(move || store.get_request(&id)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "channel follower could not read a request");
                None
            }
            Err(_) => None,
        }
    }

    async fn messages(&self, id: &str) -> Messages {
        records::read_async(&self.gateway.store, "msg", id.to_string())
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    async fn save(&self, id: &str, m: Messages) {
        let id = id.to_string();
        if let Err(e) = self
            .gateway
            .store
            .transact(move |tx| records::put(tx, "msg", &id, &m))
            .await
        {
            tracing::warn!(error = %e, "could not remember where a request was posted");
        }
    }

    /// Catches up from the store (at start, on taking the lease over, after
    /// a lag or a re-sync of other replicas' changes): posts every pending
    /// request that has no message yet (created while no replica that knew
    /// of it led), redraws every message whose request changed since it was
    /// drawn, and tracks the pending ones for reminders.
    async fn reconcile(&mut self) {
        let store = self.gateway.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, secondkey_store::StoreError>((
                records::list::<Messages>(&store, "msg")?,
                store.pending_ids(MAX_CATCH_UP)?,
            ))
        })
        .await;
        let (all, pending) = match read {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not list posted messages and pending requests");
                return;
            }
            Err(_) => return,
        };
        if pending.len() >= MAX_CATCH_UP {
            tracing::warn!(
                limit = MAX_CATCH_UP,
                "more pending requests than one catch-up checks; the newest are posted when they change"
            );
        }
        let posted: BTreeSet<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
        let unposted: Vec<String> = pending
            .into_iter()
            .filter(|id| !posted.contains(id.as_str()))
            .collect();
        for id in unposted {
            self.post(&id).await;
        }
        for (id, m) in all {
            let Some(req) = self.load(&id).await else {
                continue;
            };
            if req.state == RequestState::Pending && !m.reminded {
                self.pending.insert(id.clone(), req.expires_at.0);
            }
            if m.drawn.as_deref() != Some(fingerprint(&req).as_str()) {
                self.redraw(&id).await;
            }
        }
    }

    async fn on_change(&mut self, c: RequestChange) {
        match c.event.as_str() {
            "request.created" => self.post(&c.id).await,
            "escalation_due" => self.escalate(&c.id).await,
            // `request.changed`: another replica changed it, whatever it
            // was (posting skips channels it is in already, and anything no
            // longer pending).
            "request.escalated" | "request.changed" => {
                self.post(&c.id).await;
                self.redraw(&c.id).await;
            }
            _ => self.redraw(&c.id).await,
        }
    }

    /// Posts to every routed channel the request is not in yet.
    async fn post(&mut self, id: &str) {
        let Some(req) = self.load(id).await else {
            return;
        };
        if req.state != RequestState::Pending {
            return;
        }
        let targets = self
            .inner
            .config
            .routing
            .targets(&groups_of(&req), &req.action.resource);
        if targets.is_empty() {
            return;
        }
        let summary = crate::summary(&self.gateway, &req).await;
        // Posted and recorded before a clean hand-over lets the lease go, so
        // the next holder does not post it again; nothing new is sent once
        // this replica stands down.
        let Some(_hold) = self.gateway.replica.hold() else {
            return;
        };
        let leads = || self.gateway.replica.is_leader();
        let mut m = self.messages(id).await;
        let before = (m.slack.len(), m.teams.len());
        let first = before == (0, 0);
        if let Some(slack) = &self.inner.slack {
            for ch in &targets.slack {
                if m.slack.iter().any(|p| &p.channel == ch) {
                    continue;
                }
                if !leads() {
                    break;
                }
                match crate::slack::post(slack, ch, &summary).await {
                    Ok(p) => m.slack.push(p),
                    Err(e) => {
                        tracing::warn!(channel = %ch, error = %e, "could not post a request to Slack")
                    }
                }
            }
        }
        if let Some(teams) = &self.inner.teams {
            for conv in &targets.teams {
                if m.teams.iter().any(|p| &p.conversation == conv) {
                    continue;
                }
                if !leads() {
                    break;
                }
                let a = crate::teams::card::activity(
                    crate::teams::card::card(&summary, None),
                    &summary.headline(),
                );
                match teams.connector.send(&teams.service_url, conv, a).await {
                    Ok(p) => m.teams.push(p),
                    Err(e) => {
                        tracing::warn!(conversation = %conv, error = %e, "could not post a request to Teams")
                    }
                }
            }
        }
        if (m.slack.len(), m.teams.len()) != before {
            self.pending.insert(id.to_string(), req.expires_at.0);
            if first {
                m.drawn = Some(fingerprint(&req));
            }
            self.save(id, m).await;
        }
    }

    async fn escalate(&mut self, id: &str) {
        let Some(req) = self.load(id).await else {
            return;
        };
        let to = self
            .inner
            .config
            .routing
            .escalation(&groups_of(&req), &req.action.resource);
        if to.is_empty() {
            return;
        }
        match self.gateway.escalate(id, to).await {
            Ok(_) => {}
            Err(e) if e.code == "nothing_to_escalate" => {}
            Err(e) => tracing::warn!(request = %id, error = %e, "escalation failed"),
        }
    }

    /// Redraws every message of the request with its current state (unless
    /// they already show it).
    async fn redraw(&mut self, id: &str) {
        let mut m = self.messages(id).await;
        if m.slack.is_empty() && m.teams.is_empty() {
            return;
        }
        let Some(req) = self.load(id).await else {
            return;
        };
        if req.state != RequestState::Pending {
            self.pending.remove(id);
        } else if !m.reminded {
            self.pending.insert(id.to_string(), req.expires_at.0);
        }
        let fp = fingerprint(&req);
        if m.drawn.as_deref() == Some(fp.as_str()) {
            return;
        }
        let summary = crate::summary(&self.gateway, &req).await;
        if let Some(slack) = &self.inner.slack {
            for p in &m.slack {
                if let Err(e) = crate::slack::update(slack, p, &summary).await {
                    tracing::warn!(error = %e, "could not update a Slack message");
                }
            }
        }
        if let Some(teams) = &self.inner.teams {
            for p in &m.teams {
                let a = crate::teams::card::activity(
                    crate::teams::card::card(&summary, None),
                    &summary.headline(),
                );
                if let Err(e) = teams.connector.update(p, a).await {
                    tracing::warn!(error = %e, "could not update a Teams card");
                }
            }
        }
        m.drawn = Some(fp);
        self.save(id, m).await;
    }

    async fn remind(&mut self) {
        let Some(before) = self.inner.config.routing.remind_before else {
            return;
        };
        let now = self.gateway.now().0;
        let ahead = i64::try_from(before.as_millis()).unwrap_or(i64::MAX);
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, exp)| now >= exp.saturating_sub(ahead) && now < **exp)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            // As for posts: a reminder is sent and recorded under the lease.
            let Some(_hold) = self.gateway.replica.hold() else {
                return;
            };
            self.pending.remove(&id);
            let mut m = self.messages(&id).await;
            if m.reminded {
                continue;
            }
            let Some(req) = self.load(&id).await else {
                continue;
            };
            if req.state != RequestState::Pending {
                continue;
            }
            let left = (req.expires_at.0 - now).max(0) / 1000;
            let text = format!(
                "⏰ Reminder: request {} still needs a decision and expires in {} min {} s ({}). If nobody decides, it expires — it is never approved by default.",
                id,
                left / 60,
                left % 60,
                crate::summary(&self.gateway, &req).await.required.join("; ")
            );
            if let Some(slack) = &self.inner.slack {
                for p in &m.slack {
                    if let Err(e) = crate::slack::remind(slack, p, &text).await {
                        tracing::warn!(error = %e, "could not post a Slack reminder");
                    }
                }
            }
            if let Some(teams) = &self.inner.teams {
                for p in &m.teams {
                    let a = serde_json::json!({"type": "message", "text": text, "replyToId": p.activity_id});
                    if let Err(e) = teams
                        .connector
                        .send(&p.service_url, &p.conversation, a)
                        .await
                    {
                        tracing::warn!(error = %e, "could not post a Teams reminder");
                    }
                }
            }
            m.reminded = true;
            self.save(&id, m).await;
        }
    }
}
