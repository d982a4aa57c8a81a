//! The migrator: drives a backend through plan → shadow → copy ∥ tail → cut-over → cleanup,
//! and cleans up on every exit path.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::control::hooks::{Hook, Hooks};
use crate::control::reporter::{eprintln_above, Reporter};
use crate::control::socket::{self, Server};
use crate::control::status::{self, RunInfo};
use crate::control::throttler;
use crate::engine::backend::{Backend, CutoverReport, PlanReport, Shared};
use crate::engine::checkpoint::{self, Checkpoint};
use crate::engine::checksum::ChecksumReport;
use crate::engine::copy::copy_table;
use crate::engine::cutover;
use crate::engine::progress::{unix_ms, Phase, Progress};
use crate::error::{Error, Result};
use crate::mysql::MyBackend;
use crate::options::RunOptions;
use crate::postgres::PgBackend;

#[derive(Debug)]
pub enum Outcome {
    /// Planned and checked only (no `--execute`).
    Planned(PlanReport),
    /// A change that needs no rewrite was run directly.
    MetadataOnly(PlanReport),
    /// Copied, replayed and swapped.
    Migrated(MigrationStats),
}

#[derive(Debug)]
pub struct MigrationStats {
    pub plan: PlanReport,
    pub rows_copied: u64,
    pub copy_time: Duration,
    pub changes_applied: u64,
    pub cutover: CutoverReport,
    /// None when `--skip-checksum`.
    pub checksum: Option<ChecksumReport>,
    pub total_time: Duration,
}

/// Run one migration as `opts` says; `shutdown` resolving (Ctrl-C) stops it and cleans up.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<Outcome> {
    let shared = Shared::new(&opts);
    match dsn_scheme(&opts.dsn) {
        "postgres" | "postgresql" => {
            let mut backend = PgBackend::connect(opts.clone(), shared.clone()).await?;
            migrate(&mut backend, &opts, &shared, shutdown).await
        }
        "mysql" | "mariadb" => {
            let mut backend = MyBackend::connect(opts.clone(), shared.clone()).await?;
            migrate(&mut backend, &opts, &shared, shutdown).await
        }
        other => Err(Error::refused(format!(
            "unknown connection URL scheme `{other}`: use postgres://user@host:port/db or \
             mysql://user@host:port/db"
        ))),
    }
}

/// What a crashed run left for `table` (`swivel cleanup`), on either server, each described;
/// with `remove`, dropped too.
pub async fn cleanup_leftovers(
    dsn: &str,
    password: Option<&str>,
    table: &str,
    remove: bool,
) -> Result<Vec<String>> {
    match dsn_scheme(dsn) {
        "mysql" | "mariadb" => crate::mysql::cleanup_leftovers(dsn, password, table, remove).await,
        _ => crate::postgres::cleanup_leftovers(dsn, password, table, remove).await,
    }
}

/// The runs' leftovers in the whole database (`swivel cleanup` without `--table`): PostgreSQL's
/// swivel slots with the WAL each holds, MySQL's swivel changelogs.
pub async fn list_leftovers(dsn: &str, password: Option<&str>) -> Result<Vec<String>> {
    match dsn_scheme(dsn) {
        "mysql" | "mariadb" => crate::mysql::list_changelogs(dsn, password).await,
        _ => crate::postgres::list_slots(dsn, password).await,
    }
}

