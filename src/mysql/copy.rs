//! Keyset chunks: find where a chunk of n rows ends, then copy it with one
//! `REPLACE … SELECT` in its own transaction, reading a fresh snapshot (READ COMMITTED) without
//! locking the source rows.
//!
//! `REPLACE`, not `INSERT IGNORE`: while a chunk is read, the shadow holds no row with a key
//! in its range (the applier holds changes to those keys until the chunk commits), so nothing
//! the applier wrote can be overwritten. What can collide is a row outside the range on another
//! unique index, holding a value its source row has since given up, in a change the applier
//! has not reached yet: `INSERT IGNORE` would drop the copied row for good, `REPLACE` deletes
//! the stale one, which that pending change then restores. And unlike `IGNORE`, `REPLACE` keeps
//! the server's strict-mode errors for values the new type cannot hold.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value};

use super::conn::MyTarget;
use super::values::{key_param, key_part};
use super::{quote_ident, MyBackend};
use crate::engine::backend::{Copier, Sessions};
use crate::engine::watermark::Key;
use crate::error::{Error, MyContext, Result};

/// `key > after` (strict) or `key <= upto` over the key columns, as SQL the optimizer turns
/// into a range on the primary key, with its parameters.
pub fn key_condition(columns: &[String], key: &Key, above: bool) -> (String, Vec<Value>) {
    let mut ors = Vec::new();
    let mut params = Vec::new();
    for i in 0..columns.len() {
        let mut ands: Vec<String> = columns[..i]
            .iter()
            .map(|c| format!("{} = ?", quote_ident(c)))
            .collect();
        params.extend(key[..i].iter().map(key_param));
        let last = i + 1 == columns.len();
        let op = match (above, last) {
            (true, _) => ">",
            (false, false) => "<",
            (false, true) => "<=",
        };
        ands.push(format!("{} {op} ?", quote_ident(&columns[i])));
        params.push(key_param(&key[i]));
        ors.push(format!("({})", ands.join(" AND ")));
    }
    (format!("({})", ors.join(" OR ")), params)
}

pub fn range(columns: &[String], after: Option<&Key>, upto: Option<&Key>) -> (String, Vec<Value>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    for (key, above) in [(after, true), (upto, false)] {
        if let Some(key) = key {
            let (c, p) = key_condition(columns, key, above);
            conds.push(c);
            params.extend(p);
        }
    }
    if conds.is_empty() {
        conds.push("TRUE".into());
    }
    (conds.join(" AND "), params)
}

pub async fn chunk_end(b: &mut MyBackend, after: Option<&Key>, rows: u64) -> Result<Option<Key>> {
    let key_cols: Vec<String> = b
        .table()?
        .key_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let source = b.names.source();
    let copier = b
        .copier
        .as_mut()
        .ok_or_else(|| Error::Stream("the copier is not connected".into()))?;
    chunk_end_on(copier, &source, &key_cols, after, rows).await
}

/// The key that ends a chunk of `rows` rows of `source` after `after`, read on `conn`.
pub async fn chunk_end_on(
    conn: &mut Conn,
    source: &str,
    key_cols: &[String],
    after: Option<&Key>,
    rows: u64,
) -> Result<Option<Key>> {
    let list = key_cols
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let (cond, params) = range(key_cols, after, None);
    let sql = format!(
        "SELECT {list} FROM {source} FORCE INDEX (PRIMARY) WHERE {cond} ORDER BY {list} LIMIT 1 OFFSET {}",
        rows.saturating_sub(1)
    );
    let row: Option<mysql_async::Row> = conn
        .exec_first(sql, Params::Positional(params))
        .await
        .my_ctx("finding the end of the next chunk")?;
    let Some(row) = row else { return Ok(None) };
    let key = row
        .unwrap()
        .iter()
        .map(|v| key_part(v).ok_or_else(|| Error::Stream(format!("an unexpected key value {v:?}"))))
        .collect::<Result<Key>>()?;
    Ok(Some(key))
}

/// A chunk-copying session (`--threads` of them).
pub struct MyCopier {
    conn: Conn,
    target: MyTarget,
    conn_ids: Sessions<u32>,
    sql: ChunkSql,
}

/// What every copier needs of the run.
#[derive(Debug)]
struct ChunkSql {
    key_cols: Vec<String>,
    /// `REPLACE INTO <shadow> (…) SELECT … FROM <source> FORCE INDEX (PRIMARY) WHERE `, to
    /// which the range is added.
    replace: String,
    barrier: String,
}

impl MyCopier {
    pub async fn open(b: &mut MyBackend) -> Result<Self> {
        let table = b.table()?;
        let shadow = b.shadow()?;
        let sql = ChunkSql {
            key_cols: table.key_names().iter().map(|s| s.to_string()).collect(),
            replace: format!(
                "REPLACE INTO {} ({}) SELECT {} FROM {} FORCE INDEX (PRIMARY) WHERE ",
                b.names.shadow_q(),
                shadow.target_list(),
                shadow.source_list(&table.columns),
                b.names.source(),
            ),
            barrier: format!(
                "REPLACE INTO {} (id, hint, value) VALUES (3, 'barrier', 0)",
                b.names.changelog_q()
            ),
        };
        let conn = b.session("copy").await?;
        Ok(MyCopier {
            conn,
            target: b.target.clone(),
            conn_ids: b.conn_ids.clone(),
            sql,
        })
    }
}

impl Copier for MyCopier {
    async fn reopen(&mut self) -> Result<()> {
        self.conn = self.target.connect("copy").await?;
        self.conn_ids.push(self.conn.id());
        Ok(())
    }

    /// `again` needs nothing: REPLACE … SELECT replaces whatever an earlier try committed.
    async fn copy_chunk(
        &mut self,
        after: Option<&Key>,
        upto: Option<&Key>,
        discarded: &[u64],
        _again: bool,
    ) -> Result<u64> {
        let (cond, params) = range(&self.sql.key_cols, after, upto);
        let sql = format!("{}{cond}", self.sql.replace);
        let copier = &mut self.conn;
        if !discarded.is_empty() {
            // The applier dropped changes to keys this or a later chunk reads. Their binlog
            // events can arrive before InnoDB makes them visible; the server commits in binlog
            // order, so once this later write commits, they are visible to the snapshot below.
            copier
                .query_drop(&self.sql.barrier)
                .await
                .my_ctx("writing the copy barrier")?;
        }
        let mut tries = 0;
        loop {
            match copier
                .exec_drop(&sql, Params::Positional(params.clone()))
                .await
                .my_ctx("copying a chunk")
            {
                Ok(()) => return Ok(copier.affected_rows()),
                // The statement was rolled back whole: the range is still the chunk's to copy.
                Err(e) if super::transient(&e) && tries < super::TRANSIENT_RETRIES => {
                    tries += 1;
                    tracing::debug!("copying a chunk again after: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10 * tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::watermark::KeyPart;

    #[test]
    fn composite_ranges_compare_like_rows() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let key = vec![KeyPart::Int(1), KeyPart::Text("x".into())];
        let (sql, params) = key_condition(&cols, &key, false);
        assert_eq!(sql, "((`a` < ?) OR (`a` = ? AND `b` <= ?))");
        assert_eq!(params.len(), 3);
        let (sql, _) = key_condition(&cols[..1], &key[..1].to_vec(), true);
        assert_eq!(sql, "((`a` > ?))");
    }
}
