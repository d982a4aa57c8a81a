//! The row copier: key-ordered chunks, sized to a target time per chunk, under a rate limit,
//! paused while throttled.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::engine::backend::{Backend, Copier, Shared};
use crate::engine::checkpoint::{self, Checkpoint};
use crate::engine::replay::retry_on_lost_session;
use crate::engine::watermark::Key;
use crate::error::{Error, Result};
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

/// One chunk: the rows with keys in (`after`, `upto`].
#[derive(Clone, Debug)]
struct Job {
    after: Option<Key>,
    upto: Option<Key>,
    /// Times it was given up on a unique index collision.
    collisions: u32,
}

/// A chunk a copier has finished with, and the copier, free again.
struct Ended<C> {
    copier: C,
    job: Job,
    took: Duration,
    /// The rows copied.
    result: Result<u64>,
}

/// Copy the whole table with `--threads` copiers, publishing each chunk's range through the
/// watermark. This task finds the chunks one after another (in a session of its own) and hands
/// each to a free copier; the copiers run at once, on disjoint ranges, and commit in any
/// order: the watermark rises over the chunks committed without a gap.
///
/// Reads the steering state before each chunk: throttled, it waits; a pinned chunk size or a
/// new target time applies to the next chunk; the nice ratio pauses the copier after it.
/// Every [`checkpoint::EVERY`] a checkpoint of the low watermark is saved.
pub async fn copy_table<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    opts: &RunOptions,
) -> Result<()> {
    let (watermark, progress, steering) = (&shared.watermark, &shared.progress, &shared.steering);
    let retries = opts.default_retries;
    let limiter: Option<DefaultDirectRateLimiter> = opts
        .max_rows_per_second
        .and_then(NonZeroU32::new)
        .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
    // A chunk can never wait for more rows than the limiter's burst holds.
    let max = opts.max_rows_per_second.map_or(MAX_CHUNK, u64::from);
    let mut tuner = ChunkTuner::new(opts.chunk_size, steering.knobs().target_chunk_time, max);
    let mut free = Vec::new();
    for slot in 0..opts.threads.max(1) {
        free.push(backend.open_copier(slot).await?);
    }
    let mut running = FuturesUnordered::new();
    let mut ended: Vec<Ended<B::Copier>> = Vec::new();
    // Chunks given up on a collision, to publish again once the applier has passed.
    let mut again: VecDeque<Job> = VecDeque::new();
    // Where the next chunk starts; None once the last chunk (to the end) was handed out.
    let mut next: Option<Option<Key>> = Some(watermark.low());
    let mut saved = (Instant::now(), watermark.low());
    loop {
        let mut collided = false;
        for e in ended.drain(..) {
            free.push(e.copier);
            match e.result {
                Ok(rows) => {
                    if steering.knobs().chunk_size.is_none() {
                        tuner.observe(rows, e.took);
                    }
                }
                Err(err) if e.job.collisions < UNIQUE_RETRIES && is_collision(&err) => {
                    // A stale row on another unique index, whose fix the applier holds because
                    // it came behind a change to this very range: the chunk was given up (its
                    // held changes decided anew, those of its range discarded: the chunk reads
                    // them again); let the applier apply the fix, then publish it again.
                    tracing::info!("chunk meets a stale row ({err}); giving it up for now");
                    again.push_back(Job {
                        collisions: e.job.collisions + 1,
                        ..e.job
                    });
                    collided = true;
                }
                Err(err) => return Err(err),
            }
        }
        if collided {
            drive(wait_applier_passes_now(backend), &mut running, &mut ended).await?;
            continue;
        }
        backend.check_tail()?;
        if saved.0.elapsed() >= checkpoint::EVERY && watermark.low() != saved.1 {
            let low = watermark.low();
            let rows = progress.rows_copied.load(Relaxed);
            let at = Checkpoint::new(opts, low.clone(), false, rows);
            drive(checkpoint::save(backend, at), &mut running, &mut ended).await?;
            saved = (Instant::now(), low);
        }
        if !ended.is_empty() {
            continue; // chunks ended while the checkpoint was saved: their copiers are free
        }
        let work = !again.is_empty() || next.is_some();
        let copier = match (work, free.pop()) {
            (true, Some(copier)) => copier,
            (_, copier) => {
                free.extend(copier);
                match running.next().await {
                    Some(e) => ended.push(e),
                    None if work => {
                        return Err(Error::Stream(
                            "no copier left (a bug: please report it)".into(),
                        ))
                    }
                    None => break,
                }
                continue;
            }
        };
        let job = match again.pop_front() {
            Some(job) => job,
            None => {
                let after = next.take().unwrap_or_default();
                let upto = drive(
                    next_chunk_end(
                        backend,
                        shared,
                        &mut tuner,
                        limiter.as_ref(),
                        &after,
                        retries,
                    ),
                    &mut running,
                    &mut ended,
                )
                .await?;
                next = upto.clone().map(Some);
                Job {
                    after,
                    upto,
                    collisions: 0,
                }
            }
        };
        let discarded = watermark.begin_chunk(job.after.clone(), job.upto.clone());
        let nice = steering.knobs().nice_ratio;
        running.push(copy_one(copier, job, discarded, shared, nice, retries));
    }
    if !watermark.is_done() {
        return Err(Error::Stream(
            "the copy ended with part of the table not copied (a bug: please report it)".into(),
        ));
    }
    Ok(())
}

