//! The run's checkpoint, kept in the changelog table (`_<table>_swl`, row
//! [`CHECKPOINT_ID`]), and taking up an interrupted run's tables for `--resume`.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::copy::range;
use super::tail::CHECKPOINT_ID;
use super::{MyBackend, Names};
use crate::engine::checkpoint::Checkpoint;
use crate::error::{Error, MyContext, Result};

pub async fn save(conn: &mut Conn, names: &Names, checkpoint: &Checkpoint) -> Result<()> {
    conn.exec_drop(
        format!(
            "REPLACE INTO {} (id, hint, value, state) VALUES (?, 'checkpoint', ?, ?)",
            names.changelog_q()
        ),
        (
            CHECKPOINT_ID,
            checkpoint.saved_unix_ms,
            checkpoint.to_json(),
        ),
    )
    .await
    .my_ctx("saving the checkpoint")
}

/// The checkpoint, if one was saved.
pub async fn load(conn: &mut Conn, names: &Names) -> Result<Option<Checkpoint>> {
    let state: Option<Option<String>> = conn
        .exec_first(
            format!("SELECT state FROM {} WHERE id = ?", names.changelog_q()),
            (CHECKPOINT_ID,),
        )
        .await
        .my_ctx("reading the checkpoint")?;
    state
        .flatten()
        .map(|json| Checkpoint::from_json(&json))
        .transpose()
}

/// The binlog file still exists on the server (not purged).
pub async fn binlog_present(conn: &mut Conn, file: &str) -> Result<bool> {
    let logs: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .my_ctx("listing the binary logs")?;
    Ok(logs
        .iter()
        .any(|r| r.get::<String, _>(0).as_deref() == Some(file)))
}

/// `--resume`: take up the interrupted run's shadow table. Rows above the checkpoint's watermark
/// may hold a copy the stream will not bring up to date: they go, and the copy reads them again.
pub async fn reopen(b: &mut MyBackend, checkpoint: &Checkpoint) -> Result<()> {
    b.created_shadow = true;
    super::shadow::read_mapping(b).await?;
    if checkpoint.copied {
        return Ok(());
    }
    let shadow_key: Vec<String> = b
        .table()?
        .key_names()
        .iter()
        .map(|k| b.renamed(k))
        .collect();
    let (cond, params) = range(&shadow_key, checkpoint.low.as_ref(), None);
    b.ctl
        .exec_drop(
            format!("DELETE FROM {} WHERE {cond}", b.names.shadow_q()),
            params,
        )
        .await
        .my_ctx("removing the rows copied after the checkpoint")?;
    tracing::info!(
        "resume: removed {} rows copied after the checkpoint; they are copied again",
        b.ctl.affected_rows()
    );
    Ok(())
}

/// Refuse to resume from a position the server no longer has.
pub async fn check_position(conn: &mut Conn, checkpoint: &Checkpoint) -> Result<()> {
    let (file, _) = super::tail::parse_position(&checkpoint.stream)?;
    if !binlog_present(conn, &file).await? {
        return Err(Error::refused(format!(
            "binlog {file}, where the checkpoint's change stream goes on, was purged, so the \
             changes made since the checkpoint cannot be replayed: remove the run's leftovers \
             with `swivel cleanup` and start again"
        )));
    }
    Ok(())
}
