//! Tool-definition pinning, on the gateway's side: the fingerprint of each
//! tool when first listed is kept in the store's records (`mcp.pin`,
//! `<server>/<tool>`); a listing that differs is recorded as a change and
//! calls of that tool are held or refused until a human in
//! `mcp.tool_admins` accepts it. Pinning, every change seen and every
//! acceptance are log entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secondkey_core::principal::{Principal, PrincipalKind};
use secondkey_server::error::ApiError;
use secondkey_server::gateway::rfc3339;
use secondkey_server::Gateway;
use secondkey_store::{StoreError, Tx};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::is_server_name;
use crate::decide::PinState;
use crate::tools::{fingerprint_sized, pinned_part, same_pinned};

/// The record namespace of pins.
pub const NS: &str = "mcp.pin";

/// Most tools one observation may carry.
pub const MAX_TOOLS: usize = 1000;

/// A pinned tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pin {
    pub server: String,
    pub tool: String,
    pub fingerprint: String,
    pub definition: Value,
    pub pinned_at: String,
    /// Who accepted the current definition (`None`: pinned on first sight).
    #[serde(default)]
    pub accepted_by: Option<String>,
    /// A different definition seen since, waiting for a human.
    #[serde(default)]
    pub changed: Option<Changed>,
}

/// A definition that differs from the pin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Changed {
    pub fingerprint: String,
    pub definition: Value,
    pub seen_at: String,
    pub seen_by: String,
}

fn key(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

fn entry(time: &str, event: &str, actor: &str, payload: Value) -> secondkey_log::entry::Entry {
    secondkey_store::new_entry(time, event, Some(actor), payload)
}

fn check_names(server: &str, tool: &str) -> Result<(), ApiError> {
    if !is_server_name(server) {
        return Err(ApiError::bad_request(
            "invalid_server",
            "a server name is 1 to 64 of A-Z a-z 0-9 - _ .",
        ));
    }
    if tool.is_empty() || tool.len() > 256 || tool.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_tool",
            "a tool name is 1 to 256 characters, no control characters",
        ));
    }
    Ok(())
}

/// The pin stored under `k` ([`key`]).
async fn read_pin(gw: &Gateway, k: &str) -> Result<Option<Pin>, ApiError> {
    let k = k.to_string();
    // The embedded store answers a point read from a pooled connection in
    // microseconds, without waiting on the writer (WAL): read it here, on
    // the call's own task, instead of a hand-off to the blocking pool and
    // back (two thread wake-ups per call). A shared store's read is a
    // network round trip, and goes to the blocking pool.
    let raw = if gw.store.is_shared() {
        let store = gw.store.clone();
        tokio::task::spawn_blocking(move || store.get_record(NS, &k))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??
    } else {
        gw.store.get_record(NS, &k)?
    };
    raw.map(|r| {
        serde_json::from_str(&r)
            .map_err(|e| ApiError::unavailable(format!("a stored pin is unreadable: {e}")))
    })
    .transpose()
}

/// Of a pin, what a call's standing depends on.
#[derive(Debug, Clone, PartialEq)]
struct PinSummary {
    fingerprint: String,
    /// The changed definition already recorded, if any.
    changed: Option<String>,
}

impl PinSummary {
    fn of(p: &Pin) -> PinSummary {
        PinSummary {
            fingerprint: p.fingerprint.clone(),
            changed: p.changed.as_ref().map(|c| c.fingerprint.clone()),
        }
    }
}

/// Most tools whose pin (and definition's fingerprint) a [`PinCache`]
/// keeps; past it, it starts again empty.
const MAX_CACHED: usize = 10_000;

/// Largest definition (its canonical JSON) whose fingerprint is kept.
const MAX_KEPT_DEFINITION: usize = 64 * 1024;

/// Most bytes of definitions (canonical JSON) kept in all; past it, the
/// fingerprints kept start again empty.
const MAX_KEPT_DEFINITIONS: usize = 8 * 1024 * 1024;

