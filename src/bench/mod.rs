//! `swivel bench`: a scratch table in sysbench's shape, a fixed-rate write workload, swivel's
//! migration and then each baseline on a fresh copy of the same table under the same
//! workload, and a report of what each cost and what the application felt.

mod baselines;
mod chart;
mod db;
mod report;
mod scratch;
mod workload;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use swivel::engine::progress::unix_ms;

pub use baselines::Baseline;
use db::Target;
use report::{BenchReport, Lag, Mark, Phases, Status, ToolRun, WriteStats};
use scratch::{Server, TABLE};
use workload::{Sample, Workload};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub dsn: String,
    pub password: Option<String>,
    /// Handed to the swivel child as is.
    pub password_file: Option<PathBuf>,
    pub rows: u64,
    pub write_rate: u32,
    /// None: the default change (k to bigint).
    pub alter: Option<String>,
    /// None: offline, copy-floor and the server's own tool.
    pub baselines: Option<Vec<Baseline>>,
    pub report_dir: PathBuf,
    /// Writes before each tool starts, and after it ends.
    pub warmup: Duration,
    pub cooldown: Duration,
    /// More `swivel run` options, e.g. `--target-chunk-time 100ms`.
    pub swivel_args: Vec<String>,
}

/// Run the bench; whatever happens, also when `shutdown` resolves (Ctrl-C), drop everything
/// it created.
pub async fn run(opts: BenchOptions, shutdown: impl Future<Output = ()>) -> Result<BenchReport> {
    let target = Target::parse(&opts.dsn, opts.password.as_deref())?;
    let server = Server::of(&target);
    let baselines = opts
        .baselines
        .clone()
        .unwrap_or_else(|| Baseline::defaults(server));
    for b in &baselines {
        b.check(server)?;
    }
    std::fs::create_dir_all(&opts.report_dir)
        .with_context(|| format!("creating the report folder {}", opts.report_dir.display()))?;
    let result = tokio::select! {
        r = bench(&opts, &target, server, &baselines) => r,
        _ = shutdown => Err(anyhow::anyhow!("interrupted; everything the bench created is being dropped")),
    };
    // Children were killed when their futures dropped; now their leftovers go too.
    let cleaned = clean_up(&opts, &target, server).await;
    let report = result?;
    cleaned.context("dropping what the bench created")?;
    Ok(report)
}

async fn bench(
    opts: &BenchOptions,
    target: &Target,
    server: Server,
    baselines: &[Baseline],
) -> Result<BenchReport> {
    let mut db = target.connect("bench").await?;
    let version = db.scalar("SELECT version()").await?;
    let server_name = match server {
        Server::Postgres => version.split(" on ").next().unwrap_or(&version).to_string(),
        Server::MySql if version.contains("MariaDB") => format!("MariaDB {version}"),
        Server::MySql => format!("MySQL {version}"),
    };
    let alter = opts
        .alter
        .clone()
        .unwrap_or_else(|| server.default_alter().to_string());
    let mut report = BenchReport {
        server: server_name,
        target: describe(target),
        rows: opts.rows,
        write_rate: opts.write_rate,
        alter: alter.clone(),
        started_unix_ms: unix_ms(SystemTime::now()),
        runs: Vec::new(),
        ratios: Default::default(),
        goals: Vec::new(),
    };
    let tools = std::iter::once(Tool::Swivel).chain(baselines.iter().map(|&b| Tool::Baseline(b)));
    for tool in tools {
        let what = tool.what(&alter);
        say(format!("{}: {what}", tool.name()));
        let run = measure(opts, target, server, tool, &what, &alter).await?;
        say(run_line(&run));
        report.runs.push(run);
    }
    report.compute_ratios();
    Ok(report)
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Swivel,
    Baseline(Baseline),
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Swivel => "swivel",
            Tool::Baseline(b) => b.name(),
        }
    }

    fn what(self, alter: &str) -> String {
        match self {
            Tool::Swivel => format!("swivel run --alter \"{alter}\" --execute --drop-old-table"),
            Tool::Baseline(b) => b.what(alter),
        }
    }
}

