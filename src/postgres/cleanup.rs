//! Cleanup on every exit path, and `swivel cleanup` for what a crashed run left behind.

use std::time::Duration;

use tokio_postgres::Client;

use super::shadow::shadow_marker;
use super::{origin, quote_ident, state, Names, PgBackend, PgTarget};
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
                &[&b.pids.list()],
            )
            .await
            .ctx("ending the run's sessions")?;
    }
    drop_slot(&client, &names.slot).await?;
    // The origin is there only if this run or the one it resumed took the origin path.
    for name in origin::existing(&client, &names.origin).await? {
        origin::drop(&client, &name).await?;
    }
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

/// What a crashed run left for `table`: the slot (with the WAL it holds), the state table
/// (with its checkpoint), the publication and the shadow table (with its size), each described.
/// With `remove`, they are dropped too. The original table and a kept `_<table>_old` are never
/// touched, nor anything swivel did not make.
pub async fn cleanup_leftovers(
    dsn: &str,
    password: Option<&str>,
    table: &str,
    remove: bool,
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
    let mut found = Vec::new();
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
        if remove {
            drop_slot(&client, &names.slot).await?;
        }
        found.push(format!(
            "replication slot {} (it holds {retained} of WAL)",
            names.slot
        ));
    }
    if state_table {
        // Unreadable (another version's): still ours to remove.
        let checkpoint = state::load(&client, &names).await.ok().flatten();
        if remove {
            state::drop(&client, &names).await?;
        }
        found.push(match checkpoint {
            Some(c) => format!("table {} ({})", names.state_q(), c.describe()),
            None => format!("table {} (no checkpoint)", names.state_q()),
        });
    }
    for name in origin::existing(&client, &names.origin).await? {
        if remove {
            origin::drop(&client, &name).await?;
        }
        found.push(format!("replication origin {name}"));
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
        if remove {
            client
                .batch_execute(&format!(
                    "DROP PUBLICATION {}",
                    quote_ident(&names.publication)
                ))
                .await
                .ctx("dropping the publication")?;
        }
        found.push(format!("publication {}", names.publication));
    }
    if shadow {
        let size: String = client
            .query_one(
                "SELECT pg_size_pretty(pg_total_relation_size(to_regclass($1)))",
                &[&names.shadow_q()],
            )
            .await
            .ctx("measuring the shadow table")?
            .get(0);
        if remove {
            drop_shadow(&client, &names).await?;
        }
        found.push(format!("table {} ({size})", names.shadow_q()));
    }
    Ok(found)
}

/// Every swivel slot in the database, with the table it serves and the WAL it holds: what a
/// `swivel cleanup` without `--table` lists. A slot whose table is gone is named with what
/// drops it.
pub async fn list_slots(dsn: &str, password: Option<&str>) -> Result<Vec<String>> {
    let target = PgTarget::parse(dsn, password)?;
    let (client, _) = target.connect("cleanup").await?;
    let rows = client
        .query(
            "SELECT s.slot_name::text, s.active,
                    coalesce(pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)), 'no'),
                    c.oid::regclass::text
             FROM pg_replication_slots s
             LEFT JOIN pg_class c ON c.oid::text = substring(s.slot_name from '^swivel_([0-9]+)$')
             WHERE s.database = current_database() AND s.slot_name ~ '^swivel_[0-9]+$'
             ORDER BY s.slot_name",
            &[],
        )
        .await
        .ctx("listing swivel's replication slots")?;
    Ok(rows
        .iter()
        .map(|r| {
            let (slot, active, wal, table) = (
                r.get::<_, String>(0),
                r.get::<_, bool>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<String>>(3),
            );
            let state = if active {
                "in use by a run"
            } else {
                "abandoned"
            };
            match table {
                Some(t) => format!(
                    "replication slot {slot} of table {t}, {state}, holds {wal} of WAL \
                     (`--table {t}` to see or remove what its run left)"
                ),
                None => format!(
                    "replication slot {slot}, {state}, holds {wal} of WAL; its table is gone \
                     (drop it with SELECT pg_drop_replication_slot('{slot}'))"
                ),
            }
        })
        .collect())
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
