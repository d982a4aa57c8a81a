//! Steering a running migration: the live knobs and state that the copier, the appliers, the
//! throttler and cut-over read ([`Steering`]), and what writes them: the control socket
//! ([`socket`], gh-ost's line protocol parsed in [`command`]), the throttler's sources
//! ([`throttler`]), flag files, and hooks ([`hooks`]).

pub mod command;
pub mod hooks;
pub mod loads;
pub mod reporter;
pub mod socket;
pub mod status;
pub mod throttler;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
pub use loads::Loads;

/// The knobs an operator may change while the run goes (socket commands of the same names).
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Rows per chunk, pinned by `chunk-size=N`; None: tuned to `target_chunk_time`.
    pub chunk_size: Option<u64>,
    pub target_chunk_time: Duration,
    /// Row changes the applier writes per batch.
    pub dml_batch_size: usize,
    /// Replication lag (swivel's own applier, and each control replica) above which the run
    /// throttles, and under which cut-over may start.
    pub max_lag: Duration,
    pub max_load: Loads,
    pub critical_load: Loads,
    /// After each chunk, sleep this many times as long as the chunk took.
    pub nice_ratio: f64,
    pub throttle_query: Option<String>,
    pub throttle_http: Option<String>,
    /// Connection URLs of replicas whose lag throttles the run.
    pub throttle_control_replicas: Vec<String>,
    pub throttle_flag_file: Option<PathBuf>,
    pub throttle_additional_flag_file: Option<PathBuf>,
    pub postpone_cut_over_flag_file: Option<PathBuf>,
    pub panic_flag_file: Option<PathBuf>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            chunk_size: None,
            target_chunk_time: Duration::from_millis(500),
            dml_batch_size: 2000,
            max_lag: Duration::from_millis(1500),
            max_load: Loads::default(),
            critical_load: Loads::default(),
            nice_ratio: 0.0,
            throttle_query: None,
            throttle_http: None,
            throttle_control_replicas: Vec::new(),
            throttle_flag_file: None,
            throttle_additional_flag_file: None,
            postpone_cut_over_flag_file: None,
            panic_flag_file: None,
        }
    }
}

/// Why the run is throttled, and by whom.
#[derive(Clone, Debug, Default)]
struct Throttle {
    /// `throttle` on the socket.
    commanded: bool,
    /// The throttler's verdict from its sources (flag files, lag, load, query, HTTP).
    sources: Option<String>,
}

/// One shared, live place for everything steerable: the socket and the flag files write it,
/// the copier, appliers, throttler and cut-over read it.
#[derive(Debug)]
pub struct Steering {
    knobs: Mutex<Knobs>,
    throttle: Mutex<Throttle>,
    /// `unpostpone` / `cut-over`: cut over even though the postpone flag file exists.
    unpostponed: AtomicBool,
    /// Cut-over gave up after `--cut-over-max-wait` and waits for `unpostpone`.
    held: AtomicBool,
    /// Cut-over is under way: the replay is never paused then (its lock is held).
    cutting_over: AtomicBool,
    /// Replay goes on although throttled: the slot retains more WAL than the bound allows.
    replay_forced: AtomicBool,
    /// Set once: why the run must stop (panic, critical load).
    stop: watch::Sender<Option<String>>,
}

impl Steering {
    pub fn new(knobs: Knobs) -> Self {
        Steering {
            knobs: Mutex::new(knobs),
            throttle: Mutex::new(Throttle::default()),
            unpostponed: AtomicBool::new(false),
            held: AtomicBool::new(false),
            cutting_over: AtomicBool::new(false),
            replay_forced: AtomicBool::new(false),
            stop: watch::Sender::new(None),
        }
    }

