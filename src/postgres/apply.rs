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

/// The three statements, prepared on the applier's session.
pub struct Statements {
    upsert: Statement,
    read_back: Statement,
    delete: Statement,
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

impl Statements {
    pub async fn prepare(
        client: &Client,
        names: &Names,
        table: &TableInfo,
        shadow: &ShadowInfo,
    ) -> Result<Self> {
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
        let upsert = upsert_sql(
            names,
            shadow,
            &format!("(SELECT {}) AS t", values.join(", ")),
        );
        let read_back = upsert_sql(
            names,
            shadow,
            &format!(
                "ONLY {} AS t WHERE {} = {}",
                names.source(),
                table.key_list(),
                table.key_params(1)
            ),
        );
        let shadow_keys: Vec<String> = shadow.key_targets.iter().map(|k| quote_ident(k)).collect();
        let delete = format!(
            "DELETE FROM {} WHERE ({}) = {}",
            names.shadow_q(),
            shadow_keys.join(", "),
            table.key_params(1)
        );
        let text = |n: usize| vec![Type::TEXT; n];
        Ok(Statements {
            upsert: client
                .prepare_typed(&upsert, &text(table.columns.len()))
                .await
                .ctx("preparing the replay upsert")?,
            read_back: client
                .prepare_typed(&read_back, &text(table.key.len()))
                .await
                .ctx("preparing the replay read-back")?,
            delete: client
                .prepare_typed(&delete, &text(table.key.len()))
                .await
                .ctx("preparing the replay delete")?,
        })
    }

    /// Apply `batch` in order, in one transaction, the statements pipelined.
    pub async fn apply(&self, client: &Client, batch: &[Change]) -> Result<()> {
        client
            .batch_execute("BEGIN")
            .await
            .ctx("starting a replay batch")?;
        let replays = batch.iter().map(|change| async move {
            match change {
                Change::Upsert(values) => client.execute(&self.upsert, &text_params(values)).await,
                Change::ReadBack(key) => client.execute(&self.read_back, &text_params(key)).await,
                Change::Delete(key) => client.execute(&self.delete, &text_params(key)).await,
            }
        });
        if let Err(e) = try_join_all(replays).await {
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
}
