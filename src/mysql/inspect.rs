//! Plan: check the server (binlog settings, privileges), the table (InnoDB, primary key, no
//! foreign keys or triggers, replayable column types, no leftovers of an earlier run) and the
//! ALTER itself, tried on an empty temporary copy. Nothing is changed.

use mysql_async::prelude::Queryable;

use super::values::Kind;
use super::MyBackend;
use crate::engine::backend::PlanReport;
use crate::engine::checkpoint::{self, Checkpoint};
use crate::error::{Error, MyContext, Result};

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// Generated (virtual or stored): never written, the shadow computes it.
    pub generated: bool,
}

#[derive(Clone, Debug)]
pub struct TableInfo {
    /// In table order, as the binlog sends them.
    pub columns: Vec<Column>,
    /// Positions of the primary key's columns, in key order.
    pub key: Vec<usize>,
}

impl TableInfo {
    pub fn key_names(&self) -> Vec<&str> {
        self.key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }
}

/// A column as information_schema gives it: name, data_type, column_type, extra, collation,
/// character set.
type ColumnRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub async fn plan(b: &mut MyBackend) -> Result<PlanReport> {
    let mut lines = Vec::new();
    check_server(b, &mut lines).await?;
    let names = b.names.clone();
    let (db, table) = (names.db.as_str(), names.table.as_str());
    if names.sentry.len() > 64 {
        return Err(Error::refused(format!(
            "the table name {table} is too long for the cut-over's sentry table {} (64 \
             characters at most): rename the table to at most 51 characters first",
            names.sentry
        )));
    }

    let found: Option<(String, Option<String>, Option<u64>)> = b
        .ctl
        .exec_first(
            "SELECT table_type, engine, table_rows FROM information_schema.tables \
             WHERE table_schema = ? AND table_name = ?",
            (db, table),
        )
        .await
        .my_ctx("looking up the table")?;
    let Some((table_type, engine, table_rows)) = found else {
        return Err(Error::refused(format!(
            "table {db}.{table} does not exist: check --table and the database in the URL"
        )));
    };
    if table_type != "BASE TABLE" {
        return Err(Error::refused(format!(
            "{db}.{table} is a {table_type}, not a table: only base tables can be migrated"
        )));
    }
    if !engine
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("InnoDB"))
    {
        return Err(Error::refused(format!(
            "{db}.{table} uses engine {}: swivel needs InnoDB (transactions and consistent reads)",
            engine.unwrap_or_default()
        )));
    }

    let rows: Vec<ColumnRow> = b
        .ctl
        .exec(
            "SELECT column_name, data_type, column_type, extra, collation_name, \
             character_set_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? \
             ORDER BY ordinal_position",
            (db, table),
        )
        .await
        .my_ctx("reading the table's columns")?;
    let mut columns = Vec::new();
    for (name, data_type, column_type, extra, _, charset) in &rows {
        let kind = Kind::of(
            &data_type.to_ascii_lowercase(),
            column_type,
            charset.as_deref(),
        )
        .ok_or_else(|| {
            Error::refused(format!(
                "column {name} has type {column_type}, which swivel cannot replay from the \
                     binlog yet; migrate this table with another tool"
            ))
        })?;
        // mysql_common 0.37 decodes a negative TIME(1) or TIME(2) with a fraction wrongly (an
        // unsigned underflow: a panic in debug builds, a wrong value in release ones).
        if data_type.eq_ignore_ascii_case("time")
            && (column_type.ends_with("(1)") || column_type.ends_with("(2)"))
        {
            return Err(Error::refused(format!(
                "column {name} is {column_type}: the binlog decoder swivel uses misreads negative \
                 TIME values with 1 or 2 fractional digits, so changes to it cannot be replayed \
                 exactly. TIME, TIME(3) to TIME(6) are fine; migrate this table with another tool"
            )));
        }
        if !b.mariadb && data_type.eq_ignore_ascii_case("json") {
            return Err(Error::refused(format!(
                "column {name} is JSON, which MySQL writes to the binlog in its binary form; \
                 swivel does not decode that yet, so it cannot replay changes to it exactly. \
                 Migrate this table with another tool"
            )));
        }
        let extra = extra.to_ascii_uppercase();
        columns.push(Column {
            name: name.clone(),
            kind,
            generated: extra.contains("VIRTUAL")
                || extra.contains("STORED")
                || extra.contains("PERSISTENT"),
        });
    }

    let key_names: Vec<String> = b
        .ctl
        .exec(
            "SELECT column_name FROM information_schema.statistics \
             WHERE table_schema = ? AND table_name = ? AND index_name = 'PRIMARY' \
             ORDER BY seq_in_index",
            (db, table),
        )
        .await
        .my_ctx("reading the primary key")?;
    if key_names.is_empty() {
        return Err(Error::refused(format!(
            "{db}.{table} has no primary key: swivel copies and replays rows by primary key. \
             Add one first (e.g. an AUTO_INCREMENT id)"
        )));
    }
    let mut key = Vec::new();
    for k in &key_names {
        let i = columns
            .iter()
            .position(|c| &c.name == k)
            .ok_or_else(|| Error::refused(format!("primary key column {k} not found")))?;
        let (_, data_type, _, _, collation, _) = &rows[i];
        let ordered_like_bytes = match columns[i].kind {
            Kind::Int | Kind::UInt(_) => true,
            Kind::Bytes | Kind::Text { .. } => {
                matches!(data_type.as_str(), "char" | "varchar")
                    && collation.as_deref().is_some_and(|c| c.ends_with("_bin"))
            }
            _ => false,
        };
        if !ordered_like_bytes {
            return Err(Error::refused(format!(
                "primary key column {k} is {data_type}{}: swivel needs integer keys, or \
                 CHAR/VARCHAR keys with a binary (_bin) collation, so that it orders keys \
                 exactly as the server does",
                collation
                    .as_deref()
                    .map(|c| format!(" with collation {c}"))
                    .unwrap_or_default()
            )));
        }
        key.push(i);
    }

    let fks: Vec<(String, String, String)> = b
        .ctl
        .exec(
            "SELECT constraint_name, table_name, referenced_table_name \
             FROM information_schema.referential_constraints \
             WHERE constraint_schema = ? AND (table_name = ? OR referenced_table_name = ?)",
            (db, table, table),
        )
        .await
        .my_ctx("looking for foreign keys")?;
    if let Some((name, from, to)) = fks.first() {
        return Err(Error::refused(format!(
            "foreign key {name} ({from} → {to}) involves {table}: a swap by rename would leave \
             it pointing at the old table. Drop the foreign key first, or migrate with another tool"
        )));
    }
    let triggers: Vec<String> = b
        .ctl
        .exec(
            "SELECT trigger_name FROM information_schema.triggers \
             WHERE event_object_schema = ? AND event_object_table = ?",
            (db, table),
        )
        .await
        .my_ctx("looking for triggers")?;
    if !triggers.is_empty() {
        return Err(Error::refused(format!(
            "{table} has triggers ({}): swivel would not carry them to the new table. Drop them \
             first and recreate them after the migration",
            triggers.join(", ")
        )));
    }
    let mut leftovers = Vec::new();
    for leftover in [&names.shadow, &names.changelog, &names.sentry] {
        if super::table_exists(&mut b.ctl, db, leftover).await? {
            leftovers.push(format!("{db}.{leftover}"));
        }
    }
    if b.opts.resume {
        b.resume = Some(resume_check(b).await?);
    } else if !leftovers.is_empty() {
        return Err(Error::refused(checkpoint::leftovers_message(
            &leftovers.join(", "),
            &b.opts.table,
        )));
    }

    try_alter(b, &key_names).await?;
    // Only a swap needs the name of the kept original: a change run directly does not.
    if !b.alter.metadata_only && super::table_exists(&mut b.ctl, db, &names.old).await? {
        return Err(Error::refused(format!(
            "{db}.{} exists, the table a swap would rename the original to: drop or rename it \
             first",
            names.old
        )));
    }
    if !b.alter.metadata_only {
        b.lock_view = Some(super::cutover::lock_view(&mut b.ctl, b.mariadb).await?);
    }

    let info = TableInfo { columns, key };
    let estimated_rows = table_rows.unwrap_or(0);
    lines.push(format!(
        "table {db}.{table}: {} columns, primary key ({}), about {estimated_rows} rows",
        info.columns.len(),
        info.key_names().join(", ")
    ));
    lines.push(if b.alter.metadata_only {
        "the change needs no row rewrite: it will run directly (ALGORITHM=INSTANT)".to_string()
    } else {
        format!(
            "the change rewrites rows: copy into {}, replay the binlog, {}, swap with a sentry \
             table",
            names.shadow,
            if b.opts.skip_checksum {
                "no checksum (--skip-checksum)"
            } else {
                "checksum every row"
            }
        )
    });
    b.table = Some(info);
    Ok(PlanReport {
        lines,
        metadata_only: b.alter.metadata_only,
        estimated_rows,
    })
}

