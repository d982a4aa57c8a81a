//! What the pipeline needs from a database: one implementation per server family.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::throttler::Probe;
use crate::control::Steering;
use crate::engine::checkpoint::Checkpoint;
use crate::engine::progress::Progress;
use crate::engine::watermark::{Key, Watermark};
use crate::error::Result;
use crate::options::RunOptions;

/// What the run's tasks share: counters, the copy/replay watermark and the steering state.
#[derive(Clone, Debug)]
pub struct Shared {
    pub progress: Arc<Progress>,
    pub watermark: Arc<Watermark>,
    pub steering: Arc<Steering>,
}

impl Shared {
    pub fn new(opts: &RunOptions) -> Self {
        Shared {
            progress: Arc::new(Progress::default()),
            watermark: Arc::new(Watermark::new()),
            steering: Arc::new(Steering::new(opts.knobs.clone())),
        }
    }
}

/// What the plan found; printed before anything runs.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// Human-readable findings, one per line.
    pub lines: Vec<String>,
    /// The change needs no row rewrite: it is run directly.
    pub metadata_only: bool,
    pub estimated_rows: u64,
}

/// What cut-over measured.
#[derive(Clone, Debug, Default)]
pub struct CutoverReport {
    pub attempts: u32,
    /// How long the blocking lock was held in the attempt that succeeded.
    pub lock_held: Duration,
    /// How long the application's writes could have waited on cut-over, over all attempts:
    /// from each lock request until its release.
    pub stall: Duration,
    /// The longest of those waits, in one attempt.
    pub longest_stall: Duration,
}

/// One cut-over attempt, as a backend ran it.
#[derive(Clone, Debug, Default)]
pub struct Attempt {
    /// The tables were swapped; otherwise the original is in place and unchanged.
    pub swapped: bool,
    /// Why it did not swap.
    pub why: String,
    /// From holding the lock to the swap.
    pub lock_held: Duration,
    /// From requesting the lock to releasing it: the longest any write waited on us.
    pub stall: Duration,
}

impl Attempt {
    pub fn failed(why: impl Into<String>, stall: Duration) -> Self {
        Attempt {
            why: why.into(),
            stall,
            ..Attempt::default()
        }
    }
}

/// A key range of the checksum: keys in (`after`, `upto`]; None ends are open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub after: Option<Key>,
    pub upto: Option<Key>,
}

/// One checksum chunk, compared in the consistent view.
#[derive(Clone, Debug)]
pub struct ChunkCheck {
    /// Where the chunk ended (None: the end of the table).
    pub upto: Option<Key>,
    /// Rows in the source's part of the chunk.
    pub rows: u64,
    /// Source (as the ALTER transforms it) and shadow agree on the chunk.
    pub equal: bool,
}

/// What a repair under the write lock found.
#[derive(Clone, Debug, Default)]
pub struct Repair {
    /// The lock could not be had, or the applier not drained, in time: nothing was changed.
    pub retry: Option<String>,
    /// How long writes could have waited on the repair.
    pub stall: Duration,
    /// Keys (as text) that still differ after the ranges were copied again.
    pub still_differ: Vec<String>,
}

/// A session in cut-over's way: it holds a lock on the table.
#[derive(Clone, Debug)]
pub struct Blocker {
    /// The backend pid (PostgreSQL) or connection id (MySQL).
    pub id: String,
    pub user: String,
    pub query: String,
    pub transaction_age: Option<Duration>,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query: String = self.query.chars().take(120).collect();
        write!(f, "session {} (user {}", self.id, self.user)?;
        if let Some(age) = self.transaction_age {
            write!(f, ", transaction open {:.1}s", age.as_secs_f64())?;
        }
        if query.is_empty() {
            write!(f, ", idle)")
        } else {
            write!(f, ", last query: {query})")
        }
    }
}

/// A session that copies chunks. It owns what it needs, so several copy at once while the
/// run goes on with the backend.
#[allow(async_fn_in_trait)]
pub trait Copier {
    /// Copy the rows with keys in (`after`, `upto`] into the shadow table; `discarded` are the
    /// transactions whose changes the applier dropped for keys not yet copied: the chunk must
    /// see them. `again`: an earlier try of this chunk lost its session and may have committed,
    /// so the range's rows in the shadow are replaced. Returns the rows copied.
    async fn copy_chunk(
        &mut self,
        after: Option<&Key>,
        upto: Option<&Key>,
        discarded: &[u64],
        again: bool,
    ) -> Result<u64>;
    /// The session was lost: open a new one.
    async fn reopen(&mut self) -> Result<()>;
}

/// The ids of a run's sessions (PostgreSQL pids, MySQL connection ids), shared with the
/// copiers that open their own: an interrupted run ends them all, and cut-over does not take
/// them for blockers.
#[derive(Clone, Debug, Default)]
pub struct Sessions<T>(Arc<Mutex<Vec<T>>>);

impl<T: Clone> Sessions<T> {
    pub fn new(first: T) -> Self {
        Sessions(Arc::new(Mutex::new(vec![first])))
    }

