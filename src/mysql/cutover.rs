//! Cut-over with gh-ost's sentry table. MariaDB 10.11 refuses `RENAME TABLE` under
//! `LOCK TABLES` (error 1192), so the lock and the rename live in two sessions:
//!
//! 1. create the sentry `t__swivel_del`; session A: `LOCK TABLES t WRITE, <sentry> WRITE`;
//! 2. write a marker to the changelog and wait until the applier has applied everything
//!    before it (no write to `t` can commit meanwhile);
//! 3. session B: `RENAME TABLE t TO <sentry>, _t_new TO t`, which queues behind A's lock;
//! 4. A: `DROP TABLE <sentry>; UNLOCK TABLES`: B's rename goes first (a pending RENAME's
//!    exclusive metadata lock is granted before the writes queued on `t`).
//!
//! Unlike gh-ost, the rename is queued after the drain: RENAME takes its locks in name order
//! and holds `_t_new` while it waits for `t`, which would block the applier's last writes.
//!
//! If anything fails before 4 (A's connection dies, a timeout), A's locks go away with the
//! sentry still there, so B's rename fails ("table exists") and `t` stays the original table.
//! What we found by experiment is in docs/mysql-cutover.md.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::inspect::lock_wait_secs;
use super::{quote_ident, tail, MyBackend};
use crate::engine::backend::{Attempt, Blocker};
use crate::error::{Error, MyContext, Result};

/// The sentry table's comment, by which swivel knows its own.
pub(super) const SENTRY_COMMENT: &str = "swivel cut-over sentry";

/// Why a cut-over attempt gave up, leaving the original table in place.
pub(super) enum Retry {
    Because(String),
}

/// One attempt; the original table is in place and unchanged unless it reports a swap.
pub async fn attempt(b: &mut MyBackend, attempt: u32, lock_timeout: Duration) -> Result<Attempt> {
    let names = b.names.clone();
    tail_of(b)?.check()?;
    if b.marker_conn.is_none() {
        b.marker_conn = Some(b.session("marker").await?);
    }
    let mut locker = b.session("cut-over lock").await?;
    let renamer = b.session("cut-over rename").await?;
    let sentry = names.qualified(&names.sentry);
    b.ctl
        .query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {sentry} (id INT PRIMARY KEY) ENGINE=InnoDB \
             COMMENT='{SENTRY_COMMENT}'"
        ))
        .await
        .my_ctx("creating the sentry table")?;
    // From here until UNLOCK TABLES (or the rename) returns, writes may wait on us.
    let requested = Instant::now();
    let outcome = attempt_swap(b, &mut locker, renamer, lock_timeout).await;
    // Whatever happened, A lets go: if the sentry is still there, a pending rename fails.
    let _ = locker.query_drop("UNLOCK TABLES").await;
    drop(locker);
    // A lost reply (a dropped connection, a timeout) after the RENAME reached the server
    // leaves us not knowing whether it ran: look at which table is which rather than retry
    // into a swapped pair.
    let outcome = match outcome {
        Err(Retry::Because(why)) if swapped_anyway(b).await? => {
            tracing::warn!("cut-over attempt {attempt}: {why}; but the rename did run: swapped");
            let now = Instant::now();
            Ok((now.duration_since(requested), now))
        }
        other => other,
    };
    match outcome {
        Ok((lock_held, renamed_at)) => {
            tail_of(b)?.finish();
            // Keep the original under the same name as on PostgreSQL.
            b.ctl
                .query_drop(format!(
                    "RENAME TABLE {} TO {}",
                    names.qualified(&names.sentry),
                    names.qualified(&names.old)
                ))
                .await
                .my_ctx("renaming the original table to its kept name")?;
            Ok(Attempt {
                swapped: true,
                why: String::new(),
                lock_held,
                stall: renamed_at.duration_since(requested),
            })
        }
        Err(Retry::Because(why)) => {
            let stall = requested.elapsed();
            tail_of(b)?.resume(b.markers);
            Ok(Attempt::failed(why, stall))
        }
    }
}

/// The swap happened: the shadow's name is gone and the sentry's name holds a table that is not
/// the sentry (the original, renamed there by the RENAME).
async fn swapped_anyway(b: &mut MyBackend) -> Result<bool> {
    let names = b.names.clone();
    if super::table_exists(&mut b.ctl, &names.db, &names.shadow).await? {
        return Ok(false);
    }
    let comment = super::table_comment(&mut b.ctl, &names.db, &names.sentry).await?;
    Ok(comment.is_some_and(|c| c != SENTRY_COMMENT))
}

