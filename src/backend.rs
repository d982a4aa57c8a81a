//! What the pipeline needs from a database: one implementation per server family.

use crate::error::Result;
use crate::watermark::Key;

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
    pub lock_held: std::time::Duration,
}

/// One backend, driven by [`crate::migrate`] through plan → shadow → copy ∥ tail → cut-over.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Inspect the table and the server, parse and try the ALTER; change nothing.
    async fn plan(&mut self) -> Result<PlanReport>;
    /// Run a change that needs no rewrite directly, within the lock timeout. False: the server
    /// cannot run it without a rewrite after all, and the online copy must do it.
    async fn run_metadata_only(&mut self) -> Result<bool>;
    /// Create the shadow table and start tailing the change stream (before any chunk).
    async fn prepare(&mut self) -> Result<()>;
    /// The key that ends a chunk of `rows` rows after `after` (None: the rest of the table).
    async fn chunk_end(&mut self, after: Option<&Key>, rows: u64) -> Result<Option<Key>>;
    /// Copy the rows with keys in (`after`, `upto`] into the shadow table; `discarded` are the
    /// transactions whose changes the applier dropped for keys not yet copied: the chunk must see
    /// them. Returns the rows copied.
    async fn copy_chunk(
        &mut self,
        after: Option<&Key>,
        upto: Option<&Key>,
        discarded: &[u64],
    ) -> Result<u64>;
    /// Every row is copied: build what the copy deferred (secondary indexes) before cut-over.
    async fn copy_done(&mut self) -> Result<()>;
    /// Fails if the change stream or the applier has failed.
    fn check_tail(&self) -> Result<()>;
    /// Swap the tables once the applier has caught up.
    async fn cutover(&mut self) -> Result<CutoverReport>;
    /// Drop what the run created (the shadow table on failure, the stream's objects always).
    async fn cleanup(&mut self, succeeded: bool) -> Result<()>;
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
pub fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((250u64 << attempt.min(5)).min(5000))
}
