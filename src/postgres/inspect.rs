//! Plan: inspect the table and the server, refuse what cannot be done safely, try the ALTER on
//! an empty copy inside a transaction that is rolled back.

use tokio_postgres::Client;

use super::{cleanup, quote_ident, shadow, state, Names, PgBackend};
use crate::engine::backend::PlanReport;
use crate::engine::checkpoint::{self, Checkpoint};
use crate::engine::watermark::{Key, KeyPart};
use crate::error::{Error, PgContext, Result};

/// How a key column's values are ordered and compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Int,
    /// Byte order: text with the "C" collation, and uuid.
    Text,
}

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, e.g. `character varying(20)`.
    pub type_sql: String,
}

#[derive(Clone, Debug)]
pub struct KeyColumn {
    pub name: String,
    pub type_sql: String,
    pub kind: KeyKind,
    /// Position among [`TableInfo::columns`] (the order pgoutput sends).
    pub position: usize,
}

#[derive(Clone, Debug)]
pub struct TableInfo {
    pub oid: u32,
    /// Replicated columns (not generated), in attribute order.
    pub columns: Vec<Column>,
    pub key: Vec<KeyColumn>,
}

impl TableInfo {
    /// Parse key values given as text (from pgoutput or `::text`) into a comparable key.
    pub fn parse_key<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> Result<Key> {
        self.key
            .iter()
            .zip(values)
            .map(|(col, v)| match col.kind {
                KeyKind::Int => v.parse::<i128>().map(KeyPart::Int).map_err(|_| {
                    Error::Stream(format!(
                        "key column {} has a non-integer value {v:?}",
                        col.name
                    ))
                }),
                KeyKind::Text => Ok(KeyPart::Text(v.to_string())),
            })
            .collect()
    }

    /// `("a", "b")` over the key columns, optionally qualified.
    pub fn key_list(&self) -> String {
        let cols: Vec<String> = self.key.iter().map(|k| quote_ident(&k.name)).collect();
        format!("({})", cols.join(", "))
    }

    /// `($n::text::type, …)`: key values passed as text parameters starting at `$first`.
    pub fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::text::{}", first + i, k.type_sql))
            .collect();
        format!("({})", params.join(", "))
    }
}

/// The oldest PostgreSQL swivel runs on (`server_version_num`): pgoutput carries logical
/// messages, in which the heartbeat and the cut-over's markers travel, from 14 on (13 refuses
/// the `messages` option; it is also out of community support since November 2025).
pub const MIN_VERSION: u32 = 140000;

async fn one_string(client: &Client, sql: &str, what: &str) -> Result<String> {
    Ok(client.query_one(sql, &[]).await.ctx(what)?.get(0))
}

