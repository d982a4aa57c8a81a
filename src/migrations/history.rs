//! `swivel_schema_history`: what Flyway records of each migration run (rank, version,
//! description, script, checksum, who, when, how long, success) and what only swivel knows: how
//! each statement ran (directly, metadata-only, online with its rows and stall) and the original
//! table an online change kept.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::migrations::session::Session;

pub const TABLE: &str = "swivel_schema_history";

/// Which way a migration ran: Flyway's `SQL` for Up, `UNDO_SQL` for Down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    fn as_type(self) -> &'static str {
        match self {
            Direction::Up => "SQL",
            Direction::Down => "UNDO_SQL",
        }
    }
}

/// How one statement ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// Run as written, under a lock timeout.
    Direct,
    /// Through the online engine, which found it needs no copy and ran it directly.
    MetadataOnly,
    /// Copied online by the engine, then swapped.
    Online,
    /// PostgreSQL's `CREATE INDEX CONCURRENTLY`.
    Concurrently,
    /// MySQL's `ALGORITHM=INPLACE, LOCK=NONE`.
    Inplace,
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            How::Direct => "direct",
            How::MetadataOnly => "metadata-only",
            How::Online => "online",
            How::Concurrently => "concurrently",
            How::Inplace => "inplace",
        })
    }
}

/// One statement's run, as the history keeps it (a JSON array per migration).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatementRun {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how: Option<How>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_copied: Option<u64>,
    /// The longest the application's writes waited at cut-over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<f64>,
    /// The original table, kept after an online change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_table: Option<String>,
    /// Why it failed; a statement with an error did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One row of the history.
#[derive(Clone, Debug)]
pub struct Entry {
    pub rank: i64,
    pub version: String,
    pub description: String,
    pub direction: Direction,
    pub script: String,
    pub checksum: i32,
    pub installed_by: String,
    pub installed_on: String,
    pub execution_ms: i64,
    pub success: bool,
    pub statements: Vec<StatementRun>,
}

impl Entry {
    /// The statements that ran to the end.
    pub fn completed(&self) -> usize {
        self.statements.iter().filter(|s| s.error.is_none()).count()
    }
}

pub async fn exists(s: &mut Session) -> Result<bool> {
    let sql = match s {
        Session::Pg(..) => format!("SELECT to_regclass('{TABLE}') IS NOT NULL"),
        Session::My(_) => format!(
            "SELECT count(*) > 0 FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '{TABLE}'"
        ),
    };
    Ok(matches!(s.value(&sql).await?.as_deref(), Some("t" | "1")))
}

pub async fn create(s: &mut Session) -> Result<()> {
    let sql = match s {
        Session::Pg(..) => format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
                installed_rank integer PRIMARY KEY,
                version text NOT NULL,
                description text NOT NULL,
                type text NOT NULL,
                script text NOT NULL,
                checksum integer NOT NULL,
                installed_by text NOT NULL,
                installed_on timestamptz NOT NULL DEFAULT now(),
                execution_time integer NOT NULL,
                success boolean NOT NULL,
                statements text NOT NULL
            )"
        ),
        Session::My(_) => format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
                installed_rank int NOT NULL PRIMARY KEY,
                version varchar(128) NOT NULL,
                description varchar(256) NOT NULL,
                type varchar(20) NOT NULL,
                script varchar(1000) NOT NULL,
                checksum int NOT NULL,
                installed_by varchar(128) NOT NULL,
                installed_on timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
                execution_time int NOT NULL,
                success tinyint(1) NOT NULL,
                statements longtext NOT NULL
            ) DEFAULT CHARSET = utf8mb4"
        ),
    };
    s.execute(&sql).await
}

/// The whole history, oldest first (empty when the table does not exist yet).
pub async fn read(s: &mut Session) -> Result<Vec<Entry>> {
    if !exists(s).await? {
        return Ok(Vec::new());
    }
    let when = match s {
        Session::Pg(..) => "to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
        Session::My(_) => "DATE_FORMAT(CONVERT_TZ(installed_on, @@session.time_zone, '+00:00'), '%Y-%m-%d %H:%i:%s')",
    };
    let rows = s
        .rows(&format!(
            "SELECT installed_rank, version, description, type, script, checksum, installed_by, \
             {when}, execution_time, success, statements FROM {TABLE} ORDER BY installed_rank"
        ))
        .await?;
    rows.into_iter()
        .map(|r| {
            let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            let num = |i: usize| {
                f(i).parse::<i64>()
                    .map_err(|_| Error::refused(format!("{TABLE}: `{}` is not a number", f(i))))
            };
            Ok(Entry {
                rank: num(0)?,
                version: f(1),
                description: f(2),
                direction: if f(3) == "UNDO_SQL" {
                    Direction::Down
                } else {
                    Direction::Up
                },
                script: f(4),
                checksum: num(5)? as i32,
                installed_by: f(6),
                installed_on: f(7),
                execution_ms: num(8)?,
                success: matches!(f(9).as_str(), "t" | "1"),
                statements: serde_json::from_str(&f(10)).unwrap_or_default(),
            })
        })
        .collect()
}

/// Record a migration as started (not yet a success); returns its rank.
pub async fn insert(
    s: &mut Session,
    m: &crate::migrations::files::Migration,
    direction: Direction,
    user: &str,
) -> Result<i64> {
    let rank: i64 = s
        .value(&format!(
            "SELECT coalesce(max(installed_rank), 0) + 1 FROM {TABLE}"
        ))
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let sql = format!(
        "INSERT INTO {TABLE} (installed_rank, version, description, type, script, checksum, \
         installed_by, execution_time, success, statements) \
         VALUES ({rank}, {}, {}, '{}', {}, {}, {}, 0, {}, '[]')",
        s.literal(&m.version),
        s.literal(&m.description),
        direction.as_type(),
        s.literal(&m.script),
        m.checksum,
        s.literal(user),
        false_(s),
    );
    s.execute(&sql).await?;
    Ok(rank)
}

fn false_(s: &Session) -> &'static str {
    match s {
        Session::Pg(..) => "false",
        Session::My(_) => "0",
    }
}

/// Record how far a migration got.
pub async fn update(
    s: &mut Session,
    rank: i64,
    success: bool,
    execution_ms: i64,
    statements: &[StatementRun],
) -> Result<()> {
    let json = serde_json::to_string(statements)
        .map_err(|e| Error::refused(format!("recording the statements: {e}")))?;
    let success = match (s as &Session, success) {
        (Session::Pg(..), b) => b.to_string(),
        (Session::My(_), b) => (b as u8).to_string(),
    };
    let sql = format!(
        "UPDATE {TABLE} SET success = {success}, execution_time = {execution_ms}, \
         statements = {} WHERE installed_rank = {rank}",
        s.literal(&json)
    );
    s.execute(&sql).await
}

/// `repair`: forget a failed run.
pub async fn delete(s: &mut Session, rank: i64) -> Result<()> {
    s.execute(&format!(
        "DELETE FROM {TABLE} WHERE installed_rank = {rank}"
    ))
    .await
}

/// `repair`: record the file's checksum for an applied migration whose file was edited.
pub async fn realign(s: &mut Session, rank: i64, checksum: i32) -> Result<()> {
    s.execute(&format!(
        "UPDATE {TABLE} SET checksum = {checksum} WHERE installed_rank = {rank}"
    ))
    .await
}