/// The pins of the embedded store, kept in memory: an HTTP session checks
/// the pin of the tool before every call, and reading it from the store
/// (with the fingerprint of the definition) was a tenth of the gateway's
/// work per call. One per MCP extension, and one MCP extension per
/// gateway (`secondkey serve` builds it once). Every pin is written in
/// this process ([`observe`], [`accept`]: the store's file is locked to
/// it), through [`PinCache::write`]: while a write of a tool's pin is
/// under way its pin is read from the store and not kept, and once it has
/// committed or failed, however its caller ended, what was kept of it is
/// dropped; a read of the store that began before a write is not kept.
/// On a shared store another replica may accept a definition, so nothing
/// is kept and every check reads the store.
#[derive(Default)]
pub struct PinCache(Mutex<Cached>);

#[derive(Default)]
struct Cached {
    /// Pin writes begun or ended so far: a read that began before the
    /// last one is stale.
    writes: u64,
    /// The tools whose pin a write is under way for, with how many.
    writing: HashMap<String, usize>,
    pins: HashMap<String, Option<PinSummary>>,
    /// The last definition seen of each tool (its pinned part), with its
    /// fingerprint and the length of its canonical JSON.
    prints: HashMap<String, (Arc<Value>, String, usize)>,
    /// The lengths in `prints`, summed.
    print_bytes: usize,
}

impl PinCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fingerprint of `def`, the definition of the tool `k`.
    fn fingerprint(&self, k: &str, def: &Value) -> String {
        let kept = self
            .lock()
            .prints
            .get(k)
            .map(|(d, fp, _)| (d.clone(), fp.clone()));
        if let Some((d, fp)) = kept {
            if same_pinned(&d, def) {
                return fp;
            }
        }
        let (fp, len) = fingerprint_sized(def);
        if len <= MAX_KEPT_DEFINITION {
            let kept = Arc::new(pinned_part(def));
            let mut c = self.lock();
            if let Some((_, _, old)) = c.prints.remove(k) {
                c.print_bytes -= old;
            }
            if c.prints.len() >= MAX_CACHED || c.print_bytes + len > MAX_KEPT_DEFINITIONS {
                c.prints.clear();
                c.print_bytes = 0;
            }
            c.prints.insert(k.to_string(), (kept, fp.clone(), len));
            c.print_bytes += len;
        }
        fp
    }

    /// The pin under `k` ([`key`]): kept, or read from the store (and
    /// kept if no pin was written meanwhile; never on a shared store).
    async fn pin(&self, gw: &Gateway, k: &str) -> Result<Option<PinSummary>, ApiError> {
        let writes = if gw.store.is_shared() {
            None
        } else {
            let c = self.lock();
            if let Some(p) = c.pins.get(k) {
                return Ok(p.clone());
            }
            Some(c.writes)
        };
        let read = read_pin(gw, k).await?.as_ref().map(PinSummary::of);
        if let Some(writes) = writes {
            self.keep(writes, k.to_string(), read.clone());
        }
        Ok(read)
    }

    /// Keeps `read`, the pin of `k` as read after `writes` pin writes
    /// began or ended, unless one did since or one is under way for it.
    fn keep(&self, writes: u64, k: String, read: Option<PinSummary>) {
        let mut c = self.lock();
        if c.writes != writes || c.writing.contains_key(&k) {
            return;
        }
        if c.pins.len() >= MAX_CACHED && !c.pins.contains_key(&k) {
            c.pins.clear();
        }
        c.pins.insert(k, read);
    }

    /// A write of the pins of `keys` begins (`start`) or has ended.
    fn mark(&self, keys: &[String], start: bool) {
        let mut c = self.lock();
        c.writes += 1;
        for k in keys {
            c.pins.remove(k);
            if start {
                *c.writing.entry(k.clone()).or_default() += 1;
            } else if let Some(n) = c.writing.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    c.writing.remove(k);
                }
            }
        }
    }

    /// Runs `job`, which writes the pins of `keys`, in one transaction
    /// (see the type's docs). The job is sent before this first waits, and
    /// a task of its own waits for its commit, so what is kept follows the
    /// store even if the caller goes away meanwhile.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        gw: &Gateway,
        keys: Vec<String>,
        job: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.mark(&keys, true);
        let commit = gw.store.transact_sent(job);
        let cache = self.clone();
        let out = tokio::spawn(async move {
            let out = commit.await;
            cache.mark(&keys, false);
            out
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("a pin write ended without an answer: {e}")))?;
        Ok(out?)
    }
}