pub async fn plan(b: &mut PgBackend) -> Result<PlanReport> {
    let mut lines = Vec::new();
    let client = &b.ctl;
    let version = one_string(client, "SHOW server_version", "reading the server version").await?;
    lines.push(format!(
        "server: PostgreSQL {version} at {}",
        b.target.describe()
    ));
    if b.server_version < MIN_VERSION {
        return Err(Error::refused(format!(
            "PostgreSQL {version} is older than 14, the oldest swivel supports: its change \
             stream (pgoutput) carries no logical messages before 14, and swivel's heartbeat \
             and cut-over markers travel in them. Upgrade the server (13 is out of community \
             support since November 2025)"
        )));
    }

    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relpersistence::text,
                    c.relrowsecurity, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid OR inhparent = c.oid),
                    pg_has_role(c.relowner, 'USAGE'), greatest(c.reltuples, 0)::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)",
            &[&b.opts.table],
        )
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) if db.code().code() == "42602" => Error::refused(format!(
                "--table {:?} is not a valid table name: {}",
                b.opts.table,
                db.message()
            )),
            _ => Error::pg("looking up the table", e),
        })?
        .ok_or_else(|| {
            Error::refused(format!(
                "table {} does not exist (or is not on the search_path); check --table, and \
                 qualify it as schema.name",
                b.opts.table
            ))
        })?;
    let oid: u32 = row.get(0);
    let names = Names::new(row.get::<_, &str>(1), row.get::<_, &str>(2), oid);
    let relkind: &str = row.get(3);
    let persistence: &str = row.get(4);
    let rls: bool = row.get(5);
    let replident: &str = row.get(6);
    let inherits: bool = row.get(7);
    let owner: bool = row.get(8);
    let mut estimated_rows = row.get::<_, i64>(9).max(0) as u64;
    let source = names.source();
    let refuse = |why: String| Err(Error::refused(format!("{source}: {why}")));

    match relkind {
        "r" => {}
        "p" => return refuse("is a partitioned table; migrate its partitions one by one".into()),
        _ => return refuse("is not an ordinary table (a view, sequence or foreign table?)".into()),
    }
    if inherits {
        return refuse("takes part in table inheritance, which swivel does not carry over".into());
    }
    match persistence {
        "p" => {}
        "u" => return refuse("is UNLOGGED: its changes never reach logical replication, so they cannot be replayed; use plain ALTER TABLE".into()),
        _ => return refuse("is a temporary table; use plain ALTER TABLE".into()),
    }
    if !owner {
        return refuse(
            "is owned by another role; connect as its owner (or a member of the owning role)"
                .into(),
        );
    }
    if names.shadow.len() > 63 {
        return refuse(format!(
            "the name is too long: the shadow table `{}` would exceed PostgreSQL's 63-byte limit",
            names.shadow
        ));
    }

    let columns: Vec<Column> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
             ORDER BY attnum",
            &[&oid],
        )
        .await
        .ctx("reading the columns")?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_sql: r.get(1),
        })
        .collect();

    let db_collate = one_string(
        client,
        "SELECT datcollate::text FROM pg_database WHERE datname = current_database()",
        "reading the collation",
    )
    .await?;
    let key_rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,
                    coalesce(co.collname::text, '')
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_collation co ON co.oid = a.attcollation
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .ctx("reading the primary key")?;
    if key_rows.is_empty() {
        return refuse("has no primary key; swivel copies and replays rows by key. Add one first (ALTER TABLE … ADD PRIMARY KEY USING INDEX …, after CREATE UNIQUE INDEX CONCURRENTLY)".into());
    }
    let mut key = Vec::new();
    for r in &key_rows {
        let name: String = r.get(0);
        let type_sql: String = r.get(1);
        let typname: &str = r.get(2);
        let collation: &str = r.get(3);
        let c_order = matches!(collation, "C" | "POSIX")
            || (collation == "default" && matches!(db_collate.as_str(), "C" | "POSIX"));
        let kind = match typname {
            "int2" | "int4" | "int8" => KeyKind::Int,
            "uuid" => KeyKind::Text,
            "text" | "varchar" if c_order => KeyKind::Text,
            "text" | "varchar" => return refuse(format!(
                "primary key column {name} is text with collation {collation:?}, whose order swivel cannot reproduce; give the column COLLATE \"C\" or migrate with plain ALTER TABLE")),
            _ => return refuse(format!(
                "primary key column {name} has type {type_sql}; swivel orders keys of integer, uuid and text COLLATE \"C\" columns")),
        };
        let position = columns.iter().position(|c| c.name == name).ok_or_else(|| {
            Error::refused(format!(
                "{source}: primary key column {name} is a generated column"
            ))
        })?;
        key.push(KeyColumn {
            name,
            type_sql,
            kind,
            position,
        });
    }
    if !matches!(replident, "d" | "f") {
        return refuse("has REPLICA IDENTITY NOTHING or USING INDEX; swivel needs the primary key (DEFAULT) or FULL to replay updates and deletes: ALTER TABLE … REPLICA IDENTITY DEFAULT".into());
    }
    if rls {
        return refuse(
            "has row-level security enabled; its policies are not carried over yet".into(),
        );
    }

    let list =
        |rows: Vec<tokio_postgres::Row>| -> Vec<String> { rows.iter().map(|r| r.get(0)).collect() };
    let views = list(
        client
            .query(
                "SELECT DISTINCT v.oid::regclass::text FROM pg_depend d
         JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND v.oid <> $1",
                &[&oid],
            )
            .await
            .ctx("looking for dependent views")?,
    );
    if !views.is_empty() {
        return refuse(format!("views depend on it ({}); a rename swap would leave them on the old table. Drop them and re-create them after the migration", views.join(", ")));
    }
    let fks = list(
        client
            .query(
                "SELECT conname::text || ' on ' || conrelid::regclass::text FROM pg_constraint
         WHERE contype = 'f' AND (conrelid = $1 OR confrelid = $1)",
                &[&oid],
            )
            .await
            .ctx("looking for foreign keys")?,
    );
    if !fks.is_empty() {
        return refuse(format!("foreign keys involve it ({}); swivel does not carry foreign keys over yet. Drop them for the migration and re-add them with NOT VALID + VALIDATE afterwards", fks.join(", ")));
    }
    let triggers = list(
        client
            .query(
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal",
                &[&oid],
            )
            .await
            .ctx("looking for triggers")?,
    );
    if !triggers.is_empty() {
        return refuse(format!(
            "has triggers ({}), which swivel does not carry over yet",
            triggers.join(", ")
        ));
    }
    let leftovers = list(client.query(
        "SELECT relname::text FROM pg_class WHERE relnamespace = to_regnamespace($1)::oid AND relname = ANY($2)
         UNION ALL SELECT pubname::text FROM pg_publication WHERE pubname = $3
         UNION ALL SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $3",
        &[&names.schema, &vec![names.shadow.clone(), names.old.clone(), names.state.clone()], &names.publication]).await.ctx("looking for leftovers")?);
    // Only a swap needs the name of the kept original: a change run directly does not.
    let old_exists = leftovers.contains(&names.old);
    let leftovers: Vec<String> = leftovers.into_iter().filter(|l| l != &names.old).collect();
    if b.opts.resume {
        b.resume = Some(resume_check(b, &names, oid).await?);
    } else if !leftovers.is_empty() {
        return refuse(checkpoint::leftovers_message(
            &leftovers.join(", "),
            &b.opts.table,
        ));
    }
    let client = &b.ctl;

    if estimated_rows == 0 {
        // Never analyzed: count, so progress and ETA mean something.
        estimated_rows = client
            .query_one(&format!("SELECT count(*) FROM ONLY {source}"), &[])
            .await
            .ctx("counting rows")?
            .get::<_, i64>(0) as u64;
    }

    let table = TableInfo { oid, columns, key };
    let shadow_info = if b.resume.is_some() {
        // The interrupted run's shadow table, altered and checked then: read its mapping.
        let info = shadow::mapping(client, &names, &table, &b.alter, true).await?;
        b.shadow = Some(info.clone());
        info
    } else {
        // Try the ALTER on an empty copy, so the server's own objections show now.
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                b.opts.cut_over_lock_timeout.as_millis()
            ))
            .await
            .ctx("starting the trial transaction")?;
        let trial = shadow::build(client, &names, &table, &b.alter).await;
        client
            .batch_execute("ROLLBACK")
            .await
            .ctx("rolling back the trial")?;
        trial?
    };
    let metadata_only = b.alter.metadata_only && !shadow_info.rewrote;
    if b.alter.metadata_only && shadow_info.rewrote && b.resume.is_none() {
        lines.push(
            "the server rewrites the table for this change (tried on an empty copy): it is copied online instead of run directly"
                .into(),
        );
    }
    if !metadata_only && old_exists {
        return refuse(format!("{} exists, from an earlier migration; drop or rename it first (it is the table swivel keeps after a cut-over)", names.qualified(&names.old)));
    }
    if !metadata_only {
        let wal_level = one_string(client, "SHOW wal_level", "reading wal_level").await?;
        if wal_level != "logical" {
            return Err(Error::refused(format!(
                "wal_level is {wal_level}; swivel tails changes through logical replication and needs wal_level = logical (set it in postgresql.conf and restart the server)"
            )));
        }
        let replication: bool = client
            .query_one(
                "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .ctx("reading the role's privileges")?
            .get(0);
        if !replication {
            return Err(Error::refused("the connecting role lacks the REPLICATION attribute, needed for a replication slot: ALTER ROLE … REPLICATION"));
        }
        // A resume goes on with the slot it has.
        if b.resume.is_none() {
            let free_slots: i64 = client
                .query_one("SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_replication_slots", &[])
                .await.ctx("counting replication slots")?.get(0);
            if free_slots < 1 {
                return Err(Error::refused(
                    "no free replication slot: raise max_replication_slots or drop an unused slot",
                ));
            }
        }
    }
    if !b.alter.parsed() {
        lines.push(format!(
            "swivel's parser cannot read the ALTER ({}); the server accepts it on an empty copy, so it runs online",
            b.alter.unparsed_reason.as_deref().unwrap_or("unknown syntax")
        ));
    }

    lines.push(format!(
        "table: {source}, about {estimated_rows} rows, key {}",
        table.key_list()
    ));
    lines.push(format!("change: ALTER TABLE {source} {}", b.alter.actions));
    if metadata_only {
        lines.push(
            "the change needs no rewrite (the server did not rewrite an empty copy): it runs directly under lock_timeout, no copy".into(),
        );
    } else {
        lines.push(format!(
            "plan: shadow table {}, publication and slot {} (checkpoints in {}), copy {} columns in key order, replay changes, {}, swap names under lock_timeout {}ms per attempt",
            names.shadow_q(), names.slot, names.state_q(), shadow_info.targets.len(),
            if b.opts.skip_checksum { "no checksum (--skip-checksum)" } else { "checksum every row" },
            b.opts.cut_over_lock_timeout.as_millis()
        ));
        if !shadow_info.uniques.is_empty() {
            lines.push(format!(
                "unique indexes besides the key: {}; replayed rows replace rows they collide with",
                shadow_info.uniques.len()
            ));
        }
        match super::origin::usable(client, b.server_version, oid).await? {
            Ok(()) => {
                b.copy_origin = true;
                lines.push(format!(
                    "copy path: origin-filtered: the copy's writes carry replication origin {} and the stream skips them undecoded",
                    names.origin
                ));
            }
            Err(why) => lines.push(format!(
                "copy path: plain: the stream decodes the copy's writes too ({why})"
            )),
        }
    }
    b.table = Some(table);
    b.names = Some(names);
    b.expected_shape = Some(shadow_info.shape);
    Ok(PlanReport {
        lines,
        metadata_only,
        estimated_rows,
    })
}

