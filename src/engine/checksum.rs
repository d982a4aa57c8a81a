//! The checksum before cut-over, the same for both servers: open a consistent view of source
//! and shadow (writes held off the table for a moment while the applier drains), compare them
//! chunk by chunk in key order with hash aggregates on the server, then copy the chunks that
//! differ again under the write lock and compare them row by row. A difference that persists
//! refuses the cut-over and leaves both tables for inspection.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::control::reporter::eprintln_above;
use crate::engine::backend::{backoff, Backend, KeyRange, Shared};
use crate::engine::copy::ChunkTuner;
use crate::engine::cutover::{name_and_force_blockers, wait_caught_up};
use crate::engine::progress::Phase;
use crate::engine::watermark::Key;
use crate::error::{Error, Result};
use crate::options::RunOptions;

/// Chunks bigger than this are not worth it: one hash query holds the snapshot anyway.
const MAX_CHUNK: u64 = 100_000;
/// More differing chunks than this is not a stray row but a fault: refuse rather than hold
/// the table's writes for a long repair.
const MAX_REPAIRED_CHUNKS: usize = 100;
/// A chunk with more differing rows than this is copied again whole.
const MAX_NARROWED_ROWS: usize = 1000;

/// What the checksum did, for the final report.
#[derive(Clone, Debug, Default)]
pub struct ChecksumReport {
    pub rows: u64,
    pub chunks: u64,
    /// Chunks that differed and were copied again.
    pub repaired: u64,
    pub time: Duration,
    /// How long the application's writes could have waited on the checksum's locks.
    pub stall: Duration,
}

pub async fn run<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    opts: &RunOptions,
) -> Result<ChecksumReport> {
    let lock_timeout = opts.cut_over_lock_timeout;
    let (progress, steering) = (&shared.progress, &shared.steering);
    let started = Instant::now();
    progress.set_phase(Phase::Checksum);
    let mut report = ChecksumReport::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        steering.wait_unthrottled(|| backend.check_tail()).await?;
        if let Some(stop) = steering.stop_reason() {
            return Err(Error::Interrupted(stop));
        }
        match backend.checksum_begin(lock_timeout).await? {
            Ok(stall) => {
                report.stall += stall;
                break;
            }
            // Like cut-over, never give up the copy over a lock: name who is in the way (and
            // end them with --force-cut-over-after), back off, try again.
            Err(why) => {
                let label = format!("checksum: opening the view, attempt {attempt}");
                name_and_force_blockers(backend, opts, &label, &why).await;
                wait_caught_up(backend, steering, backoff(attempt)).await?;
            }
        }
    }
    let compared = compare(backend, shared, &mut report).await;
    let closed = backend.checksum_end().await;
    let differing = compared?;
    closed?;
    if !differing.is_empty() {
        if report.repaired > MAX_REPAIRED_CHUNKS as u64 {
            return Err(Error::Checksum(format!(
                "{} chunks differ between the table and the shadow table (the first after key \
                 {}); that is no stray row: cut-over refused, both tables are left as they are",
                report.repaired,
                describe(&differing[0])
            )));
        }
        progress.checksum_repaired.store(report.repaired, Relaxed);
        eprintln_above(&format!(
            "swivel: checksum: {} chunk(s) differ ({} key range(s)); copying them again",
            report.repaired,
            differing.len()
        ));
        let mut attempt = 0;
        let repair = loop {
            attempt += 1;
            steering.wait_unthrottled(|| backend.check_tail()).await?;
            let repair = backend.checksum_repair(&differing, lock_timeout).await?;
            report.stall += repair.stall;
            match repair.retry {
                None => break repair,
                Some(why) => {
                    let label = format!("checksum repair, attempt {attempt}");
                    name_and_force_blockers(backend, opts, &label, &why).await;
                    wait_caught_up(backend, steering, backoff(attempt)).await?;
                }
            }
        };
        if !repair.still_differ.is_empty() {
            let shown: Vec<&str> = repair
                .still_differ
                .iter()
                .take(20)
                .map(String::as_str)
                .collect();
            return Err(Error::Checksum(format!(
                "{} row(s) still differ after copying them again, keys {}{}: cut-over refused; \
                 the table and the shadow table are left as they are for inspection \
                 (`swivel cleanup` removes the shadow)",
                repair.still_differ.len(),
                shown.join(", "),
                if repair.still_differ.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )));
        }
    }
    report.time = started.elapsed();
    Ok(report)
}

