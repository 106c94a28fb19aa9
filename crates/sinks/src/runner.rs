//! The delivery loop that drives one sink.
//!
//! The runner only *reads* the log, through [`EntrySource`], and learns that
//! the log grew from a `watch` channel, whose sender never blocks: a slow or
//! dead SIEM can therefore never slow down or stop the writer (invariant 1
//! stays the store's business alone). Entries go out strictly in index order;
//! a failed entry is retried with capped exponential backoff until it is
//! acknowledged, and nothing after it is sent meanwhile — never a skip.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cursor::Cursor;
use crate::Sink;

/// Why the log could not be read; the runner retries.
#[derive(Debug, thiserror::Error)]
#[error("reading the log from index {start}: {message}")]
pub struct SourceError {
    /// The first index requested.
    pub start: u64,
    /// What went wrong.
    pub message: String,
}

/// Read access to the log, implemented by the server over its store.
///
/// Called from a blocking thread (`spawn_blocking`), so it may do
/// synchronous IO. It must return consecutive entries starting exactly at
/// `start` (fewer than `max` is fine), each as `(index, canonical entry bytes)`.
pub trait EntrySource: Send + Sync + 'static {
    /// Entries `start..start+n` with `n <= max`.
    fn read_from(&self, start: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SourceError>;
}

/// Capped exponential backoff between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause.
    pub initial: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The pause before retry number `attempt` (1-based): doubling from
    /// `initial`, never above `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Tuning for [`spawn_sink_with`].
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Pauses between retries.
    pub backoff: Backoff,
    /// How many entries to read from the source at once.
    pub batch: usize,
    /// When set, the sink delivers only while it reads `true` — replicas on
    /// one store take turns (the holder of the background lease delivers)
    /// — and re-reads the shared cursor each time its turn begins, so it
    /// goes on where the previous holder stopped. An entry in flight when
    /// the turn ends is finished; at worst it is delivered again by the
    /// next holder (delivery stays at-least-once, never a gap).
    pub active: Option<watch::Receiver<bool>>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            backoff: Backoff::default(),
            batch: 256,
            active: None,
        }
    }
}

/// What a running sink reports, for `/metrics` and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkProgress {
    /// The persisted cursor: the next index to deliver.
    pub cursor: u64,
    /// Failures since the last success (0 when healthy).
    pub consecutive_failures: u32,
    /// Failures since the runner started.
    pub total_failures: u64,
    /// The most recent failure, if any since the last success.
    pub last_error: Option<String>,
}

/// A running sink: its task and its progress reports.
#[derive(Debug)]
pub struct SinkHandle {
    /// Ends when the log-size sender is dropped and everything announced was
    /// delivered; abort it to stop the sink at once (safe at any point).
    pub task: JoinHandle<()>,
    /// Updated after every success and failure.
    pub progress: watch::Receiver<SinkProgress>,
}

/// Starts delivering the log to `sink` with default options; see
/// [`spawn_sink_with`].
pub fn spawn_sink(
    name: &str,
    sink: Box<dyn Sink>,
    source: Arc<dyn EntrySource>,
    cursor: impl Cursor,
    size_rx: watch::Receiver<u64>,
) -> JoinHandle<()> {
    spawn_sink_with(
        name,
        sink,
        source,
        cursor,
        size_rx,
        RunnerOptions::default(),
    )
    .task
}

/// Starts delivering the log to `sink` from the persisted `cursor`.
///
/// `size_rx` announces the log size (number of entries). The task reads from
/// `source`, delivers in order, saves the cursor after each acknowledgement
/// and retries failures with backoff forever. Aborting the task at any point
/// is safe: at worst the entry in flight is delivered again next time.
/// Must be called inside a tokio runtime.
pub fn spawn_sink_with(
    name: &str,
    sink: Box<dyn Sink>,
    source: Arc<dyn EntrySource>,
    cursor: impl Cursor,
    size_rx: watch::Receiver<u64>,
    options: RunnerOptions,
) -> SinkHandle {
    let (progress_tx, progress) = watch::channel(SinkProgress::default());
    let runner = Runner {
        name: name.to_string(),
        sink,
        source,
        cursor: Arc::new(cursor),
        options,
        progress: progress_tx,
        attempt: 0,
    };
    SinkHandle {
        task: tokio::spawn(runner.run(size_rx)),
        progress,
    }
}

struct Runner {
    name: String,
    sink: Box<dyn Sink>,
    source: Arc<dyn EntrySource>,
    cursor: Arc<dyn Cursor>,
    options: RunnerOptions,
    progress: watch::Sender<SinkProgress>,
    attempt: u32,
}

impl Runner {
    async fn fail(&mut self, error: String) {
        self.attempt = self.attempt.saturating_add(1);
        let attempt = self.attempt;
        tracing::warn!(sink = %self.name, kind = self.sink.kind(), attempt, %error, "sink delivery failed; retrying");
        self.progress.send_modify(|p| {
            p.consecutive_failures = attempt;
            p.total_failures += 1;
            p.last_error = Some(error);
        });
        tokio::time::sleep(self.options.backoff.delay(attempt)).await;
    }

