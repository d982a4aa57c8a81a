//! Cleanup on every exit path: stop the tail, end our sessions, drop the changelog and the
//! sentry, and the shadow table if the run failed; keep or drop the old table if it succeeded.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use std::time::Duration;

use super::cutover::drop_sentry;
use super::shadow::{CHANGELOG_COMMENT, SHADOW_RECORD_ID};
use super::{table_comment, MyBackend, MyTarget, Names};
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
    let changelog = own_changelog(&mut ctl, &names).await?;
    let shadow = table_comment(&mut ctl, &db, &names.shadow).await?.is_some();
    if shadow && changelog != Some(true) {
        return Err(foreign(&names, &names.shadow));
    }
    let mut removed = Vec::new();
    for (name, found) in [
        (&names.shadow, shadow),
        (&names.changelog, changelog.is_some()),
    ] {
        if found {
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
const ACTIVE_WITHIN: Duration = Duration::from_secs(10);

/// A table named like one of swivel's that swivel did not make.
pub fn foreign(names: &Names, name: &str) -> Error {
    Error::refused(format!(
        "table {}.{name} exists but swivel did not make it (no swivel changelog records it), so \
         swivel leaves it and everything else alone; if it is a leftover of yours, drop or \
         rename it yourself",
        names.db
    ))
}

/// The changelog of an earlier run, if there is one: whether it records the shadow table.
/// Refused when swivel did not make it, and while the run that made it is alive.
pub async fn own_changelog(ctl: &mut Conn, names: &Names) -> Result<Option<bool>> {
    match table_comment(ctl, &names.db, &names.changelog)
        .await?
        .as_deref()
    {
        None => return Ok(None),
        Some(CHANGELOG_COMMENT) => {}
        Some(_) => return Err(foreign(names, &names.changelog)),
    }
    let rows: Vec<(u32, u64)> = ctl
        .query(format!("SELECT id, value FROM {}", names.changelog_q()))
        .await
        .my_ctx("reading the changelog")?;
    if let Some((_, sent)) = rows.iter().find(|(id, _)| *id == 1) {
        let age = Duration::from_micros(now_micros().saturating_sub(*sent));
        if age < ACTIVE_WITHIN {
            return Err(Error::refused(format!(
                "a swivel run is active on this table (its heartbeat is {:.1}s old); stop it \
                 first (`panic` on its control socket, or Ctrl-C); a run that died counts as \
                 active for {}s",
                age.as_secs_f64(),
                ACTIVE_WITHIN.as_secs()
            )));
        }
    }
    Ok(Some(rows.iter().any(|(id, _)| *id == SHADOW_RECORD_ID)))
}