/// Run a change that needs no rewrite directly: its own statements (never one batch, where a
/// stray comment could swallow the COMMIT), under lock_timeout, retried; then check that the
/// catalog shows what the trial showed before saying it is done.
pub async fn run_metadata_only(b: &mut PgBackend) -> Result<bool> {
    let source = b.names()?.source();
    let sql = format!("ALTER TABLE {source} {}", b.alter.actions);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            b.ctl
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                    b.opts.cut_over_lock_timeout.as_millis()
                ))
                .await
                .ctx("starting the change")?;
            b.ctl.batch_execute(&sql).await.ctx("running the change")?;
            b.ctl
                .batch_execute("COMMIT")
                .await
                .ctx("committing the change")
        }
        .await;
        match result {
            Ok(()) => break,
            Err(e) => {
                let _ = b.ctl.batch_execute("ROLLBACK").await;
                if e.sqlstate() != Some("55P03") || attempt > b.opts.cut_over_retries {
                    return Err(e);
                }
                tracing::warn!("lock wait timed out (attempt {attempt}); retrying");
                tokio::time::sleep(crate::engine::backend::backoff(attempt)).await;
            }
        }
    }
    let now = shadow::shape(&b.ctl, &source).await?;
    crate::engine::backend::verify_direct_change(b.expected_shape.as_deref(), &now)?;
    Ok(true)
}

