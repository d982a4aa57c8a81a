//! The MySQL/MariaDB backend: information_schema inspection, shadow table, keyset copy, a
//! binlog tail (as a replica with a server id of its own) and applier, and gh-ost's
//! sentry-table cut-over.

pub mod apply;
mod checksum;
mod cleanup;
mod conn;
mod copy;
mod cutover;
pub mod inspect;
mod probe;
pub mod shadow;
mod state;
mod tail;
pub mod values;

use std::sync::Arc;

use mysql_async::Conn;

use std::time::Duration;

use crate::control::Steering;
use crate::engine::backend::{
    Attempt, Backend, Blocker, ChunkCheck, KeyRange, PlanReport, Repair, Sessions, Shared,
};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::plan::{parse_alter, AlterSpec};
use crate::engine::progress::Progress;
use crate::engine::watermark::{Key, Watermark};
use crate::error::{Error, MyContext, Result};
use crate::options::RunOptions;

pub use cleanup::{cleanup_leftovers, list_changelogs};
pub use conn::MyTarget;
use inspect::TableInfo;
use shadow::ShadowInfo;
use tail::Tail;

/// `` `name` ``, doubling embedded backticks.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// How often a statement InnoDB rolled back as a deadlock victim or after a lock wait timeout
/// is run again before the run gives up.
pub const TRANSIENT_RETRIES: u64 = 10;

/// InnoDB ends one side of a deadlock (1213), or a lock wait past `innodb_lock_wait_timeout`
/// (1205), by rolling the statement or transaction back: it can simply run again. The copier and
/// the applier touch the same unique indexes of the shadow table, so their gap locks can
/// deadlock now and then (seen in the model test).
pub fn transient(e: &Error) -> bool {
    matches!(e.sqlstate(), Some("1213" | "1205"))
}

/// Whether table `db.name` exists.
pub async fn table_exists(conn: &mut Conn, db: &str, name: &str) -> Result<bool> {
    Ok(table_comment(conn, db, name).await?.is_some())
}

/// The comment of table `db.name`, if the table exists ("" when it has none).
pub async fn table_comment(conn: &mut Conn, db: &str, name: &str) -> Result<Option<String>> {
    use mysql_async::prelude::Queryable;
    conn.exec_first(
        "SELECT table_comment FROM information_schema.tables \
         WHERE table_schema = ? AND table_name = ?",
        (db, name),
    )
    .await
    .map_err(|e| Error::my(format!("looking for table {db}.{name}"), e))
}

/// The names of everything a run creates, derived from the table so a crashed run's leftovers
/// are recognizable: `_<table>_new` (shadow), `_<table>_swl` (changelog), `<table>__swivel_del`
/// (cut-over sentry), `_<table>_old` (the original table, kept after the swap).
///
/// The sentry's name must sort after the table's: RENAME takes its metadata locks in name order,
/// and it must queue on the table itself while the cut-over lock is held, where its exclusive
/// request outranks the application's writes. Named `_<table>_del` (gh-ost's name), it waited on
/// the sentry instead, and writes queued on the table got in between the unlock and the rename
/// (seen in the model test; see docs/mysql-cutover.md).
#[derive(Clone, Debug)]
pub struct Names {
    pub db: String,
    pub table: String,
    pub shadow: String,
    pub changelog: String,
    pub sentry: String,
    pub old: String,
}

impl Names {
    pub fn new(db: &str, table: &str) -> Self {
        Names {
            db: db.to_string(),
            table: table.to_string(),
            shadow: format!("_{table}_new"),
            changelog: format!("_{table}_swl"),
            sentry: format!("{table}__swivel_del"),
            old: format!("_{table}_old"),
        }
    }

    /// `` `db`.`name` `` for a table in the migrated table's database.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.db), quote_ident(name))
    }

    pub fn source(&self) -> String {
        self.qualified(&self.table)
    }

    pub fn shadow_q(&self) -> String {
        self.qualified(&self.shadow)
    }

    pub fn changelog_q(&self) -> String {
        self.qualified(&self.changelog)
    }
}

