//! Replaying changes on the shadow table: the statements, and applying a batch of changes in
//! one transaction with the statements pipelined.

use futures_util::future::try_join_all;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::inspect::TableInfo;
use super::shadow::ShadowInfo;
use super::{quote_ident, text_params, Names};
use crate::error::{PgContext, Result};

/// One change to replay, in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The whole new row, in the source's column order.
    Upsert(Vec<Option<String>>),
    /// The row with this key, read back from the source (an UPDATE that did not send every
    /// column: unchanged TOASTed values).
    ReadBack(Vec<String>),
    /// Delete the row with this key.
    Delete(Vec<String>),
}

/// The statements, prepared on the applier's session. Each replays a run of changes of one
/// kind in one statement, the rows passed as one text array per column (`unnest`); a shadow
/// with unique indexes besides its key replays row by row instead (see [`Statements::apply`]).
pub struct Statements {
    upsert: Statement,
    read_back: Statement,
    delete: Statement,
    /// Where each key column is among the row's values.
    key_positions: Vec<usize>,
    /// One row per statement: the multi-row upsert's collision deletes would act on the set,
    /// where replay must act change by change.
    row_by_row: bool,
}

/// INSERT the rows produced by `from` (a FROM clause over source columns, aliased `t`) into the
/// shadow table, replacing the row with the same key. When the shadow has other unique indexes,
/// rows colliding on them are deleted first: they hold a value the source has since moved, and
/// a later change in the stream puts them back.
pub fn upsert_sql(names: &Names, shadow: &ShadowInfo, from: &str) -> String {
    let targets: Vec<String> = shadow.targets.iter().map(|t| quote_ident(t)).collect();
    let keys: Vec<String> = shadow.key_targets.iter().map(|t| quote_ident(t)).collect();
    let updates: Vec<String> = shadow
        .targets
        .iter()
        .filter(|t| !shadow.key_targets.contains(t))
        .map(|t| format!("{0} = EXCLUDED.{0}", quote_ident(t)))
        .collect();
    let conflict = if updates.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", keys.join(", "))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            updates.join(", ")
        )
    };
    let target = names.shadow_q();
    if shadow.uniques.is_empty() {
        return format!(
            "INSERT INTO {target} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {from} {conflict}",
            targets.join(", "),
            shadow.exprs.join(", ")
        );
    }
    let aliased: Vec<String> = shadow
        .exprs
        .iter()
        .zip(&targets)
        .map(|(e, t)| format!("{e} AS {t}"))
        .collect();
    let collides: Vec<String> = shadow
        .uniques
        .iter()
        .map(|cols| {
            let eq: Vec<String> = cols
                .iter()
                .map(|c| format!("s.{0} = src.{0}", quote_ident(c)))
                .collect();
            format!("({})", eq.join(" AND "))
        })
        .collect();
    let skeys: Vec<String> = keys.iter().map(|k| format!("s.{k}")).collect();
    let srckeys: Vec<String> = keys.iter().map(|k| format!("src.{k}")).collect();
    format!(
        "WITH src AS (SELECT {} FROM {from}), \
         del AS (DELETE FROM {target} s USING src WHERE ({}) AND ({}) IS DISTINCT FROM ({}) RETURNING 1) \
         INSERT INTO {target} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM src \
         WHERE (SELECT count(*) FROM del) >= 0 {conflict}",
        aliased.join(", "),
        collides.join(" OR "),
        skeys.join(", "),
        srckeys.join(", "),
        targets.join(", "),
        targets.join(", ")
    )
}