pub(super) fn tail_of(b: &MyBackend) -> Result<&tail::Tail> {
    b.tail
        .as_ref()
        .ok_or_else(|| Error::Stream("the change stream is not running".into()))
}

/// One attempt; Ok(how long the table was locked, when the rename returned) once the rename
/// has run.
async fn attempt_swap(
    b: &mut MyBackend,
    locker: &mut Conn,
    mut renamer: Conn,
    timeout: Duration,
) -> std::result::Result<(Duration, Instant), Retry> {
    let names = b.names.clone();
    let secs = lock_wait_secs(timeout);
    let sentry = names.qualified(&names.sentry);
    let lock = format!("LOCK TABLES {} WRITE, {sentry} WRITE", names.source());
    lock_tables(b.mariadb, locker, &lock, timeout).await?;
    let locked_at = Instant::now();

    drain(b, timeout).await?;

    // B queues behind A's lock, and fails at once if A goes away while the sentry exists.
    let renamer_id = renamer.id();
    let rename = format!(
        "SET SESSION lock_wait_timeout = {}; RENAME TABLE {} TO {sentry}, {} TO {}",
        secs * 3,
        names.source(),
        names.shadow_q(),
        names.source()
    );
    let renaming = tokio::spawn(async move {
        let r = renamer.query_drop(rename).await;
        (r, Instant::now())
    });

    match rename_waits_on_table(b, renamer_id, timeout).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(abandon(
                b,
                renamer_id,
                "the rename did not queue behind the lock on the table itself (another session \
                 may hold a lock on the shadow table: an open transaction that read it)"
                    .into(),
            )
            .await)
        }
        Err(e) => return Err(abandon(b, renamer_id, e.to_string()).await),
    }

    // The point of no return: with the sentry gone, unlocking lets the rename through.
    if let Err(e) = locker
        .query_drop(format!("DROP TABLE {sentry}"))
        .await
        .my_ctx("dropping the sentry")
    {
        return Err(abandon(b, renamer_id, e.to_string()).await);
    }
    if let Err(e) = locker.query_drop("UNLOCK TABLES").await {
        // A's session is gone, and its locks with it: the rename proceeds or fails on its own.
        tracing::warn!("unlocking after the sentry was dropped: {e}");
    }
    match renaming.await {
        Ok((Ok(()), renamed_at)) => Ok((renamed_at.duration_since(locked_at), renamed_at)),
        Ok((Err(e), _)) => Err(Retry::Because(format!(
            "the rename failed: {}",
            Error::my("renaming", e)
        ))),
        Err(e) => Err(Retry::Because(format!("the rename task failed: {e}"))),
    }
}

/// Every write to the table committed before a new marker: once the applier has reached it
/// (and stopped there, until resumed), the shadow table holds them all. Ok(the marker), or why
/// not within `timeout` (then the applier is told to go on past it).
pub(super) async fn drain(b: &mut MyBackend, timeout: Duration) -> std::result::Result<u64, Retry> {
    let marker = b.next_marker();
    let names = b.names.clone();
    let Some(marker_conn) = b.marker_conn.as_mut() else {
        return Err(Retry::Because("the marker session is gone".into()));
    };
    if let Err(e) = tail::emit_marker(marker_conn, &names, marker).await {
        b.marker_conn = None;
        return Err(Retry::Because(format!("writing the marker: {e}")));
    }
    let tail = tail_of(b).map_err(|e| Retry::Because(e.to_string()))?;
    match tail.wait_marker(marker, timeout).await {
        Ok(true) => Ok(marker),
        Ok(false) => {
            tail.resume(marker);
            Err(Retry::Because(format!(
                "the applier did not drain within {timeout:?}"
            )))
        }
        Err(e) => Err(Retry::Because(format!("the applier failed: {e}"))),
    }
}