/// `SHOW BINARY LOG STATUS` from MySQL 8.2 on (8.4 removed `SHOW MASTER STATUS`); MariaDB
/// keeps `SHOW MASTER STATUS`.
fn binlog_status_statement(version: &str, mariadb: bool) -> &'static str {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !mariadb && (major, minor) >= (8, 2) {
        "SHOW BINARY LOG STATUS"
    } else {
        "SHOW MASTER STATUS"
    }
}

async fn check_server(b: &mut MyBackend, lines: &mut Vec<String>) -> Result<()> {
    let (version, log_bin, format, image): (String, String, String, String) = b
        .ctl
        .query_first("SELECT @@version, @@log_bin, @@binlog_format, @@binlog_row_image")
        .await
        .my_ctx("reading the server settings")?
        .ok_or_else(|| Error::Stream("the server settings query returned nothing".into()))?;
    if log_bin != "1" && !log_bin.eq_ignore_ascii_case("ON") {
        return Err(Error::refused(
            "the binary log is off (log_bin): swivel follows changes through it. Start the \
             server with --log-bin (and binlog_format=ROW, binlog_row_image=FULL)",
        ));
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(Error::refused(format!(
            "binlog_format is {format}: swivel needs ROW. SET GLOBAL binlog_format = 'ROW' \
             (new sessions pick it up) and set it in the server's configuration"
        )));
    }
    if !image.eq_ignore_ascii_case("FULL") {
        return Err(Error::refused(format!(
            "binlog_row_image is {image}: swivel needs FULL to replay whole rows. \
             SET GLOBAL binlog_row_image = 'FULL' and set it in the server's configuration"
        )));
    }
    let grants: Vec<String> = b
        .ctl
        .query("SHOW GRANTS")
        .await
        .my_ctx("reading the user's privileges")?;
    let global: Vec<String> = grants
        .iter()
        .filter(|g| g.contains(" ON *.* "))
        .map(|g| g.to_ascii_uppercase())
        .collect();
    let has = |p: &str| {
        global
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains(p))
    };
    let mut missing = Vec::new();
    if !has("REPLICATION SLAVE") {
        missing.push("REPLICATION SLAVE");
    }
    if !(has("REPLICATION CLIENT") || has("BINLOG MONITOR") || has("SUPER")) {
        missing.push("REPLICATION CLIENT (BINLOG MONITOR on MariaDB)");
    }
    if !missing.is_empty() {
        return Err(Error::refused(format!(
            "the user lacks {} on *.*: swivel reads the binlog as a replica. \
             GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO the user",
            missing.join(" and ")
        )));
    }
    b.mariadb = version.to_ascii_lowercase().contains("mariadb");
    b.binlog_status = binlog_status_statement(&version, b.mariadb);
    lines.push(format!(
        "server {version}: binlog on, binlog_format=ROW, binlog_row_image=FULL"
    ));
    Ok(())
}

