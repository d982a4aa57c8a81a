//! The copy's replication origin (PostgreSQL 16+). The copier's session is tagged with an
//! origin of swivel's and the stream is read with pgoutput's `origin 'none'`, so the walsender
//! skips the copy's own writes before it decodes them: without it, every row copied into the
//! shadow table is decoded, then dropped by pgoutput because the shadow is not published (on
//! PostgreSQL 17, the stream caught up 0.16 s after a 1M-row copy instead of 1.9–2.3 s).
//!
//! `origin 'none'` skips *every* change that carries an origin, so the path is taken only when
//! nothing but swivel writes with one: no subscription feeds the table and no replication origin
//! other than swivel's exists. Otherwise, and without the privilege, the copy takes the plain
//! path and the plan says why.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{Error, PgContext, Result};

/// pgoutput's `origin` option is new in 16.
pub const VERSION: u32 = 160000;

/// Whether the origin-filtered path can be used on this server for the table `oid`: Ok(()) or
/// why not.
pub async fn usable(
    client: &Client,
    server_version: u32,
    oid: u32,
) -> Result<std::result::Result<(), String>> {
    if server_version < VERSION {
        return Ok(Err(
            "pgoutput filters by origin from PostgreSQL 16 on".into()
        ));
    }
    let row = client
        .query_one(
            "SELECT has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE')
                AND has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')
                AND has_function_privilege('pg_replication_origin_drop(text)', 'EXECUTE'),
                EXISTS (SELECT 1 FROM pg_subscription_rel WHERE srrelid = $1),
                (SELECT string_agg(roname, ', ' ORDER BY roname) FROM pg_replication_origin
                 WHERE roname !~ '^swivel_[0-9]+(_[0-9]+)?$')",
            &[&oid],
        )
        .await
        .ctx("checking whether the copy may carry a replication origin")?;
    let (privileged, subscribed, others): (bool, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    Ok(if !privileged {
        Err("the role may not use replication origins (superuser, or GRANT EXECUTE ON \
             FUNCTION pg_replication_origin_create(text), pg_replication_origin_session_setup(text), \
             pg_replication_origin_drop(text))"
            .into())
    } else if subscribed {
        Err("a subscription writes to the table, and its changes carry an origin".into())
    } else if let Some(others) = others {
        Err(format!(
            "replication origins other than swivel's exist ({others}): changes carrying them \
             would be skipped too"
        ))
    } else {
        Ok(())
    })
}

/// Create the origin unless it exists (a resumed run finds the interrupted run's).
pub async fn create(client: &Client, name: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_replication_origin_create($1::text) WHERE NOT EXISTS
               (SELECT 1 FROM pg_replication_origin WHERE roname = $1::text)",
            &[&name],
        )
        .await
        .ctx("creating the copy's replication origin")?;
    Ok(())
}

/// Tag the session's writes with the origin. One session at a time may hold it: a copier
/// session that was just lost may hold it a moment longer, so wait for it.
pub async fn tag(client: &Client, name: &str) -> Result<()> {
    while_held(
        "tagging the copy's session with its origin",
        || async move {
            client
                .execute(
                    "SELECT pg_replication_origin_session_setup($1::text)",
                    &[&name],
                )
                .await
        },
    )
    .await
    .map(|_| ())
}

/// The origin of copier number `slot`: one session at a time may hold an origin, so each
/// copier has its own, named after the run's.
pub fn for_copier(base: &str, slot: usize) -> String {
    match slot {
        0 => base.to_string(),
        n => format!("{base}_{n}"),
    }
}

/// The run's origins that exist (a run made them, perhaps one that was interrupted).
pub async fn existing(client: &Client, base: &str) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT roname FROM pg_replication_origin
             WHERE roname = $1::text OR roname ~ ('^' || $1::text || '_[0-9]+$')
             ORDER BY roname",
            &[&base],
        )
        .await
        .ctx("looking for the copy's replication origins")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Drop the origin (callers look with `exists` first: a role without the origin functions
/// never calls one). Waits while a closing copier session still holds it.
pub async fn drop(client: &Client, name: &str) -> Result<()> {
    while_held("dropping the copy's replication origin", || async move {
        client
            .execute("SELECT pg_replication_origin_drop($1::text)", &[&name])
            .await
    })
    .await
    .map(|_| ())
}

/// Run `statement` again while it fails because another session holds the origin
/// (object_in_use), for at most `HOLD`.
async fn while_held<F, Fut>(what: &str, mut statement: F) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<u64, tokio_postgres::Error>>,
{
    let mut waited = Duration::ZERO;
    loop {
        match statement().await {
            Ok(rows) => return Ok(rows),
            Err(e) if e.code().is_some_and(|c| c.code() == "55000") && waited < HOLD => {
                tokio::time::sleep(STEP).await;
                waited += STEP;
            }
            Err(e) => return Err(Error::pg(what, e)),
        }
    }
}

/// How long a lost or closing session may keep the origin.
const HOLD: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_millis(50);