    fn lock_knobs(&self) -> MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_throttle(&self) -> MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current knobs.
    pub fn knobs(&self) -> Knobs {
        self.lock_knobs().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.lock_knobs());
    }

    pub fn max_lag(&self) -> Duration {
        self.lock_knobs().max_lag
    }

    pub fn dml_batch_size(&self) -> usize {
        self.lock_knobs().dml_batch_size
    }

    /// Why the run is throttled now, if it is.
    pub fn throttle_reason(&self) -> Option<String> {
        let t = self.lock_throttle();
        if t.commanded {
            Some("commanded by user".into())
        } else {
            t.sources.clone()
        }
    }

    pub fn is_throttled(&self) -> bool {
        let t = self.lock_throttle();
        t.commanded || t.sources.is_some()
    }

    /// `throttle` / `no-throttle` on the socket.
    pub fn set_commanded_throttle(&self, on: bool) {
        self.lock_throttle().commanded = on;
    }

    /// The throttler's verdict from its sources.
    pub fn set_source_throttle(&self, reason: Option<String>) {
        self.lock_throttle().sources = reason;
    }

    /// The applier should stop applying for now: throttled, outside cut-over, and not forced on
    /// by the WAL bound.
    pub fn replay_paused(&self) -> bool {
        self.is_throttled() && !self.cutting_over.load(Relaxed) && !self.replay_forced.load(Relaxed)
    }

    pub fn set_cutting_over(&self, on: bool) {
        self.cutting_over.store(on, Relaxed);
    }

    /// A cut-over attempt is under way.
    pub fn cutting_over(&self) -> bool {
        self.cutting_over.load(Relaxed)
    }

    pub fn set_replay_forced(&self, on: bool) {
        self.replay_forced.store(on, Relaxed);
    }

    pub fn replay_forced(&self) -> bool {
        self.replay_forced.load(Relaxed)
    }

    /// Why cut-over must wait, if it must: the postpone flag file exists, or cut-over gave up
    /// after `--cut-over-max-wait`, and no `unpostpone` came since.
    pub fn postponed(&self) -> Option<String> {
        if self.unpostponed.load(Relaxed) {
            return None;
        }
        if self.held.load(Relaxed) {
            return Some(
                "cut-over kept failing for --cut-over-max-wait; send `unpostpone` to try again"
                    .into(),
            );
        }
        let file = self.lock_knobs().postpone_cut_over_flag_file.clone()?;
        file.exists()
            .then(|| format!("flag file {} exists", file.display()))
    }

    /// `unpostpone`: cut over as soon as it can. Removes the flag file, as gh-ost does, so a
    /// later look at the host shows the same thing the run sees.
    pub fn unpostpone(&self) {
        self.held.store(false, Relaxed);
        self.unpostponed.store(true, Relaxed);
        if let Some(file) = self.lock_knobs().postpone_cut_over_flag_file.clone() {
            let _ = std::fs::remove_file(file);
        }
    }

    /// After `--cut-over-max-wait` ran out: cut-over waits for `unpostpone`.
    pub fn hold_cut_over(&self) {
        self.unpostponed.store(false, Relaxed);
        self.held.store(true, Relaxed);
    }

    /// Stop the run (`panic`, critical load, the panic flag file). The first reason wins.
    pub fn stop(&self, why: String) {
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(why);
                true
            } else {
                false
            }
        });
    }

    pub fn stop_reason(&self) -> Option<String> {
        self.stop.borrow().clone()
    }

    /// Resolves with the reason once the run was told to stop.
    pub async fn stopped(&self) -> String {
        let mut rx = self.stop.subscribe();
        let reason = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        match reason {
            Ok(reason) => reason.unwrap_or_default(),
            // The sender lives as long as self: this cannot happen, but never stop by mistake.
            Err(_) => std::future::pending().await,
        }
    }

    /// Wait while the run is throttled; `check` is called meanwhile so a failed applier or a
    /// stop is noticed. Returns at once when not throttled.
    pub async fn wait_unthrottled(&self, check: impl Fn() -> Result<()>) -> Result<()> {
        while self.is_throttled() {
            check()?;
            if let Some(why) = self.stop_reason() {
                return Err(Error::Interrupted(why));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steering() -> Steering {
        Steering::new(Knobs::default())
    }

    #[test]
    fn throttle_reasons_and_replay() {
        let s = steering();
        assert!(!s.is_throttled() && s.throttle_reason().is_none());
        s.set_source_throttle(Some("max-load Threads_running=30 >= 25".into()));
        assert!(s.replay_paused());
        s.set_commanded_throttle(true);
        assert_eq!(s.throttle_reason().as_deref(), Some("commanded by user"));
        s.set_cutting_over(true);
        assert!(!s.replay_paused(), "cut-over is never throttled");
        s.set_cutting_over(false);
        s.set_replay_forced(true);
        assert!(!s.replay_paused(), "the WAL bound forces replay on");
        s.set_commanded_throttle(false);
        s.set_source_throttle(None);
        assert!(!s.is_throttled());
    }

    #[test]
    fn postponing_follows_the_flag_file_until_unpostponed() {
        let dir = std::env::temp_dir().join(format!("swivel-postpone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag = dir.join("postpone");
        let s = steering();
        s.update(|k| k.postpone_cut_over_flag_file = Some(flag.clone()));
        assert!(s.postponed().is_none(), "no file, no postponing");
        std::fs::write(&flag, "").unwrap();
        assert!(s.postponed().is_some_and(|why| why.contains("postpone")));
        s.unpostpone();
        assert!(s.postponed().is_none());
        assert!(!flag.exists(), "unpostpone removes the flag file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_first_stop_reason_wins() {
        let s = steering();
        s.stop("panic".into());
        s.stop("critical-load".into());
        assert_eq!(s.stopped().await, "panic");
    }
}
