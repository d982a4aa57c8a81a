//! Keyset chunks: find where a chunk ends, then copy it with one `INSERT … SELECT` in a short
//! REPEATABLE READ transaction whose snapshot is checked first.
//!
//! The insert is plain, not `ON CONFLICT DO NOTHING`: the applier never writes inside a chunk's
//! key range before the chunk commits, so a conflict can only be on another unique index, with
//! a stale row whose fix the applier has not replayed yet. Skipping the row would lose it; the
//! error goes back to the copy loop, which gives the chunk up so the fix can be applied, and
//! reads it again (`engine::copy`). (It also spares the speculative insertion that
//! `ON CONFLICT` costs per row: 1.5x on the bench's chunks.)

use std::time::Duration;

use tokio_postgres::Client;

use super::conn::PgTarget;
use super::inspect::TableInfo;
use super::{origin, PgBackend};
use crate::engine::backend::{Copier, KeyRange, Sessions};
use crate::engine::watermark::Key;
use crate::error::{Error, PgContext, Result};

fn key_texts(key: Option<&Key>) -> Vec<String> {
    key.map(|k| k.iter().map(|p| p.to_sql_text()).collect())
        .unwrap_or_default()
}

pub async fn chunk_end(b: &mut PgBackend, after: Option<&Key>, rows: u64) -> Result<Option<Key>> {
    let copier = b
        .copier
        .as_ref()
        .ok_or_else(|| Error::Stream("no copy session".into()))?;
    chunk_end_on(b, copier, after, rows).await
}

/// The key that ends a chunk of `rows` rows after `after`, read in `client`'s session.
pub async fn chunk_end_on(
    b: &PgBackend,
    client: &tokio_postgres::Client,
    after: Option<&Key>,
    rows: u64,
) -> Result<Option<Key>> {
    let table = b.table()?;
    let source = b.names()?.source();
    // Aliased: a bare `ORDER BY id` would sort by the output column `id::text`, in text order,
    // and no index serves that.
    let cols: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{}::text AS swivel_key_{i}", super::quote_ident(&k.name)))
        .collect();
    let order = table.key_list();
    let filter = match after {
        Some(_) => format!("WHERE {order} > {}", table.key_params(1)),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM ONLY {source} {filter} ORDER BY {} LIMIT 1 OFFSET {}",
        cols.join(", "),
        &order[1..order.len() - 1],
        rows.saturating_sub(1)
    );
    let values = key_texts(after);
    let row = client
        .query_opt(&sql, &super::text_params(&values))
        .await
        .ctx("finding the chunk's end")?;
    match row {
        None => Ok(None),
        Some(r) => {
            let texts: Vec<String> = (0..table.key.len()).map(|i| r.get(i)).collect();
            table.parse_key(texts.iter().map(String::as_str)).map(Some)
        }
    }
}

/// Is transaction `xid` (32 bits, as pgoutput's Begin gives it) visible to a snapshot with
/// `xmax` and in-progress list `xip` (64-bit, as pg_current_snapshot gives them)? The
/// transaction is known to have committed before the snapshot was taken, so its xid is below
/// `xmax`: one that would not be in the snapshot's epoch is from the previous one.
pub fn visible(xid: u32, xmax: u64, xip: &[u64]) -> bool {
    let epoch = xmax >> 32;
    let mut full = (epoch << 32) | u64::from(xid);
    if full >= xmax && epoch > 0 {
        full -= 1 << 32;
    }
    full < xmax && !xip.contains(&full)
}

/// `WHERE …` selecting keys in (after, upto] over `keys`, with the values as parameters.
pub(super) fn range_filter(
    b: &PgBackend,
    keys: &str,
    range: &KeyRange,
    values: &mut Vec<String>,
) -> Result<String> {
    Ok(range_filter_on(b.table()?, keys, range, values))
}

fn range_filter_on(
    table: &TableInfo,
    keys: &str,
    range: &KeyRange,
    values: &mut Vec<String>,
) -> String {
    let mut parts = Vec::new();
    if let Some(after) = &range.after {
        parts.push(format!("{keys} > {}", table.key_params(values.len() + 1)));
        values.extend(after.iter().map(|p| p.to_sql_text()));
    }
    if let Some(upto) = &range.upto {
        parts.push(format!("{keys} <= {}", table.key_params(values.len() + 1)));
        values.extend(upto.iter().map(|p| p.to_sql_text()));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", parts.join(" AND "))
    }
}

/// What every copier needs of the run: the table's key and the chunk's statements.
#[derive(Debug)]
struct ChunkSql {
    table: TableInfo,
    /// `INSERT INTO <shadow> (…) … SELECT … FROM ONLY <source>`, to which the range is added.
    insert: String,
    /// `DELETE FROM ONLY <shadow>`, likewise: an earlier try of the chunk is cleared with it.
    clear: String,
    /// The shadow's key columns as a row (the ALTER may rename them).
    shadow_key: String,
}

/// A chunk-copying session (`--threads` of them), tagged with a replication origin of its
/// own on the origin-filtered path: one session at a time may hold an origin.
pub struct PgCopier {
    client: Client,
    target: PgTarget,
    origin: Option<String>,
    pids: Sessions<i32>,
    sql: ChunkSql,
}

