//! Cleanup on every exit path: stop the tail, end our sessions, drop the changelog and the
//! sentry, and the shadow table if the run failed; keep or drop the old table if it succeeded.

use mysql_async::prelude::Queryable;

use super::cutover::drop_sentry;
use super::{MyBackend, MyTarget, Names};
use crate::error::{MyContext, Result};

pub async fn after_run(b: &mut MyBackend, succeeded: bool) -> Result<()> {
    if let Some(tail) = b.tail.take() {
        tail.stop();
    }
    b.copier = None;
    let own = b.ctl.id();
    if !succeeded {
        // A session of ours may still hold a lock or wait in a rename: end them first.
        for id in b.conn_ids.iter().filter(|&&id| id != own) {
            let _ = b.ctl.query_drop(format!("KILL {id}")).await;
        }
    }
    let names = b.names.clone();
    b.ctl
        .query_drop(format!("DROP TABLE IF EXISTS {}", names.changelog_q()))
        .await
        .my_ctx("dropping the changelog table")?;
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
    } else if b.created_shadow {
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
    let mut removed = Vec::new();
    for name in [&names.shadow, &names.changelog] {
        if super::table_exists(&mut ctl, &db, name).await? {
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