    fn succeed(&mut self, next: u64) {
        self.attempt = 0;
        self.progress.send_modify(|p| {
            p.cursor = next;
            p.consecutive_failures = 0;
            p.last_error = None;
        });
    }

    async fn load_cursor(&mut self) -> u64 {
        loop {
            let cursor = self.cursor.clone();
            match tokio::task::spawn_blocking(move || cursor.load()).await {
                Ok(Ok(next)) => return next,
                Ok(Err(e)) => self.fail(e).await,
                Err(e) => self.fail(format!("cursor task failed: {e}")).await,
            }
        }
    }

    /// Whether this runner may deliver now (always, unless it takes turns).
    fn active(&self) -> bool {
        self.options.active.as_ref().is_none_or(|a| *a.borrow())
    }

    /// Waits for this runner's turn; false when the turn can never come
    /// (the sender is gone). Returns at once when it does not take turns.
    async fn turn(&mut self) -> bool {
        let Some(active) = self.options.active.as_mut() else {
            return true;
        };
        active.wait_for(|on| *on).await.is_ok()
    }

    async fn save_cursor(&mut self, next: u64) {
        loop {
            let cursor = self.cursor.clone();
            match tokio::task::spawn_blocking(move || cursor.save(next)).await {
                Ok(Ok(())) => return self.succeed(next),
                Ok(Err(e)) => self.fail(e).await,
                Err(e) => self.fail(format!("cursor task failed: {e}")).await,
            }
        }
    }

