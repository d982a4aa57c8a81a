//! The state table `_<table>_swl`: the run's checkpoint, saved as the copy goes, so that
//! `--resume` can go on after a crash. Its comment marks it as swivel's.

use tokio_postgres::Client;

use super::{quote_literal, Names};
use crate::engine::checkpoint::Checkpoint;
use crate::error::{PgContext, Result};

/// The comment that marks the state table as made by swivel for the table with `oid`.
pub fn marker(oid: u32) -> String {
    format!("swivel state table of oid {oid}; swivel cleanup drops it")
}

pub async fn create(client: &Client, names: &Names, oid: u32) -> Result<()> {
    let state = names.state_q();
    client
        .batch_execute(&format!(
            "CREATE TABLE {state} (id int PRIMARY KEY, checkpoint text NOT NULL, \
             saved_at timestamptz NOT NULL DEFAULT now());
             COMMENT ON TABLE {state} IS {}",
            quote_literal(&marker(oid))
        ))
        .await
        .ctx(format!("creating the state table {state}"))
}

pub async fn save(client: &Client, names: &Names, checkpoint: &Checkpoint) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {} (id, checkpoint) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET checkpoint = EXCLUDED.checkpoint, saved_at = now()",
                names.state_q()
            ),
            &[&checkpoint.to_json()],
        )
        .await
        .ctx("saving the checkpoint")?;
    Ok(())
}

/// The checkpoint, if one was saved.
pub async fn load(client: &Client, names: &Names) -> Result<Option<Checkpoint>> {
    let row = client
        .query_opt(
            &format!("SELECT checkpoint FROM {} WHERE id = 1", names.state_q()),
            &[],
        )
        .await
        .ctx("reading the checkpoint")?;
    row.map(|r| Checkpoint::from_json(r.get(0))).transpose()
}

pub async fn drop(client: &Client, names: &Names) -> Result<()> {
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; DROP TABLE IF EXISTS {}",
            names.state_q()
        ))
        .await
        .ctx("dropping the state table")
}
