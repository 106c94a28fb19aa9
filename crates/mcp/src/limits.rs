//! The bound on what one MCP session can make the gateway hold: requests
//! taken in (being decided, held for review, or forwarded and not yet
//! answered, either way) count against `mcp.max_pending_requests`, and the
//! bytes of the messages still held in memory while they are decided
//! against `mcp.max_session_bytes`. Both transports take a [`Hold`] from
//! the session's [`Quota`] before they keep a message, and the hold gives
//! its share back when dropped, so no path can forget to.

use std::sync::{Arc, Mutex};

/// Why a message was refused by its session's quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("this session already has {0} requests in progress, the most secondkey keeps (mcp.max_pending_requests); this one was not forwarded")]
    Requests(usize),
    #[error("this session's messages in progress already hold {held} bytes and this one has {size}; secondkey keeps at most {max} per session (mcp.max_session_bytes); it was not forwarded")]
    Bytes {
        held: usize,
        size: usize,
        max: usize,
    },
}

#[derive(Debug)]
struct Usage {
    max_pending: usize,
    max_bytes: usize,
    pending: usize,
    bytes: usize,
}

/// One session's share; cheap to clone (all clones count together).
#[derive(Debug, Clone)]
pub struct Quota(Arc<Mutex<Usage>>);

impl Quota {
    pub fn new(max_pending: usize, max_bytes: usize) -> Quota {
        Quota(Arc::new(Mutex::new(Usage {
            max_pending,
            max_bytes,
            pending: 0,
            bytes: 0,
        })))
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for one request whose message of `size` bytes is kept
    /// until [`Hold::sent`] (or the hold is dropped).
    pub fn take(&self, size: usize) -> Result<Hold, Exceeded> {
        let mut u = self.usage();
        if u.pending >= u.max_pending {
            return Err(Exceeded::Requests(u.max_pending));
        }
        if u.bytes.saturating_add(size) > u.max_bytes {
            return Err(Exceeded::Bytes {
                held: u.bytes,
                size,
                max: u.max_bytes,
            });
        }
        u.pending += 1;
        u.bytes += size;
        Ok(Hold {
            quota: self.clone(),
            bytes: size,
        })
    }

    /// Requests and bytes held now.
    pub fn in_use(&self) -> (usize, usize) {
        let u = self.usage();
        (u.pending, u.bytes)
    }
}

/// A request's share of its session's quota, given back when dropped.
#[derive(Debug)]
pub struct Hold {
    quota: Quota,
    bytes: usize,
}

impl Hold {
    /// The message has left (forwarded): its bytes are given back, the
    /// request keeps its slot until its answer.
    pub fn sent(&mut self) {
        let mut u = self.quota.usage();
        u.bytes = u.bytes.saturating_sub(self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut u = self.quota.usage();
        u.pending = u.pending.saturating_sub(1);
        u.bytes = u.bytes.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_bytes_are_taken_and_given_back() {
        let q = Quota::new(2, 100);
        let a = q.take(60).unwrap();
        assert_eq!(
            q.take(50).unwrap_err(),
            Exceeded::Bytes {
                held: 60,
                size: 50,
                max: 100
            }
        );
        let mut b = q.take(40).unwrap();
        assert_eq!(q.take(0).unwrap_err(), Exceeded::Requests(2));
        b.sent();
        assert_eq!(q.in_use(), (2, 60));
        drop(a);
        assert_eq!(q.in_use(), (1, 0));
        let c = q.take(100).unwrap();
        drop(b);
        drop(c);
        assert_eq!(q.in_use(), (0, 0), "everything given back");
    }

    #[test]
    fn clones_count_together_across_threads() {
        let q = Quota::new(1000, usize::MAX);
        let holds: Vec<_> = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    (0..200).filter_map(|_| q.take(1).ok()).collect::<Vec<_>>()
                })
            })
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(holds.len(), 1000, "never more than the limit");
        drop(holds);
        assert_eq!(q.in_use(), (0, 0));
    }
}
