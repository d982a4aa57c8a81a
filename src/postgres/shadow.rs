//! The shadow table: `CREATE TABLE _<t>_new (LIKE t INCLUDING ALL)`, the ALTER applied to it,
//! the owner and grants carried over, and the column mapping the copy and the applier use.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::inspect::TableInfo;
use super::{quote_ident, Names, PgBackend};
use crate::engine::backend::KeyRange;
use crate::engine::checkpoint::Checkpoint;
use crate::engine::plan::AlterSpec;
use crate::error::{Error, PgContext, Result};

/// How rows of the source map onto the shadow table.
#[derive(Clone, Debug)]
pub struct ShadowInfo {
    /// Shadow columns the copy fills (not generated, present in the source or renamed).
    pub targets: Vec<String>,
    /// For each target, the SQL that computes it from a source row.
    pub exprs: Vec<String>,
    /// The shadow's primary key columns.
    pub key_targets: Vec<String>,
    /// Column lists of the shadow's other unique indexes.
    pub uniques: Vec<Vec<String>>,
    /// The ALTER rewrote the (empty) shadow or rebuilt one of its indexes: the evidence that
    /// it would rewrite the real table under ACCESS EXCLUSIVE.
    pub rewrote: bool,
    /// The altered table's columns and constraints, as [`shape`] reads them.
    pub shape: String,
}

/// The storage of a table (first) and its indexes. (Relfilenodes, not oids: a
/// binary-coercible type change re-creates an index under a new oid on its old storage, which
/// is no rebuild.)
async fn storage(client: &Client, table: &str) -> Result<Vec<String>> {
    Ok(client
        .query_one(
            "SELECT ARRAY[(SELECT relfilenode::text FROM pg_class WHERE oid = $1::text::regclass)]
                    || coalesce((SELECT array_agg(c.relfilenode::text) FROM pg_index i
                                 JOIN pg_class c ON c.oid = i.indexrelid
                                 WHERE i.indrelid = $1::text::regclass), '{}')",
            &[&table],
        )
        .await
        .ctx("reading the table's storage")?
        .get(0))
}

/// Did the server rewrite the table, or build an index on new storage, between two readings
/// of [`storage`]? (An index dropped with its column is neither.)
fn rewritten(before: &[String], after: &[String]) -> bool {
    before.first() != after.first() || after[1..].iter().any(|s| !before.contains(s))
}

/// Columns (name, type, NOT NULL, default, collation) and CHECK constraints of `table`, as one
/// text: after a direct change, the table's shape must be the trial's.
pub async fn shape(client: &Client, table: &str) -> Result<String> {
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                        || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
                        || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
                        || coalesce(' COLLATE ' || co.collname, '')
                        || CASE WHEN a.attgenerated <> '' THEN ' GENERATED' ELSE '' END
                        || CASE WHEN a.attidentity <> '' THEN ' IDENTITY' ELSE '' END, ', ' ORDER BY a.attnum)
                    FROM pg_attribute a
                    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                    LEFT JOIN pg_collation co ON co.oid = a.attcollation AND co.collname <> 'default'
                    WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped), '')
               || '; ' || coalesce((SELECT string_agg(pg_get_constraintdef(c.oid), ', '
                        ORDER BY pg_get_constraintdef(c.oid))
                    FROM pg_constraint c WHERE c.conrelid = $1::text::regclass AND c.contype = 'c'), '')",
            &[&table],
        )
        .await
        .ctx("reading the table's columns and constraints")?
        .get(0))
}

/// Create the shadow table and read its mapping. Runs inside the caller's transaction when the
/// caller opened one (the plan's trial).
pub async fn build(
    client: &Client,
    names: &Names,
    table: &TableInfo,
    alter: &AlterSpec,
) -> Result<ShadowInfo> {
    let shadow = names.shadow_q();
    client
        .batch_execute(&format!(
            "CREATE TABLE {shadow} (LIKE {} INCLUDING ALL)",
            names.source()
        ))
        .await
        .ctx(format!("creating the shadow table {shadow}"))?;
    carry_storage_parameters(client, names).await?;
    let before = storage(client, &shadow).await?;
    client
        .batch_execute(&format!("ALTER TABLE {shadow} {}", alter.actions))
        .await
        .map_err(|e| {
            let e = Error::pg("", e);
            let msg = match &e {
                Error::Database { message, .. } => message.clone(),
                other => other.to_string(),
            };
            Error::refused(format!(
                "the server rejects the ALTER: {msg}{}; fix --alter",
                alter.unparsed_note()
            ))
        })?;
    let rewrote = rewritten(&before, &storage(client, &shadow).await?);
    mapping(client, names, table, alter, rewrote).await
}