/// `--resume`: the interrupted run's objects must all be there and be swivel's, its slot idle
/// and whole, and its checkpoint one this run may go on from.
async fn resume_check(b: &PgBackend, names: &Names, oid: u32) -> Result<Checkpoint> {
    let client = &b.ctl;
    let again = format!(
        "remove the run's leftovers with `swivel cleanup --dsn … --table {}` and start again",
        b.opts.table
    );
    for (name, marker) in [
        (names.shadow_q(), shadow::shadow_marker(oid)),
        (names.state_q(), state::marker(oid)),
    ] {
        if !cleanup::own_table(client, &name, &marker).await? {
            return Err(Error::refused(format!(
                "nothing to resume: {name} does not exist (the run was cleaned up, or never got \
                 that far); run without --resume"
            )));
        }
    }
    let slot = client
        .query_opt(
            "SELECT active_pid, coalesce(wal_status, '') FROM pg_replication_slots
             WHERE slot_name = $1",
            &[&names.slot],
        )
        .await
        .ctx("looking for the run's slot")?;
    let publication = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&names.publication],
        )
        .await
        .ctx("looking for the run's publication")?;
    match slot {
        None => {
            return Err(Error::refused(format!(
                "replication slot {} is gone, so the changes made since the checkpoint cannot be \
                 replayed: {again}",
                names.slot
            )))
        }
        Some(r) if r.get::<_, Option<i32>>(0).is_some() => {
            return Err(Error::refused(format!(
                "a swivel run is active on this table (replication session pid {}); stop it \
                 first",
                r.get::<_, i32>(0)
            )))
        }
        Some(r) if r.get::<_, String>(1) == "lost" => {
            return Err(Error::refused(format!(
                "replication slot {} lost WAL it needed (max_slot_wal_keep_size), so the changes \
                 made since the checkpoint cannot be replayed: {again}",
                names.slot
            )))
        }
        Some(_) => {}
    }
    if publication.is_none() {
        return Err(Error::refused(format!(
            "publication {} is gone: {again}",
            names.publication
        )));
    }
    let checkpoint = state::load(client, names).await?.ok_or_else(|| {
        Error::refused(format!("{} holds no checkpoint: {again}", names.state_q()))
    })?;
    checkpoint.check_resumable(&b.opts)?;
    Ok(checkpoint)
}
