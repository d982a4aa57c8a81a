//! The copy/replay protocol of DESIGN.md, shared by the copier and the applier.
//!
//! The copier publishes the key range it is about to read before it reads it, and the new low
//! watermark after it commits. For each replayed change the applier asks where its key stands:
//! at or below the watermark it is applied now; inside the chunk being read it is held until
//! that chunk commits; above, it is discarded, because the chunk that reads that key starts
//! later and sees the change. The last point needs the discarded transaction to be visible to
//! that later chunk's snapshot: the applier records the transactions it discarded from, and the
//! copier checks its snapshot sees them before it reads (see `postgres::copy`).

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

#[derive(Debug, Default)]
struct State {
    /// Every key at or below this was copied (None: nothing yet).
    low: Option<Key>,
    /// The whole table was copied: every change applies.
    done: bool,
    /// The chunk being read: keys above `low` up to this bound (`Some(None)`: no upper bound).
    in_flight: Option<Option<Key>>,
    /// Bumped each time a chunk commits, so the applier knows its held changes are due.
    epoch: u64,
    /// Transactions the applier discarded changes of since the copier last published a range.
    discarded: Vec<u64>,
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

    /// Publish the range the copier is about to read (above the watermark, up to `hi`
    /// inclusive, or everything when `hi` is None). Returns the transactions discarded since the
    /// last publication: the chunk's snapshot must see all of them.
    pub fn begin_chunk(&self, hi: Option<Key>) -> Vec<u64> {
        let mut s = self.lock();
        s.in_flight = Some(hi);
        std::mem::take(&mut s.discarded)
    }

    /// The chunk being read has committed: its upper bound becomes the watermark.
    pub fn commit_chunk(&self) {
        let mut s = self.lock();
        match s.in_flight.take() {
            Some(Some(hi)) => s.low = Some(hi),
            Some(None) => s.done = true,
            None => return,
        }
        s.epoch += 1;
    }

    /// The chunk being read was rolled back, nothing of it copied (it met a stale row on a
    /// unique index that only a held change fixes): its range is above the watermark again,
    /// and what was held for it is decided anew.
    pub fn abandon_chunk(&self) {
        let mut s = self.lock();
        if s.in_flight.take().is_some() {
            s.epoch += 1;
        }
    }

    /// Go on from a checkpoint: everything at or below `low` is copied, or everything when
    /// `copied`.
    pub fn resume(&self, low: Option<Key>, copied: bool) {
        let mut s = self.lock();
        s.low = low;
        s.done = copied;
        s.in_flight = None;
        s.epoch += 1;
    }

    /// Mark the copy complete without a chunk (an empty table).
    pub fn finish(&self) {
        let mut s = self.lock();
        s.in_flight = None;
        s.done = true;
        s.epoch += 1;
    }

    pub fn is_done(&self) -> bool {
        self.lock().done
    }

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
        match &s.in_flight {
            Some(None) => Decision::Hold,
            Some(Some(hi)) if key <= hi => Decision::Hold,
            _ => Decision::Discard,
        }
    }

    /// Remember that changes of transaction `xid` were discarded.
    pub fn note_discard(&mut self, xid: u64) {
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
        w.begin_chunk(Some(k(10)));
        assert_eq!(w.view().decide(&k(5)), Decision::Hold);
        assert_eq!(w.view().decide(&k(10)), Decision::Hold);
        assert_eq!(w.view().decide(&k(11)), Decision::Discard);
        w.commit_chunk();
        assert_eq!(w.view().decide(&k(10)), Decision::Apply);
        assert_eq!(w.view().decide(&k(11)), Decision::Discard);
        assert_eq!(w.view().epoch(), 1);
        w.begin_chunk(None);
        assert_eq!(w.view().decide(&k(1_000_000)), Decision::Hold);
        w.commit_chunk();
        assert!(w.is_done());
        assert_eq!(w.view().decide(&k(i64::MAX.into())), Decision::Apply);
    }

    #[test]
    fn discards_are_handed_to_the_next_chunk_once() {
        let w = Watermark::new();
        {
            let mut v = w.view();
            v.note_discard(7);
            v.note_discard(7);
            v.note_discard(9);
        }
        assert_eq!(w.begin_chunk(Some(k(3))), vec![7, 9]);
        assert!(w.begin_chunk(Some(k(3))).is_empty());
    }

    #[test]
    fn composite_keys_compare_like_rows() {
        let a = vec![KeyPart::Int(1), KeyPart::Text("b".into())];
        let b = vec![KeyPart::Int(2), KeyPart::Text("a".into())];
        assert!(a < b);
        assert!(KeyPart::Text("B".into()) < KeyPart::Text("a".into()));
    }
}
