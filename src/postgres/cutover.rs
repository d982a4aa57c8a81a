//! Cut-over: once the applier has caught up, lock the table against writes (EXCLUSIVE, under
//! `lock_timeout`), emit a marker into the stream, wait until the applier has applied
//! everything before it, then take ACCESS EXCLUSIVE, carry sequences and index names over,
//! swap the names, commit. Draining under EXCLUSIVE keeps the table readable meanwhile, which
//! the applier itself needs: it reads rows back from the source for updates that did not send
//! their unchanged TOASTed values. Any failure rolls back: the original table stays in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{quote_ident, Names, PgBackend};
use crate::engine::backend::Attempt;
use crate::error::{Error, PgContext, Result};

/// One attempt; the original table is in place and unchanged unless it reports a swap.
pub async fn attempt(b: &mut PgBackend, lock_timeout: Duration) -> Result<Attempt> {
    let names = b.names()?.clone();
    let (client, marker_client) = sessions(b).await?;
    let swap = swap_statements(&client, b, &names).await?;
    let next_marker = b.next_marker();
    let tail = b
        .tail
        .as_ref()
        .ok_or_else(|| Error::Stream("the change stream is not running".into()))?;
    tail.check()?;
    let timeout_ms = lock_timeout.as_millis();
    client
        .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{timeout_ms}ms'"))
        .await
        .ctx("starting the cut-over")?;
    // From here until COMMIT or ROLLBACK returns, writes to the table may wait on us.
    let requested = Instant::now();
    let locked = client
        .batch_execute(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", names.source()))
        .await
        .ctx("locking the table");
    let lock_started = Instant::now();
    let why = match locked {
        Err(e) if e.sqlstate() == Some("55P03") => format!("lock wait exceeded {timeout_ms}ms"),
        Err(e) if client.is_closed() => format!("the session was lost ({e})"),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        Ok(()) => {
            // Every write to the table committed before this message: once the applier
            // reaches it, the shadow table holds them all.
            let marker = next_marker;
            super::tail::emit(&marker_client, tail.prefix(), &format!("cutover:{marker}")).await?;
            if tail.wait_marker(marker, lock_timeout).await? {
                let swapped = client.batch_execute(&swap).await.ctx("swapping the tables");
                match swapped {
                    Ok(()) => {
                        client
                            .batch_execute("COMMIT")
                            .await
                            .ctx("committing the cut-over")?;
                        return Ok(Attempt {
                            swapped: true,
                            why: String::new(),
                            lock_held: lock_started.elapsed(),
                            stall: requested.elapsed(),
                        });
                    }
                    Err(e) if e.sqlstate() == Some("55P03") => {
                        format!("the rename's lock wait exceeded {timeout_ms}ms")
                    }
                    Err(e) if client.is_closed() => {
                        format!("the session was lost before the swap ({e})")
                    }
                    Err(e) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(e);
                    }
                }
            } else {
                format!("the applier did not drain within {timeout_ms}ms")
            }
        }
    };
    let _ = client.batch_execute("ROLLBACK").await;
    Ok(Attempt::failed(why, requested.elapsed()))
}

/// The cut-over's two sessions (lock and swap; marker), opened again if the last attempt's
/// died (killed, network): its locks died with it.
async fn sessions(b: &mut PgBackend) -> Result<(Arc<Client>, Arc<Client>)> {
    if let Some((c, m)) = &b.cutover_sessions {
        if !c.is_closed() && !m.is_closed() {
            return Ok((c.clone(), m.clone()));
        }
    }
    let (client, pid) = b.target.connect("cutover").await?;
    b.pids.push(pid);
    // If swivel dies while this session waits for its lock, the server notices within a
    // second (PostgreSQL 14+) instead of leaving the request queued in front of the
    // application's writes until lock_timeout.
    client
        .batch_execute("SET client_connection_check_interval = 1000")
        .await
        .ctx("asking the server to notice a dead client")?;
    let (marker, pid) = b.target.connect("marker").await?;
    b.pids.push(pid);
    let sessions = (Arc::new(client), Arc::new(marker));
    b.cutover_sessions = Some(sessions.clone());
    Ok(sessions)
}