pub struct MyBackend {
    target: MyTarget,
    opts: RunOptions,
    alter: AlterSpec,
    ctl: Conn,
    /// Connection ids of our sessions, to end them if the run is interrupted.
    conn_ids: Sessions<u32>,
    progress: Arc<Progress>,
    watermark: Arc<Watermark>,
    steering: Arc<Steering>,
    names: Names,
    table: Option<TableInfo>,
    shadow: Option<ShadowInfo>,
    copier: Option<Conn>,
    tail: Option<Tail>,
    created_shadow: bool,
    /// The table's columns after the ALTER, as the plan's trial showed them.
    expected_shape: Option<String>,
    /// MariaDB rather than MySQL.
    mariadb: bool,
    /// How this server shows its binlog position (MySQL 8.4 dropped `SHOW MASTER STATUS`).
    binlog_status: &'static str,
    /// Where cut-over reads metadata locks (checked before anything is created).
    lock_view: Option<cutover::LockView>,
    /// The session cut-over writes its markers with, kept across attempts.
    marker_conn: Option<Conn>,
    /// The last marker written (cut-over and checksum drains share the sequence).
    markers: u64,
    /// The checksum's snapshot session, and its hash expressions.
    checksum_conn: Option<Conn>,
    /// A second snapshot, opened under the same lock: the shadow is hashed there while the
    /// source is hashed on `checksum_conn`.
    checksum_twin: Option<Conn>,
    hashing: Option<checksum::Hashing>,
    /// `--resume`: the checkpoint the plan read and checked.
    resume: Option<Checkpoint>,
}

impl MyBackend {
    pub async fn connect(opts: RunOptions, shared: Shared) -> Result<Self> {
        let alter = parse_alter(&sqlparser::dialect::MySqlDialect {}, &opts.alter, false)?;
        let target = MyTarget::parse(&opts.dsn, opts.password.as_deref())?;
        if target.url_has_password {
            tracing::warn!(
                "the connection URL holds a password, which other users can see in the process \
                 list; prefer MYSQL_PWD or --password-file"
            );
        }
        let (db, table) = match opts.table.split_once('.') {
            Some((db, table)) => (db.to_string(), table.to_string()),
            None => (target.db().to_string(), opts.table.clone()),
        };
        let ctl = target.connect("ctl").await?;
        let conn_ids = Sessions::new(ctl.id());
        Ok(MyBackend {
            target,
            opts,
            alter,
            ctl,
            conn_ids,
            progress: shared.progress,
            watermark: shared.watermark,
            steering: shared.steering,
            names: Names::new(&db, &table),
            table: None,
            shadow: None,
            copier: None,
            tail: None,
            created_shadow: false,
            expected_shape: None,
            mariadb: false,
            binlog_status: "SHOW MASTER STATUS",
            lock_view: None,
            marker_conn: None,
            // Above every marker an interrupted run wrote: a resumed stream replays those.
            markers: crate::engine::replay::now_micros(),
            checksum_conn: None,
            checksum_twin: None,
            hashing: None,
            resume: None,
        })
    }

    fn table(&self) -> Result<&TableInfo> {
        self.table
            .as_ref()
            .ok_or_else(|| Error::Stream("the table was not inspected".into()))
    }

    fn shadow(&self) -> Result<&ShadowInfo> {
        self.shadow
            .as_ref()
            .ok_or_else(|| Error::Stream("the shadow table was not created".into()))
    }

    fn next_marker(&mut self) -> u64 {
        self.markers += 1;
        self.markers
    }

    /// A column's name in the shadow table (the ALTER may rename it).
    fn renamed(&self, column: &str) -> String {
        self.alter
            .renames
            .iter()
            .find(|(old, _)| old.eq_ignore_ascii_case(column))
            .map_or(column.to_string(), |(_, new)| new.clone())
    }

    /// The control session again if the server closed it (a restart, a failover, a `KILL`),
    /// before the steps that need it: a checkpoint, the checksum, a cut-over attempt.
    async fn reopen_ctl_if_lost(&mut self) -> Result<()> {
        use mysql_async::prelude::Queryable;
        if let Err(e) = self.ctl.ping().await {
            tracing::warn!("the control session is gone ({e}); opening it again");
            let target = &self.target;
            self.ctl = crate::engine::replay::reconnect(
                "control",
                &mut 0,
                self.opts.default_retries,
                || target.connect("ctl"),
            )
            .await?;
            self.conn_ids.push(self.ctl.id());
        }
        Ok(())
    }

    /// A new session of ours, remembered so an interrupted run can end it.
    async fn session(&mut self, role: &str) -> Result<Conn> {
        let conn = self.target.connect(role).await?;
        self.conn_ids.push(conn.id());
        Ok(conn)
    }
}