    async fn run(mut self, mut size_rx: watch::Receiver<u64>) {
        if !self.turn().await {
            return;
        }
        let mut next = self.load_cursor().await;
        self.progress.send_modify(|p| p.cursor = next);
        tracing::info!(sink = %self.name, kind = self.sink.kind(), cursor = next, "sink started");
        let mut sender_gone = false;
        loop {
            if !self.active() {
                tracing::info!(sink = %self.name, cursor = next, "another replica delivers now; sink paused");
                if !self.turn().await {
                    return;
                }
                // The other replica may have moved the shared cursor on.
                next = self.load_cursor().await;
                self.progress.send_modify(|p| p.cursor = next);
                tracing::info!(sink = %self.name, cursor = next, "sink resumed");
            }
            let size = *size_rx.borrow_and_update();
            if next >= size {
                if sender_gone {
                    tracing::info!(sink = %self.name, cursor = next, "log closed and fully delivered; sink stops");
                    return;
                }
                if size_rx.changed().await.is_err() {
                    sender_gone = true;
                }
                continue;
            }
            let source = self.source.clone();
            let max = self
                .options
                .batch
                .clamp(1, usize::try_from(size - next).unwrap_or(usize::MAX));
            let batch = match tokio::task::spawn_blocking(move || source.read_from(next, max)).await
            {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    self.fail(e.to_string()).await;
                    continue;
                }
                Err(e) => {
                    self.fail(format!("source task failed: {e}")).await;
                    continue;
                }
            };
            if batch.is_empty() {
                self.fail(format!(
                    "the source returned no entry at index {next} although the log has {size}"
                ))
                .await;
                continue;
            }
            for (index, bytes) in batch {
                if index != next {
                    self.fail(format!(
                        "the source returned index {index} where {next} was expected; not skipping"
                    ))
                    .await;
                    break;
                }
                loop {
                    match self.sink.deliver(index, &bytes).await {
                        Ok(()) => break,
                        Err(e) => self.fail(e.to_string()).await,
                    }
                }
                next = index + 1;
                self.save_cursor(next).await;
                if !self.active() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::FileCursor;
    use crate::{DeliverFuture, SinkError};
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
    }

    struct Mem(Mutex<Vec<Vec<u8>>>);
    impl EntrySource for Mem {
        fn read_from(&self, start: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SourceError> {
            let log = self.0.lock().unwrap();
            Ok(log
                .iter()
                .enumerate()
                .skip(start as usize)
                .take(max)
                .map(|(i, e)| (i as u64, e.clone()))
                .collect())
        }
    }

    /// Fails every index in `fail_at` once, records deliveries.
    struct Flaky {
        fail_once: Vec<u64>,
        seen: Arc<Mutex<Vec<u64>>>,
    }
    impl Sink for Flaky {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn deliver<'a>(&'a mut self, index: u64, _entry: &'a [u8]) -> DeliverFuture<'a> {
            Box::pin(async move {
                self.seen.lock().unwrap().push(index);
                if let Some(pos) = self.fail_once.iter().position(|i| *i == index) {
                    self.fail_once.remove(pos);
                    return Err(SinkError::Http {
                        address: "test".into(),
                        message: "planned failure".into(),
                    });
                }
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn delivers_in_order_retries_and_stops_when_the_log_closes() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("{{\"i\":{i}}}").into_bytes())
            .collect();
        let source = Arc::new(Mem(Mutex::new(entries)));
        let cursor = FileCursor::open(dir.path(), "t").unwrap();
        cursor.save(2).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Flaky {
            fail_once: vec![3, 7],
            seen: seen.clone(),
        };
        let (tx, rx) = watch::channel(10u64);
        let opts = RunnerOptions {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
            },
            batch: 4,
            active: None,
        };
        let handle = spawn_sink_with("t", Box::new(sink), source, cursor.clone(), rx, opts);
        drop(tx);
        handle.task.await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![2, 3, 3, 4, 5, 6, 7, 7, 8, 9]);
        assert_eq!(cursor.load().unwrap(), 10);
        let p = handle.progress.borrow().clone();
        assert_eq!(p.cursor, 10);
        assert_eq!(p.total_failures, 2);
        assert_eq!(p.consecutive_failures, 0);
    }

    #[tokio::test]
    async fn a_source_gap_is_never_skipped() {
        struct Gappy;
        impl EntrySource for Gappy {
            fn read_from(&self, _: u64, _: usize) -> Result<Vec<(u64, Vec<u8>)>, SourceError> {
                Ok(vec![(5, b"{}".to_vec())])
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let cursor = FileCursor::open(dir.path(), "g").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Flaky {
            fail_once: vec![],
            seen: seen.clone(),
        };
        let (_tx, rx) = watch::channel(10u64);
        let opts = RunnerOptions {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            batch: 4,
            active: None,
        };
        let mut handle = spawn_sink_with(
            "g",
            Box::new(sink),
            Arc::new(Gappy),
            cursor.clone(),
            rx,
            opts,
        );
        handle
            .progress
            .wait_for(|p| p.total_failures >= 3)
            .await
            .unwrap();
        handle.task.abort();
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(cursor.load().unwrap(), 0);
        assert!(handle
            .progress
            .borrow()
            .last_error
            .as_deref()
            .unwrap()
            .contains("not skipping"));
    }

    /// A cursor several runners share, like the store's.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<u64>>);
    impl Cursor for Shared {
        fn load(&self) -> Result<u64, String> {
            Ok(*self.0.lock().unwrap())
        }
        fn save(&self, next: u64) -> Result<(), String> {
            *self.0.lock().unwrap() = next;
            Ok(())
        }
    }

    /// Two replicas' runners take turns on one shared cursor: only the one
    /// whose turn it is delivers, the other goes on where it stopped, and
    /// no index is left out.
    #[tokio::test]
    async fn runners_taking_turns_share_the_cursor_and_leave_no_gap() {
        let entries: Vec<Vec<u8>> = (0..30).map(|i| format!("{i}").into_bytes()).collect();
        let source = Arc::new(Mem(Mutex::new(entries)));
        let cursor = Shared::default();
        let (size_tx, size_rx) = watch::channel(10u64);
        let (a_on, a_rx) = watch::channel(true);
        let (b_on, b_rx) = watch::channel(false);
        let seen_a = Arc::new(Mutex::new(Vec::new()));
        let seen_b = Arc::new(Mutex::new(Vec::new()));
        let opts = |active| RunnerOptions {
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            batch: 3,
            active: Some(active),
        };
        let sink = |seen: &Arc<Mutex<Vec<u64>>>| {
            Box::new(Flaky {
                fail_once: vec![],
                seen: seen.clone(),
            })
        };
        let mut a = spawn_sink_with(
            "a",
            sink(&seen_a),
            source.clone(),
            cursor.clone(),
            size_rx.clone(),
            opts(a_rx),
        );
        let mut b = spawn_sink_with(
            "b",
            sink(&seen_b),
            source.clone(),
            cursor.clone(),
            size_rx,
            opts(b_rx),
        );
        a.progress.wait_for(|p| p.cursor == 10).await.unwrap();
        assert!(seen_b.lock().unwrap().is_empty(), "b delivered out of turn");
        // The turn passes to b; the log grows.
        a_on.send_replace(false);
        b_on.send_replace(true);
        size_tx.send_replace(20);
        b.progress.wait_for(|p| p.cursor == 20).await.unwrap();
        // And back to a, which resumes from the shared cursor.
        b_on.send_replace(false);
        a_on.send_replace(true);
        size_tx.send_replace(30);
        a.progress.wait_for(|p| p.cursor == 30).await.unwrap();
        drop(size_tx);
        a.task.await.unwrap();
        drop(b_on);
        b.task.await.unwrap();
        let mut all: Vec<u64> = seen_a.lock().unwrap().clone();
        all.extend(seen_b.lock().unwrap().iter());
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..30).collect::<Vec<_>>());
        assert_eq!(
            *seen_a.lock().unwrap(),
            (0..10).chain(20..30).collect::<Vec<_>>()
        );
        assert_eq!(*seen_b.lock().unwrap(), (10..20).collect::<Vec<_>>());
        assert_eq!(cursor.load().unwrap(), 30);
    }
}
