//! The row copier: key-ordered chunks, sized to a target time per chunk, under a rate limit,
//! paused while throttled.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::engine::backend::{Backend, Shared};
use crate::engine::checkpoint::{self, Checkpoint};
use crate::engine::replay::retry_on_lost_session;
use crate::error::Result;
use crate::options::RunOptions;

const MIN_CHUNK: u64 = 100;
const MAX_CHUNK: u64 = 200_000;

/// Adjusts the chunk size so that each chunk takes about the target time.
#[derive(Debug)]
pub struct ChunkTuner {
    size: u64,
    target: Duration,
    max: u64,
}

impl ChunkTuner {
    pub fn new(initial: u64, target: Duration, max: u64) -> Self {
        let max = max.clamp(MIN_CHUNK, MAX_CHUNK);
        ChunkTuner {
            size: initial.clamp(MIN_CHUNK, max),
            target,
            max,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Feed back how long a chunk of `rows` took. Grows at most 2x and shrinks at most 4x per
    /// step, so one slow chunk (a checkpoint, a lock) does not swing it wildly.
    pub fn observe(&mut self, rows: u64, took: Duration) {
        if rows < self.size / 2 || took.is_zero() {
            return; // a short final chunk says little about the rate
        }
        let ratio = self.target.as_secs_f64() / took.as_secs_f64();
        let next = (self.size as f64 * ratio.clamp(0.25, 2.0)) as u64;
        self.size = next.clamp(MIN_CHUNK, self.max);
    }
}

/// Copy the whole table, publishing each chunk's range through the watermark. Reads the
/// steering state before each chunk: throttled, it waits; a pinned chunk size or a new target
/// time applies to the next chunk; the nice ratio sleeps after it.
/// Every [`checkpoint::EVERY`] a checkpoint is saved, after a chunk commits.
pub async fn copy_table<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    opts: &RunOptions,
) -> Result<()> {
    let (watermark, progress, steering) = (&shared.watermark, &shared.progress, &shared.steering);
    let (initial_chunk, max_rows_per_second, retries) = (
        opts.chunk_size,
        opts.max_rows_per_second,
        opts.default_retries,
    );
    let mut saved = Instant::now();
    let limiter: Option<DefaultDirectRateLimiter> = max_rows_per_second
        .and_then(NonZeroU32::new)
        .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
    // A chunk can never wait for more rows than the limiter's burst holds.
    let max = max_rows_per_second.map_or(MAX_CHUNK, u64::from);
    let knobs = steering.knobs();
    let mut tuner = ChunkTuner::new(initial_chunk, knobs.target_chunk_time, max);
    let mut after = watermark.low();
    loop {
        backend.check_tail()?;
        let knobs = steering.knobs();
        tuner.target = knobs.target_chunk_time;
        if let Some(pinned) = knobs.chunk_size {
            tuner.size = pinned.clamp(1, tuner.max);
        }
        progress.chunk_size.store(tuner.size(), Relaxed);
        if let Some(limiter) = &limiter {
            let n = NonZeroU32::new(tuner.size() as u32).unwrap_or(NonZeroU32::MIN);
            // Cannot fail: the chunk size is capped at the burst size above.
            let _ = limiter.until_n_ready(n).await;
        }
        // Last, right before the chunk: a throttle that began while the rate limit held the
        // chunk back stops it.
        steering.wait_unthrottled(|| backend.check_tail()).await?;
        let started = Instant::now();
        let mut lost = 0;
        let upto = loop {
            match backend.chunk_end(after.as_ref(), tuner.size()).await {
                Err(e) if retry_on_lost_session(&e, "copy", &mut lost, retries).await => {
                    reopen_copier(backend, &mut lost, retries).await?;
                }
                other => break other?,
            }
        };
        let mut discarded = watermark.begin_chunk(upto.clone());
        // The range stays published (its changes held) until the chunk is in, however many
        // sessions that takes.
        let (mut again, mut collisions) = (false, 0);
        let rows = loop {
            match backend
                .copy_chunk(after.as_ref(), upto.as_ref(), &discarded, again)
                .await
            {
                Err(e) if retry_on_lost_session(&e, "copy", &mut lost, retries).await => {
                    reopen_copier(backend, &mut lost, retries).await?;
                    again = true;
                }
                // A stale row on another unique index, whose fix the applier holds because it
                // came behind a change to this very range: give the chunk up, so the held
                // changes are decided anew (those of the range discarded: the chunk reads them
                // again), let the applier apply the fix, publish the range again.
                Err(e) if e.sqlstate() == Some("23505") && collisions < UNIQUE_RETRIES => {
                    collisions += 1;
                    tracing::info!("chunk meets a stale row ({e}); giving it up for now");
                    watermark.abandon_chunk();
                    wait_applier_passes_now(backend).await?;
                    discarded.extend(watermark.begin_chunk(upto.clone()));
                }
                other => break other?,
            }
        };
        watermark.commit_chunk();
        progress.rows_copied.fetch_add(rows, Relaxed);
        let took = started.elapsed();
        if knobs.chunk_size.is_none() {
            tuner.observe(rows, took);
        }
        if knobs.nice_ratio > 0.0 {
            tokio::time::sleep(took.mul_f64(knobs.nice_ratio)).await;
        }
        match upto {
            Some(key) => after = Some(key),
            None => return Ok(()),
        }
        if saved.elapsed() >= checkpoint::EVERY {
            let rows = progress.rows_copied.load(Relaxed);
            checkpoint::save(backend, Checkpoint::new(opts, after.clone(), false, rows)).await?;
            saved = Instant::now();
        }
    }
}

/// The copy's session again, waiting (on the same count of retries) while the server is out
/// of reach: a restart or a failover takes seconds.
async fn reopen_copier<B: Backend>(backend: &mut B, lost: &mut u32, retries: u32) -> Result<()> {
    loop {
        match backend.reopen_copier().await {
            Err(e) if retry_on_lost_session(&e, "copy", lost, retries).await => {}
            other => return other,
        }
    }
}

/// A chunk that collides on a unique index is given up and read again this many times before
/// the run fails: a collision that replaying cannot fix is real.
const UNIQUE_RETRIES: u32 = 5;

/// Wait until the applier has applied a heartbeat sent after now: every change committed before
/// now that is due is then in the shadow table. (The lag is the age of the newest heartbeat
/// applied: younger than our wait means it was sent after we began.)
async fn wait_applier_passes_now<B: Backend>(backend: &B) -> Result<()> {
    let since = Instant::now();
    loop {
        backend.check_tail()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if backend.lag() < since.elapsed() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuner_moves_toward_the_target_within_bounds() {
        let mut t = ChunkTuner::new(1000, Duration::from_millis(500), MAX_CHUNK);
        t.observe(1000, Duration::from_millis(50));
        assert_eq!(t.size(), 2000, "fast chunks grow, at most 2x");
        t.observe(2000, Duration::from_millis(1000));
        assert_eq!(t.size(), 1000, "slow chunks shrink");
        t.observe(1000, Duration::from_secs(60));
        assert_eq!(t.size(), 250, "at most 4x per step");
        t.observe(10, Duration::from_secs(60));
        assert_eq!(t.size(), 250, "a short last chunk is ignored");
        let mut capped = ChunkTuner::new(1000, Duration::from_millis(500), 1500);
        capped.observe(1000, Duration::from_millis(1));
        assert_eq!(capped.size(), 1500);
    }
}