fn say(line: String) {
    eprintln!("bench: {line}");
}

fn run_line(run: &ToolRun) -> String {
    match run.status {
        Status::Ok => format!(
            "{} done in {:.2}s; writes during it: p99 {:.1}ms, max {:.1}ms, {} errors",
            run.tool,
            run.total_s.unwrap_or(0.0),
            run.writes.during.p99_ms,
            run.writes.during.max_ms,
            run.writes.during.errors
        ),
        Status::Skipped => format!(
            "{} skipped: {}",
            run.tool,
            run.reason.as_deref().unwrap_or("")
        ),
        Status::Failed => format!(
            "{} FAILED: {}",
            run.tool,
            run.reason.as_deref().unwrap_or("")
        ),
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::Pg(t) => t.describe(),
        Target::My(t) => format!("{}/{}", t.host(), t.db()),
    }
}

/// What a tool's run measured of itself.
#[derive(Default)]
struct ToolResult {
    total: Duration,
    copy: Option<Duration>,
    copy_end_to_cutover: Option<Duration>,
    cutover_lock_ms: Option<f64>,
    /// When the tables were swapped, since the origin: writes in flight then felt the swap.
    cutover_window: Option<(Duration, Duration)>,
    lag: Option<Lag>,
    /// Row changes swivel replayed, and per second from the copy's start to the swap.
    replayed: Option<(u64, f64)>,
    peak_rss_mb: Option<f64>,
    marks: Vec<Mark>,
}

/// The run's clock and the files its tool writes.
struct RunContext {
    origin: Instant,
    origin_unix_ms: u64,
    log: PathBuf,
    status: PathBuf,
}

impl RunContext {
    fn since_origin(&self, unix_ms: u64) -> Duration {
        Duration::from_millis(unix_ms.saturating_sub(self.origin_unix_ms))
    }
}

/// One tool on a fresh table under the workload: fill, warm up, run it, cool down, and turn
/// the samples into figures.
async fn measure(
    opts: &BenchOptions,
    target: &Target,
    server: Server,
    tool: Tool,
    what: &str,
    alter: &str,
) -> Result<ToolRun> {
    let mut run = ToolRun::new(tool.name(), what, Status::Skipped, opts.rows);
    let mut db = target.connect("bench").await?;
    let filling = Instant::now();
    scratch::create(&mut db, server, opts.rows)
        .await
        .context("creating the bench table")?;
    tracing::info!("table filled in {:.1}s", filling.elapsed().as_secs_f64());
    if let Tool::Baseline(b) = tool {
        if let Err(e) = baselines::prepare(b, target, alter).await {
            run.reason = Some(format!("{e:#}"));
            return Ok(run);
        }
    }

    let origin = Instant::now();
    let label = server_label(server);
    let ctx = RunContext {
        origin,
        origin_unix_ms: unix_ms(SystemTime::now()),
        log: opts.report_dir.join(format!("{label}-{}.log", tool.name())),
        status: opts.report_dir.join(format!("{label}-swivel-status.jsonl")),
    };
    let workload = Workload::start(target, opts.rows, opts.write_rate, origin).await?;
    tokio::time::sleep(opts.warmup).await;
    let started = origin.elapsed();
    let outcome = match tool {
        Tool::Swivel => run_swivel(opts, alter, &ctx).await,
        Tool::Baseline(b) => run_baseline(b, target, alter, &ctx).await,
    };
    let ended = origin.elapsed();
    tokio::time::sleep(opts.cooldown).await;
    let samples = workload.finish().await?;
    let end = origin.elapsed();

    let result = match outcome {
        Ok(r) => r,
        Err(e) => {
            run.status = Status::Failed;
            run.reason = Some(format!("{e:#}"));
            return Ok(run);
        }
    };
    run.status = Status::Ok;
    let between = |from: Duration, to: Duration| {
        WriteStats::of(
            samples.iter().filter(|s| s.due >= from && s.due < to),
            to.saturating_sub(from),
        )
    };
    run.writes = Phases {
        before: between(Duration::ZERO, started),
        during: between(started, ended),
        cutover: result
            .cutover_window
            .map(|(from, to)| in_flight(&samples, from, to)),
        after: between(ended, end),
    };
    run.total_s = Some(result.total.as_secs_f64());
    run.copy_s = result.copy.map(|d| d.as_secs_f64());
    let copying = result.copy.unwrap_or(result.total).as_secs_f64();
    run.copy_rows_per_s = Some(opts.rows as f64 / copying.max(1e-6));
    run.copy_end_to_cutover_s = result.copy_end_to_cutover.map(|d| d.as_secs_f64());
    run.cutover_lock_ms = result.cutover_lock_ms;
    run.lag = result.lag;
    run.changes_replayed = result.replayed.map(|(n, _)| n);
    run.replayed_per_s = result.replayed.map(|(_, r)| r);
    run.peak_rss_mb = result.peak_rss_mb;
    run.marks = std::iter::once(mark("start", started))
        .chain(result.marks)
        .chain([mark("end", ended)])
        .collect();
    run.samples = samples;
    Ok(run)
}