/// `LOCK TABLES t WRITE, sentry WRITE`, waiting at most `timeout`.
///
/// MariaDB: in slices of at most a second, each bounded by `max_statement_time` (to the
/// millisecond; `lock_wait_timeout` takes whole seconds). A swivel killed while it waits thus
/// leaves its lock request queued in front of the application for a second at most: the
/// server ends the statement itself. MySQL (whose `max_execution_time` covers SELECT only):
/// one wait under `lock_wait_timeout`, rounded up to whole seconds.
pub(super) async fn lock_tables(
    mariadb: bool,
    locker: &mut Conn,
    lock: &str,
    timeout: Duration,
) -> std::result::Result<(), Retry> {
    if !mariadb {
        let secs = lock_wait_secs(timeout);
        return locker
            .query_drop(format!("SET SESSION lock_wait_timeout = {secs}; {lock}"))
            .await
            .my_ctx("locking the table")
            .map_err(|e| Retry::Because(e.to_string()));
    }
    let until = Instant::now() + timeout;
    loop {
        let slice = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        let locked = locker
            .query_drop(format!(
                "SET SESSION lock_wait_timeout = 1, max_statement_time = {:.3}; {lock}; \
                 SET SESSION max_statement_time = 0",
                slice.as_secs_f64()
            ))
            .await
            .my_ctx("locking the table");
        match locked {
            Ok(()) => return Ok(()),
            // 1969: max_statement_time; 1205: lock_wait_timeout. Another slice if time is left.
            Err(e) if matches!(e.sqlstate(), Some("1969" | "1205")) && Instant::now() < until => {}
            Err(e) => return Err(Retry::Because(e.to_string())),
        }
    }
}

/// The sessions other than ours that hold a metadata lock on the table, with their
/// transaction's age.
pub async fn blockers(b: &mut MyBackend) -> Result<Vec<Blocker>> {
    let view = b
        .lock_view
        .ok_or_else(|| Error::Cutover("the metadata lock view was not checked".into()))?;
    let sql = match view {
        LockView::MetadataLockInfo => {
            "SELECT DISTINCT m.thread_id, p.user, coalesce(p.info, ''), \
                    TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) \
             FROM information_schema.metadata_lock_info m \
             JOIN information_schema.processlist p ON p.id = m.thread_id \
             LEFT JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = m.thread_id \
             WHERE m.table_schema = ? AND m.table_name = ?"
        }
        LockView::PerformanceSchema => {
            "SELECT DISTINCT th.processlist_id, th.processlist_user, \
                    coalesce(th.processlist_info, ''), \
                    TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) \
             FROM performance_schema.metadata_locks m \
             JOIN performance_schema.threads th ON th.thread_id = m.owner_thread_id \
             LEFT JOIN information_schema.innodb_trx t \
               ON t.trx_mysql_thread_id = th.processlist_id \
             WHERE m.lock_status = 'GRANTED' AND m.object_type = 'TABLE' \
               AND m.object_schema = ? AND m.object_name = ?"
        }
    };
    let rows: Vec<(u64, Option<String>, String, Option<i64>)> = b
        .ctl
        .exec(sql, (b.names.db.as_str(), b.names.table.as_str()))
        .await
        .my_ctx("listing the sessions that hold locks on the table")?;
    let ours = b.conn_ids.list();
    Ok(rows
        .into_iter()
        .filter(|(id, ..)| !ours.iter().any(|o| u64::from(*o) == *id))
        .map(|(id, user, query, age)| Blocker {
            id: id.to_string(),
            user: user.unwrap_or_default(),
            query,
            transaction_age: age.map(|us| Duration::from_micros(us.max(0) as u64)),
        })
        .collect())
}

/// Give up an attempt before the point of no return: cancel the queued rename (were it to
/// run anyway, the sentry makes it fail).
async fn abandon(b: &mut MyBackend, renamer_id: u32, why: String) -> Retry {
    let _ = b.ctl.query_drop(format!("KILL QUERY {renamer_id}")).await;
    Retry::Because(why)
}