/// The scheme of a connection URL (`postgres`, `mysql`, …), which picks the backend.
pub fn dsn_scheme(dsn: &str) -> &str {
    dsn.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// The database named in a connection URL (for hooks and the socket's name).
pub fn dsn_database(dsn: &str) -> &str {
    let rest = dsn.split_once("://").map_or(dsn, |(_, r)| r);
    rest.split_once('/')
        .map_or("", |(_, d)| d)
        .split(['?', '/'])
        .next()
        .unwrap_or("")
}

async fn migrate<B: Backend>(
    backend: &mut B,
    opts: &RunOptions,
    shared: &Shared,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome> {
    let started = Instant::now();
    let progress = &shared.progress;
    let hooks = Arc::new(Hooks::new(
        opts.hooks_path.clone(),
        dsn_database(&opts.dsn),
        &opts.table,
        &opts.alter,
    ));
    hooks.check()?;
    if opts.execute {
        hooks.run(Hook::Startup, progress, &[]).await?;
    }
    let plan = backend.plan().await?;
    progress.rows_estimate.store(plan.estimated_rows, Relaxed);
    if !opts.execute {
        return Ok(Outcome::Planned(plan));
    }
    if opts.announce {
        for line in &plan.lines {
            println!("{line}");
        }
    }
    if let Some(cp) = backend.resuming() {
        // Before the applier starts: it must judge the changes it replays by this watermark.
        shared.watermark.resume(cp.low.clone(), cp.copied);
        progress.rows_copied.store(cp.rows_copied, Relaxed);
        if opts.announce {
            println!(
                "resume: from the checkpoint saved {} ago: {} rows copied{}, stream from {}",
                crate::engine::progress::format_duration(Duration::from_millis(
                    unix_ms(SystemTime::now()).saturating_sub(cp.saved_unix_ms)
                )),
                cp.rows_copied,
                if cp.copied { " (the copy is done)" } else { "" },
                cp.stream
            );
        }
    }
    hooks.run(Hook::Validated, progress, &[]).await?;
    hooks.run(Hook::RowcountComplete, progress, &[]).await?;
    if plan.metadata_only && backend.resuming().is_none() && backend.run_metadata_only().await? {
        return Ok(Outcome::MetadataOnly(plan));
    }

    let result = {
        let steering = &shared.steering;
        let info = RunInfo {
            table: opts.table.clone(),
            alter: opts.alter.clone(),
            socket: opts.serve_socket_file.clone(),
            tcp_port: opts.serve_tcp_port,
            started: SystemTime::now(),
        };
        let _server = Server::start(
            socket::Context {
                steering: steering.clone(),
                progress: progress.clone(),
                info,
                hooks: hooks.clone(),
            },
            opts.serve_socket_file.as_deref(),
            opts.serve_tcp_port,
        )
        .await?;
        if opts.announce {
            if let Some(path) = &opts.serve_socket_file {
                eprintln_above(&format!(
                    "swivel: serving on unix socket {} (echo help | nc -U {})",
                    path.display(),
                    path.display()
                ));
            }
        }
        let status = match &opts.status_file {
            Some(path) => Some(StatusFile::create(
                path,
                shared.clone(),
                opts.status_interval,
            )?),
            None => None,
        };
        let reporter = Reporter::start(opts.progress_interval, shared);
        let probe = backend.probe()?;
        // A stop (signal, panic, critical load, panic flag file) ends the pipeline at its next
        // await, except inside a cut-over attempt: an attempt ends on its own within its
        // timeouts, and one stopped halfway could swap the tables without saying so. The
        // pipeline comes first in the select, so an attempt that swapped is reported as such.
        let stop = async {
            let why = tokio::select! {
                _ = shutdown => "stopped by signal".to_string(),
                why = steering.stopped() => why,
                why = throttler::run(probe, steering, opts.max_retained_wal) => why,
            };
            steering.stop(why.clone());
            while steering.cutting_over() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            why
        };
        let result = tokio::select! {
            biased;
            r = pipeline(backend, opts, shared, &hooks) => r,
            why = stop => Err(Error::Interrupted(format!("{why}; the original table is untouched"))),
            never = status_hook(&hooks, progress, opts.hooks_status_interval) => match never {},
        };
        drop(reporter);
        let keep_shadow = matches!(result, Err(Error::Checksum(_)));
        let cleaned = backend.cleanup(result.is_ok(), keep_shadow).await;
        let outcome = match (result, cleaned) {
            (Err(e), cleaned) => {
                if let Err(c) = cleaned {
                    tracing::error!("cleanup after failure also failed: {c}");
                }
                Err(e)
            }
            (Ok(r), Err(c)) => {
                // The swap is done; say what is left behind rather than fail the run.
                tracing::warn!(
                    "the migration succeeded but cleanup failed: {c}; run `swivel cleanup`"
                );
                Ok(r)
            }
            (Ok(r), Ok(())) => Ok(r),
        };
        let outcome = outcome.map(|(cutover, checksum, copy_time)| {
            progress.set_phase(Phase::Done);
            MigrationStats {
                plan,
                rows_copied: progress.rows_copied.load(Relaxed),
                copy_time,
                changes_applied: progress.changes_applied.load(Relaxed),
                cutover,
                checksum,
                total_time: started.elapsed(),
            }
        });
        if let Some(status) = status {
            status.finish(outcome.as_ref());
        }
        outcome
    };
    match &result {
        Ok(_) => hooks.report(Hook::Success, progress, &[]).await,
        Err(e) => {
            hooks
                .report(
                    Hook::Failure,
                    progress,
                    &[("SWIVEL_FAILURE_MESSAGE", e.to_string())],
                )
                .await
        }
    }
    result.map(Outcome::Migrated)
}

/// `on-status` every `every`, for as long as the run goes (it never returns).
async fn status_hook(hooks: &Hooks, progress: &Progress, every: Duration) -> Infallible {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        hooks.report(Hook::Status, progress, &[]).await;
    }
}

/// `--status-file`: a JSON line of [`Progress::status_json`] every interval while the run goes,
/// and a last line with the outcome and when each phase began.
struct StatusFile {
    file: Arc<std::sync::Mutex<std::fs::File>>,
    progress: Arc<Progress>,
    writer: tokio::task::JoinHandle<()>,
}

impl StatusFile {
    fn create(path: &Path, shared: Shared, every: Duration) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| {
            Error::refused(format!(
                "cannot write the status file {}: {e}",
                path.display()
            ))
        })?;
        let file = Arc::new(std::sync::Mutex::new(file));
        let (progress, out) = (shared.progress.clone(), file.clone());
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if !write_line(&out, &status::json(&shared.progress, &shared.steering)) {
                    return;
                }
            }
        });
        Ok(StatusFile {
            file,
            progress,
            writer,
        })
    }

    /// The last line: how the run ended, and when each phase began.
    fn finish(self, outcome: Result<&MigrationStats, &Error>) {
        self.writer.abort();
        let events: serde_json::Map<String, serde_json::Value> = self
            .progress
            .events()
            .into_iter()
            .map(|(name, at)| (name.to_string(), at.into()))
            .collect();
        let mut line = serde_json::json!({
            "unix_ms": unix_ms(SystemTime::now()),
            "events": events,
        });
        let fields = match outcome {
            Ok(stats) => serde_json::json!({
                "outcome": "migrated",
                "rows_copied": stats.rows_copied,
                "copy_ms": stats.copy_time.as_millis() as u64,
                "changes_applied": stats.changes_applied,
                "cutover_attempts": stats.cutover.attempts,
                "cutover_lock_ms": stats.cutover.lock_held.as_secs_f64() * 1000.0,
                "cutover_stall_ms": stats.cutover.stall.as_secs_f64() * 1000.0,
                "cutover_longest_stall_ms": stats.cutover.longest_stall.as_secs_f64() * 1000.0,
                "checksum": stats.checksum.as_ref().map(|k| serde_json::json!({
                    "rows": k.rows,
                    "chunks": k.chunks,
                    "repaired_chunks": k.repaired,
                    "ms": k.time.as_millis() as u64,
                    "stall_ms": k.stall.as_secs_f64() * 1000.0,
                })),
                "total_ms": stats.total_time.as_millis() as u64,
            }),
            Err(e) => serde_json::json!({ "outcome": "failed", "error": e.to_string() }),
        };
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        write_line(&self.file, &line);
    }
}

