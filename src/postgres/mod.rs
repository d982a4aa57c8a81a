//! The PostgreSQL backend: catalog inspection, shadow table, keyset copy, logical replication
//! (pgoutput) tail and applier, and a rename cut-over under `lock_timeout`.

mod apply;
mod checksum;
mod cleanup;
mod conn;
mod copy;
mod cutover;
mod inspect;
mod origin;
pub mod pgoutput;
mod probe;
mod shadow;
mod state;
mod tail;
mod tls;

use std::sync::Arc;

use tokio_postgres::Client;

use std::time::Duration;

use crate::control::Steering;
use crate::engine::backend::{
    Attempt, Backend, Blocker, ChunkCheck, KeyRange, PlanReport, Repair, Sessions, Shared,
};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::plan::{parse_alter, AlterSpec};
use crate::engine::progress::Progress;
use crate::engine::watermark::{Key, Watermark};
use crate::error::{Error, PgContext, Result};
use crate::options::RunOptions;

pub use cleanup::{cleanup_leftovers, list_slots};
pub use conn::PgTarget;
use inspect::TableInfo;
use shadow::ShadowInfo;
use tail::Tail;

/// `"name"`, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Text values as statement parameters (every statement swivel prepares takes text).
pub fn text_params<T: tokio_postgres::types::ToSql + Sync>(
    values: &[T],
) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// `'text'`, doubling embedded quotes (standard_conforming_strings is on since 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The names of everything a run creates, derived from the table so a crashed run's leftovers
/// are recognizable: `_<table>_new`, `_<table>_old`, `_<table>_swl` (state), `swivel_<oid>` slot
/// and publication.
#[derive(Clone, Debug)]
pub struct Names {
    pub schema: String,
    pub table: String,
    pub shadow: String,
    pub old: String,
    pub state: String,
    pub publication: String,
    pub slot: String,
    /// The copy's replication origin (PostgreSQL 16+, see `origin`).
    pub origin: String,
}

impl Names {
    pub fn new(schema: &str, table: &str, oid: u32) -> Self {
        Names {
            schema: schema.to_string(),
            table: table.to_string(),
            shadow: format!("_{table}_new"),
            old: format!("_{table}_old"),
            state: format!("_{table}_swl"),
            publication: format!("swivel_{oid}"),
            slot: format!("swivel_{oid}"),
            origin: format!("swivel_{oid}"),
        }
    }

    /// `"schema"."name"` for a table in the migrated table's schema.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    pub fn source(&self) -> String {
        self.qualified(&self.table)
    }

    pub fn shadow_q(&self) -> String {
        self.qualified(&self.shadow)
    }

    pub fn state_q(&self) -> String {
        self.qualified(&self.state)
    }
}

pub struct PgBackend {
    /// `server_version_num` (e.g. 170004): version-specific paths are chosen by it.
    server_version: u32,
    /// The copy's writes carry the replication origin and the stream skips them (chosen by the
    /// plan, PostgreSQL 16+).
    copy_origin: bool,
    target: PgTarget,
    opts: RunOptions,
    alter: AlterSpec,
    ctl: Client,
    /// Backend pids of our sessions, to end them if the run is interrupted.
    pids: Sessions<i32>,
    progress: Arc<Progress>,
    watermark: Arc<Watermark>,
    steering: Arc<Steering>,
    table: Option<TableInfo>,
    names: Option<Names>,
    shadow: Option<ShadowInfo>,
    copier: Option<Client>,
    tail: Option<Tail>,
    created_shadow: bool,
    created_state: bool,
    created_publication: bool,
    /// `--resume`: the checkpoint the plan read and checked.
    resume: Option<Checkpoint>,
    /// `CREATE INDEX` statements of the shadow's secondary indexes, built after the copy.
    deferred_indexes: Vec<String>,
    /// The table's columns and constraints after the ALTER, as the plan's trial showed them.
    expected_shape: Option<String>,
    /// Cut-over's lock-and-swap session and its marker session, kept across attempts.
    cutover_sessions: Option<(Arc<Client>, Arc<Client>)>,
    /// The last stream marker emitted (cut-over and checksum drains share the sequence).
    markers: u64,
    /// The checksum's snapshot session, and its hash expressions.
    checksum_session: Option<Client>,
    hashing: Option<checksum::Hashing>,
}

impl PgBackend {
    pub async fn connect(opts: RunOptions, shared: Shared) -> Result<Self> {
        if opts.dsn.contains('@') && has_url_password(&opts.dsn) {
            tracing::warn!(
                "the connection URL holds a password, which other users can see in the process \
                 list; prefer PGPASSWORD or --password-file"
            );
        }
        let alter = parse_alter(&sqlparser::dialect::PostgreSqlDialect {}, &opts.alter, true)?;
        let target = PgTarget::parse(&opts.dsn, opts.password.as_deref())?;
        let (ctl, pid) = target.connect("ctl").await?;
        let server_version = ctl
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .ctx("reading the server version")?
            .get::<_, i32>(0) as u32;
        Ok(PgBackend {
            server_version,
            copy_origin: false,
            target,
            opts,
            alter,
            ctl,
            pids: Sessions::new(pid),
            progress: shared.progress,
            watermark: shared.watermark,
            steering: shared.steering,
            table: None,
            names: None,
            shadow: None,
            copier: None,
            tail: None,
            created_shadow: false,
            created_state: false,
            created_publication: false,
            resume: None,
            deferred_indexes: Vec::new(),
            expected_shape: None,
            cutover_sessions: None,
            // Above every marker an interrupted run wrote: a resumed stream replays those.
            markers: crate::engine::replay::now_micros(),
            checksum_session: None,
            hashing: None,
        })
    }