fn standing(pin: &PinSummary, fp: &str) -> PinState {
    if pin.fingerprint == fp {
        PinState::Pinned { new: false }
    } else {
        PinState::Changed {
            pinned: pin.fingerprint.clone(),
        }
    }
}

/// Compares listed definitions with their pins: a tool seen for the first
/// time is pinned; a different definition is recorded as a change (once
/// per distinct definition). Reads only, unless something is new.
pub async fn observe(
    gw: &Gateway,
    cache: &Arc<PinCache>,
    who: &Principal,
    server: &str,
    tools: Vec<Value>,
) -> Result<Vec<(String, PinState)>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_request(
            "too_many_tools",
            format!("at most {MAX_TOOLS} tools per observation"),
        ));
    }
    let mut seen = Vec::with_capacity(tools.len());
    let mut dirty = false;
    for t in &tools {
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("invalid_tool", "every tool has a string `name`"))?
            .to_string();
        check_names(server, &name)?;
        let k = key(server, &name);
        let fp = cache.fingerprint(&k, t);
        let pin = cache.pin(gw, &k).await?;
        let needs_write = match &pin {
            None => true,
            Some(p) => p.fingerprint != fp && p.changed.as_ref() != Some(&fp),
        };
        dirty |= needs_write;
        seen.push((name, k, fp, pin));
    }
    if !dirty {
        return Ok(seen
            .into_iter()
            .map(|(n, _, fp, pin)| {
                let st = pin
                    .map(|p| standing(&p, &fp))
                    .unwrap_or(PinState::Pinned { new: false });
                (n, st)
            })
            .collect());
    }
    let now = rfc3339(gw.now());
    let actor = who.id.to_string();
    // Only a write needs the definitions kept with pins.
    let defs: Vec<Value> = tools.iter().map(pinned_part).collect();
    let keys: Vec<String> = seen.iter().map(|(_, k, ..)| k.clone()).collect();
    let server = server.to_string();
    let out = cache
        .write(gw, keys, move |tx| {
            let mut out = Vec::with_capacity(seen.len());
            for ((name, k, fp, _), def) in seen.into_iter().zip(defs) {
                let pin: Option<Pin> = match tx.get_record(NS, &k)? {
                    Some(r) => Some(serde_json::from_str(&r).map_err(|e| {
                        ApiError::unavailable(format!("a stored pin is unreadable: {e}"))
                    })?),
                    None => None,
                };
                match pin {
                    None => {
                        let p = Pin {
                            server: server.clone(),
                            tool: name.clone(),
                            fingerprint: fp.clone(),
                            definition: def,
                            pinned_at: now.clone(),
                            accepted_by: None,
                            changed: None,
                        };
                        tx.put_record(NS, &k, &serde_json::to_string(&p).unwrap_or_default())?;
                        tx.append(entry(&now, "mcp.tool.pinned", &actor,
                            json!({"server": server, "tool": name, "fingerprint": fp, "definition": p.definition})))?;
                        out.push((name, PinState::Pinned { new: true }));
                    }
                    Some(mut p) => {
                        if p.fingerprint != fp && p.changed.as_ref().map(|c| &c.fingerprint) != Some(&fp) {
                            tx.append(entry(&now, "mcp.tool.changed", &actor, json!({
                                "server": server, "tool": name, "pinned": p.fingerprint,
                                "seen": fp, "definition": def})))?;
                            p.changed = Some(Changed {
                                fingerprint: fp.clone(),
                                definition: def,
                                seen_at: now.clone(),
                                seen_by: actor.clone(),
                            });
                            tx.put_record(NS, &k, &serde_json::to_string(&p).unwrap_or_default())?;
                        }
                        out.push((name, standing(&PinSummary::of(&p), &fp)));
                    }
                }
            }
            Ok(out)
        })
        .await?;
    Ok(out)
}

