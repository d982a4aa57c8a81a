//! Checkpoints: how far a run got, saved in its state table (`_<table>_swl`) every few seconds
//! and when the copy ends, so `--resume` can go on after a crash instead of starting again.
//!
//! What makes a checkpoint safe to resume from (see docs/operating.md, "Resume"):
//! - `low` is a watermark the copy had committed: every row at or below it was copied, and
//!   every change to it since was applied or seen by a later chunk.
//! - the stream position is one before which every change the applier had to apply was
//!   applied (PostgreSQL: the slot's confirmed position, which the applier advances only past
//!   applied transactions with nothing held; MySQL: the end of such a transaction).
//!
//! Resuming replays the stream from that position, applying changes to keys at or below `low`
//! and discarding the rest, after deleting what the shadow holds above `low`; the copy starts
//! again after `low`. Changes the crashed run had already applied arrive again: each is an
//! upsert of the whole new row or a delete by key, so applying one again leaves the row as the
//! later changes in the stream make it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::engine::backend::Backend;
use crate::engine::progress::{format_duration, unix_ms};
use crate::engine::watermark::Key;
use crate::error::{Error, Result};
use crate::options::RunOptions;

/// How often the copy saves a checkpoint.
pub const EVERY: Duration = Duration::from_secs(2);

/// The version that writes and reads checkpoints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// swivel's version: a resume with another refuses, as the state's meaning may differ.
    pub version: String,
    pub table: String,
    /// The ALTER the run was started with.
    pub alter: String,
    /// Every key at or below this was copied (None: nothing yet, unless `copied`).
    pub low: Option<Key>,
    /// The whole table was copied.
    pub copied: bool,
    pub rows_copied: u64,
    /// Where the change stream goes on from (MySQL `file:position`; PostgreSQL the slot's
    /// confirmed LSN, shown only: the slot itself holds it).
    pub stream: String,
    /// Statements the backend runs once the copy is done (PostgreSQL's deferred indexes).
    pub after_copy: Vec<String>,
    /// The options that shaped the run, for the operator reading the state table.
    pub chunk_size: u64,
    pub skip_checksum: bool,
    pub drop_old_table: bool,
    pub saved_unix_ms: u64,
}

impl Checkpoint {
    pub fn new(opts: &RunOptions, low: Option<Key>, copied: bool, rows_copied: u64) -> Self {
        Checkpoint {
            version: VERSION.to_string(),
            table: opts.table.clone(),
            alter: opts.alter.clone(),
            low,
            copied,
            rows_copied,
            stream: String::new(),
            after_copy: Vec::new(),
            chunk_size: opts.chunk_size,
            skip_checksum: opts.skip_checksum,
            drop_old_table: opts.drop_old_table,
            saved_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// For `swivel cleanup`'s listing: what removing the state gives up.
    pub fn describe(&self) -> String {
        let age =
            Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(self.saved_unix_ms));
        format!(
            "its checkpoint, saved {} ago by swivel {}: {} rows copied{}, `--resume` goes on \
             from there",
            format_duration(age),
            self.version,
            self.rows_copied,
            if self.copied {
                " (the copy was done)"
            } else {
                ""
            },
        )
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and keys always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::refused(format!(
                "the state table holds a checkpoint swivel cannot read ({e}); remove the run's \
                 leftovers with `swivel cleanup` and start again"
            ))
        })
    }

    /// Refuse a resume that would not continue the same run: another ALTER, another version,
    /// or a checkpoint older than `--checkpoint-max-age`.
    pub fn check_resumable(&self, opts: &RunOptions) -> Result<()> {
        let max_age = opts.checkpoint_max_age;
        let again = "remove the run's leftovers with `swivel cleanup` and start again";
        if normalize(&self.alter) != normalize(&opts.alter) {
            return Err(Error::refused(format!(
                "the interrupted run was started with --alter {:?}, not {:?}: --resume goes on \
                 with the same ALTER only. Resume with that ALTER, or {again}",
                self.alter, opts.alter
            )));
        }
        if self.version != VERSION {
            return Err(Error::refused(format!(
                "the checkpoint was written by swivel {}, this is swivel {VERSION}: resume with \
                 that version, or {again}",
                self.version
            )));
        }
        let age =
            Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(self.saved_unix_ms));
        if age > max_age {
            return Err(Error::refused(format!(
                "the checkpoint is {} old, older than --checkpoint-max-age {}: the change stream \
                 since then would take long to replay. Raise --checkpoint-max-age to resume \
                 anyway, or {again}",
                format_duration(age),
                format_duration(max_age)
            )));
        }
        Ok(())
    }
}

/// Whitespace does not make another ALTER.
fn normalize(alter: &str) -> String {
    alter.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Save a checkpoint. A session lost on the way (a server restart) costs only this save: the
/// run goes on, and a resume would go on from the checkpoint before, which is as sound.
pub async fn save<B: Backend>(backend: &mut B, checkpoint: Checkpoint) -> Result<()> {
    match backend.save_checkpoint(checkpoint).await {
        Err(e) if e.is_connection_lost() => {
            tracing::warn!("the checkpoint was not saved ({e}); the next one will be");
            Ok(())
        }
        other => other,
    }
}

/// The message for leftovers found without `--resume`: the two ways on.
pub fn leftovers_message(found: &str, table: &str) -> String {
    format!(
        "leftovers of an earlier run exist ({found}). If that run was interrupted, go on from \
         its checkpoint with the same command and --resume; otherwise, and if no swivel run is \
         active on this table, remove them with `swivel cleanup --dsn … --table {table}` (it \
         removes only what swivel made: a table of yours by that name you must rename or drop \
         yourself)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::watermark::KeyPart;

    fn opts(alter: &str) -> RunOptions {
        RunOptions::new("postgres://x/db", "t", alter)
    }

    #[test]
    fn round_trips_through_json() {
        let low = vec![KeyPart::Int(-5), KeyPart::Text("a\"b".into())];
        let cp = Checkpoint::new(&opts("ADD COLUMN x int"), Some(low), false, 7);
        assert_eq!(Checkpoint::from_json(&cp.to_json()).ok(), Some(cp));
        assert!(Checkpoint::from_json("{").is_err());
    }

    #[test]
    fn a_resume_must_continue_the_same_run() {
        let cp = Checkpoint::new(&opts("ADD COLUMN x int"), None, false, 0);
        assert!(cp.check_resumable(&opts("ADD  COLUMN x\nint")).is_ok());
        let other = cp.check_resumable(&opts("ADD COLUMN y int"));
        assert!(other.is_err_and(|e| e.to_string().contains("same ALTER")));
        let mut old = cp.clone();
        old.version = "0.0.0-old".into();
        assert!(old
            .check_resumable(&opts("ADD COLUMN x int"))
            .is_err_and(|e| e.to_string().contains("written by swivel 0.0.0-old")));
        let mut stale = cp;
        stale.saved_unix_ms -= 2 * 86_400_000;
        assert!(stale
            .check_resumable(&opts("ADD COLUMN x int"))
            .is_err_and(|e| e.to_string().contains("--checkpoint-max-age")));
    }
}