/// Try the ALTER on an empty temporary copy of the table: a syntax or semantic error shows now,
/// with nothing changed. The copy must keep the primary key, which the replay goes by.
async fn try_alter(b: &mut MyBackend, key_names: &[String]) -> Result<()> {
    let trial = format!("_swivel_try_{}", b.ctl.id());
    let q = super::quote_ident(&trial);
    b.ctl
        .query_drop(format!(
            "CREATE TEMPORARY TABLE {q} LIKE {}",
            b.names.source()
        ))
        .await
        .my_ctx("creating an empty copy to try the ALTER on")?;
    let tried = b
        .ctl
        .query_drop(format!("ALTER TABLE {q} {}", b.alter.actions))
        .await
        .map_err(|e| {
            Error::refused(format!(
                "the server rejects the ALTER: {}{}",
                match e {
                    mysql_async::Error::Server(s) => s.message,
                    other => other.to_string(),
                },
                b.alter.unparsed_note()
            ))
        });
    let shape = match &tried {
        Ok(()) => Some(shape(&mut b.ctl, &q).await),
        Err(_) => None,
    };
    let key_after: Result<Vec<String>> = match tried {
        Ok(()) => b
            .ctl
            .query_map(
                format!("SHOW KEYS FROM {q} WHERE Key_name = 'PRIMARY'"),
                |row: mysql_async::Row| row.get::<String, _>("Column_name").unwrap_or_default(),
            )
            .await
            .my_ctx("reading the altered copy's key"),
        Err(e) => Err(e),
    };
    let _ = b
        .ctl
        .query_drop(format!("DROP TEMPORARY TABLE IF EXISTS {q}"))
        .await;
    let key_after = key_after?;
    b.expected_shape = shape.transpose()?;
    let renamed: Vec<String> = key_names
        .iter()
        .map(|k| {
            b.alter
                .renames
                .iter()
                .find(|(old, _)| old.eq_ignore_ascii_case(k))
                .map_or(k.clone(), |(_, new)| new.clone())
        })
        .collect();
    let same = key_after.len() == renamed.len()
        && key_after
            .iter()
            .zip(&renamed)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
    if !same {
        return Err(Error::refused(format!(
            "the ALTER changes the primary key (({}) becomes ({})): swivel replays rows by \
             primary key, so it must stay the same. Change the key in a separate, offline step",
            key_names.join(", "),
            key_after.join(", ")
        )));
    }
    Ok(())
}

