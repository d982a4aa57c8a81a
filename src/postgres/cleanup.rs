//! Cleanup on every exit path, and `swivel cleanup` for what a crashed run left behind.

use std::time::Duration;

use tokio_postgres::Client;

use super::shadow::shadow_marker;
use super::{quote_ident, state, Names, PgBackend, PgTarget};
use crate::engine::replay::reconnect;
use crate::error::{Error, PgContext, Result};

/// End the replication session of our slot and drop the slot if it is still there.
async fn drop_slot(client: &Client, slot: &str) -> Result<()> {
    for _ in 0..100 {
        client
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await
            .ctx("ending the replication session")?;
        // A temporary slot disappears with its session; a leftover permanent one is dropped.
        let remaining: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ctx("looking for the slot")?
            .get(0);
        if remaining == 0 {
            return Ok(());
        }
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Stream(format!(
        "replication slot {slot} is still active; drop it with pg_drop_replication_slot"
    )))
}

pub async fn after_run(b: &mut PgBackend, succeeded: bool, keep_shadow: bool) -> Result<()> {
    if let Some(tail) = b.tail.take() {
        tail.stop();
    }
    b.copier = None;
    b.checksum_session = None;
    let Some(names) = b.names.clone() else {
        return Ok(()); // the plan failed: nothing was created
    };
    // A fresh session: ours may be mid-statement (or mid-transaction) if the run was stopped.
    // The server may be restarting (the reason the run failed): try again a while.
    let target = &b.target;
    let client = reconnect("cleanup", &mut 0, b.opts.default_retries, || async {
        Ok(target.connect("cleanup").await?.0)
    })
    .await?;
    if !succeeded {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
                &[&b.pids],
            )
            .await
            .ctx("ending the run's sessions")?;
    }
    drop_slot(&client, &names.slot).await?;
    if b.created_state {
        state::drop(&client, &names).await?;
    }
    if b.created_publication {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(&names.publication)
            ))
            .await
            .ctx("dropping the publication")?;
    }
    if succeeded {
        // The new table has no statistics yet; the planner needs them right away.
        client
            .batch_execute(&format!("ANALYZE {}", names.source()))
            .await
            .ctx("analyzing the new table")?;
        if b.opts.drop_old_table {
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}",
                    names.qualified(&names.old)
                ))
                .await
                .ctx("dropping the old table")?;
        }
    } else if b.created_shadow && !keep_shadow {
        drop_shadow(&client, &names).await?;
    }
    Ok(())
}

async fn drop_shadow(client: &Client, names: &Names) -> Result<()> {
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; DROP TABLE IF EXISTS {}",
            names.shadow_q()
        ))
        .await
        .ctx("dropping the shadow table")
}

/// Remove what a crashed or killed run left for `table`: the shadow and state tables, the
/// publication and the slot. Never touches the table itself or `_<table>_old`. Returns what it removed.
pub async fn cleanup_leftovers(
    dsn: &str,
    password: Option<&str>,
    table: &str,
) -> Result<Vec<String>> {
    let target = PgTarget::parse(dsn, password)?;
    let (client, _) = target.connect("cleanup").await?;
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await
        .ctx("looking up the table")?
        .ok_or_else(|| Error::refused(format!("table {table} does not exist; check --table")))?;
    let names = Names::new(row.get::<_, &str>(1), row.get::<_, &str>(2), row.get(0));
    let active: Option<i32> = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&names.slot],
        )
        .await
        .ctx("looking for an active run")?
        .map(|r| r.get(0));
    if let Some(pid) = active {
        return Err(Error::refused(format!(
            "a swivel run is active on this table (replication session pid {pid}); stop it first"
        )));
    }
    // Only what swivel made: a table named like ours without swivel's mark is a user's.
    let oid: u32 = row.get(0);
    let shadow = own_table(&client, &names.shadow_q(), &shadow_marker(oid)).await?;
    let state_table = own_table(&client, &names.state_q(), &state::marker(oid)).await?;
    let mut removed = Vec::new();
    // What the abandoned slot costs: the WAL the server keeps for it.
    let slot: Option<String> = client
        .query_opt(
            "SELECT coalesce(pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 'no')
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&names.slot],
        )
        .await
        .ctx("looking for the slot")?
        .map(|r| r.get(0));
    if let Some(retained) = slot {
        drop_slot(&client, &names.slot).await?;
        removed.push(format!(
            "replication slot {} (it held {retained} of WAL)",
            names.slot
        ));
    }
    if state_table {
        state::drop(&client, &names).await?;
        removed.push(format!("table {}", names.state_q()));
    }
    let publications: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            &[&names.publication],
        )
        .await
        .ctx("looking for the publication")?
        .get(0);
    if publications > 0 {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION {}",
                quote_ident(&names.publication)
            ))
            .await
            .ctx("dropping the publication")?;
        removed.push(format!("publication {}", names.publication));
    }
    if shadow {
        drop_shadow(&client, &names).await?;
        removed.push(format!("table {}", names.shadow_q()));
    }
    Ok(removed)
}

/// Whether swivel's table `name` (qualified) is there. A table of that name without swivel's
/// comment `marker` is someone else's: refused, so that nothing is removed.
pub(super) async fn own_table(client: &Client, name: &str, marker: &str) -> Result<bool> {
    let comment: Option<Option<String>> = client
        .query_opt(
            "SELECT obj_description(c, 'pg_class') FROM to_regclass($1) c WHERE c IS NOT NULL",
            &[&name],
        )
        .await
        .ctx(format!("looking for {name}"))?
        .map(|r| r.get(0));
    match comment {
        None => Ok(false),
        Some(c) if c.as_deref() == Some(marker) => Ok(true),
        Some(_) => Err(Error::refused(format!(
            "table {name} exists but swivel did not make it (it lacks swivel's comment), so \
             swivel leaves it and everything else alone; if it is a leftover of yours, drop or \
             rename it yourself"
        ))),
    }
}