/// Walk the table in the view; the ranges that differ.
async fn compare<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    report: &mut ChecksumReport,
) -> Result<Vec<KeyRange>> {
    let (progress, steering) = (&shared.progress, &shared.steering);
    let mut tuner = ChunkTuner::new(1000, steering.knobs().target_chunk_time, MAX_CHUNK);
    let mut after = None;
    let mut differing = Vec::new();
    loop {
        steering.wait_unthrottled(|| backend.check_tail()).await?;
        if let Some(stop) = steering.stop_reason() {
            return Err(Error::Interrupted(stop));
        }
        let started = Instant::now();
        let chunk = backend.checksum_chunk(after.as_ref(), tuner.size()).await?;
        tuner.observe(chunk.rows, started.elapsed());
        report.rows += chunk.rows;
        report.chunks += 1;
        progress.checksum_rows.store(report.rows, Relaxed);
        if !chunk.equal {
            tracing::warn!(
                "checksum: the chunk after key {} differs",
                after.as_ref().map_or("(start)".into(), key_text)
            );
            let range = KeyRange {
                after: after.clone(),
                upto: chunk.upto.clone(),
            };
            // Copy again only the rows that differ, so writes wait on the repair for a few
            // rows rather than a whole chunk (a 94,000-row chunk held them 20 s at 10M rows).
            report.repaired += 1;
            let rows = backend.checksum_differences(&range).await?;
            if rows.is_empty() || rows.len() > MAX_NARROWED_ROWS {
                differing.push(range);
            } else {
                differing.extend(rows);
            }
        }
        match chunk.upto {
            Some(k) => after = Some(k),
            None => return Ok(differing),
        }
    }
}

/// From each side's row hashes by key (source, shadow): one range per row that differs or
/// that one side lacks, from the key before it on either side (or `after`) up to its key.
pub fn differing_ranges<H: PartialEq>(
    rows: std::collections::BTreeMap<Key, [Option<H>; 2]>,
    after: Option<Key>,
) -> Vec<KeyRange> {
    let mut out = Vec::new();
    let mut before = after;
    for (key, [source, shadow]) in rows {
        if source != shadow {
            out.push(KeyRange {
                after: before.clone(),
                upto: Some(key.clone()),
            });
        }
        before = Some(key);
    }
    out
}

/// Log one differing row (its range's upper key) with both sides' values as text.
pub fn log_differing_row(range: &KeyRange, source: &str, shadow: &str) {
    tracing::warn!(
        "checksum: the row with key {} differs: source {source}, shadow {shadow}",
        range.upto.as_ref().map_or("(end)".into(), key_text),
    );
}

/// A key as `(1, abc)`, for messages.
pub fn key_text(key: &crate::engine::watermark::Key) -> String {
    let parts: Vec<String> = key.iter().map(|p| p.to_sql_text()).collect();
    format!("({})", parts.join(", "))
}

fn describe(range: &KeyRange) -> String {
    range.after.as_ref().map_or("(start)".into(), key_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::watermark::KeyPart;

    #[test]
    fn each_differing_row_gets_the_range_from_the_key_before_it() {
        let k = |i: i128| vec![KeyPart::Int(i)];
        let rows = [
            (k(3), [Some(1), Some(1)]),
            (k(5), [Some(2), Some(9)]), // changed
            (k(7), [Some(3), None]),    // missing from the shadow
            (k(8), [Some(4), Some(4)]),
            (k(9), [None, Some(5)]), // only in the shadow
        ]
        .into_iter()
        .collect();
        let got: Vec<(Option<Key>, Option<Key>)> = differing_ranges(rows, Some(k(1)))
            .into_iter()
            .map(|r| (r.after, r.upto))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(k(3)), Some(k(5))),
                (Some(k(5)), Some(k(7))),
                (Some(k(8)), Some(k(9))),
            ]
        );
        let first = [(k(2), [Some(1), Some(2)])].into_iter().collect();
        assert_eq!(differing_ranges(first, None)[0].after, None);
    }
}