impl Backend for MyBackend {
    type Probe = probe::MyProbe;
    type Copier = copy::MyCopier;

    async fn plan(&mut self) -> Result<PlanReport> {
        inspect::plan(self).await
    }

    async fn run_metadata_only(&mut self) -> Result<bool> {
        inspect::run_metadata_only(self).await
    }

    async fn prepare(&mut self) -> Result<()> {
        if self.lock_view.is_none() {
            self.lock_view = Some(cutover::lock_view(&mut self.ctl, self.mariadb).await?);
        }
        match self.resume.clone() {
            Some(checkpoint) => state::reopen(self, &checkpoint).await?,
            None => shadow::create(self).await?,
        }
        tail::start(self).await?;
        let copier = self.session("chunks").await?;
        self.copier = Some(copier);
        Ok(())
    }

    async fn copy_done(&mut self) -> Result<()> {
        Ok(())
    }

    async fn chunk_end(&mut self, after: Option<&Key>, rows: u64) -> Result<Option<Key>> {
        copy::chunk_end(self, after, rows).await
    }

    async fn reopen_copier(&mut self) -> Result<()> {
        self.copier = Some(self.session("chunks").await?);
        Ok(())
    }

    async fn open_copier(&mut self, _slot: usize) -> Result<copy::MyCopier> {
        copy::MyCopier::open(self).await
    }

    fn check_tail(&self) -> Result<()> {
        match &self.tail {
            Some(tail) => tail.check(),
            None => Ok(()),
        }
    }

    fn lag(&self) -> Duration {
        self.tail.as_ref().map_or(Duration::ZERO, |t| t.lag())
    }

    async fn cutover_attempt(&mut self, attempt: u32, lock_timeout: Duration) -> Result<Attempt> {
        self.reopen_ctl_if_lost().await?;
        cutover::attempt(self, attempt, lock_timeout).await
    }

    async fn blockers(&mut self) -> Result<Vec<Blocker>> {
        cutover::blockers(self).await
    }

    async fn kill_blocker(&mut self, blocker: &Blocker) -> Result<()> {
        use mysql_async::prelude::Queryable;
        let id: u64 = blocker
            .id
            .parse()
            .map_err(|_| Error::Stream(format!("`{}` is not a connection id", blocker.id)))?;
        self.ctl
            .query_drop(format!("KILL {id}"))
            .await
            .my_ctx("ending a session in cut-over's way")
    }

    fn resuming(&self) -> Option<&Checkpoint> {
        self.resume.as_ref()
    }

    async fn save_checkpoint(&mut self, mut checkpoint: Checkpoint) -> Result<()> {
        self.reopen_ctl_if_lost().await?;
        if let Some(tail) = &self.tail {
            checkpoint.stream = tail.applied_position();
        }
        state::save(&mut self.ctl, &self.names, &checkpoint).await
    }

    fn probe(&self) -> Result<Self::Probe> {
        Ok(probe::MyProbe::new(
            self.target.clone(),
            self.opts.password.clone(),
            self.names.clone(),
        ))
    }

    async fn checksum_begin(
        &mut self,
        lock_timeout: Duration,
    ) -> Result<std::result::Result<Duration, String>> {
        self.reopen_ctl_if_lost().await?;
        checksum::begin(self, lock_timeout).await
    }

    async fn checksum_chunk(&mut self, after: Option<&Key>, rows: u64) -> Result<ChunkCheck> {
        checksum::chunk(self, after, rows).await
    }

    async fn checksum_differences(&mut self, range: &KeyRange) -> Result<Vec<KeyRange>> {
        checksum::differences(self, range).await
    }

    async fn checksum_end(&mut self) -> Result<()> {
        checksum::end(self).await
    }

    async fn checksum_repair(
        &mut self,
        ranges: &[KeyRange],
        lock_timeout: Duration,
    ) -> Result<Repair> {
        checksum::repair(self, ranges, lock_timeout).await
    }

    async fn cleanup(&mut self, succeeded: bool, keep_shadow: bool) -> Result<()> {
        cleanup::after_run(self, succeeded, keep_shadow).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_names() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        let n = Names::new("db", "t");
        assert_eq!(n.shadow_q(), "`db`.`_t_new`");
        assert!(n.sentry.as_str() > "t", "the sentry sorts after the table");
    }
}
