//! Outbound webhooks for request events, signed per Standard Webhooks.
//!
//! They follow the committed audit log, like the SIEM sinks and through the
//! same runner (`secondkey-sinks`): an event is sent only once the entry
//! that records it is durable, retried with capped exponential backoff until
//! the receiver answers 2xx, in log order, from a persisted cursor — so
//! nothing is lost across receiver outages or gateway restarts. The
//! `webhook-id` is derived from the log index, so every retry of one event
//! carries the same id and receivers deduplicate on it. A new webhook starts
//! at the end of the log (it does not replay history). Replicas on one
//! store take turns, like the sinks: only the holder of the background
//! lease delivers, from a cursor kept in the store (records namespace
//! `webhook.cursor`, key the webhook's name), so each event is sent by one
//! replica — again by the next holder only if it was in flight when the
//! last one died. Earlier versions kept that cursor in a file on a shared
//! store too (`data_dir/channels/webhooks/<name>.cursor`): while the store
//! holds no cursor for a webhook, it starts from that file, not from the
//! log's end, so entries appended between the last delivery and the
//! upgrade are still sent.
//!
//! The body is the Standard Webhooks payload shape:
//! `{"type": "request.approved", "timestamp": "…", "data": {…}}`, where
//! `data` holds the request id, the action digest, the actor, the log index
//! and the log entry's payload.

use std::sync::Arc;

use secondkey_server::logview::{run_sink, StoreCursor};
use secondkey_sinks::webhook::WebhookSink;
use secondkey_sinks::{DeliverFuture, FileCursor, Sink};
use serde_json::{json, Value};

use crate::config::WebhookConfig;

/// The event types a webhook may subscribe to.
pub const EVENT_TYPES: [&str; 9] = [
    "request.created",
    "request.reviewed",
    "request.approved",
    "request.denied",
    "request.expired",
    "request.escalated",
    "request.executed",
    "request.withdrawn",
    "request.revoked",
];

/// The webhook event type of a log event, if it is a request event.
pub fn event_type(entry: &Value) -> Option<&'static str> {
    let on_request = entry.pointer("/subjects/request").is_some();
    if !on_request {
        return None;
    }
    Some(match entry.get("event")?.as_str()? {
        "request.created" => "request.created",
        "review.submitted" => "request.reviewed",
        "request.approved" => "request.approved",
        "request.denied" => "request.denied",
        "request.expired" => "request.expired",
        "request.escalated" => "request.escalated",
        "grant.consumed" => "request.executed",
        "request.withdrawn" => "request.withdrawn",
        "request.revoked" => "request.revoked",
        _ => return None,
    })
}

/// The Standard Webhooks body for a log entry, or `None` to skip it.
pub fn payload(entry: &Value, wanted: &std::collections::BTreeSet<String>) -> Option<Vec<u8>> {
    let ty = event_type(entry)?;
    if !wanted.is_empty() && !wanted.contains(ty) {
        return None;
    }
    let body = json!({
        "type": ty,
        "timestamp": entry.get("time"),
        "data": {
            "request": entry.pointer("/subjects/request"),
            "digest": entry.get("digest"),
            "actor": entry.get("actor"),
            "log_index": entry.get("index"),
            "details": entry.get("payload"),
        }
    });
    Some(body.to_string().into_bytes())
}

/// A log sink that turns request events into signed webhooks and skips the
/// rest (acknowledging them, so the cursor moves past).
pub struct RequestEvents {
    inner: WebhookSink,
    events: std::collections::BTreeSet<String>,
}

impl Sink for RequestEvents {
    fn kind(&self) -> &'static str {
        "request-webhook"
    }

    fn deliver<'a>(&'a mut self, index: u64, entry: &'a [u8]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let parsed: Value = match serde_json::from_slice(entry) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(index, error = %e, "a log entry is not JSON; skipped by the request webhook");
                    return Ok(());
                }
            };
            match payload(&parsed, &self.events) {
                None => Ok(()),
                Some(body) => self.inner.deliver(index, &body).await,
            }
        })
    }
}

/// Starts one webhook per configuration. `log_origin` prefixes ids so they
/// are unique across gateways.
pub fn start(
    gateway: &Arc<secondkey_server::Gateway>,
    hooks: &[WebhookConfig],
) -> anyhow::Result<()> {
    let dir = gateway.config.data_dir.join("channels").join("webhooks");
    let source = Arc::new(secondkey_server::logview::StoreSource(
        gateway.store.clone(),
    ));
    for h in hooks {
        let prefix = format!("{}.{}", gateway.config.log_origin, h.name);
        let inner = WebhookSink::new(
            &h.url,
            h.secret.clone(),
            &prefix,
            h.ca_file.as_deref(),
            h.timeout,
        )
        .map_err(|e| anyhow::anyhow!("webhooks `{}`: {e}", h.name))?;
        let sink = Box::new(RequestEvents {
            inner,
            events: h.events.clone(),
        });
        let name = format!("webhook:{}", h.name);
        if gateway.store.is_shared() {
            // Replicas take turns (the background lease) on a cursor kept
            // in the store, like the log sinks: each event is sent by one
            // replica. An earlier version's file cursor is read only while
            // the store holds none. Started now, before this replica
            // serves: the first replica's start holds for all.
            let cursor = StoreCursor::webhook(gateway.store.clone(), &h.name)
                .upgraded_from(&dir, "to start at the log's end")
                .and_then(StoreCursor::started)
                .map_err(|e| anyhow::anyhow!("webhooks `{}`: {e}", h.name))?;
            run_sink(gateway, &name, sink, source.clone(), cursor);
        } else {
            let cursor = FileCursor::open(&dir, &h.name)
                .map_err(|e| anyhow::anyhow!("webhooks `{}`: {e}", h.name))?;
            if !cursor.path().exists() {
                cursor
                    .save(gateway.store.log_size())
                    .map_err(|e| anyhow::anyhow!("webhooks `{}`: {e}", h.name))?;
            }
            run_sink(gateway, &name, sink, source.clone(), cursor);
        }
        tracing::info!(webhook = %h.name, "request webhook started");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_request_events_become_webhooks() {
        let e = json!({"index": 7, "time": "t", "event": "request.approved", "actor": "user:bob",
                       "subjects": {"request": "req_1"}, "digest": "d", "payload": {"x": 1}});
        let body: Value =
            serde_json::from_slice(&payload(&e, &Default::default()).unwrap()).unwrap();
        assert_eq!(body["type"], "request.approved");
        assert_eq!(body["data"]["request"], "req_1");
        assert_eq!(body["data"]["log_index"], 7);
        let only_denied = ["request.denied".to_string()].into();
        assert!(payload(&e, &only_denied).is_none());
        let consumed = json!({"event": "grant.consumed", "subjects": {"request": "r"}});
        assert_eq!(event_type(&consumed), Some("request.executed"));
        // an allow's grant use is not a request event
        assert_eq!(
            event_type(&json!({"event": "grant.consumed", "subjects": {"grant": "g"}})),
            None
        );
        assert_eq!(
            event_type(&json!({"event": "gateway.started", "subjects": {}})),
            None
        );
        assert_eq!(
            event_type(&json!({"event": "review.submitted", "subjects": {"request": "r"}})),
            Some("request.reviewed")
        );
    }
}
