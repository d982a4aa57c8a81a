//! The copy/replay protocol of DESIGN.md, shared by the copier and the applier, for any number
//! of chunks in flight (`--threads`).
//!
//! The copier publishes the key range of each chunk before it reads it; chunks are published in
//! key order, and may commit in any order. The low watermark is the end of the committed chunks
//! that have no gap below them. For each replayed change the applier asks where its key stands:
//! at or below the watermark, or in a committed chunk, it is applied now; inside a chunk being
//! read it is held until that chunk commits; in no published chunk, it is discarded, because
//! the chunk that reads that key is published later and sees the change. The last point needs
//! the discarded transaction to be visible to that later chunk's snapshot: the applier records
//! the transactions it discarded from, and every chunk published until one of them has
//! committed checks its snapshot sees them before it reads (see `postgres::copy`). A chunk
//! published after that commit takes its snapshot later still, and visibility only grows.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

/// One column of a key. Ordered as the server orders it: integers numerically, text by bytes
/// (the "C" collation); tables whose keys order otherwise are refused at plan time.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum KeyPart {
    Int(i128),
    Text(String),
}

impl KeyPart {
    pub fn to_sql_text(&self) -> String {
        match self {
            KeyPart::Int(i) => i.to_string(),
            KeyPart::Text(s) => s.clone(),
        }
    }
}

/// A primary key value; compared column by column, like a row comparison in SQL.
pub type Key = Vec<KeyPart>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Apply,
    Hold,
    Discard,
}

/// A published chunk: keys in (`after`, `upto`] (None ends are open).
#[derive(Debug)]
struct Range {
    after: Option<Key>,
    upto: Option<Key>,
    committed: bool,
}

impl Range {
    fn holds(&self, key: &Key) -> bool {
        !self.after.as_ref().is_some_and(|a| key <= a)
            && !self.upto.as_ref().is_some_and(|u| key > u)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Every key at or below this was copied (None: nothing yet).
    low: Option<Key>,
    /// The whole table was copied: every change applies.
    done: bool,
    /// The chunks published above `low`, in key order, disjoint: those being read and those
    /// committed above one still being read (with `--threads`, chunks commit out of order).
    ranges: Vec<Range>,
    /// Bumped each time a chunk commits or is given up, so the applier knows its held changes
    /// are to be decided again.
    epoch: u64,
    /// Transactions the applier discarded changes of that no committed chunk has yet shown
    /// its snapshot to see.
    discarded: Vec<u64>,
}

impl State {
    /// Fold committed chunks that start at the watermark into it.
    fn advance(&mut self) {
        while let Some(first) = self.ranges.first() {
            if !first.committed || first.after != self.low {
                return;
            }
            let first = self.ranges.remove(0);
            match first.upto {
                Some(upto) => self.low = Some(upto),
                None => {
                    self.done = true;
                    self.ranges.clear();
                    return;
                }
            }
        }
    }

    fn position(&self, after: &Option<Key>) -> Option<usize> {
        self.ranges.iter().position(|r| &r.after == after)
    }
}

#[derive(Debug, Default)]
pub struct Watermark {
    state: Mutex<State>,
}

impl Watermark {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked mid-update; the state is plain data, so go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish the chunk the copier is about to read: keys in (`after`, `upto`], above the
    /// watermark and apart from every other published chunk. Returns the transactions its
    /// snapshot must see: every discard no committed chunk has yet seen.
    pub fn begin_chunk(&self, after: Option<Key>, upto: Option<Key>) -> Vec<u64> {
        let mut s = self.lock();
        // None sorts first, as the open start of the key space does.
        let at = s
            .ranges
            .iter()
            .position(|r| r.after > after)
            .unwrap_or(s.ranges.len());
        s.ranges.insert(
            at,
            Range {
                after,
                upto,
                committed: false,
            },
        );
        s.discarded.clone()
    }

    /// The chunk that began after `after` has committed; its snapshot saw `seen` (what
    /// `begin_chunk` returned): those need no later chunk to see them.
    pub fn commit_chunk(&self, after: &Option<Key>, seen: &[u64]) {
        let mut s = self.lock();
        let Some(i) = s.position(after) else { return };
        s.ranges[i].committed = true;
        let seen: HashSet<&u64> = seen.iter().collect();
        s.discarded.retain(|x| !seen.contains(x));
        s.advance();
        s.epoch += 1;
    }

    /// The chunk that began after `after` was rolled back, nothing of it copied (it met a
    /// stale row on a unique index that only a held change fixes): its range is unpublished
    /// again, and what was held for it is decided anew.
    pub fn abandon_chunk(&self, after: &Option<Key>) {
        let mut s = self.lock();
        if let Some(i) = s.position(after) {
            s.ranges.remove(i);
            s.epoch += 1;
        }
    }

    /// Go on from a checkpoint: everything at or below `low` is copied, or everything when
    /// `copied`.
    pub fn resume(&self, low: Option<Key>, copied: bool) {
        let mut s = self.lock();
        s.low = low;
        s.done = copied;
        s.ranges.clear();
        s.epoch += 1;
    }

    /// Mark the copy complete without a chunk (an empty table).
    pub fn finish(&self) {
        let mut s = self.lock();
        s.ranges.clear();
        s.done = true;
        s.epoch += 1;
    }

    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// The low watermark: every key at or below it was copied.
    pub fn low(&self) -> Option<Key> {
        self.lock().low.clone()
    }

