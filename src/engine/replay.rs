//! What both appliers share: routing each replayed change through the watermark (apply now,
//! hold until the chunk being read commits, or discard), and the state the applier reports to
//! the rest of the run (failure, lag from heartbeats, the cut-over marker reached).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::engine::progress::Progress;
use crate::engine::watermark::{Decision, Key, Watermark};
use crate::error::{Error, Result};

/// Microseconds since the epoch: heartbeats carry their send time in it.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Changes decided "apply" (in stream order) and changes held for the chunk being read.
#[derive(Debug)]
pub struct Router<C> {
    watermark: Arc<Watermark>,
    batch: Vec<C>,
    /// With each held change, its key and transaction: a chunk given up (rather than
    /// committed) turns some of them into discards.
    held: Vec<(Key, C, u64)>,
    held_epoch: u64,
}

impl<C> Router<C> {
    pub fn new(watermark: Arc<Watermark>) -> Self {
        Router {
            watermark,
            batch: Vec::new(),
            held: Vec::new(),
            held_epoch: 0,
        }
    }

    /// Route one change of transaction `txn` to the row with `key`.
    pub fn route(&mut self, key: &Key, change: C, txn: u64) {
        self.release_held();
        let mut view = self.watermark.view();
        match view.decide(key) {
            // Behind a held change, even a change that is due waits: replay keeps stream order
            // across keys too, or an older value replayed later could displace (via a unique
            // index) a row whose newer change was already applied.
            Decision::Apply if !self.held.is_empty() => self.held.push((key.clone(), change, txn)),
            Decision::Apply => self.batch.push(change),
            Decision::Hold => {
                self.held_epoch = view.epoch();
                self.held.push((key.clone(), change, txn));
            }
            Decision::Discard => view.note_discard(txn),
        }
    }

    /// Once the chunk the held changes waited for has ended, decide them again, in order: a
    /// committed chunk makes them due; a chunk given up puts its keys above the watermark
    /// again, so those are discarded (the chunk's next read sees them) and the rest is due.
    pub fn release_held(&mut self) {
        let mut view = self.watermark.view();
        if self.held.is_empty() || view.epoch() == self.held_epoch {
            return;
        }
        for (key, change, txn) in std::mem::take(&mut self.held) {
            match view.decide(&key) {
                Decision::Apply if !self.held.is_empty() => self.held.push((key, change, txn)),
                Decision::Apply => self.batch.push(change),
                Decision::Hold => {
                    self.held_epoch = view.epoch();
                    self.held.push((key, change, txn));
                }
                Decision::Discard => view.note_discard(txn),
            }
        }
    }

    pub fn batch(&self) -> &[C] {
        &self.batch
    }

    pub fn clear_batch(&mut self) {
        self.batch.clear();
    }

    /// The stream is read again from an earlier position: what was routed but not applied
    /// arrives again.
    pub fn forget(&mut self) {
        self.batch.clear();
        self.held.clear();
    }

    pub fn nothing_held(&self) -> bool {
        self.held.is_empty()
    }

    /// Nothing waits to be applied.
    pub fn idle(&self) -> bool {
        self.batch.is_empty() && self.held.is_empty()
    }
}

/// What the applier shares with the run: its failure, the newest heartbeat it reached and the
/// newest cut-over marker before which everything was applied.
#[derive(Debug)]
pub struct TailState {
    failure: Mutex<Option<String>>,
    marker: watch::Sender<u64>,
    heartbeat_seen: AtomicU64,
}

impl Default for TailState {
    fn default() -> Self {
        TailState {
            failure: Mutex::new(None),
            marker: watch::Sender::new(0),
            heartbeat_seen: AtomicU64::new(now_micros()),
        }
    }
}

impl TailState {
    pub fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(why);
    }

    /// The applier's failure, if it failed.
    pub fn check(&self) -> Result<()> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match failure.as_ref() {
            Some(why) => Err(Error::Stream(why.clone())),
            None => Ok(()),
        }
    }

    /// The applier reached a heartbeat sent at `sent` (microseconds since the epoch).
    pub fn saw_heartbeat(&self, sent: u64, progress: &Progress) {
        self.heartbeat_seen.fetch_max(sent, Relaxed);
        progress
            .lag_ms
            .store(self.lag().as_millis() as u64, Relaxed);
    }

    /// Everything before marker `n` is applied.
    pub fn reached_marker(&self, n: u64) {
        self.marker.send_replace(n);
    }

    /// How far the applier is behind: the age of the newest heartbeat it has reached.
    pub fn lag(&self) -> Duration {
        let seen = self.heartbeat_seen.load(Relaxed);
        Duration::from_micros(now_micros().saturating_sub(seen))
    }

    /// Wait until the applier has applied everything before marker `n`; false on timeout.
    /// `check` reports a failed applier.
    pub async fn wait_marker(
        &self,
        n: u64,
        timeout: Duration,
        check: impl Fn() -> Result<()>,
    ) -> Result<bool> {
        let mut rx = self.marker.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if *rx.borrow_and_update() >= n {
                    return Ok(());
                }
                check()?;
                // Wake at least every 50ms to notice a failed applier.
                let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }
}