/// `(SELECT u.c1::type AS "col", …) FROM unnest($first::text[], …) AS u(c1, …)`: rows passed
/// as one text array per column, each value cast to its column's type.
fn unnest_rows(columns: &[(&str, &str)], first: usize) -> String {
    let cast: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| format!("u.c{i}::{ty} AS {}", quote_ident(name)))
        .collect();
    let arrays: Vec<String> = (0..columns.len())
        .map(|i| format!("${}::text[]", first + i))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    format!(
        "SELECT {} FROM unnest({}) AS u({})",
        cast.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// `($n::text::type, …)`, or with `rows` the key columns of `unnest` rows.
fn key_source(table: &TableInfo, rows: bool) -> String {
    if rows {
        let keys: Vec<(&str, &str)> = table
            .key
            .iter()
            .map(|k| (k.name.as_str(), k.type_sql.as_str()))
            .collect();
        format!("({})", unnest_rows(&keys, 1))
    } else {
        table.key_params(1)
    }
}

impl Statements {
    pub async fn prepare(
        client: &Client,
        names: &Names,
        table: &TableInfo,
        shadow: &ShadowInfo,
    ) -> Result<Self> {
        let row_by_row = !shadow.uniques.is_empty();
        let upsert_from = if row_by_row {
            let values: Vec<String> = table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "${}::text::{} AS {}",
                        i + 1,
                        c.type_sql,
                        quote_ident(&c.name)
                    )
                })
                .collect();
            format!("(SELECT {}) AS t", values.join(", "))
        } else {
            let columns: Vec<(&str, &str)> = table
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.type_sql.as_str()))
                .collect();
            format!("({}) AS t", unnest_rows(&columns, 1))
        };
        let upsert = upsert_sql(names, shadow, &upsert_from);
        let keys = key_source(table, !row_by_row);
        let compare = if row_by_row { "=" } else { "IN" };
        let read_back = upsert_sql(
            names,
            shadow,
            &format!(
                "ONLY {} AS t WHERE {} {compare} {keys}",
                names.source(),
                table.key_list(),
            ),
        );
        let shadow_keys: Vec<String> = shadow.key_targets.iter().map(|k| quote_ident(k)).collect();
        let delete = format!(
            "DELETE FROM {} WHERE ({}) {compare} {keys}",
            names.shadow_q(),
            shadow_keys.join(", "),
        );
        let param = if row_by_row {
            Type::TEXT
        } else {
            Type::TEXT_ARRAY
        };
        let types = |n: usize| vec![param.clone(); n];
        Ok(Statements {
            upsert: client
                .prepare_typed(&upsert, &types(table.columns.len()))
                .await
                .ctx("preparing the replay upsert")?,
            read_back: client
                .prepare_typed(&read_back, &types(table.key.len()))
                .await
                .ctx("preparing the replay read-back")?,
            delete: client
                .prepare_typed(&delete, &types(table.key.len()))
                .await
                .ctx("preparing the replay delete")?,
            key_positions: table.key.iter().map(|k| k.position).collect(),
            row_by_row,
        })
    }

    /// Apply `batch` in one transaction, the statements pipelined: each run of consecutive
    /// changes of one kind as one statement (an upsert's rows coalesced to the last per key,
    /// which is what applying them in order leaves), or row by row.
    pub async fn apply(&self, client: &Client, batch: &[Change]) -> Result<()> {
        client
            .batch_execute("BEGIN")
            .await
            .ctx("starting a replay batch")?;
        let result = if self.row_by_row {
            let replays = batch.iter().map(|change| async move {
                match change {
                    Change::Upsert(values) => {
                        client.execute(&self.upsert, &text_params(values)).await
                    }
                    Change::ReadBack(key) => {
                        client.execute(&self.read_back, &text_params(key)).await
                    }
                    Change::Delete(key) => client.execute(&self.delete, &text_params(key)).await,
                }
            });
            try_join_all(replays).await.map(drop)
        } else {
            let runs: Vec<(&Statement, Vec<Vec<Option<String>>>)> = runs(batch)
                .into_iter()
                .map(|run| self.columns_of(run))
                .collect();
            let replays = runs.iter().map(|(statement, columns)| async move {
                client.execute(*statement, &text_params(columns)).await
            });
            try_join_all(replays).await.map(drop)
        };
        if let Err(e) = result {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(crate::error::Error::pg(
                "replaying changes on the shadow table",
                e,
            ));
        }
        client
            .batch_execute("COMMIT")
            .await
            .ctx("committing a replay batch")
    }

    /// A run of changes of one kind as its statement and one array per parameter.
    fn columns_of<'a>(&'a self, run: &[Change]) -> (&'a Statement, Vec<Vec<Option<String>>>) {
        let (statement, rows): (&Statement, Vec<Vec<Option<String>>>) = match &run[0] {
            Change::Upsert(_) => {
                // The last change of each key, in the order of those last changes.
                let mut last: std::collections::HashMap<Vec<Option<&str>>, usize> =
                    std::collections::HashMap::new();
                for (i, change) in run.iter().enumerate() {
                    if let Change::Upsert(values) = change {
                        let key = self
                            .key_positions
                            .iter()
                            .map(|&p| values.get(p).and_then(|v| v.as_deref()))
                            .collect();
                        last.insert(key, i);
                    }
                }
                let mut keep: Vec<usize> = last.into_values().collect();
                keep.sort_unstable();
                let rows = keep
                    .into_iter()
                    .filter_map(|i| match &run[i] {
                        Change::Upsert(values) => Some(values.clone()),
                        _ => None,
                    })
                    .collect();
                (&self.upsert, rows)
            }
            Change::ReadBack(_) | Change::Delete(_) => {
                let statement = if matches!(run[0], Change::Delete(_)) {
                    &self.delete
                } else {
                    &self.read_back
                };
                // A key twice would make a read-back's upsert touch one row twice.
                let mut seen = std::collections::HashSet::new();
                let rows = run
                    .iter()
                    .filter_map(|c| match c {
                        Change::ReadBack(key) | Change::Delete(key) => Some(key),
                        Change::Upsert(_) => None,
                    })
                    .filter(|key| seen.insert(*key))
                    .map(|key| key.iter().cloned().map(Some).collect())
                    .collect();
                (statement, rows)
            }
        };
        (statement, transpose(rows, self.width(&run[0])))
    }

    fn width(&self, change: &Change) -> usize {
        match change {
            Change::Upsert(values) => values.len(),
            Change::ReadBack(_) | Change::Delete(_) => self.key_positions.len(),
        }
    }
}