fn mark(label: &str, at: Duration) -> Mark {
    Mark {
        label: label.into(),
        at_s: at.as_secs_f64(),
    }
}

/// The writes that were in flight at any moment of [from, to].
fn in_flight(samples: &[Sample], from: Duration, to: Duration) -> WriteStats {
    WriteStats::of(
        samples.iter().filter(|s| s.due <= to && s.done() >= from),
        to.saturating_sub(from),
    )
}

fn server_label(server: Server) -> &'static str {
    match server {
        Server::Postgres => "postgres",
        Server::MySql => "mysql",
    }
}

async fn run_baseline(
    baseline: Baseline,
    target: &Target,
    alter: &str,
    ctx: &RunContext,
) -> Result<ToolResult> {
    let started = ctx.origin.elapsed();
    let measured = baselines::run(baseline, target, alter, &ctx.log).await?;
    Ok(ToolResult {
        total: measured.total,
        copy: measured.copy,
        cutover_window: measured
            .blocking
            .then(|| (started, started + measured.total)),
        ..ToolResult::default()
    })
}

/// swivel as a user runs it: the same binary, `swivel run … --execute`, with its status file
/// for the phases and the lag, and its peak memory from the kernel.
async fn run_swivel(opts: &BenchOptions, alter: &str, ctx: &RunContext) -> Result<ToolResult> {
    let exe = std::env::current_exe().context("finding the swivel binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "run", "--dsn", &opts.dsn, "--table", TABLE, "--alter", alter,
    ]);
    cmd.args(["--execute", "--drop-old-table", "--progress-interval", "1s"]);
    cmd.arg("--status-file").arg(&ctx.status);
    cmd.args(["--status-interval", "100ms"]);
    cmd.args(&opts.swivel_args);
    if let Some(file) = &opts.password_file {
        cmd.arg("--password-file").arg(file);
    }
    let started = Instant::now();
    baselines::run_logged(cmd, &ctx.log).await?;
    let total = started.elapsed();
    let peak_rss_mb = children_peak_rss_mb();

    let text = std::fs::read_to_string(&ctx.status)
        .with_context(|| format!("reading swivel's status file {}", ctx.status.display()))?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = lines
        .last()
        .filter(|l| l["outcome"] == "migrated")
        .context("swivel's status file has no outcome line")?;
    let event = |name: &str| last["events"][name].as_u64().map(|at| ctx.since_origin(at));
    let lag: Vec<u64> = lines
        .iter()
        .filter(|l| matches!(l["phase"].as_str(), Some("copy" | "catch-up" | "cut-over")))
        .filter_map(|l| l["lag_ms"].as_u64())
        .collect();
    let copy_end = event("catch-up");
    let (cutover_start, swapped) = (event("cut-over"), event("swapped"));
    let changes = lines
        .iter()
        .filter_map(|l| l["changes_applied"].as_u64())
        .max();
    let replayed = match (changes, event("copy"), swapped) {
        (Some(n), Some(from), Some(to)) => Some((
            n,
            n as f64 / to.saturating_sub(from).as_secs_f64().max(1e-6),
        )),
        _ => None,
    };
    let marks = [
        ("copy", event("copy")),
        ("copy done", copy_end),
        ("cut-over", cutover_start),
        ("swapped", swapped),
    ]
    .into_iter()
    .filter_map(|(label, at)| at.map(|at| mark(label, at)))
    .collect();
    Ok(ToolResult {
        total,
        copy: last["copy_ms"].as_u64().map(Duration::from_millis),
        copy_end_to_cutover: match (copy_end, swapped) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        cutover_lock_ms: last["cutover_lock_ms"].as_f64(),
        cutover_window: cutover_start.zip(swapped),
        lag: Lag::of(&lag),
        replayed,
        peak_rss_mb,
        marks,
    })
}