/// A statement failed: if its session was lost and `lost` (the tries so far, counted here) is
/// under `retries`, say so, pause (longer each time) and return true: open a new session and
/// run it again. Written once for the copier and both appliers, whose work is safe to repeat.
pub async fn retry_on_lost_session(e: &Error, what: &str, lost: &mut u32, retries: u32) -> bool {
    if !e.is_connection_lost() || *lost >= retries {
        return false;
    }
    *lost += 1;
    tracing::warn!(
        "the {what} session was lost ({e}); reconnecting ({} of --default-retries {retries})",
        *lost
    );
    tokio::time::sleep(Duration::from_millis(100 * u64::from((*lost).min(50)))).await;
    true
}

/// Open a session with `connect`, trying again while it fails because the server is out of
/// reach, on the same `lost` / `retries` count as the work it reopens for.
pub async fn reconnect<T, F, Fut>(
    what: &str,
    lost: &mut u32,
    retries: u32,
    mut connect: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    loop {
        match connect().await {
            Ok(session) => return Ok(session),
            Err(e) if retry_on_lost_session(&e, what, lost, retries).await => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::watermark::KeyPart;

    fn k(i: i128) -> Key {
        vec![KeyPart::Int(i)]
    }

    #[test]
    fn held_changes_are_released_when_their_chunk_commits() {
        let w = Arc::new(Watermark::new());
        let mut r = Router::new(w.clone());
        r.route(&k(5), "discarded", 1);
        assert!(r.idle());
        assert_eq!(
            w.begin_chunk(None, Some(k(10))),
            vec![1],
            "the chunk learns of the discard"
        );
        r.route(&k(5), "held", 2);
        r.release_held();
        assert!(r.batch().is_empty(), "held until the chunk commits");
        w.commit_chunk(&None, &[1]);
        r.route(&k(3), "applied", 3);
        assert_eq!(r.batch(), ["held", "applied"], "stream order is kept");
    }

    #[test]
    fn chunks_committed_out_of_order_release_in_stream_order() {
        let w = Arc::new(Watermark::new());
        let mut r = Router::new(w.clone());
        w.begin_chunk(None, Some(k(10)));
        w.begin_chunk(Some(k(10)), Some(k(20)));
        r.route(&k(5), "first chunk", 1);
        r.route(&k(15), "second chunk", 2);
        w.commit_chunk(&Some(k(10)), &[]);
        r.release_held();
        assert!(
            r.batch().is_empty(),
            "the second chunk committed, but its change waits behind the first's"
        );
        r.route(&k(25), "above every chunk", 3);
        w.commit_chunk(&None, &[]);
        r.release_held();
        assert_eq!(r.batch(), ["first chunk", "second chunk"]);
        assert_eq!(
            w.begin_chunk(Some(k(20)), None),
            vec![3],
            "the chunk that reads the discarded key must see its transaction"
        );
    }

    #[test]
    fn a_chunk_given_up_discards_its_held_changes_and_applies_the_rest() {
        let w = Arc::new(Watermark::new());
        w.begin_chunk(None, Some(k(10)));
        w.commit_chunk(&None, &[]); // keys up to 10 copied
        let mut r = Router::new(w.clone());
        w.begin_chunk(Some(k(10)), Some(k(20)));
        r.route(&k(15), "in the chunk", 7);
        r.route(&k(3), "due, behind it", 8);
        r.release_held();
        assert!(
            r.batch().is_empty(),
            "stream order holds the due change too"
        );
        w.abandon_chunk(&Some(k(10)));
        r.release_held();
        assert_eq!(
            r.batch(),
            ["due, behind it"],
            "the fix of the stale row goes through"
        );
        assert!(r.nothing_held());
        assert_eq!(
            w.begin_chunk(Some(k(10)), Some(k(20))),
            vec![7],
            "the chunk read again must see the discarded transaction"
        );
    }
}
