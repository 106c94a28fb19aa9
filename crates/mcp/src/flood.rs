//! The bound on what a server may push at a client: notifications beyond a
//! rate are dropped, so a flooding server cannot starve the session (stdio:
//! one pipe for everything) or the client reading an event stream (HTTP).
//! Both transports count with [`Budget`]; it takes the time as an argument.

use std::time::Duration;

use tokio::time::Instant;

/// Server notifications relayed per second at most, per stdio session or
/// per HTTP event stream.
pub const MAX_NOTIFICATIONS_PER_SECOND: u32 = 2000;

/// Counts notifications in one-second windows.
#[derive(Debug, Clone)]
pub struct Budget {
    window: Instant,
    in_window: u32,
    dropped: u64,
}

impl Budget {
    pub fn new(now: Instant) -> Budget {
        Budget {
            window: now,
            in_window: 0,
            dropped: 0,
        }
    }

    /// Counts one notification arriving at `now`: `true` relays it,
    /// `false` drops it.
    pub fn admit(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.in_window = 0;
        }
        self.in_window = self.in_window.saturating_add(1);
        if self.in_window > MAX_NOTIFICATIONS_PER_SECOND {
            self.dropped += 1;
            false
        } else {
            true
        }
    }

    /// Notifications dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the drop just counted should be reported: the first one and
    /// every thousandth after it (a flood must not flood the logs either).
    pub fn report_drop(&self) -> bool {
        self.dropped % 1000 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_rate_per_window_and_drops_the_rest() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let first = (0..3000).filter(|_| b.admit(t0)).count();
        assert_eq!(first, MAX_NOTIFICATIONS_PER_SECOND as usize);
        assert_eq!(b.dropped(), 1000);
        let almost = t0 + Duration::from_millis(999);
        assert!(!b.admit(almost), "still the same window");
        let next = t0 + Duration::from_secs(1);
        let second = (0..3000).filter(|_| b.admit(next)).count();
        assert_eq!(
            second, MAX_NOTIFICATIONS_PER_SECOND as usize,
            "a new window"
        );
        assert_eq!(b.dropped(), 2001);
    }

    #[test]
    fn reports_the_first_drop_and_every_thousandth() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let mut reports = 0;
        for _ in 0..(MAX_NOTIFICATIONS_PER_SECOND + 2500) {
            if !b.admit(t0) && b.report_drop() {
                reports += 1;
            }
        }
        assert_eq!(reports, 3, "drops 1, 1001 and 2001");
    }
}
