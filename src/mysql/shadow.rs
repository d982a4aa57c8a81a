//! The shadow table (`CREATE TABLE … LIKE` + the ALTER) and the changelog table that carries
//! heartbeats and the cut-over marker through the binlog, and the checkpoint.

use mysql_async::prelude::Queryable;

use super::{quote_ident, MyBackend};
use crate::error::{MyContext, Result};

/// Which source columns land in which shadow columns.
#[derive(Clone, Debug)]
pub struct ShadowInfo {
    /// Source column positions that are copied and replayed.
    pub sources: Vec<usize>,
    /// Their names in the shadow table (renames applied).
    pub targets: Vec<String>,
}

impl ShadowInfo {
    pub fn source_list(&self, columns: &[super::inspect::Column]) -> String {
        self.sources
            .iter()
            .map(|&i| quote_ident(&columns[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn target_list(&self) -> String {
        self.targets
            .iter()
            .map(|t| quote_ident(t))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The changelog table's comment: the mark of swivel's own tables.
pub const CHANGELOG_COMMENT: &str = "swivel changelog";
/// The changelog row that records that swivel made the shadow table.
pub const SHADOW_RECORD_ID: u32 = 4;

pub async fn create(b: &mut MyBackend) -> Result<()> {
    let names = b.names.clone();
    // The changelog first: it carries swivel's mark (its comment) and then the record that
    // swivel made the shadow, so `swivel cleanup` never drops a user's table of that name.
    b.ctl
        .query_drop(format!(
            "CREATE TABLE {} (id INT UNSIGNED PRIMARY KEY, hint VARCHAR(64) NOT NULL, \
             value BIGINT NOT NULL, state MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL) \
             ENGINE=InnoDB COMMENT='{CHANGELOG_COMMENT}'",
            names.changelog_q()
        ))
        .await
        .my_ctx("creating the changelog table")?;
    b.ctl
        .query_drop(format!(
            "CREATE TABLE {} LIKE {}",
            names.shadow_q(),
            names.source()
        ))
        .await
        .my_ctx("creating the shadow table")?;
    b.created_shadow = true;
    b.ctl
        .query_drop(format!(
            "REPLACE INTO {} (id, hint, value) VALUES ({SHADOW_RECORD_ID}, 'shadow made', 0)",
            names.changelog_q()
        ))
        .await
        .my_ctx("recording the shadow table in the changelog")?;
    b.ctl
        .query_drop(format!(
            "ALTER TABLE {} {}",
            names.shadow_q(),
            b.alter.actions
        ))
        .await
        .my_ctx("altering the shadow table")?;
    read_mapping(b).await
}

/// Which source columns the (altered) shadow table takes, and under which names.
pub async fn read_mapping(b: &mut MyBackend) -> Result<()> {
    let names = b.names.clone();

    let shadow_columns: Vec<(String, String)> = b
        .ctl
        .exec(
            "SELECT column_name, extra FROM information_schema.columns \
             WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            (names.db.as_str(), names.shadow.as_str()),
        )
        .await
        .my_ctx("reading the shadow table's columns")?;
    let writable = |name: &str| {
        shadow_columns.iter().any(|(c, extra)| {
            let extra = extra.to_ascii_uppercase();
            c.eq_ignore_ascii_case(name)
                && !(extra.contains("VIRTUAL")
                    || extra.contains("STORED")
                    || extra.contains("PERSISTENT"))
        })
    };
    let table = b.table()?;
    if !b.alter.parsed() {
        crate::engine::plan::refuse_ambiguous_renames(
            table.columns.iter().map(|c| c.name.as_str()),
            shadow_columns.iter().map(|(c, _)| c.clone()),
        )?;
    }
    let mut info = ShadowInfo {
        sources: Vec::new(),
        targets: Vec::new(),
    };
    for (i, column) in table.columns.iter().enumerate() {
        if column.generated {
            continue;
        }
        let target = b.renamed(&column.name);
        if writable(&target) {
            info.sources.push(i);
            info.targets.push(target);
        }
    }
    b.shadow = Some(info);
    Ok(())
}