    fn table(&self) -> Result<&TableInfo> {
        self.table
            .as_ref()
            .ok_or_else(|| Error::Stream("the table was not inspected".into()))
    }

    fn names(&self) -> Result<&Names> {
        self.names
            .as_ref()
            .ok_or_else(|| Error::Stream("the table was not inspected".into()))
    }

    /// The control session, opened again if the server closed it (a restart, say): the
    /// checksum and cut-over start from it.
    async fn reopen_ctl_if_lost(&mut self) -> Result<()> {
        if self.ctl.is_closed() {
            let target = &self.target;
            let (ctl, pid) = crate::engine::replay::reconnect(
                "control",
                &mut 0,
                self.opts.default_retries,
                || target.connect("ctl"),
            )
            .await?;
            self.ctl = ctl;
            self.pids.push(pid);
        }
        Ok(())
    }

    fn next_marker(&mut self) -> u64 {
        self.markers += 1;
        self.markers
    }

    fn shadow(&self) -> Result<&ShadowInfo> {
        self.shadow
            .as_ref()
            .ok_or_else(|| Error::Stream("the shadow table was not created".into()))
    }
}

/// True when a postgres:// URL carries `user:password@`.
fn has_url_password(dsn: &str) -> bool {
    let rest = dsn.split_once("://").map_or(dsn, |(_, r)| r);
    let userinfo = rest.split('@').next().unwrap_or("");
    rest.contains('@') && userinfo.contains(':')
}

impl Backend for PgBackend {
    type Probe = probe::PgProbe;
    type Copier = copy::PgCopier;

    async fn plan(&mut self) -> Result<PlanReport> {
        inspect::plan(self).await
    }

    async fn run_metadata_only(&mut self) -> Result<bool> {
        inspect::run_metadata_only(self).await
    }

    async fn prepare(&mut self) -> Result<()> {
        match self.resume.clone() {
            Some(checkpoint) => shadow::reopen(self, &checkpoint).await?,
            None => {
                let (names, oid) = (self.names()?.clone(), self.table()?.oid);
                state::create(&self.ctl, &names, oid).await?;
                self.created_state = true;
                shadow::create(self).await?;
            }
        }
        tail::start(self).await?;
        self.reopen_copier().await
    }

    async fn copy_done(&mut self) -> Result<()> {
        shadow::build_deferred_indexes(self).await
    }

    async fn chunk_end(&mut self, after: Option<&Key>, rows: u64) -> Result<Option<Key>> {
        copy::chunk_end(self, after, rows).await
    }

    async fn reopen_copier(&mut self) -> Result<()> {
        let (copier, pid) = self.target.connect("chunks").await?;
        self.pids.push(pid);
        self.copier = Some(copier);
        Ok(())
    }

    async fn open_copier(&mut self, slot: usize) -> Result<copy::PgCopier> {
        copy::PgCopier::open(self, slot).await
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
        let _ = attempt; // markers number the drains, attempts only the log
        self.reopen_ctl_if_lost().await?;
        cutover::attempt(self, lock_timeout).await
    }

    async fn blockers(&mut self) -> Result<Vec<Blocker>> {
        let oid = self.table()?.oid;
        let rows = self
            .ctl
            .query(
                "SELECT DISTINCT a.pid, coalesce(a.usename::text, ''), coalesce(a.query, ''),
                        extract(epoch FROM now() - a.xact_start)::float8
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'relation' AND l.relation = $1 AND l.granted
                   AND NOT a.pid = ANY($2)",
                &[&oid, &self.pids.list()],
            )
            .await
            .ctx("listing the sessions that hold locks on the table")?;
        Ok(rows
            .iter()
            .map(|r| Blocker {
                id: r.get::<_, i32>(0).to_string(),
                user: r.get(1),
                query: r.get(2),
                transaction_age: r
                    .get::<_, Option<f64>>(3)
                    .map(|s| Duration::from_secs_f64(s.max(0.0))),
            })
            .collect())
    }

    async fn kill_blocker(&mut self, blocker: &Blocker) -> Result<()> {
        let pid: i32 = blocker
            .id
            .parse()
            .map_err(|_| Error::Stream(format!("`{}` is not a backend pid", blocker.id)))?;
        self.ctl
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .ctx("ending a session in cut-over's way")?;
        Ok(())
    }

    fn resuming(&self) -> Option<&Checkpoint> {
        self.resume.as_ref()
    }

    async fn save_checkpoint(&mut self, mut checkpoint: Checkpoint) -> Result<()> {
        self.reopen_ctl_if_lost().await?;
        let names = self.names()?.clone();
        checkpoint.after_copy = self.deferred_indexes.clone();
        checkpoint.stream = self
            .ctl
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&names.slot],
            )
            .await
            .ctx("reading the slot's position")?
            .and_then(|r| r.get::<_, Option<String>>(0))
            .map_or_else(String::new, |lsn| format!("slot {} at {lsn}", names.slot));
        state::save(&self.ctl, &names, &checkpoint).await
    }

    fn probe(&self) -> Result<Self::Probe> {
        let slot = self.names()?.slot.clone();
        Ok(probe::PgProbe::new(
            self.target.clone(),
            self.opts.password.clone(),
            slot,
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
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn url_passwords_are_detected() {
        assert!(has_url_password("postgres://u:secret@h/db"));
        assert!(!has_url_password("postgres://u@h:5432/db"));
        assert!(!has_url_password("postgres://h:5432/db"));
    }
}
