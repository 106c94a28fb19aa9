//! What one principal (or one token issuer) may hold or do at once.
//!
//! Pure bookkeeping: times come in as Unix milliseconds from the caller's
//! clock (the gateway's, which tests replace), so every rule here is tested
//! without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Concurrent holders per key, each key under its own cap: open event
/// streams and long-polls per principal, and per token issuer for the
/// principals no `[[principals]]` entry names.
#[derive(Debug, Default)]
pub struct Slots {
    open: Mutex<HashMap<String, usize>>,
}

/// Held slots; dropping it gives them back, however the holder ends.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<Slots>,
    keys: Vec<String>,
}

impl Slots {
    pub fn new() -> Arc<Slots> {
        Arc::new(Slots::default())
    }

    /// Takes one slot under each `(key, cap)`, all or none. On refusal,
    /// returns the key that is full and its cap.
    pub fn try_take(
        self: &Arc<Self>,
        keys: &[(String, usize)],
    ) -> Result<SlotGuard, (String, usize)> {
        let mut open = lock(&self.open);
        if let Some((k, cap)) = keys
            .iter()
            .find(|(k, cap)| open.get(k).copied().unwrap_or(0) >= *cap)
        {
            return Err((k.clone(), *cap));
        }
        for (k, _) in keys {
            *open.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(SlotGuard {
            slots: self.clone(),
            keys: keys.iter().map(|(k, _)| k.clone()).collect(),
        })
    }

    /// Slots held under `key` now.
    pub fn held(&self, key: &str) -> usize {
        lock(&self.open).get(key).copied().unwrap_or(0)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.slots.open);
        for k in &self.keys {
            if let Some(n) = open.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(k);
                }
            }
        }
    }
}

/// Token buckets per key: `per_minute` tokens a minute, at most
/// `per_minute` saved up (a burst of a minute's worth). One take is one
/// event (a request opened). Kept in integer units of 1/60000 token, so
/// refill is exact.
#[derive(Debug)]
pub struct Buckets {
    per_minute: u32,
    /// key → (units, as of ms).
    map: Mutex<HashMap<String, (i64, i64)>>,
}

/// Most keys remembered; past it, full buckets (the same as no bucket) are
/// forgotten first.
const MAX_BUCKETS: usize = 100_000;

/// Units of one token.
const TOKEN: i64 = 60_000;

impl Buckets {
    /// `per_minute == 0` means unlimited.
    pub fn new(per_minute: u32) -> Buckets {
        Buckets {
            per_minute,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at `now_ms`, or says how long until one is
    /// there.
    pub fn try_take(&self, key: &str, now_ms: i64) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let rate = i64::from(self.per_minute);
        let cap = rate * TOKEN;
        let refill = |units: i64, at: i64| {
            units
                .saturating_add((now_ms - at).max(0).saturating_mul(rate))
                .min(cap)
        };
        let mut map = lock(&self.map);
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            map.retain(|_, (units, at)| refill(*units, *at) < cap);
            if map.len() >= MAX_BUCKETS {
                map.clear();
            }
        }
        let (units, at) = map.entry(key.to_string()).or_insert((cap, now_ms));
        *units = refill(*units, *at);
        *at = now_ms.max(*at);
        if *units >= TOKEN {
            *units -= TOKEN;
            Ok(())
        } else {
            let ms = (TOKEN - *units + rate - 1) / rate;
            Err(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        }
    }
}

/// Refusals of one principal in one window, as a `limit.refused` log entry
/// records them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// When the window began (the first refusal), Unix ms.
    pub first_ms: i64,
    /// The last refusal counted, Unix ms.
    pub last_ms: i64,
    /// Refusals by error code (`too_many_pending`, `rate_limited`, …).
    pub by_code: BTreeMap<String, u64>,
}

impl Tally {
    /// All refusals counted.
    pub fn count(&self) -> u64 {
        self.by_code.values().sum()
    }
}

/// The refusals not yet written to the log, per principal. A window opens
/// at a principal's first refusal and is written (one entry, with counts)
/// once `window` has passed, so a flood of refused submissions adds one
/// log entry per principal per window, whatever its size.
#[derive(Debug)]
pub struct RefusalTally {
    window_ms: i64,
    open: Mutex<BTreeMap<String, Tally>>,
}

/// Most principals tallied at once; refusals of further ones are counted
/// under `*` (a flood of fresh workload identities stays bounded too).
pub const MAX_TALLIED: usize = 10_000;