/// The source's storage parameters (fillfactor, autovacuum settings, …), which `LIKE` does not
/// copy: the offline ALTER keeps them. Then autovacuum is switched off on the shadow until the
/// swap ([`autovacuum_as_source`]): started by the copy's millions of inserts, it would hold a
/// lock every cut-over attempt waits behind (and it only yields to a lock request after
/// deadlock_timeout, longer than an attempt's lock timeout).
async fn carry_storage_parameters(client: &Client, names: &Names) -> Result<()> {
    let (heap, toast, shadow_has_toast) = storage_parameters(client, names).await?;
    let autovacuum = |o: &String| o.starts_with("autovacuum_enabled=");
    let mut options: Vec<String> = heap.into_iter().filter(|o| !autovacuum(o)).collect();
    options.push("autovacuum_enabled=false".into());
    if shadow_has_toast {
        options.extend(
            toast
                .iter()
                .filter(|o| !autovacuum(o))
                .map(|o| format!("toast.{o}")),
        );
        options.push("toast.autovacuum_enabled=false".into());
    }
    client
        .batch_execute(&format!(
            "ALTER TABLE {} SET ({})",
            names.shadow_q(),
            options.join(", ")
        ))
        .await
        .ctx("setting the shadow table's storage parameters")
}

/// The source's storage parameters, its TOAST table's, and whether the shadow has a TOAST table.
async fn storage_parameters(
    client: &Client,
    names: &Names,
) -> Result<(Vec<String>, Vec<String>, bool)> {
    let row = client
        .query_one(
            "SELECT coalesce(c.reloptions, '{}'), coalesce(t.reloptions, '{}'), s.reltoastrelid <> 0
             FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid, pg_class s
             WHERE c.oid = $1::text::regclass AND s.oid = $2::text::regclass",
            &[&names.source(), &names.shadow_q()],
        )
        .await
        .ctx("reading the table's storage parameters")?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// For the swap: the shadow's autovacuum as the source has it (set explicitly, or not).
pub async fn autovacuum_as_source(client: &Client, names: &Names) -> Result<Vec<String>> {
    let (heap, toast, shadow_has_toast) = storage_parameters(client, names).await?;
    let shadow = names.shadow_q();
    let restore = |options: &[String], name: &str| match options
        .iter()
        .find_map(|o| o.strip_prefix("autovacuum_enabled="))
    {
        Some(v) => format!("ALTER TABLE {shadow} SET ({name}={v})"),
        None => format!("ALTER TABLE {shadow} RESET ({name})"),
    };
    let mut sql = vec![restore(&heap, "autovacuum_enabled")];
    if shadow_has_toast {
        sql.push(restore(&toast, "toast.autovacuum_enabled"));
    }
    Ok(sql)
}

/// How the source's rows map onto the (altered) shadow table; `rewrote` is what altering it
/// showed.
pub async fn mapping(
    client: &Client,
    names: &Names,
    table: &TableInfo,
    alter: &AlterSpec,
    rewrote: bool,
) -> Result<ShadowInfo> {
    let shadow = names.shadow_q();
    let shape = shape(client, &shadow).await?;

    let rows = client
        .query(
            "SELECT attname::text, attgenerated <> '' FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&shadow],
        )
        .await
        .ctx("reading the shadow table's columns")?;
    let renamed_from: HashMap<&str, &str> = alter
        .renames
        .iter()
        .map(|(old, new)| (new.as_str(), old.as_str()))
        .collect();
    let using: HashMap<&str, &str> = alter
        .using
        .iter()
        .map(|(c, e)| (c.as_str(), e.as_str()))
        .collect();
    if !alter.parsed() {
        crate::engine::plan::refuse_ambiguous_renames(
            table.columns.iter().map(|c| c.name.as_str()),
            rows.iter().map(|r| r.get::<_, String>(0)),
        )?;
    }
    let mut targets = Vec::new();
    let mut exprs = Vec::new();
    for r in &rows {
        let name: String = r.get(0);
        let generated: bool = r.get(1);
        let source_name = renamed_from.get(name.as_str()).copied().unwrap_or(&name);
        if generated || !table.columns.iter().any(|c| c.name == source_name) {
            continue; // generated, or added by the ALTER: the server fills it
        }
        exprs.push(match using.get(name.as_str()) {
            Some(expr) => format!("({expr})"),
            None => quote_ident(source_name),
        });
        targets.push(name);
    }

    let key_targets: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.ord",
            &[&shadow],
        )
        .await
        .ctx("reading the shadow table's key")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mapped_back: Vec<&str> = key_targets
        .iter()
        .map(|k| renamed_from.get(k.as_str()).copied().unwrap_or(k))
        .collect();
    let source_key: Vec<&str> = table.key.iter().map(|k| k.name.as_str()).collect();
    if mapped_back != source_key {
        return Err(Error::refused(format!(
            "the ALTER changes the primary key ({} becomes ({})); swivel needs the same key columns on both sides to replay changes",
            table.key_list(),
            key_targets.join(", ")
        )));
    }
    if let Some(k) = key_targets.iter().find(|k| using.contains_key(k.as_str())) {
        return Err(Error::refused(format!(
            "ALTER COLUMN {k} TYPE … USING on a primary key column is not supported; change the key's type without USING"
        )));
    }

    let mut uniques = Vec::new();
    for r in client
        .query(
            "SELECT i.indexrelid::regclass::text, i.indexprs IS NOT NULL OR i.indpred IS NOT NULL,
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord)
             FROM pg_index i WHERE i.indrelid = $1::text::regclass AND i.indisunique AND NOT i.indisprimary",
            &[&shadow],
        )
        .await
        .ctx("reading the shadow table's unique indexes")?
    {
        let index: String = r.get(0);
        if r.get::<_, bool>(1) {
            return Err(Error::refused(format!(
                "unique index {index} has an expression or a predicate; swivel replays rows only around plain unique columns"
            )));
        }
        let cols: Vec<String> = r.get(2);
        if cols.iter().any(|c| !targets.contains(c)) {
            return Err(Error::refused(format!(
                "unique index {index} covers a column the copy does not fill"
            )));
        }
        uniques.push(cols);
    }
    Ok(ShadowInfo {
        targets,
        exprs,
        key_targets,
        uniques,
        rewrote,
        shape,
    })
}