/// A human accepts the changed definition `fingerprint` of a tool: it
/// becomes the pin. Only members of `admins` may, and only humans.
pub async fn accept(
    gw: &Gateway,
    cache: &Arc<PinCache>,
    who: &Principal,
    admins: &[String],
    server: &str,
    tool: &str,
    fp: &str,
) -> Result<Pin, ApiError> {
    check_names(server, tool)?;
    if who.id.kind() != PrincipalKind::User || !admins.iter().any(|g| who.groups.contains(g)) {
        return Err(ApiError::forbidden(
            "not_tool_admin",
            format!(
                "accepting a tool definition needs a human in one of: {}",
                admins.join(", ")
            ),
        ));
    }
    let now = rfc3339(gw.now());
    let actor = who.id.to_string();
    let (k, server, tool, fp) = (
        key(server, tool),
        server.to_string(),
        tool.to_string(),
        fp.to_string(),
    );
    let pin = cache
        .write(gw, vec![k.clone()], move |tx| {
            let mut p: Pin = tx
                .get_record(NS, &k)?
                .and_then(|r| serde_json::from_str(&r).ok())
                .ok_or_else(|| ApiError::not_found(format!("no pinned tool {tool:?} on server {server}")))?;
            let Some(ch) = p.changed.clone().filter(|c| c.fingerprint == fp) else {
                return Err(ApiError::conflict(
                    "no_such_change",
                    if p.fingerprint == fp {
                        "that definition is already the pinned one".to_string()
                    } else {
                        format!("the changed definition waiting for acceptance is not {fp}; see `secondkey mcp tools list`")
                    },
                )
                .into());
            };
            tx.append(entry(&now, "mcp.tool.accepted", &actor, json!({
                "server": server, "tool": tool, "previous": p.fingerprint, "accepted": fp,
                "definition": ch.definition})))?;
            p.fingerprint = ch.fingerprint;
            p.definition = ch.definition;
            p.pinned_at = now.clone();
            p.accepted_by = Some(actor.clone());
            p.changed = None;
            tx.put_record(NS, &k, &serde_json::to_string(&p).unwrap_or_default())?;
            Ok(p)
        })
        .await?;
    Ok(pin)
}

