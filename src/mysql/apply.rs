//! Replayed changes as SQL on the shadow table. A batch is one round trip: one transaction
//! holding multi-row statements, consecutive upserts in one `REPLACE`, consecutive deletes in
//! one `DELETE`.
//!
//! Upserts are `REPLACE`, not `INSERT IGNORE`: replay can briefly put a row back in an older
//! state (a change held for a chunk that already copied a newer one), and that older value
//! can collide on a unique index with another row's current value. `REPLACE` deletes the
//! colliding row; a later change in the stream restores it (it must exist, since the source
//! never held both values at once). `INSERT IGNORE` would drop the replayed row instead, and a
//! plain `UPDATE` would fail the run. The run refuses new unique indexes, so a collision
//! never comes from the ALTER itself.

use std::fmt::Write;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};

use super::inspect::TableInfo;
use super::shadow::ShadowInfo;
use super::{quote_ident, Names};
use crate::error::{Error, MyContext, Result};

/// Keep each statement well under max_allowed_packet (16 MB by default on MariaDB).
const MAX_STATEMENT: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The whole new row, in source column order.
    Upsert(Vec<Value>),
    /// The key of a deleted row, in key order.
    Delete(Vec<Value>),
}

pub struct Statements {
    replace_head: String,
    delete_head: String,
    table: TableInfo,
    shadow: ShadowInfo,
}

impl Statements {
    pub fn new(names: &Names, table: &TableInfo, shadow: &ShadowInfo) -> Self {
        Statements {
            replace_head: format!(
                "REPLACE INTO {} ({}) VALUES ",
                names.shadow_q(),
                shadow.target_list()
            ),
            delete_head: format!("DELETE FROM {} WHERE ", names.shadow_q()),
            table: table.clone(),
            shadow: shadow.clone(),
        }
    }

    /// The SQL for `changes`, in order, as statements for one transaction.
    pub fn build(&self, changes: &[Change]) -> Result<Vec<String>> {
        let mut statements = Vec::new();
        let mut i = 0;
        while i < changes.len() {
            let mut sql = String::new();
            match &changes[i] {
                Change::Upsert(_) => {
                    sql.push_str(&self.replace_head);
                    let mut first = true;
                    while let Some(Change::Upsert(row)) = changes.get(i) {
                        if !first {
                            sql.push(',');
                        }
                        first = false;
                        self.row(row, &mut sql)?;
                        i += 1;
                        if sql.len() > MAX_STATEMENT {
                            break;
                        }
                    }
                }
                Change::Delete(_) => {
                    sql.push_str(&self.delete_head);
                    let mut first = true;
                    while let Some(Change::Delete(key)) = changes.get(i) {
                        if !first {
                            sql.push_str(" OR ");
                        }
                        first = false;
                        self.key(key, &mut sql)?;
                        i += 1;
                        if sql.len() > MAX_STATEMENT {
                            break;
                        }
                    }
                }
            }
            statements.push(sql);
        }
        Ok(statements)
    }

    fn row(&self, row: &[Value], sql: &mut String) -> Result<()> {
        sql.push('(');
        for (n, &i) in self.shadow.sources.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            let value = row
                .get(i)
                .ok_or_else(|| Error::Stream("a replayed row is missing columns".into()))?;
            self.table.columns[i].kind.render(value, sql).map_err(|e| {
                Error::Stream(format!("column {}: {e}", self.table.columns[i].name))
            })?;
        }
        sql.push(')');
        Ok(())
    }

    fn key(&self, key: &[Value], sql: &mut String) -> Result<()> {
        sql.push('(');
        for (n, (&i, value)) in self.table.key.iter().zip(key).enumerate() {
            if n > 0 {
                sql.push_str(" AND ");
            }
            let column = &self.table.columns[i];
            let target = self
                .shadow
                .sources
                .iter()
                .position(|&s| s == i)
                .map(|p| self.shadow.targets[p].as_str())
                .unwrap_or(column.name.as_str());
            let _ = write!(sql, "{} = ", quote_ident(target));
            column
                .kind
                .render(value, sql)
                .map_err(|e| Error::Stream(format!("key column {}: {e}", column.name)))?;
        }
        sql.push(')');
        Ok(())
    }

    /// Apply `changes` in one transaction, one round trip.
    pub async fn apply(&self, conn: &mut Conn, changes: &[Change]) -> Result<()> {
        let statements = self.build(changes)?;
        let mut sql = String::from("START TRANSACTION;");
        for s in &statements {
            sql.push_str(s);
            sql.push(';');
        }
        sql.push_str("COMMIT");
        let mut tries = 0;
        loop {
            let result = conn.query_drop(&sql).await.my_ctx("replaying changes");
            let Err(e) = result else { return Ok(()) };
            let _ = conn.query_drop("ROLLBACK").await;
            tries += 1;
            // The batch is whole again after the rollback: replaying it in order is safe.
            if !super::transient(&e) || tries > super::TRANSIENT_RETRIES {
                return Err(e);
            }
            tracing::debug!("replaying a batch again after: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(10 * tries)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::inspect::Column;
    use crate::mysql::values::Kind;

    #[test]
    fn batches_group_consecutive_changes() {
        let col = |name: &str, kind| Column {
            name: name.into(),
            kind,
            generated: false,
        };
        let table = TableInfo {
            columns: vec![
                col("id", Kind::Int),
                col("c", Kind::Bytes),
                col("old", Kind::Int),
            ],
            key: vec![0],
        };
        let shadow = ShadowInfo {
            sources: vec![0, 1],
            targets: vec!["id".into(), "c2".into()],
        };
        let s = Statements::new(&Names::new("db", "t"), &table, &shadow);
        let row = |i: i64| {
            Change::Upsert(vec![
                Value::Int(i),
                Value::Bytes(b"x".to_vec()),
                Value::Int(9),
            ])
        };
        let del = |i: i64| Change::Delete(vec![Value::Int(i)]);
        let sql = s.build(&[row(1), row(2), del(3), del(4), row(5)]).unwrap();
        assert_eq!(
            sql,
            vec![
                "REPLACE INTO `db`.`_t_new` (`id`, `c2`) VALUES (1,X'78'),(2,X'78')",
                "DELETE FROM `db`.`_t_new` WHERE (`id` = 3) OR (`id` = 4)",
                "REPLACE INTO `db`.`_t_new` (`id`, `c2`) VALUES (5,X'78')",
            ]
        );
    }
}
