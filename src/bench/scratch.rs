//! The scratch table in sysbench's `sbtest` shape, the SQL that differs between the servers,
//! and the names of everything a bench run can leave behind.

use anyhow::Result;

use super::db::{Db, Target};

/// The bench's table. Its name says what it is, so nobody mistakes it for theirs.
pub const TABLE: &str = "swivel_bench";
/// The altered copy the copy-floor baseline fills.
pub const COPY_TABLE: &str = "swivel_bench_copy";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Postgres,
    MySql,
}

impl Server {
    pub fn of(target: &Target) -> Server {
        if target.is_postgres() {
            Server::Postgres
        } else {
            Server::MySql
        }
    }

    /// The change the bench makes unless told otherwise: `k` to bigint, which rewrites the
    /// table on both servers.
    pub fn default_alter(self) -> &'static str {
        match self {
            Server::Postgres => "ALTER COLUMN k TYPE bigint",
            Server::MySql => "MODIFY k BIGINT NOT NULL DEFAULT 0",
        }
    }

    /// Every table a run of swivel, a baseline or an interrupted one of them can leave.
    pub fn leftovers(self) -> Vec<String> {
        let mut names = vec![
            TABLE.to_string(),
            COPY_TABLE.to_string(),
            format!("_{TABLE}_new"),
            format!("_{TABLE}_old"),
        ];
        if self == Server::MySql {
            names.push(format!("_{TABLE}_swl"));
            names.push(format!("{TABLE}__swivel_del"));
        }
        names
    }

    pub fn drop_tables(self) -> String {
        format!("DROP TABLE IF EXISTS {}", self.leftovers().join(", "))
    }
}

/// Create the table afresh and fill it with `rows` rows in one statement on the server (no
/// rows cross the network), then build the secondary index and bring statistics up to date,
/// so every run starts from a table in the same state.
pub async fn create(db: &mut Db, server: Server, rows: u64) -> Result<()> {
    db.exec(&server.drop_tables()).await?;
    let columns = "id int NOT NULL, k int NOT NULL DEFAULT 0, \
                   c char(120) NOT NULL DEFAULT '', pad char(60) NOT NULL DEFAULT ''";
    match server {
        Server::Postgres => {
            db.exec(&format!(
                "CREATE TABLE {TABLE} ({columns});
                 INSERT INTO {TABLE}
                   SELECT i, (i::bigint * 7919) % {rows} + 1,
                          md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text),
                          md5((i + 3)::text)
                   FROM generate_series(1, {rows}) i;
                 ALTER TABLE {TABLE} ADD PRIMARY KEY (id);
                 CREATE INDEX {TABLE}_k ON {TABLE} (k);"
            ))
            .await?;
            // Outside a transaction: the first scan must not pay for hint bits and the copy
            // must not meet a checkpoint that the fill left owing.
            db.exec(&format!("VACUUM (FREEZE, ANALYZE) {TABLE}"))
                .await?;
            if let Err(e) = db.exec("CHECKPOINT").await {
                tracing::info!("no CHECKPOINT before the run ({e}); timings may vary more");
            }
        }
        Server::MySql => {
            let version = db.scalar("SELECT VERSION()").await?;
            let numbers = if version.contains("MariaDB") {
                format!("SELECT seq AS i FROM seq_1_to_{rows}")
            } else {
                db.exec(&format!(
                    "SET SESSION cte_max_recursion_depth = {}",
                    rows + 1
                ))
                .await?;
                format!(
                    "WITH RECURSIVE s (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
                     SELECT i FROM s"
                )
            };
            db.exec(&format!(
                "CREATE TABLE {TABLE} ({columns}, PRIMARY KEY (id)) ENGINE=InnoDB;
                 INSERT INTO {TABLE}
                   SELECT i, (i * 7919) % {rows} + 1,
                          concat(md5(i), md5(i + 1), md5(i + 2)), md5(i + 3)
                   FROM ({numbers}) n;
                 ALTER TABLE {TABLE} ADD INDEX {TABLE}_k (k);
                 ANALYZE TABLE {TABLE};"
            ))
            .await?;
        }
    }
    Ok(())
}

/// The columns of `table`, in order.
pub async fn columns(db: &mut Db, server: Server, table: &str) -> Result<Vec<String>> {
    let schema = match server {
        Server::Postgres => "current_schema()",
        Server::MySql => "DATABASE()",
    };
    let cols = db
        .column(&format!(
            "SELECT column_name FROM information_schema.columns
             WHERE table_schema = {schema} AND table_name = '{table}' ORDER BY ordinal_position"
        ))
        .await?;
    if cols.is_empty() {
        anyhow::bail!("table {table} has no columns (does it exist?)");
    }
    Ok(cols)
}