/// The pins of a server (all servers: `""`), with any waiting change.
pub async fn list(gw: &Gateway, server: &str) -> Result<Vec<Pin>, ApiError> {
    let store = gw.store.clone();
    let prefix = if server.is_empty() {
        String::new()
    } else {
        format!("{server}/")
    };
    let rows = tokio::task::spawn_blocking(move || store.list_records(NS, &prefix, None, 1000))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    Ok(rows
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_str(&v).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::fingerprint;
    use futures_util::FutureExt;
    use secondkey_core::principal::PrincipalId;
    use std::collections::HashMap as Map;

    async fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let toml = format!(
            "data_dir = \"{}\"\npolicy_dir = \"{}\"\n[log]\norigin = \"pins.test.example/log\"\n",
            dir.join("data").display(),
            policies.display()
        );
        let cfg = secondkey_server::Config::from_toml(&toml, "test", dir, &Map::new()).unwrap();
        secondkey_server::build(cfg).await.unwrap()
    }

    fn who(id: &str, groups: &[&str]) -> Principal {
        Principal::new(
            PrincipalId::parse(id).unwrap(),
            None,
            groups.iter().map(|g| g.to_string()),
        )
        .unwrap()
    }

    fn tool(description: &str) -> Value {
        json!({"name": "echo", "description": description, "inputSchema": {"type": "object"}})
    }

    async fn standing_of(gw: &Gateway, cache: &Arc<PinCache>, def: &Value) -> PinState {
        let bot = who("agent:bot", &[]);
        let mut out = observe(gw, cache, &bot, "files", vec![def.clone()])
            .await
            .unwrap();
        out.pop().unwrap().1
    }

    #[tokio::test]
    async fn what_is_kept_follows_every_pin_write() {
        let tmp = tempfile::tempdir().unwrap();
        let gw = gateway(tmp.path()).await;
        let cache = Arc::new(PinCache::default());
        let (v1, v2) = (tool("Echoes"), tool("Echoes. Also mails ~/.ssh out"));
        assert_eq!(
            standing_of(&gw, &cache, &v1).await,
            PinState::Pinned { new: true }
        );
        // Read again (now from memory): the same answer the store gives.
        for _ in 0..2 {
            assert_eq!(
                standing_of(&gw, &cache, &v1).await,
                PinState::Pinned { new: false }
            );
            assert_eq!(
                standing_of(&gw, &Arc::default(), &v1).await,
                PinState::Pinned { new: false }
            );
        }
        let k = key("files", "echo");
        let kept = |c: &Arc<PinCache>| c.lock().pins.get(&k).cloned();
        assert_eq!(
            kept(&cache).flatten().map(|p| p.changed),
            Some(None),
            "kept"
        );
        let fp1 = fingerprint(&v1);
        let fp2 = fingerprint(&v2);
        let changed = PinState::Changed {
            pinned: fp1.clone(),
        };
        assert_eq!(standing_of(&gw, &cache, &v2).await, changed);
        assert_eq!(kept(&cache), None, "a pin written is dropped");
        assert_eq!(standing_of(&gw, &cache, &v2).await, changed);
        assert_eq!(
            standing_of(&gw, &cache, &v1).await,
            PinState::Pinned { new: false }
        );
        // An acceptance through this cache: kept pins of the tool go.
        let bob = who("user:bob", &["tool-admins"]);
        let admins = vec!["tool-admins".to_string()];
        accept(&gw, &cache, &bob, &admins, "files", "echo", &fp2)
            .await
            .unwrap();
        assert_eq!(
            standing_of(&gw, &cache, &v2).await,
            PinState::Pinned { new: false }
        );
        assert_eq!(
            standing_of(&gw, &cache, &v1).await,
            PinState::Changed {
                pinned: fp2.clone()
            }
        );
        // A refused acceptance changes nothing, kept or stored.
        let err = accept(&gw, &cache, &bob, &admins, "files", "echo", &fp2).await;
        assert_eq!(err.unwrap_err().code, "no_such_change");
        assert_eq!(
            standing_of(&gw, &cache, &v2).await,
            PinState::Pinned { new: false }
        );
    }

    #[tokio::test]
    async fn an_acceptance_whose_caller_went_away_still_drops_what_was_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let gw = gateway(tmp.path()).await;
        let cache = Arc::new(PinCache::default());
        let (v1, v2) = (tool("Echoes"), tool("Echoes, and more"));
        let fp2 = fingerprint(&v2);
        standing_of(&gw, &cache, &v1).await;
        standing_of(&gw, &cache, &v2).await;
        // Kept now: v1 pinned, v2 waiting.
        assert_eq!(
            standing_of(&gw, &cache, &v1).await,
            PinState::Pinned { new: false }
        );
        let bob = who("user:bob", &["tool-admins"]);
        let admins = vec!["tool-admins".to_string()];
        // The admin's request is dropped once the acceptance is under way
        // (the client went away): it still commits.
        let accepting = accept(&gw, &cache, &bob, &admins, "files", "echo", &fp2);
        assert!(accepting.now_or_never().is_none());
        for _ in 0..500 {
            if cache.lock().writing.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(cache.lock().writing.is_empty(), "the write never ended");
        assert_eq!(list(&gw, "files").await.unwrap()[0].fingerprint, fp2);
        assert_eq!(
            standing_of(&gw, &cache, &v1).await,
            PinState::Changed {
                pinned: fp2.clone()
            },
            "the definition no longer pinned runs as pinned"
        );
        assert_eq!(
            standing_of(&gw, &cache, &v2).await,
            PinState::Pinned { new: false }
        );
    }

    #[test]
    fn a_read_that_began_before_or_during_a_write_is_not_kept() {
        let cache = PinCache::default();
        let old = Some(PinSummary {
            fingerprint: "a".into(),
            changed: None,
        });
        let k = key("files", "echo");
        let keys = [k.clone()];
        let before = cache.lock().writes;
        // A write begins while the read is on its way.
        cache.mark(&keys, true);
        cache.keep(before, k.clone(), old.clone());
        assert!(!cache.lock().pins.contains_key(&k), "stale read kept");
        // A read that begins during the write is not kept either.
        let during = cache.lock().writes;
        cache.keep(during, k.clone(), old.clone());
        assert!(
            !cache.lock().pins.contains_key(&k),
            "read during a write kept"
        );
        cache.mark(&keys, false);
        cache.keep(during, k.clone(), old.clone());
        assert!(!cache.lock().pins.contains_key(&k), "stale read kept");
        let now = cache.lock().writes;
        cache.keep(now, k.clone(), old.clone());
        assert_eq!(cache.lock().pins.get(&k), Some(&old));
        cache.mark(&keys, true);
        assert!(!cache.lock().pins.contains_key(&k));
        cache.mark(&keys, false);
        assert!(cache.lock().writing.is_empty());
    }

    #[test]
    fn a_full_cache_starts_again_rather_than_grow() {
        let cache = PinCache::default();
        for i in 0..MAX_CACHED + 5 {
            cache.keep(0, format!("s/t{i}"), None);
            let def = json!({"name": format!("t{i}")});
            assert_eq!(
                cache.fingerprint(&format!("s/t{i}"), &def),
                fingerprint(&def)
            );
        }
        {
            let c = cache.lock();
            assert_eq!((c.pins.len(), c.prints.len()), (5, 5));
        }
        // A large definition's fingerprint is not kept; many middling
        // ones are kept up to a total.
        let big = json!({"name": "big", "description": "x".repeat(MAX_KEPT_DEFINITION)});
        assert_eq!(cache.fingerprint("s/big", &big), fingerprint(&big));
        assert!(!cache.lock().prints.contains_key("s/big"));
        let mid = |i: usize| json!({"name": format!("m{i}"), "description": "y".repeat(60_000)});
        for i in 0..400 {
            assert_eq!(
                cache.fingerprint(&format!("s/m{i}"), &mid(i)),
                fingerprint(&mid(i))
            );
            let c = cache.lock();
            assert!(c.print_bytes <= MAX_KEPT_DEFINITIONS, "{}", c.print_bytes);
            assert_eq!(
                c.print_bytes,
                c.prints.values().map(|(_, _, n)| n).sum::<usize>()
            );
        }
        // Only the pinned part is kept, and what else a definition carries
        // does not change its fingerprint.
        let with_extra =
            json!({"name": "m1", "description": "y".repeat(60_000), "_meta": {"z": 1}});
        let fp = cache.fingerprint("s/m1", &with_extra);
        assert_eq!(fp, fingerprint(&mid(1)));
        let c = cache.lock();
        assert!(c
            .prints
            .get("s/m1")
            .is_some_and(|(d, ..)| d.get("_meta").is_none()));
    }
}
