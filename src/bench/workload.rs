//! The application the bench stands in for: single-row writes at a fixed rate, in the mix of
//! sysbench's `oltp_write_only` (an update of the indexed `k`, an update of `c`, a delete and the
//! insert of the same id), each one's latency kept.
//!
//! Latency is measured from when the write was due, not from when it was sent: a write stuck
//! behind a lock delays the ones due after it on the same session, and the application feels
//! that too (this is what hides in "coordinated omission").

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::db::{Db, Target};
use super::scratch::TABLE;

/// Sessions the writes are spread over, so one slow write does not hold back every other.
const SESSIONS: u32 = 4;

/// One write: when it was due (since the run's origin), how long until it finished, whether it
/// succeeded.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub due: Duration,
    pub latency: Duration,
    pub ok: bool,
}

impl Sample {
    pub fn done(&self) -> Duration {
        self.due + self.latency
    }
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    sessions: JoinSet<Result<Vec<Sample>>>,
}

impl Workload {
    /// Start `rate` writes per second against the bench table of `rows` rows. `origin` is time
    /// zero of the samples.
    pub async fn start(target: &Target, rows: u64, rate: u32, origin: Instant) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sessions = JoinSet::new();
        if rate == 0 {
            return Ok(Workload { stop, sessions });
        }
        let n = SESSIONS.min(rate);
        let period = Duration::from_secs_f64(f64::from(n) / f64::from(rate));
        for session in 0..n {
            let db = target.connect("bench writer").await?;
            let writer = Writer {
                db,
                target: target.clone(),
                rng: StdRng::seed_from_u64(u64::from(session)),
                session,
                sessions: n,
                rows,
            };
            // Stagger the sessions so the writes are spread evenly over time.
            let first = origin + period * session / n;
            sessions.spawn(writer.run(first, period, origin, stop.clone()));
        }
        Ok(Workload { stop, sessions })
    }

    /// Stop the writers; every sample, in order of when it was due.
    pub async fn finish(mut self) -> Result<Vec<Sample>> {
        self.stop.store(true, Relaxed);
        let mut samples = Vec::new();
        while let Some(joined) = self.sessions.join_next().await {
            samples.extend(joined??);
        }
        samples.sort_by_key(|s| s.due);
        Ok(samples)
    }
}

struct Writer {
    db: Db,
    target: Target,
    rng: StdRng,
    session: u32,
    sessions: u32,
    rows: u64,
}

impl Writer {
    async fn run(
        mut self,
        first: Instant,
        period: Duration,
        origin: Instant,
        stop: Arc<AtomicBool>,
    ) -> Result<Vec<Sample>> {
        let mut tick = tokio::time::interval_at(first.into(), period);
        // Writes that fell behind are sent at once, as an application's queue would.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut samples = Vec::new();
        let mut deleted: Option<u64> = None;
        let mut step = 0u32;
        while !stop.load(Relaxed) {
            let due = tick.tick().await.into_std();
            let sql = match (step % 4, deleted.take()) {
                (3, Some(id)) => self.insert(id),
                (2, _) => {
                    let id = self.pick();
                    deleted = Some(id);
                    format!("DELETE FROM {TABLE} WHERE id = {id}")
                }
                (1, _) => {
                    let id = self.pick();
                    let c: u64 = self.rng.gen();
                    format!("UPDATE {TABLE} SET c = '{c:0>120}' WHERE id = {id}")
                }
                _ => {
                    let id = self.pick();
                    format!("UPDATE {TABLE} SET k = k + 1 WHERE id = {id}")
                }
            };
            step += 1;
            let ok = match self.db.exec(&sql).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!("bench write failed: {e}");
                    // The delete did not happen: the insert of the same id must not follow.
                    if sql.starts_with("DELETE") {
                        deleted = None;
                        step += 1;
                    }
                    if self.db.is_closed() {
                        if let Ok(db) = self.target.connect("bench writer").await {
                            self.db = db;
                        }
                    }
                    false
                }
            };
            samples.push(Sample {
                due: due.saturating_duration_since(origin),
                latency: due.elapsed(),
                ok,
            });
        }
        Ok(samples)
    }

    /// A random id of this session's share (ids are split by remainder, so no two sessions
    /// delete and re-insert the same row).
    fn pick(&mut self) -> u64 {
        let per_session = (self.rows / u64::from(self.sessions)).max(1);
        let slot = self.rng.gen_range(0..per_session);
        slot * u64::from(self.sessions) + u64::from(self.session) + 1
    }

    fn insert(&mut self, id: u64) -> String {
        let k = self.rng.gen_range(1..=self.rows.max(1));
        let c: u64 = self.rng.gen();
        format!("INSERT INTO {TABLE} (id, k, c, pad) VALUES ({id}, {k}, '{c:0>120}', 'bench')")
    }
}