/// The comment that marks a shadow table as made by swivel for the table with `oid`.
pub fn shadow_marker(oid: u32) -> String {
    format!("swivel shadow table of oid {oid}; swivel cleanup drops it")
}

/// Create the shadow table for real, with the source's owner and grants.
pub async fn create(b: &mut PgBackend) -> Result<()> {
    let names = b.names()?.clone();
    let table = b.table()?.clone();
    let info = build(&b.ctl, &names, &table, &b.alter).await;
    // Created even if reading its mapping failed: cleanup must drop it.
    b.created_shadow = true;
    let info = info?;
    let shadow = names.shadow_q();
    // Marks the table as swivel's, so `swivel cleanup` never drops a user's table of that name;
    // cut-over gives the new table the source's comment back.
    b.ctl
        .batch_execute(&format!(
            "COMMENT ON TABLE {shadow} IS {}",
            super::quote_literal(&shadow_marker(table.oid))
        ))
        .await
        .ctx("marking the shadow table as swivel's")?;
    let row = b
        .ctl
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text, current_user::text FROM pg_class WHERE oid = $1",
            &[&table.oid],
        )
        .await
        .ctx("reading the owner")?;
    let (owner, me): (String, String) = (row.get(0), row.get(1));
    if owner != me {
        b.ctl
            .batch_execute(&format!(
                "ALTER TABLE {shadow} OWNER TO {}",
                quote_ident(&owner)
            ))
            .await
            .ctx("giving the shadow table the source's owner")?;
    }
    let grants = b
        .ctl
        .query(
            "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
                    a.is_grantable
             FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
             WHERE c.oid = $1 AND a.grantee <> c.relowner",
            &[&table.oid],
        )
        .await
        .ctx("reading the table's grants")?;
    for g in grants {
        let (privilege, grantee, grantable): (String, String, bool) =
            (g.get(0), g.get(1), g.get(2));
        let option = if grantable { " WITH GRANT OPTION" } else { "" };
        b.ctl
            .batch_execute(&format!(
                "GRANT {privilege} ON {shadow} TO {grantee}{option}"
            ))
            .await
            .ctx("copying grants to the shadow table")?;
    }
    defer_secondary_indexes(b).await?;
    b.shadow = Some(info);
    Ok(())
}