/// Poll until B's RENAME waits for the metadata lock on the table itself, behind A's lock.
///
/// "Waiting for table metadata lock" alone is not enough: RENAME takes its locks in name
/// order, and a session holding a lock on the shadow table (a transaction that read it) makes
/// it wait there instead, not queued on the table; unlocking then lets the application's
/// writes through to the old table, after the drain. So on MariaDB the renamer must already
/// hold every lock that sorts before the table's; on MySQL its pending lock must be the
/// table's.
async fn rename_waits_on_table(b: &mut MyBackend, id: u32, timeout: Duration) -> Result<bool> {
    let names = b.names.clone();
    let view = b.lock_view.ok_or_else(|| {
        Error::Cutover("the metadata lock view was not checked at plan time".into())
    })?;
    // MDL keys compare as `name\0` bytes within one database.
    let key = |n: &str| format!("{n}\0").into_bytes();
    let before: Vec<&str> = [names.shadow.as_str(), names.sentry.as_str()]
        .into_iter()
        .filter(|n| key(n) < key(&names.table))
        .collect();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let state: Option<(Option<String>, Option<String>)> = b
            .ctl
            .exec_first(
                "SELECT state, info FROM information_schema.processlist WHERE id = ?",
                (id,),
            )
            .await
            .my_ctx("reading the process list")?;
        let waiting = matches!(&state, Some((Some(state), Some(info)))
            if state.contains("metadata lock") && info.contains("RENAME TABLE"));
        if waiting {
            let on_table = match view {
                LockView::MetadataLockInfo => {
                    let mut held = 0;
                    for name in &before {
                        let n: Option<i64> = b
                            .ctl
                            .exec_first(
                                "SELECT count(*) FROM information_schema.metadata_lock_info \
                                 WHERE thread_id = ? AND lock_mode = 'MDL_EXCLUSIVE' \
                                 AND table_schema = ? AND table_name = ?",
                                (id, names.db.as_str(), *name),
                            )
                            .await
                            .my_ctx("reading the rename's metadata locks")?;
                        held += usize::from(n.unwrap_or(0) > 0);
                    }
                    held == before.len()
                }
                LockView::PerformanceSchema => {
                    let n: Option<i64> = b
                        .ctl
                        .exec_first(
                            "SELECT count(*) FROM performance_schema.metadata_locks m \
                             JOIN performance_schema.threads t ON t.thread_id = m.owner_thread_id \
                             WHERE t.processlist_id = ? AND m.lock_status = 'PENDING' \
                             AND m.object_type = 'TABLE' AND m.object_schema = ? \
                             AND m.object_name = ?",
                            (id, names.db.as_str(), names.table.as_str()),
                        )
                        .await
                        .my_ctx("reading the rename's metadata locks")?;
                    n.unwrap_or(0) > 0
                }
            };
            if on_table {
                return Ok(true);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(false)
}

/// Where the server shows who holds or waits for which metadata lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockView {
    /// MariaDB's `information_schema.metadata_lock_info` plugin (granted locks).
    MetadataLockInfo,
    /// MySQL's `performance_schema.metadata_locks` (granted and pending).
    PerformanceSchema,
}

/// Find the lock view the cut-over needs, or refuse with how to enable it.
pub async fn lock_view(ctl: &mut Conn, mariadb: bool) -> Result<LockView> {
    let (view, found, how) = if mariadb {
        let n: Option<i64> = ctl
            .query_first(
                "SELECT count(*) FROM information_schema.plugins \
                 WHERE plugin_name = 'METADATA_LOCK_INFO' AND plugin_status = 'ACTIVE'",
            )
            .await
            .my_ctx("looking for the metadata_lock_info plugin")?;
        (
            LockView::MetadataLockInfo,
            n.unwrap_or(0) > 0,
            "INSTALL SONAME 'metadata_lock_info' (it ships with MariaDB; or start the server \
             with --plugin-load-add=metadata_lock_info)",
        )
    } else {
        let n: Option<i64> = ctl
            .query_first(
                "SELECT count(*) FROM performance_schema.setup_instruments \
                 WHERE name = 'wait/lock/metadata/sql/mdl' AND enabled = 'YES'",
            )
            .await
            .ok()
            .flatten();
        (
            LockView::PerformanceSchema,
            n.unwrap_or(0) > 0,
            "start the server with performance_schema = ON and enable the \
             wait/lock/metadata/sql/mdl instrument (both are defaults on MySQL 8)",
        )
    };
    if !found {
        return Err(Error::refused(format!(
            "swivel checks at cut-over that its RENAME waits on the table itself, so that no \
             write can slip past the swap when another session holds the shadow table; the \
             server does not show metadata locks: {how}"
        )));
    }
    Ok(view)
}

/// Used by cleanup: the sentry is ours only if it carries our comment.
pub async fn drop_sentry(ctl: &mut Conn, db: &str, sentry: &str) -> Result<bool> {
    let comment: Option<String> = ctl
        .exec_first(
            "SELECT table_comment FROM information_schema.tables \
             WHERE table_schema = ? AND table_name = ?",
            (db, sentry),
        )
        .await
        .my_ctx("looking for the sentry table")?;
    if comment.as_deref() == Some(SENTRY_COMMENT) {
        ctl.query_drop(format!(
            "DROP TABLE IF EXISTS {}.{}",
            quote_ident(db),
            quote_ident(sentry)
        ))
        .await
        .my_ctx("dropping the sentry table")?;
        return Ok(true);
    }
    Ok(false)
}