    /// Hold the state while deciding the changes of one transaction.
    pub fn view(&self) -> View<'_> {
        View { state: self.lock() }
    }
}

/// The watermark state, locked for one transaction's decisions.
pub struct View<'a> {
    state: MutexGuard<'a, State>,
}

impl View<'_> {
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    pub fn decide(&self, key: &Key) -> Decision {
        let s = &self.state;
        if s.done || s.low.as_ref().is_some_and(|low| key <= low) {
            return Decision::Apply;
        }
        match s.ranges.iter().find(|r| r.holds(key)) {
            Some(r) if r.committed => Decision::Apply,
            Some(_) => Decision::Hold,
            None => Decision::Discard,
        }
    }

    /// Remember that changes of transaction `xid` were discarded.
    pub fn note_discard(&mut self, xid: u64) {
        // A transaction's changes arrive together: one entry each is enough, and repeats are
        // harmless.
        if self.state.discarded.last() != Some(&xid) {
            self.state.discarded.push(xid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: i128) -> Key {
        vec![KeyPart::Int(i)]
    }

    #[test]
    fn decisions_follow_the_watermark() {
        let w = Watermark::new();
        assert_eq!(w.view().decide(&k(5)), Decision::Discard);
        w.begin_chunk(None, Some(k(10)));
        assert_eq!(w.view().decide(&k(5)), Decision::Hold);
        assert_eq!(w.view().decide(&k(10)), Decision::Hold);
        assert_eq!(w.view().decide(&k(11)), Decision::Discard);
        w.commit_chunk(&None, &[]);
        assert_eq!(w.view().decide(&k(10)), Decision::Apply);
        assert_eq!(w.view().decide(&k(11)), Decision::Discard);
        assert_eq!(w.view().epoch(), 1);
        assert_eq!(w.low(), Some(k(10)));
        w.begin_chunk(Some(k(10)), None);
        assert_eq!(w.view().decide(&k(1_000_000)), Decision::Hold);
        w.commit_chunk(&Some(k(10)), &[]);
        assert!(w.is_done());
        assert_eq!(w.view().decide(&k(i64::MAX.into())), Decision::Apply);
    }

    #[test]
    fn chunks_in_flight_together_commit_out_of_order() {
        let w = Watermark::new();
        w.begin_chunk(None, Some(k(10)));
        w.begin_chunk(Some(k(10)), Some(k(20)));
        w.begin_chunk(Some(k(20)), Some(k(30)));
        assert_eq!(w.view().decide(&k(15)), Decision::Hold);
        assert_eq!(w.view().decide(&k(31)), Decision::Discard);
        // The middle chunk commits first: its keys are due, the watermark stays put.
        w.commit_chunk(&Some(k(10)), &[]);
        assert_eq!(w.view().decide(&k(15)), Decision::Apply);
        assert_eq!(w.view().decide(&k(20)), Decision::Apply);
        assert_eq!(w.view().decide(&k(5)), Decision::Hold);
        assert_eq!(w.view().decide(&k(25)), Decision::Hold);
        assert_eq!(w.low(), None);
        // The first commits: the watermark moves over both.
        w.commit_chunk(&None, &[]);
        assert_eq!(w.low(), Some(k(20)));
        assert_eq!(w.view().decide(&k(25)), Decision::Hold);
        // The last is given up: its keys are discarded until it is published again.
        w.abandon_chunk(&Some(k(20)));
        assert_eq!(w.view().decide(&k(25)), Decision::Discard);
        w.begin_chunk(Some(k(30)), None);
        assert_eq!(w.view().decide(&k(25)), Decision::Discard);
        assert_eq!(w.view().decide(&k(99)), Decision::Hold);
        w.begin_chunk(Some(k(20)), Some(k(30)));
        assert_eq!(w.view().decide(&k(25)), Decision::Hold);
        w.commit_chunk(&Some(k(30)), &[]);
        assert!(
            !w.is_done(),
            "the end committed, but a chunk below it has not"
        );
        assert_eq!(w.view().decide(&k(99)), Decision::Apply);
        w.commit_chunk(&Some(k(20)), &[]);
        assert!(w.is_done());
    }

    #[test]
    fn discards_stay_until_a_committed_chunk_saw_them() {
        let w = Watermark::new();
        {
            let mut v = w.view();
            v.note_discard(7);
            v.note_discard(7);
            v.note_discard(9);
        }
        let first = w.begin_chunk(None, Some(k(3)));
        assert_eq!(first, vec![7, 9]);
        w.view().note_discard(11);
        // Begun before the first commits: its snapshot may be older than the first's, so it
        // must check them all itself.
        assert_eq!(w.begin_chunk(Some(k(3)), Some(k(6))), vec![7, 9, 11]);
        w.commit_chunk(&None, &first);
        assert_eq!(w.begin_chunk(Some(k(6)), Some(k(9))), vec![11]);
    }

    #[test]
    fn composite_keys_compare_like_rows() {
        let a = vec![KeyPart::Int(1), KeyPart::Text("b".into())];
        let b = vec![KeyPart::Int(2), KeyPart::Text("a".into())];
        assert!(a < b);
        assert!(KeyPart::Text("B".into()) < KeyPart::Text("a".into()));
    }
}