    pub fn push(&self, id: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(id);
    }

    pub fn list(&self) -> Vec<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One backend, driven by [`crate::engine::migrate`] through plan → shadow → copy ∥ tail → cut-over.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// The throttler's readings of this server.
    type Probe: Probe;
    /// A chunk-copying session; `--threads` of them copy at once.
    type Copier: Copier;

    /// Inspect the table and the server, parse and try the ALTER; change nothing.
    async fn plan(&mut self) -> Result<PlanReport>;
    /// Run a change that needs no rewrite directly, within the lock timeout. False: the server
    /// cannot run it without a rewrite after all, and the online copy must do it.
    async fn run_metadata_only(&mut self) -> Result<bool>;
    /// Create the shadow table and start tailing the change stream (before any chunk).
    async fn prepare(&mut self) -> Result<()>;
    /// The key that ends a chunk of `rows` rows after `after` (None: the rest of the table),
    /// read in the session that finds the chunks.
    async fn chunk_end(&mut self, after: Option<&Key>, rows: u64) -> Result<Option<Key>>;
    /// The session that finds the chunks was lost: open a new one.
    async fn reopen_copier(&mut self) -> Result<()>;
    /// A session of its own that copies chunks, number `slot` of `--threads` (after `prepare`).
    async fn open_copier(&mut self, slot: usize) -> Result<Self::Copier>;
    /// Every row is copied: build what the copy deferred (secondary indexes) before cut-over.
    async fn copy_done(&mut self) -> Result<()>;
    /// Fails if the change stream or the applier has failed.
    fn check_tail(&self) -> Result<()>;
    /// How far the applier is behind the source.
    fn lag(&self) -> Duration;
    /// One attempt to swap the tables, the applier having caught up: lock (waiting at most
    /// `lock_timeout`), drain the stream, rename. Err only for what a retry cannot fix.
    async fn cutover_attempt(&mut self, attempt: u32, lock_timeout: Duration) -> Result<Attempt>;
    /// The sessions holding locks on the table, other than ours.
    async fn blockers(&mut self) -> Result<Vec<Blocker>>;
    /// End a blocking session (`--force-cut-over-after`).
    async fn kill_blocker(&mut self, blocker: &Blocker) -> Result<()>;
    /// Open the checksum's consistent view: keep writes off the table for a moment (at most
    /// `lock_timeout` waiting for the lock), let the applier drain, take a snapshot in which
    /// the shadow must equal the source transformed by the ALTER, let writes go. Ok(Err(why))
    /// when the lock or the drain took too long: nothing changed, try again later. Ok(Ok(d)):
    /// writes could have waited `d`.
    async fn checksum_begin(
        &mut self,
        lock_timeout: Duration,
    ) -> Result<std::result::Result<Duration, String>>;
    /// In the view: the chunk of about `rows` source rows after `after`, compared.
    async fn checksum_chunk(&mut self, after: Option<&Key>, rows: u64) -> Result<ChunkCheck>;
    /// In the view: the rows that differ within `range` (a chunk found unequal), each as the
    /// narrowest range that holds its key (from the key before it on either side), so that
    /// only those rows are copied again under the lock. Logs what differs.
    async fn checksum_differences(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>>;
    /// Close the view (its snapshot holds back vacuum / purge).
    async fn checksum_end(&mut self) -> Result<()>;
    /// Copy `ranges` again with writes kept off the table and the applier drained, then
    /// compare them row by row.
    async fn checksum_repair(
        &mut self,
        ranges: &[KeyRange],
        lock_timeout: Duration,
    ) -> Result<Repair>;
    /// The checkpoint `--resume` goes on from, read and checked by `plan` (None: a new run).
    fn resuming(&self) -> Option<&Checkpoint>;
    /// Record how far the run got in the state table, with the stream position to go on from.
    async fn save_checkpoint(&mut self, checkpoint: Checkpoint) -> Result<()>;
    /// A probe for the throttler, with connections of its own (after `plan`).
    fn probe(&self) -> Result<Self::Probe>;
    /// Drop what the run created: the stream's objects always, the shadow table when the run
    /// failed, unless `keep_shadow` (a checksum mismatch, kept for inspection).
    async fn cleanup(&mut self, succeeded: bool, keep_shadow: bool) -> Result<()>;
}

/// A direct (metadata-only) change has run: the table's shape (`now`) must be what the plan's
/// trial on an empty copy showed (`expected`), or swivel must not say it is done.
pub fn verify_direct_change(expected: Option<&str>, now: &str) -> Result<()> {
    let expected = expected.unwrap_or_default();
    if now != expected {
        return Err(crate::error::Error::Stream(format!(
            "the change ran, but the table does not look as the trial said it would: expected \
             columns {expected:?}, found {now:?}; check the table"
        )));
    }
    Ok(())
}

/// Wait between lock attempts: grows, capped, so the application gets the table back between.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((250u64 << attempt.min(5)).min(5000))
}