/// Append one JSON line; false (and a warning) if the file cannot be written.
fn write_line(file: &std::sync::Mutex<std::fs::File>, line: &serde_json::Value) -> bool {
    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
    match writeln!(file, "{line}") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("writing the status file: {e}");
            false
        }
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

async fn pipeline<B: Backend>(
    backend: &mut B,
    opts: &RunOptions,
    shared: &Shared,
    hooks: &Hooks,
) -> Result<(CutoverReport, Option<ChecksumReport>, Duration)> {
    let progress = &shared.progress;
    backend.prepare().await?;
    hooks.run(Hook::BeforeRowCopy, progress, &[]).await?;
    progress.set_phase(Phase::Copying);
    let copy_started = Instant::now();
    let at = |copied| {
        let rows = progress.rows_copied.load(Relaxed);
        Checkpoint::new(opts, shared.watermark.low(), copied, rows)
    };
    if !shared.watermark.is_done() {
        checkpoint::save(backend, at(false)).await?;
        copy_table(backend, shared, opts).await?;
    }
    let copy_time = copy_started.elapsed();
    progress.set_phase(Phase::CatchingUp);
    hooks.run(Hook::RowCopyComplete, progress, &[]).await?;
    checkpoint::save(backend, at(true)).await?;
    backend.copy_done().await?;
    checkpoint::save(backend, at(true)).await?;
    progress.mark("indexes built");
    let (report, checksum) = cutover::run(backend, opts, shared, hooks).await?;
    progress.mark("swapped");
    Ok((report, checksum, copy_time))
}