fn is_collision(e: &Error) -> bool {
    e.sqlstate() == Some("23505")
}

/// Await `work` while the chunks in flight go on; those that end meanwhile are kept in `ended`.
async fn drive<T, C>(
    work: impl Future<Output = T>,
    running: &mut FuturesUnordered<impl Future<Output = Ended<C>>>,
    ended: &mut Vec<Ended<C>>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(e) = running.next() => ended.push(e),
        }
    }
}

/// Steering, rate limit and throttle for the next chunk, then where it ends.
async fn next_chunk_end<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    tuner: &mut ChunkTuner,
    limiter: Option<&DefaultDirectRateLimiter>,
    after: &Option<Key>,
    retries: u32,
) -> Result<Option<Key>> {
    let (progress, steering) = (&shared.progress, &shared.steering);
    let knobs = steering.knobs();
    tuner.target = knobs.target_chunk_time;
    if let Some(pinned) = knobs.chunk_size {
        tuner.size = pinned.clamp(1, tuner.max);
    }
    progress.chunk_size.store(tuner.size(), Relaxed);
    if let Some(limiter) = limiter {
        let n = NonZeroU32::new(tuner.size() as u32).unwrap_or(NonZeroU32::MIN);
        // Cannot fail: the chunk size is capped at the burst size above.
        let _ = limiter.until_n_ready(n).await;
    }
    // Last, right before the chunk: a throttle that began while the rate limit held the chunk
    // back stops it.
    steering.wait_unthrottled(|| backend.check_tail()).await?;
    let mut lost = 0;
    loop {
        match backend.chunk_end(after.as_ref(), tuner.size()).await {
            Err(e) if retry_on_lost_session(&e, "chunks", &mut lost, retries).await => loop {
                match backend.reopen_copier().await {
                    Err(e) if retry_on_lost_session(&e, "chunks", &mut lost, retries).await => {}
                    other => break other?,
                }
            },
            other => return other,
        }
    }
}

/// Copy one chunk on `copier`, trying again on a new session while the server is out of reach
/// (a restart or a failover takes seconds). The range stays published (its changes held) until
/// the chunk is in, however many sessions that takes; then the chunk is committed to the
/// watermark, or given up if it met a stale row on a unique index.
async fn copy_one<C: Copier>(
    mut copier: C,
    job: Job,
    discarded: Vec<u64>,
    shared: &Shared,
    nice: f64,
    retries: u32,
) -> Ended<C> {
    let started = Instant::now();
    let (mut lost, mut again) = (0, false);
    let result = loop {
        match copier
            .copy_chunk(job.after.as_ref(), job.upto.as_ref(), &discarded, again)
            .await
        {
            Err(e) if retry_on_lost_session(&e, "copy", &mut lost, retries).await => {
                if let Err(e) = reopen(&mut copier, &mut lost, retries).await {
                    break Err(e);
                }
                // The lost try may have committed: the range's rows are replaced.
                again = true;
            }
            other => break other,
        }
    };
    let took = started.elapsed();
    match &result {
        Ok(rows) => {
            shared.watermark.commit_chunk(&job.after, &discarded);
            shared.progress.rows_copied.fetch_add(*rows, Relaxed);
        }
        Err(e) if is_collision(e) => shared.watermark.abandon_chunk(&job.after),
        Err(_) => {}
    }
    if result.is_ok() && nice > 0.0 {
        tokio::time::sleep(took.mul_f64(nice)).await;
    }
    Ended {
        copier,
        job,
        took,
        result,
    }
}

/// A new session for `copier`, waiting (on the same count of retries) while the server is out
/// of reach.
async fn reopen<C: Copier>(copier: &mut C, lost: &mut u32, retries: u32) -> Result<()> {
    loop {
        match copier.reopen().await {
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