/// The columns of `table` (quoted) as `SHOW FULL COLUMNS` gives them, as one text: after a
/// direct change, the table's must be the trial's.
async fn shape(conn: &mut mysql_async::Conn, table: &str) -> Result<String> {
    let rows: Vec<mysql_async::Row> = conn
        .query(format!("SHOW FULL COLUMNS FROM {table}"))
        .await
        .my_ctx("reading the columns")?;
    let field = |r: &mysql_async::Row, name: &str| -> String {
        r.get_opt::<Option<String>, _>(name)
            .and_then(|v| v.ok())
            .flatten()
            .unwrap_or_else(|| "NULL".into())
    };
    Ok(rows
        .iter()
        .map(|r| {
            [
                "Field",
                "Type",
                "Collation",
                "Null",
                "Default",
                "Extra",
                "Comment",
            ]
            .iter()
            .map(|n| field(r, n))
            .collect::<Vec<_>>()
            .join(" ")
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Run a change that needs no rewrite with ALGORITHM=INSTANT under the lock wait timeout, then
/// check that the table's columns are the trial's. False when the server cannot do it
/// instantly: then the online copy does it.
pub async fn run_metadata_only(b: &mut MyBackend) -> Result<bool> {
    let sql = format!(
        "ALTER TABLE {} {}, ALGORITHM=INSTANT",
        b.names.source(),
        b.alter.actions
    );
    let timeout = lock_wait_secs(b.opts.cut_over_lock_timeout);
    let mut attempt = 0;
    loop {
        attempt += 1;
        b.ctl
            .query_drop(format!("SET SESSION lock_wait_timeout = {timeout}"))
            .await
            .my_ctx("setting the lock wait timeout")?;
        match b.ctl.query_drop(&sql).await {
            Ok(()) => break,
            // ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON): not instant on this server.
            Err(mysql_async::Error::Server(e)) if e.code == 1845 || e.code == 1846 => {
                tracing::info!(
                    "the server cannot run this instantly ({}); copying online",
                    e.message
                );
                return Ok(false);
            }
            Err(mysql_async::Error::Server(e))
                if e.code == 1205 && attempt <= b.opts.cut_over_retries =>
            {
                tracing::warn!("lock wait timed out (attempt {attempt}); retrying");
                tokio::time::sleep(crate::engine::backend::backoff(attempt)).await;
            }
            Err(e) => return Err(Error::my("running the change", e)),
        }
    }
    let now = shape(&mut b.ctl, &b.names.source()).await?;
    crate::engine::backend::verify_direct_change(b.expected_shape.as_deref(), &now)?;
    Ok(true)
}

/// MariaDB's lock_wait_timeout takes whole seconds.
pub fn lock_wait_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// `--resume`: the interrupted run's shadow and changelog must be there and be swivel's, the
/// run must be over (no fresh heartbeat), and its checkpoint one this run may go on from, at a
/// binlog position the server still has.
async fn resume_check(b: &mut MyBackend) -> Result<Checkpoint> {
    let names = b.names.clone();
    let again = format!(
        "remove the run's leftovers with `swivel cleanup --dsn … --table {}` and start again",
        b.opts.table
    );
    // A run killed during cut-over leaves the sentry. If the shadow table is still there, the
    // rename did not run (it needs the sentry gone): the original is untouched, and the sentry
    // goes once the run is known to be over. If the shadow is gone, the rename did run.
    let sentry = super::table_comment(&mut b.ctl, &names.db, &names.sentry).await?;
    let stale_sentry = match sentry.as_deref() {
        None => false,
        Some(super::cutover::SENTRY_COMMENT) => true,
        Some(_) if !super::table_exists(&mut b.ctl, &names.db, &names.shadow).await? => {
            return Err(Error::refused(format!(
                "the interrupted run had swapped the tables when it stopped: {db}.{t} is the \
                 altered table and {db}.{sentry} the original; there is nothing to resume. Keep \
                 the original with `RENAME TABLE {db}.{sentry} TO {db}.{old}` (or drop it), then \
                 remove the changelog with `swivel cleanup --dsn … --table {t}`",
                db = names.db,
                t = names.table,
                sentry = names.sentry,
                old = names.old,
            )));
        }
        Some(_) => return Err(super::cleanup::foreign(&names, &names.sentry)),
    };
    for name in [&names.shadow, &names.changelog] {
        if !super::table_exists(&mut b.ctl, &names.db, name).await? {
            return Err(Error::refused(format!(
                "nothing to resume: {}.{name} does not exist (the run was cleaned up, or never \
                 got that far); run without --resume",
                names.db
            )));
        }
    }
    if super::cleanup::own_changelog(&mut b.ctl, &names).await? != Some(true) {
        return Err(super::cleanup::foreign(&names, &names.shadow));
    }
    let checkpoint = super::state::load(&mut b.ctl, &names)
        .await?
        .ok_or_else(|| {
            Error::refused(format!(
                "{} holds no checkpoint: {again}",
                names.changelog_q()
            ))
        })?;
    checkpoint.check_resumable(&b.opts)?;
    super::state::check_position(&mut b.ctl, &checkpoint).await?;
    if stale_sentry {
        super::cutover::drop_sentry(&mut b.ctl, &names.db, &names.sentry).await?;
        tracing::info!(
            "the interrupted run stopped during cut-over, before the swap: dropped its sentry"
        );
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::binlog_status_statement;

    #[test]
    fn binlog_status_by_version() {
        assert_eq!(
            binlog_status_statement("8.4.3", false),
            "SHOW BINARY LOG STATUS"
        );
        assert_eq!(
            binlog_status_statement("8.0.39", false),
            "SHOW MASTER STATUS"
        );
        assert_eq!(
            binlog_status_statement("10.11.19-MariaDB-log", true),
            "SHOW MASTER STATUS"
        );
    }
}