impl PgCopier {
    pub async fn open(b: &PgBackend, slot: usize) -> Result<Self> {
        let (table, names, shadow) = (b.table()?, b.names()?, b.shadow()?);
        let origin = match b.copy_origin {
            true => {
                let name = origin::for_copier(&names.origin, slot);
                origin::create(&b.ctl, &name).await?;
                Some(name)
            }
            false => None,
        };
        let quoted = |names: &[String]| -> Vec<String> {
            names.iter().map(|t| super::quote_ident(t)).collect()
        };
        let sql = ChunkSql {
            table: table.clone(),
            insert: format!(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM ONLY {}",
                names.shadow_q(),
                quoted(&shadow.targets).join(", "),
                shadow.exprs.join(", "),
                names.source()
            ),
            clear: format!("DELETE FROM ONLY {}", names.shadow_q()),
            shadow_key: format!("({})", quoted(&shadow.key_targets).join(", ")),
        };
        let (client, pid) = b.target.connect("copy").await?;
        b.pids.push(pid);
        let copier = PgCopier {
            client,
            target: b.target.clone(),
            origin,
            pids: b.pids.clone(),
            sql,
        };
        copier.tag().await?;
        Ok(copier)
    }

    async fn tag(&self) -> Result<()> {
        match &self.origin {
            Some(name) => origin::tag(&self.client, name).await,
            None => Ok(()),
        }
    }
}

impl Copier for PgCopier {
    async fn reopen(&mut self) -> Result<()> {
        let (client, pid) = self.target.connect("copy").await?;
        self.pids.push(pid);
        self.client = client;
        self.tag().await
    }

    async fn copy_chunk(
        &mut self,
        after: Option<&Key>,
        upto: Option<&Key>,
        discarded: &[u64],
        again: bool,
    ) -> Result<u64> {
        let sql = &self.sql;
        let range = KeyRange {
            after: after.cloned(),
            upto: upto.cloned(),
        };
        let mut values = Vec::new();
        let filter = range_filter_on(&sql.table, &sql.table.key_list(), &range, &mut values);
        // The same range over the shadow's key columns, same values.
        let shadow_filter = range_filter_on(&sql.table, &sql.shadow_key, &range, &mut Vec::new());
        let copier = &self.client;
        let statement = copier
            .prepare(&format!("{} {filter}", sql.insert))
            .await
            .ctx("preparing the chunk copy")?;
        // Tried again after a lost session whose COMMIT may have landed: clear the range first,
        // in the same transaction. The range is still published, so the applier holds its
        // changes until this commits.
        let clear = match again {
            true => Some(
                copier
                    .prepare(&format!("{} {shadow_filter}", sql.clear))
                    .await
                    .ctx("preparing the chunk's clearing")?,
            ),
            false => None,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            copier
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .await
                .ctx("starting a chunk")?;
            let result: Result<Option<u64>> = async {
                // The first statement fixes the transaction's snapshot; read it.
                let row = copier
                    .query_one(
                        "SELECT pg_snapshot_xmax(s)::text, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x)
                         FROM pg_current_snapshot() s",
                        &[],
                    )
                    .await
                    .ctx("reading the chunk's snapshot")?;
                let xmax: u64 = row.get::<_, String>(0).parse().unwrap_or(0);
                let xip: Vec<u64> = row.get::<_, Vec<String>>(1).iter().filter_map(|x| x.parse().ok()).collect();
                // A transaction the applier discarded changes of has committed, but may not yet be
                // visible to new snapshots (its commit reaches the WAL before it leaves the proc
                // array). Read only once the snapshot sees all of them.
                if !discarded.iter().all(|&x| visible(x as u32, xmax, &xip)) {
                    return Ok(None);
                }
                if let Some(clear) = &clear {
                    copier.execute(clear, &super::text_params(&values)).await.ctx("clearing a chunk copied before")?;
                }
                let n = copier.execute(&statement, &super::text_params(&values)).await.ctx("copying a chunk")?;
                copier.batch_execute("COMMIT").await.ctx("committing a chunk")?;
                Ok(Some(n))
            }
            .await;
            match result {
                Ok(Some(n)) => return Ok(n),
                Ok(None) if attempt < 10_000 => {}
                Ok(None) => {
                    let _ = copier.batch_execute("ROLLBACK").await;
                    return Err(Error::Stream(
                        "a replayed transaction never became visible to the copy".into(),
                    ));
                }
                Err(e) if matches!(e.sqlstate(), Some("40001" | "40P01")) && attempt < 100 => {
                    tracing::debug!("chunk retried after {e}");
                }
                Err(e) => {
                    let _ = copier.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            }
            let _ = copier.batch_execute("ROLLBACK").await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn visibility_follows_the_snapshot() {
        assert!(visible(100, 200, &[150]));
        assert!(!visible(150, 200, &[150]));
        assert!(!visible(200, 200, &[]));
        // Across an epoch: xmax in epoch 1, xid from the end of epoch 0.
        let xmax = (1u64 << 32) + 10;
        assert!(visible(u32::MAX, xmax, &[]));
        assert!(visible(5, xmax, &[]));
        assert!(!visible(5, xmax, &[(1 << 32) + 5]));
        // 20 is at or above xmax in epoch 1: it can only be the previous epoch's 20.
        assert!(visible(20, xmax, &[]));
        assert!(!visible(20, xmax, &[20]));
    }
}
