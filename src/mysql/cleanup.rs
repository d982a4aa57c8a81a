//! Cleanup on every exit path: stop the tail, end our sessions, drop the changelog and the
//! sentry, and the shadow table if the run failed; keep or drop the old table if it succeeded.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use std::time::Duration;

use super::cutover::drop_sentry;
use super::shadow::{CHANGELOG_COMMENT, SHADOW_RECORD_ID};
use super::{MyBackend, MyTarget, Names};
use crate::engine::replay::{now_micros, reconnect};
use crate::error::{Error, MyContext, Result};

pub async fn after_run(b: &mut MyBackend, succeeded: bool, keep_shadow: bool) -> Result<()> {
    if let Some(tail) = b.tail.take() {
        tail.stop();
    }
    b.copier = None;
    b.marker_conn = None;
    b.checksum_conn = None;
    // A stop (Ctrl-C, panic) may have cut a statement on the control session short, which
    // leaves its protocol out of step (even a ping can pass and the next statement fail):
    // clean up on a fresh session.
    // The server may be restarting (the reason the run failed): try again a while.
    let target = &b.target;
    b.ctl = reconnect("cleanup", &mut 0, b.opts.default_retries, || {
        target.connect("cleanup")
    })
    .await?;
    b.conn_ids.push(b.ctl.id());
    let own = b.ctl.id();
    if !succeeded {
        // A session of ours may still hold a lock or wait in a rename: end them first.
        for id in b.conn_ids.iter().filter(|&&id| id != own) {
            let _ = b.ctl.query_drop(format!("KILL {id}")).await;
        }
    }
    let names = b.names.clone();
    // A shadow kept for inspection keeps the changelog that proves it is swivel's, for
    // `swivel cleanup`.
    if keep_shadow {
        // The run is over: its last heartbeat must not make `swivel cleanup` think it alive.
        b.ctl
            .query_drop(format!("DELETE FROM {} WHERE id = 1", names.changelog_q()))
            .await
            .my_ctx("marking the run ended in the changelog")?;
    } else {
        b.ctl
            .query_drop(format!("DROP TABLE IF EXISTS {}", names.changelog_q()))
            .await
            .my_ctx("dropping the changelog table")?;
    }
    drop_sentry(&mut b.ctl, &names.db, &names.sentry).await?;
    if succeeded {
        if b.opts.drop_old_table {
            b.ctl
                .query_drop(format!(
                    "DROP TABLE IF EXISTS {}",
                    names.qualified(&names.old)
                ))
                .await
                .my_ctx("dropping the old table")?;
        }
    } else if b.created_shadow && !keep_shadow {
        b.ctl
            .query_drop(format!("DROP TABLE IF EXISTS {}", names.shadow_q()))
            .await
            .my_ctx("dropping the shadow table")?;
    }
    Ok(())
}

/// Remove what a crashed run left for `table`: the shadow, changelog and sentry tables. The
/// original table and a kept `_<table>_old` are never touched. Returns what was removed.
pub async fn cleanup_leftovers(
    dsn: &str,
    password: Option<&str>,
    table: &str,
) -> Result<Vec<String>> {
    let target = MyTarget::parse(dsn, password)?;
    let mut ctl = target.connect("cleanup").await?;
    let (db, table) = match table.split_once('.') {
        Some((db, t)) => (db.to_string(), t.to_string()),
        None => (target.db().to_string(), table.to_string()),
    };
    let names = Names::new(&db, &table);
    // Only what swivel made: the changelog carries swivel's comment and records the shadow.
    let changelog = table_comment(&mut ctl, &db, &names.changelog).await?;
    let shadow = table_comment(&mut ctl, &db, &names.shadow).await?;
    let foreign = |name: &str| {
        Error::refused(format!(
            "table {db}.{name} exists but swivel did not make it (no swivel changelog records \
             it), so swivel cleanup leaves it and everything else alone; if it is a leftover of \
             yours, drop or rename it yourself"
        ))
    };
    let mut shadow_recorded = false;
    match changelog.as_deref() {
        None => {}
        Some(CHANGELOG_COMMENT) => {
            let rows: Vec<(u32, u64)> = ctl
                .query(format!("SELECT id, value FROM {}", names.changelog_q()))
                .await
                .my_ctx("reading the changelog")?;
            let heartbeat = rows.iter().find(|(id, _)| *id == 1).map(|(_, v)| *v);
            if let Some(sent) = heartbeat {
                let age = Duration::from_micros(now_micros().saturating_sub(sent));
                if age < ACTIVE_WITHIN {
                    return Err(Error::refused(format!(
                        "a swivel run is active on this table (its heartbeat is {:.1}s old); stop \
                         it first (`panic` on its control socket, or Ctrl-C)",
                        age.as_secs_f64()
                    )));
                }
            }
            shadow_recorded = rows.iter().any(|(id, _)| *id == SHADOW_RECORD_ID);
        }
        Some(_) => return Err(foreign(&names.changelog)),
    }
    if shadow.is_some() && !shadow_recorded {
        return Err(foreign(&names.shadow));
    }
    let mut removed = Vec::new();
    for (name, found) in [(&names.shadow, &shadow), (&names.changelog, &changelog)] {
        if found.is_some() {
            ctl.query_drop(format!("DROP TABLE {}", names.qualified(name)))
                .await
                .my_ctx(format!("dropping {name}"))?;
            removed.push(format!("table {db}.{name}"));
        }
    }
    if drop_sentry(&mut ctl, &db, &names.sentry).await? {
        removed.push(format!("table {db}.{}", names.sentry));
    }
    Ok(removed)
}

/// A run whose heartbeat is younger than this is alive (it beats every 100ms).
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(10);

/// The comment of table `db.name`, if the table exists ("" when it has none).
async fn table_comment(ctl: &mut Conn, db: &str, name: &str) -> Result<Option<String>> {
    ctl.exec_first(
        "SELECT table_comment FROM information_schema.tables \
         WHERE table_schema = ? AND table_name = ?",
        (db, name),
    )
    .await
    .my_ctx(format!("looking for table {db}.{name}"))
}