/// The largest peak resident set of the children this process has waited for: swivel runs
/// first, so it is swivel's.
fn children_peak_rss_mb() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    // SAFETY: it was zeroed, and filled when rc is 0.
    let usage = unsafe { usage.assume_init() };
    // Linux reports kilobytes.
    (rc == 0).then(|| usage.ru_maxrss as f64 / 1024.0)
}

/// Drop every table the bench or an interrupted tool made, and what swivel's change stream
/// left (slot, publication), and pg_repack's extension if the bench created it.
async fn clean_up(opts: &BenchOptions, target: &Target, server: Server) -> Result<()> {
    let mut db = target.connect("bench cleanup").await?;
    if server == Server::Postgres {
        // A swivel killed a moment ago still has its replication session on the server until
        // the walsender notices; `swivel cleanup` rightly refuses an active run.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && db
                .scalar(&format!(
                    "SELECT count(*) FROM pg_replication_slots
                     WHERE active AND slot_name = 'swivel_' || to_regclass('{TABLE}')::oid"
                ))
                .await?
                != "0"
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    match swivel::engine::migrate::cleanup_leftovers(
        &opts.dsn,
        opts.password.as_deref(),
        TABLE,
        true,
    )
    .await
    {
        // pt-online-schema-change's own `_swivel_bench_new` is not swivel's: the bench drops
        // it below with the rest of its tables.
        Ok(_) | Err(swivel::Error::Refused(_)) => {}
        Err(e) => return Err(e.into()),
    }
    db.exec(&server.drop_tables()).await?;
    if baselines::CREATED_PG_REPACK.swap(false, std::sync::atomic::Ordering::Relaxed) {
        db.exec("DROP EXTENSION IF EXISTS pg_repack CASCADE")
            .await?;
    }
    Ok(())
}

/// Write the JSON, Markdown and PNG reports; returns the files written.
pub fn write_report(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>> {
    let label = if report.server.starts_with("PostgreSQL") {
        "postgres"
    } else {
        "mysql"
    };
    let json = dir.join(format!("{label}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let png = dir.join(format!("{label}.png"));
    let chart = match chart::draw(report, &png) {
        Ok(()) => Some(png.clone()),
        Err(e) => {
            say(format!("no chart: {e:#}"));
            None
        }
    };
    let md = dir.join(format!("{label}.md"));
    let chart_name = chart
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    std::fs::write(&md, report.markdown(chart_name.as_deref()))
        .with_context(|| format!("writing {}", md.display()))?;
    Ok([Some(json), Some(md), chart]
        .into_iter()
        .flatten()
        .collect())
}