/// Fit a name into PostgreSQL's 63 bytes.
fn fit(name: String) -> String {
    let mut name = name;
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The statements run under the lock: sequences, index names, then the two renames.
async fn swap_statements(client: &Client, b: &PgBackend, names: &Names) -> Result<String> {
    let table = b.table()?;
    let shadow = b.shadow()?;
    let renamed: HashMap<&str, &str> = b
        .alter
        .renames
        .iter()
        .map(|(o, n)| (o.as_str(), n.as_str()))
        .collect();
    let to_shadow = |col: &str| renamed.get(col).copied().unwrap_or(col).to_string();
    let mut sql = vec![format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        names.source()
    )];

    // Sequences: a serial's sequence is owned by the old table and would be dropped with it;
    // an identity column has a sequence of its own on each table: carry the position over.
    for r in client
        .query(
            "SELECT s.oid::regclass::text, a.attname::text, d.deptype::text FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.refobjid = $1 AND d.deptype IN ('a', 'i')",
            &[&table.oid],
        )
        .await
        .ctx("reading the table's sequences")?
    {
        let (sequence, column, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let target = to_shadow(&column);
        if !shadow.targets.contains(&target) {
            continue; // the column is dropped by the ALTER
        }
        if kind == "a" {
            sql.push(format!("ALTER SEQUENCE {sequence} OWNED BY {}.{}", names.shadow_q(), quote_ident(&target)));
        } else {
            sql.push(format!(
                "SELECT setval(pg_get_serial_sequence({}, {}), last_value, is_called) FROM {sequence}",
                super::quote_literal(&names.shadow_q()),
                super::quote_literal(&target)
            ));
        }
    }

    // Index names: give the new table's indexes the names the application knows.
    let indexes = |oid_sql: String| async move {
        client
            .query(
                &format!(
                    "SELECT c.relname::text, i.indisprimary, i.indisunique, am.amname::text,
                            ARRAY(SELECT coalesce(a.attname::text, '') FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                                  LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o),
                            coalesce(pg_get_expr(i.indexprs, i.indrelid), ''), coalesce(pg_get_expr(i.indpred, i.indrelid), '')
                     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
                     WHERE i.indrelid = {oid_sql} ORDER BY c.oid"
                ),
                &[],
            )
            .await
            .ctx("reading index names")
    };
    let old = indexes(table.oid.to_string()).await?;
    let mut new = indexes(format!(
        "{}::regclass",
        super::quote_literal(&names.shadow_q())
    ))
    .await?;
    for o in &old {
        let cols: Vec<String> = o
            .get::<_, Vec<String>>(4)
            .iter()
            .map(|c| to_shadow(c))
            .collect();
        let matches = |n: &tokio_postgres::Row| {
            n.get::<_, bool>(1) == o.get::<_, bool>(1)
                && n.get::<_, bool>(2) == o.get::<_, bool>(2)
                && n.get::<_, String>(3) == o.get::<_, String>(3)
                && n.get::<_, Vec<String>>(4) == cols
                && n.get::<_, String>(5) == o.get::<_, String>(5)
                && n.get::<_, String>(6) == o.get::<_, String>(6)
        };
        if let Some(pos) = new.iter().position(matches) {
            let n = new.remove(pos);
            let (old_name, new_name): (String, String) = (o.get(0), n.get(0));
            let parked = fit(format!("_{old_name}_old"));
            sql.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                names.qualified(&old_name),
                quote_ident(&parked)
            ));
            sql.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                names.qualified(&new_name),
                quote_ident(&old_name)
            ));
        }
    }

    // Autovacuum was off on the shadow during the copy; the new table has the source's setting.
    sql.extend(super::shadow::autovacuum_as_source(client, names).await?);

    // The shadow carries swivel's marker comment: the new table gets the source's back.
    let comment: Option<String> = client
        .query_one("SELECT obj_description($1, 'pg_class')", &[&table.oid])
        .await
        .ctx("reading the table's comment")?
        .get(0);
    sql.push(format!(
        "COMMENT ON TABLE {} IS {}",
        names.shadow_q(),
        comment
            .as_deref()
            .map_or("NULL".into(), super::quote_literal)
    ));
    sql.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        names.source(),
        quote_ident(&names.old)
    ));
    sql.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        names.shadow_q(),
        quote_ident(&names.table)
    ));
    Ok(sql.join(";\n"))
}
