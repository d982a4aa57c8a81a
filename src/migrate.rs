//! The migrator: drives a backend through plan → shadow → copy ∥ tail → cut-over → cleanup,
//! and cleans up on every exit path.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, CutoverReport, PlanReport};
use crate::copy::copy_table;
use crate::error::{Error, Result};
use crate::mysql::MyBackend;
use crate::options::RunOptions;
use crate::postgres::PgBackend;
use crate::progress::{unix_ms, Phase, Progress};
use crate::watermark::Watermark;

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
    pub total_time: Duration,
}

/// Run one migration as `opts` says; `shutdown` resolving (Ctrl-C) stops it and cleans up.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<Outcome> {
    let progress = Arc::new(Progress::default());
    let watermark = Arc::new(Watermark::new());
    match dsn_scheme(&opts.dsn) {
        "postgres" | "postgresql" => {
            let mut backend =
                PgBackend::connect(opts.clone(), progress.clone(), watermark.clone()).await?;
            migrate(&mut backend, &opts, &progress, &watermark, shutdown).await
        }
        "mysql" | "mariadb" => {
            let mut backend =
                MyBackend::connect(opts.clone(), progress.clone(), watermark.clone()).await?;
            migrate(&mut backend, &opts, &progress, &watermark, shutdown).await
        }
        other => Err(Error::refused(format!(
            "unknown connection URL scheme `{other}`: use postgres://user@host:port/db or \
             mysql://user@host:port/db"
        ))),
    }
}

/// Remove what a crashed run left for `table` (`swivel cleanup`), on either server.
pub async fn cleanup_leftovers(
    dsn: &str,
    password: Option<&str>,
    table: &str,
) -> Result<Vec<String>> {
    match dsn_scheme(dsn) {
        "mysql" | "mariadb" => crate::mysql::cleanup_leftovers(dsn, password, table).await,
        _ => crate::postgres::cleanup_leftovers(dsn, password, table).await,
    }
}

/// The scheme of a connection URL (`postgres`, `mysql`, …), which picks the backend.
pub fn dsn_scheme(dsn: &str) -> &str {
    dsn.split_once("://").map_or("", |(scheme, _)| scheme)
}

async fn migrate<B: Backend>(
    backend: &mut B,
    opts: &RunOptions,
    progress: &Arc<Progress>,
    watermark: &Watermark,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome> {
    let started = Instant::now();
    let plan = backend.plan().await?;
    progress.rows_estimate.store(plan.estimated_rows, Relaxed);
    if !opts.execute {
        return Ok(Outcome::Planned(plan));
    }
    if plan.metadata_only && backend.run_metadata_only().await? {
        return Ok(Outcome::MetadataOnly(plan));
    }

    let reporter = opts.progress_interval.map(|every| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("swivel: {}", progress.line());
            }
        })
    });
    let status = match &opts.status_file {
        Some(path) => Some(StatusFile::create(
            path,
            progress.clone(),
            opts.status_interval,
        )?),
        None => None,
    };

    let result = tokio::select! {
        r = pipeline(backend, opts, progress, watermark) => r,
        _ = shutdown => Err(Error::Interrupted("stopped by signal; the original table is untouched".into())),
    };
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    let cleaned = backend.cleanup(result.is_ok()).await;
    let (cutover, copy_time) = match (result, cleaned) {
        (Err(e), cleaned) => {
            if let Err(c) = cleaned {
                tracing::error!("cleanup after failure also failed: {c}");
            }
            if let Some(status) = status {
                status.finish(Err(&e));
            }
            return Err(e);
        }
        (Ok(r), Err(c)) => {
            // The swap is done; say what is left behind rather than fail the run.
            tracing::warn!("the migration succeeded but cleanup failed: {c}; run `swivel cleanup`");
            r
        }
        (Ok(r), Ok(())) => r,
    };
    progress.set_phase(Phase::Done);
    let stats = MigrationStats {
        plan,
        rows_copied: progress.rows_copied.load(Relaxed),
        copy_time,
        changes_applied: progress.changes_applied.load(Relaxed),
        cutover,
        total_time: started.elapsed(),
    };
    if let Some(status) = status {
        status.finish(Ok(&stats));
    }
    Ok(Outcome::Migrated(stats))
}

/// `--status-file`: a JSON line of [`Progress::status_json`] every interval while the run goes,
/// and a last line with the outcome and when each phase began.
struct StatusFile {
    file: Arc<std::sync::Mutex<std::fs::File>>,
    progress: Arc<Progress>,
    writer: tokio::task::JoinHandle<()>,
}

impl StatusFile {
    fn create(path: &Path, progress: Arc<Progress>, every: Duration) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| {
            Error::refused(format!(
                "cannot write the status file {}: {e}",
                path.display()
            ))
        })?;
        let file = Arc::new(std::sync::Mutex::new(file));
        let (shared, out) = (progress.clone(), file.clone());
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if !write_line(&out, &shared.status_json()) {
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
    progress: &Progress,
    watermark: &Watermark,
) -> Result<(CutoverReport, Duration)> {
    backend.prepare().await?;
    progress.set_phase(Phase::Copying);
    let copy_started = Instant::now();
    copy_table(
        backend,
        watermark,
        progress,
        opts.chunk_size,
        opts.target_chunk_time,
        opts.max_rows_per_second,
    )
    .await?;
    let copy_time = copy_started.elapsed();
    progress.set_phase(Phase::CatchingUp);
    backend.copy_done().await?;
    progress.mark("indexes built");
    let report = backend.cutover().await?;
    progress.mark("swapped");
    Ok((report, copy_time))
}