/// Drop the shadow's plain secondary indexes (not unique, not the key) until the copy is done:
/// building one from the finished table sorts once, where keeping it up to date row by row
/// costs a random index insert per row, which made the copy 1.4x slower on the bench.
async fn defer_secondary_indexes(b: &mut PgBackend) -> Result<()> {
    let shadow = b.names()?.shadow_q();
    let rows = b
        .ctl
        .query(
            "SELECT pg_get_indexdef(i.indexrelid), i.indexrelid::regclass::text FROM pg_index i
             WHERE i.indrelid = $1::text::regclass AND NOT i.indisunique AND NOT i.indisprimary
               AND NOT i.indisexclusion
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            &[&shadow],
        )
        .await
        .ctx("reading the shadow table's secondary indexes")?;
    for r in rows {
        let (definition, index): (String, String) = (r.get(0), r.get(1));
        b.ctl
            .batch_execute(&format!("DROP INDEX {index}"))
            .await
            .ctx(format!("deferring index {index} until after the copy"))?;
        b.deferred_indexes.push(definition);
    }
    Ok(())
}

/// Build the indexes deferred by [`defer_secondary_indexes`]. The applier's writes to the
/// shadow wait for each build; the lag this costs is caught up before cut-over. A resumed run
/// may find some built already (a build is one transaction: built whole or not at all).
pub async fn build_deferred_indexes(b: &mut PgBackend) -> Result<()> {
    for definition in std::mem::take(&mut b.deferred_indexes) {
        let sql = match definition.strip_prefix("CREATE INDEX ") {
            Some(rest) => format!("CREATE INDEX IF NOT EXISTS {rest}"),
            None => definition.clone(),
        };
        b.ctl
            .batch_execute(&sql)
            .await
            .ctx(format!("building a deferred index: {definition}"))?;
    }
    // The new table's statistics, so that the planner knows it from the swap on (autovacuum is
    // off on the shadow until then). It does not block the applier's writes.
    let shadow = b.names()?.shadow_q();
    b.ctl
        .batch_execute(&format!("ANALYZE {shadow}"))
        .await
        .ctx("analyzing the shadow table")
}

/// `--resume`: take up the shadow table the interrupted run made (its mapping was read by the
/// plan). Rows above the checkpoint's watermark may hold a copy the stream will not bring up to
/// date: they go, and the copy reads them again.
pub async fn reopen(b: &mut PgBackend, checkpoint: &Checkpoint) -> Result<()> {
    b.created_shadow = true;
    b.created_state = true;
    b.created_publication = true;
    b.deferred_indexes = checkpoint.after_copy.clone();
    if checkpoint.copied {
        return Ok(());
    }
    let (names, shadow) = (b.names()?.clone(), b.shadow()?.clone());
    let keys: Vec<String> = shadow.key_targets.iter().map(|k| quote_ident(k)).collect();
    let range = KeyRange {
        after: checkpoint.low.clone(),
        upto: None,
    };
    let mut values = Vec::new();
    let filter =
        super::copy::range_filter(b, &format!("({})", keys.join(", ")), &range, &mut values)?;
    let removed = b
        .ctl
        .execute(
            &format!("DELETE FROM ONLY {} {filter}", names.shadow_q()),
            &super::text_params(&values),
        )
        .await
        .ctx("removing the rows copied after the checkpoint")?;
    tracing::info!(
        "resume: removed {removed} rows copied after the checkpoint; they are copied again"
    );
    Ok(())
}
