//! Cleanup on every exit path: stop the tail, end our sessions, drop the changelog and the
//! sentry, and the shadow table if the run failed; keep or drop the old table if it succeeded.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use std::time::Duration;

use super::cutover::{drop_sentry, SENTRY_COMMENT};
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
    b.checksum_twin = None;
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
        for id in b.conn_ids.list().into_iter().filter(|&id| id != own) {
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

/// What a crashed run left for `table`: the shadow (with its size), the changelog (with its
/// checkpoint) and the sentry, each described. With `remove`, they are dropped too. The
/// original table and a kept `_<table>_old` are never touched, nor anything swivel did not make.
pub async fn cleanup_leftovers(
    dsn: &str,
    password: Option<&str>,
    table: &str,
    remove: bool,
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
    let mut found = Vec::new();
    if shadow {
        let size: Option<String> = ctl
            .exec_first(
                "SELECT CONCAT(ROUND((data_length + index_length) / 1048576, 1), ' MB') \
                 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (&db, &names.shadow),
            )
            .await
            .my_ctx("measuring the shadow table")?;
        found.push(format!(
            "table {db}.{} ({})",
            names.shadow,
            size.unwrap_or_default()
        ));
    }
    if changelog.is_some() {
        // Unreadable (another version's): still ours to remove.
        let checkpoint = super::state::load(&mut ctl, &names).await.ok().flatten();
        found.push(match checkpoint {
            Some(c) => format!("table {db}.{} ({})", names.changelog, c.describe()),
            None => format!("table {db}.{} (no checkpoint)", names.changelog),
        });
    }
    let sentry = table_comment(&mut ctl, &db, &names.sentry)
        .await?
        .as_deref()
        == Some(SENTRY_COMMENT);
    if sentry {
        found.push(format!(
            "table {db}.{} (the cut-over's sentry)",
            names.sentry
        ));
    }
    if remove {
        for (name, there) in [
            (&names.shadow, shadow),
            (&names.changelog, changelog.is_some()),
        ] {
            if there {
                ctl.query_drop(format!("DROP TABLE {}", names.qualified(name)))
                    .await
                    .my_ctx(format!("dropping {name}"))?;
            }
        }
        drop_sentry(&mut ctl, &db, &names.sentry).await?;
    }
    Ok(found)
}

/// Every swivel changelog in the database, with the table it serves and how long ago its run
/// last beat: what a `swivel cleanup` without `--table` lists.
pub async fn list_changelogs(dsn: &str, password: Option<&str>) -> Result<Vec<String>> {
    let target = MyTarget::parse(dsn, password)?;
    let mut ctl = target.connect("cleanup").await?;
    let db = target.db().to_string();
    let tables: Vec<String> = ctl
        .exec(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = ? AND table_comment = ? ORDER BY table_name",
            (&db, CHANGELOG_COMMENT),
        )
        .await
        .my_ctx("listing swivel's changelogs")?;
    let mut found = Vec::new();
    for changelog in tables {
        let Some(table) = changelog
            .strip_prefix('_')
            .and_then(|t| t.strip_suffix("_swl"))
        else {
            continue;
        };
        let names = Names::new(&db, table);
        let beat: Option<u64> = ctl
            .query_first(format!(
                "SELECT value FROM {} WHERE id = 1",
                names.changelog_q()
            ))
            .await
            .my_ctx("reading the changelog")?;
        let state = match beat {
            Some(sent) => {
                let age = Duration::from_micros(now_micros().saturating_sub(sent));
                if age < ACTIVE_WITHIN {
                    "in use by a run".to_string()
                } else {
                    format!(
                        "abandoned, last heartbeat {} ago",
                        crate::engine::progress::format_duration(age)
                    )
                }
            }
            None => "abandoned".to_string(),
        };
        found.push(format!(
            "changelog {db}.{changelog} of table {db}.{table}, {state} (`--table {table}` to see \
             or remove what its run left)"
        ));
    }
    Ok(found)
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