impl RefusalTally {
    pub fn new(window: Duration) -> RefusalTally {
        RefusalTally {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            open: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one refusal of `principal` with `code` at `now_ms`.
    pub fn record(&self, principal: &str, code: &str, now_ms: i64) {
        let mut open = lock(&self.open);
        let key = if open.len() >= MAX_TALLIED && !open.contains_key(principal) {
            "*"
        } else {
            principal
        };
        let t = open.entry(key.to_string()).or_insert_with(|| Tally {
            first_ms: now_ms,
            last_ms: now_ms,
            by_code: BTreeMap::new(),
        });
        t.last_ms = t.last_ms.max(now_ms);
        *t.by_code.entry(code.to_string()).or_insert(0) += 1;
    }

    /// Takes out the windows that are over at `now_ms` (all of them with
    /// `all`, at shutdown), to be written to the log.
    pub fn take_due(&self, now_ms: i64, all: bool) -> Vec<(String, Tally)> {
        let mut open = lock(&self.open);
        let due: Vec<String> = open
            .iter()
            .filter(|(_, t)| all || now_ms - t.first_ms >= self.window_ms)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| open.remove(&k).map(|t| (k, t)))
            .collect()
    }

    /// Puts back windows that could not be written, to try again.
    pub fn restore(&self, taken: Vec<(String, Tally)>) {
        let mut open = lock(&self.open);
        for (k, t) in taken {
            match open.get_mut(&k) {
                Some(cur) => {
                    cur.first_ms = cur.first_ms.min(t.first_ms);
                    cur.last_ms = cur.last_ms.max(t.last_ms);
                    for (code, n) in t.by_code {
                        *cur.by_code.entry(code).or_insert(0) += n;
                    }
                }
                None => {
                    open.insert(k, t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_all_or_nothing_and_given_back() {
        let s = Slots::new();
        let k = |a: &str, cap| (a.to_string(), cap);
        let g1 = s.try_take(&[k("p:a", 2), k("iss:x", 3)]).unwrap();
        let g2 = s.try_take(&[k("p:a", 2), k("iss:x", 3)]).unwrap();
        assert_eq!(s.try_take(&[k("p:a", 2)]).unwrap_err(), ("p:a".into(), 2));
        let g3 = s.try_take(&[k("p:b", 2), k("iss:x", 3)]).unwrap();
        // The issuer is full: nothing is taken for p:c either.
        assert!(s.try_take(&[k("p:c", 2), k("iss:x", 3)]).is_err());
        assert_eq!(s.held("p:c"), 0);
        drop((g1, g3));
        assert_eq!((s.held("p:a"), s.held("iss:x")), (1, 1));
        drop(g2);
        assert_eq!(s.held("p:a"), 0);
    }

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let b = Buckets::new(60);
        for _ in 0..60 {
            b.try_take("a", 0).unwrap();
        }
        assert_eq!(b.try_take("a", 0), Err(Duration::from_millis(1000)));
        assert!(b.try_take("other", 0).is_ok(), "buckets are per key");
        assert_eq!(b.try_take("a", 400), Err(Duration::from_millis(600)));
        b.try_take("a", 1000).unwrap();
        assert!(b.try_take("a", 1000).is_err());
        // A minute later the bucket is full again, not fuller.
        for _ in 0..60 {
            b.try_take("a", 70_000).unwrap();
        }
        assert!(b.try_take("a", 70_000).is_err());
        let unlimited = Buckets::new(0);
        for _ in 0..10_000 {
            unlimited.try_take("a", 0).unwrap();
        }
    }

    #[test]
    fn refusals_are_tallied_per_principal_per_window() {
        let t = RefusalTally::new(Duration::from_secs(60));
        for i in 0..1000 {
            t.record(
                "agent:a",
                if i % 2 == 0 {
                    "rate_limited"
                } else {
                    "too_many_pending"
                },
                i,
            );
        }
        t.record("agent:b", "rate_limited", 30_000);
        assert!(t.take_due(59_999, false).is_empty());
        let due = t.take_due(60_000, false);
        assert_eq!(due.len(), 1);
        let (who, tally) = &due[0];
        assert_eq!(
            (who.as_str(), tally.count(), tally.first_ms, tally.last_ms),
            ("agent:a", 1000, 0, 999)
        );
        assert_eq!(tally.by_code["rate_limited"], 500);
        t.restore(due);
        assert_eq!(t.take_due(0, true).len(), 2);
        assert!(t.take_due(0, true).is_empty());
        // Past MAX_TALLIED principals, the rest share one tally.
        for i in 0..MAX_TALLIED + 50 {
            t.record(&format!("agent:x{i}"), "rate_limited", 0);
        }
        let all = t.take_due(0, true);
        assert_eq!(all.len(), MAX_TALLIED + 1);
        let star = all.iter().find(|(k, _)| k == "*").unwrap();
        assert_eq!(star.1.count(), 50);
    }
}