/// Maximal runs of consecutive changes of one kind, in order.
fn runs(batch: &[Change]) -> Vec<&[Change]> {
    let kind = |c: &Change| std::mem::discriminant(c);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=batch.len() {
        if i == batch.len() || kind(&batch[i]) != kind(&batch[start]) {
            if start < i {
                out.push(&batch[start..i]);
            }
            start = i;
        }
    }
    out
}

/// Rows to columns: the `unnest` statements take one array per column.
fn transpose(rows: Vec<Vec<Option<String>>>, width: usize) -> Vec<Vec<Option<String>>> {
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); width];
    for row in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value);
        }
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(k: &str, v: &str) -> Change {
        Change::Upsert(vec![Some(k.into()), Some(v.into())])
    }

    #[test]
    fn batches_split_into_runs_of_one_kind() {
        let batch = vec![
            up("1", "a"),
            up("2", "b"),
            Change::Delete(vec!["1".into()]),
            up("1", "c"),
        ];
        let got: Vec<usize> = runs(&batch).iter().map(|r| r.len()).collect();
        assert_eq!(got, [2, 1, 1]);
        assert!(runs(&[]).is_empty());
        assert_eq!(
            transpose(
                vec![
                    vec![Some("1".into()), None],
                    vec![Some("2".into()), Some("x".into())]
                ],
                2
            ),
            vec![
                vec![Some("1".into()), Some("2".into())],
                vec![None, Some("x".into())]
            ]
        );
    }
}
