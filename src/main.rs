//! The `swivel` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use swivel::engine::migrate::Outcome;
use swivel::engine::progress::format_duration;
use swivel::migrations::runner::{self, Runner, Threshold};
use swivel::options::DurationUnit;
use swivel::RunOptions;

mod bench;

#[derive(Parser)]
#[command(
    name = "swivel",
    version,
    about = "Online schema changes for PostgreSQL and MySQL/MariaDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan (and with --execute, run) an online ALTER TABLE.
    Run(Box<RunArgs>),
    /// Remove what a crashed run left behind (shadow table, publication, slot).
    Cleanup(CleanupArgs),
    /// Measure swivel against the baselines on a scratch table under a write workload.
    Bench(BenchArgs),
    /// Find dangerous operations in SQL files and migrations (exit status 1 on findings).
    Lint(LintArgs),
    /// Versioned migration files.
    #[command(subcommand)]
    Migrate(MigrateCommand),
}

#[derive(Args)]
struct LintArgs {
    /// SQL files, or directories of them (read one level deep).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Which server's SQL and rules: postgres or mysql.
    #[arg(long, default_value = "postgres")]
    server: String,
    /// text, or json for CI.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Write a new, empty migration file named by the time (UTC) and the description.
    New {
        /// What the migration does, e.g. "add status to orders".
        description: String,
        /// The migrations directory.
        #[arg(long, default_value = "migrations")]
        dir: PathBuf,
    },
    /// Each version: applied, pending, failed, drifted (like `flyway info`).
    Status(MigrateTarget),
    /// The applied files' checksums against disk, failed runs, gaps, missing Downs (exit 1 on
    /// problems).
    Validate(MigrateTarget),
    /// For each pending statement: how it would run (direct, concurrently, online with the
    /// table's size) and the lint's findings. Changes nothing.
    Plan(Box<ApplyArgs>),
    /// Apply the pending migrations in order (plan only, without --execute).
    Up {
        #[command(flatten)]
        apply: Box<ApplyArgs>,
        /// Apply up to and including this version.
        #[arg(long)]
        to: Option<String>,
        /// Apply. Without it, swivel only plans.
        #[arg(long)]
        execute: bool,
    },
    /// Undo applied migrations, newest first, with their Down sections (plan only, without
    /// --execute).
    Down {
        #[command(flatten)]
        apply: Box<ApplyArgs>,
        /// Undo this many (default 1).
        #[arg(long, conflicts_with = "to")]
        steps: Option<usize>,
        /// Undo every applied migration newer than this version.
        #[arg(long)]
        to: Option<String>,
        /// Undo. Without it, swivel only plans.
        #[arg(long)]
        execute: bool,
    },
    /// Remove failed runs from the history and record the new checksums of edited applied
    /// files (like `flyway repair`), once the schema has been fixed by hand.
    Repair {
        #[command(flatten)]
        target: MigrateTarget,
        /// How long to wait for another runner to finish.
        #[arg(long, default_value = "60s", value_parser = duration)]
        lock_wait: Duration,
    },
}

#[derive(Args, Clone)]
struct MigrateTarget {
    /// Connection URL, as for `run` (no password in it: PGPASSWORD, MYSQL_PWD or
    /// --password-file).
    #[arg(long)]
    dsn: String,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The migrations directory.
    #[arg(long, default_value = "migrations")]
    dir: PathBuf,
}

#[derive(Args)]
struct ApplyArgs {
    #[command(flatten)]
    target: MigrateTarget,
    /// An ALTER TABLE on a table of at least this many rows (or this size: 1GB) runs through
    /// the online engine; below it, directly.
    #[arg(long, default_value = "1000000", value_parser = online_threshold)]
    online_threshold: Threshold,
    /// How long a direct statement may wait for its locks (the application's queries queue
    /// behind it meanwhile) before it is retried.
    #[arg(long, default_value = "2s", value_parser = duration)]
    lock_timeout: Duration,
    /// Attempts after a direct statement's lock wait timed out.
    #[arg(long, default_value_t = 10)]
    lock_retries: u32,
    /// How long to wait for another runner to finish before refusing.
    #[arg(long, default_value = "60s", value_parser = duration)]
    lock_wait: Duration,
    #[command(flatten)]
    engine: EngineArgs,
}

fn online_threshold(s: &str) -> Result<Threshold, String> {
    Threshold::parse(s)
}

#[derive(Args)]
struct BenchArgs {
    /// Connection URL of a staging server; the bench makes and drops its own table
    /// (swivel_bench) there.
    #[arg(long)]
    dsn: String,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Rows in the scratch table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// The application's writes per second, before, during and after each run (0: none).
    #[arg(long, default_value_t = 200)]
    write_rate: u32,
    /// The change, as what follows `ALTER TABLE swivel_bench` (default: k to bigint).
    #[arg(long)]
    alter: Option<String>,
    /// Comma-separated: offline, copy-floor, pt-osc (MySQL/MariaDB), pg-repack (PostgreSQL).
    /// Default: offline, copy-floor and the server's own tool. "none" runs swivel alone.
    #[arg(long)]
    baselines: Option<String>,
    /// Where the JSON and Markdown reports, the chart and the tools' logs go.
    #[arg(long, default_value = "swivel-bench")]
    report: PathBuf,
    /// Writes before each tool starts (and after it ends), e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = duration)]
    warmup: Duration,
    /// More options for swivel's run, e.g. "--target-chunk-time 100ms --nice-ratio 0.5".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    swivel_args: String,
}

#[derive(Args)]
struct Target {
    /// Connection URL, e.g. postgres://user@host:5432/db or mysql://user@host:3306/db. Put no
    /// password here: other users see the process list. Use PGPASSWORD, MYSQL_PWD or
    /// --password-file.
    #[arg(long)]
    dsn: String,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The table, as [schema.]name.
    #[arg(long)]
    table: String,
}

impl Target {
    fn password(&self) -> anyhow::Result<Option<String>> {
        read_password_file(self.password_file.as_deref())
    }
}

/// The first line of --password-file, if one was given.
fn read_password_file(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    path.map(|path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading --password-file {}", path.display()))
            .map(|s| s.lines().next().unwrap_or("").to_string())
    })
    .transpose()
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// What follows `ALTER TABLE name`, e.g. "ALTER COLUMN k TYPE bigint".
    #[arg(long)]
    alter: String,
    /// Run the migration. Without it, swivel only plans and checks.
    #[arg(long)]
    execute: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The online engine's knobs: `run`'s, and `migrate up|down`'s for the ALTERs it runs online.
#[derive(Args)]
struct EngineArgs {
    /// Rows in the first chunk; later chunks are sized to --target-chunk-time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    chunk_size: u64,
    /// Time each chunk should take, e.g. 500ms.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    target_chunk_time: Duration,
    /// Chunks copied at once, each in a session of its own (Spirit's --threads). More than the
    /// server's spare cores only adds contention.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Upper bound on rows copied per second, over all threads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_rows_per_second: Option<u32>,
    /// Row changes the applier writes per batch.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    dml_batch_size: u64,
    /// How long each cut-over attempt may wait for its lock (and for the stream to drain):
    /// the longest the application's writes wait on one attempt.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    cut_over_lock_timeout: Duration,
    /// How often a chunk of the copy or a batch of the replay whose session was lost is run
    /// again on a new session before the run gives up.
    #[arg(long, default_value_t = 60)]
    default_retries: u32,
    /// Go on from where an interrupted run (same table, same --alter) got to, by the checkpoint
    /// in its state table: the copy continues after its last saved chunk, the change stream
    /// from its last saved position.
    #[arg(long)]
    resume: bool,
    /// With --resume: refuse a checkpoint older than this (e.g. 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = duration)]
    checkpoint_max_age: Duration,
    /// Swap without the checksum that otherwise compares the table and the shadow table,
    /// chunk by chunk, before cut-over.
    #[arg(long)]
    skip_checksum: bool,
    /// Failed cut-over attempts in a row before swivel catches up for a while and tries again.
    #[arg(long, default_value_t = 10)]
    cut_over_retries: u32,
    /// After cut-over has kept failing this long (e.g. 30m), stop trying and wait, caught up,
    /// for `unpostpone` on the control socket. Default: keep trying.
    #[arg(long, value_parser = duration)]
    cut_over_max_wait: Option<Duration>,
    /// When a cut-over attempt fails, end the sessions holding locks on the table whose
    /// transaction has been open longer than this (e.g. 30s). Default: never.
    #[arg(long, value_parser = duration)]
    force_cut_over_after: Option<Duration>,
    /// Replication lag (swivel's and each control replica's) above which it throttles and
    /// under which cut-over may start; a bare number is milliseconds.
    #[arg(long, default_value = "1500", value_parser = millis)]
    max_lag_millis: Duration,
    /// Throttle while a status variable is at or above its threshold, e.g.
    /// Threads_running=25 (PostgreSQL: active_backends=25, or Threads_running for the same).
    #[arg(long, default_value = "")]
    max_load: swivel::control::Loads,
    /// Stop the run (cleanly) when a status variable reaches its threshold, twice in a row.
    #[arg(long, default_value = "")]
    critical_load: swivel::control::Loads,
    /// After each chunk, sleep this many times as long as the chunk took (0.5: a third slower).
    #[arg(long, default_value_t = 0.0, value_parser = nice_ratio)]
    nice_ratio: f64,
    /// Throttle while this query returns a number above 0.
    #[arg(long)]
    throttle_query: Option<String>,
    /// Throttle while this http:// URL does not answer 200.
    #[arg(long)]
    throttle_http: Option<String>,
    /// Comma-separated replica URLs whose lag (above --max-lag-millis) throttles the run. They
    /// use the same password as --dsn.
    #[arg(long, value_delimiter = ',')]
    throttle_control_replicas: Vec<String>,
    /// Throttle while this file exists.
    #[arg(long)]
    throttle_flag_file: Option<PathBuf>,
    /// Throttle while this file exists (one shared by several runs, say).
    #[arg(long)]
    throttle_additional_flag_file: Option<PathBuf>,
    /// Don't cut over while this file exists: stay caught up until it is removed or
    /// `unpostpone` is sent on the control socket.
    #[arg(long)]
    postpone_cut_over_flag_file: Option<PathBuf>,
    /// Stop the run (cleanly) when this file appears.
    #[arg(long)]
    panic_flag_file: Option<PathBuf>,
    /// The control socket (default: swivel.<db>.<table>.sock in the temporary directory).
    #[arg(long)]
    serve_socket_file: Option<PathBuf>,
    /// Also serve the control protocol on this TCP port of 127.0.0.1.
    #[arg(long)]
    serve_tcp_port: Option<u16>,
    /// Directory of hook executables (swivel-on-startup, swivel-on-before-cut-over, ...).
    #[arg(long)]
    hooks_path: Option<PathBuf>,
    /// Time between runs of the on-status hook.
    #[arg(long, default_value = "60s", value_parser = duration)]
    hooks_status_interval: Duration,
    /// PostgreSQL: while throttled, once the slot holds this much WAL, replay goes on (the copy
    /// stays paused) so the server's disk does not fill, e.g. 1GB.
    #[arg(long, default_value = "1GB", value_parser = swivel::options::parse_bytes)]
    max_retained_wal: u64,
    /// Drop the old table after a successful cut-over (default: keep it as _<table>_old).
    #[arg(long)]
    drop_old_table: bool,
    /// Time between progress lines.
    #[arg(long, default_value = "2s", value_parser = duration)]
    progress_interval: Duration,
    /// Write machine-readable status here: a JSON line every --status-interval, then a last
    /// line with the outcome and when each phase began.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Time between status-file lines.
    #[arg(long, default_value = "1s", value_parser = duration)]
    status_interval: Duration,
}

#[derive(Args)]
struct CleanupArgs {
    /// Connection URL, as for `run`.
    #[arg(long)]
    dsn: String,
    /// A file whose first line is the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The table whose interrupted run's leftovers to remove, as [schema.]name. Without it,
    /// list every run's leftovers in the database and remove nothing.
    #[arg(long)]
    table: Option<String>,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A duration option: a unit is required (500ms, 2s, 1m).
fn duration(s: &str) -> Result<Duration, String> {
    swivel::options::parse_duration(s, DurationUnit::Required)
}

/// A `--…-millis` option: a bare number is milliseconds.
fn millis(s: &str) -> Result<Duration, String> {
    swivel::options::parse_duration(s, DurationUnit::Millis)
}

fn nice_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=100.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}`: give a number from 0 to 100")),
    }
}

/// Resolves on Ctrl-C, SIGTERM (what `timeout`, systemd and Kubernetes send) or SIGHUP (a
/// closed terminal): the run cleans up.
async fn shutdown_signal(what: &'static str) {
    use tokio::signal::unix::{signal, SignalKind};
    let on = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = on(SignalKind::terminate()) => {}
        _ = on(SignalKind::hangup()) => {}
    }
    eprintln!("swivel: interrupted, {what}");
}

/// Log lines on stderr, written around the progress bar when one is drawn.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        swivel::control::reporter::suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWIVEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Colours only on a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LogWriter)
        .init();
    match real_main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("swivel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Bench(args) => bench_command(args).await,
        Command::Cleanup(args) => cleanup_command(args).await,
        Command::Lint(args) => return lint_command(args),
        Command::Migrate(MigrateCommand::New { description, dir }) => {
            migrate_new(&description, &dir)
        }
        Command::Migrate(command) => return migrate_command(command).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

/// `swivel lint`: the report on stdout; exit 1 when something was found.
fn lint_command(args: LintArgs) -> anyhow::Result<ExitCode> {
    let server = swivel::lint::Server::parse(&args.server)?;
    let report = swivel::lint::lint_paths(&args.paths, server)?;
    let out = if args.format == "json" {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        swivel::lint::render_text(&report)
    };
    // A reader that stopped early (`| head`) is not an error of the lint's.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the report")
        }
        _ => {}
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `swivel migrate new`: an empty migration with both sections, never over an existing file.
fn migrate_new(description: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    use swivel::migrations::files;
    let name = files::new_file_name(time::OffsetDateTime::now_utc(), description)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    // Two files with one version are an error: refuse to make the second.
    let mut all = files::sql_files(&[dir.to_path_buf()])?;
    all.push(path.clone());
    files::check_versions(&all)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, files::TEMPLATE.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// `swivel migrate status|validate|plan|up|down|repair`.
async fn migrate_command(command: MigrateCommand) -> anyhow::Result<ExitCode> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal("stopping the migration").await;
        let _ = stop.send(true);
    });
    let connect = |target: MigrateTarget, apply: Option<Box<ApplyArgs>>, execute: bool| {
        let shutdown = shutdown.clone();
        async move {
            let mut engine = RunOptions::new(&target.dsn, "", "");
            engine.password = read_password_file(target.password_file.as_deref())?;
            let mut opts = runner::Options {
                dir: target.dir,
                execute,
                lock_wait: Duration::from_secs(60),
                lock_timeout: Duration::from_secs(2),
                lock_retries: 10,
                online_threshold: Threshold::Rows(1_000_000),
                engine,
            };
            if let Some(apply) = apply {
                opts.lock_wait = apply.lock_wait;
                opts.lock_timeout = apply.lock_timeout;
                opts.lock_retries = apply.lock_retries;
                opts.online_threshold = apply.online_threshold;
                apply.engine.apply(&mut opts.engine)?;
            }
            anyhow::Ok(Runner::connect(opts, shutdown).await?)
        }
    };
    let ok = match command {
        MigrateCommand::New { .. } => unreachable!("handled by migrate_new"),
        MigrateCommand::Status(target) => {
            connect(target, None, false).await?.status().await?;
            true
        }
        MigrateCommand::Validate(target) => connect(target, None, false).await?.validate().await?,
        MigrateCommand::Plan(apply) => {
            let target = apply.target.clone();
            connect(target, Some(apply), false).await?.up(None).await?;
            true
        }
        MigrateCommand::Up { apply, to, execute } => {
            let target = apply.target.clone();
            let mut runner = connect(target, Some(apply), execute).await?;
            runner.up(to.as_deref()).await?;
            true
        }
        MigrateCommand::Down {
            apply,
            steps,
            to,
            execute,
        } => {
            let target = apply.target.clone();
            let mut runner = connect(target, Some(apply), execute).await?;
            runner.down(steps, to.as_deref()).await?;
            true
        }
        MigrateCommand::Repair { target, lock_wait } => {
            let mut runner = connect(target, None, true).await?;
            runner.set_lock_wait(lock_wait);
            runner.repair().await?;
            true
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `swivel cleanup`: first what is there (and what it costs to keep), then, for one table and
/// unless --dry-run, remove it.
async fn cleanup_command(args: CleanupArgs) -> anyhow::Result<()> {
    use swivel::engine::migrate::{cleanup_leftovers, list_leftovers};
    let password = read_password_file(args.password_file.as_deref())?;
    let Some(table) = args.table else {
        let found = list_leftovers(&args.dsn, password.as_deref()).await?;
        if found.is_empty() {
            println!("no swivel run has left anything in this database");
        }
        for f in found {
            println!("found {f}");
        }
        return Ok(());
    };
    let found = cleanup_leftovers(&args.dsn, password.as_deref(), &table, false).await?;
    if found.is_empty() {
        println!("nothing to clean up for {table}");
        return Ok(());
    }
    for f in &found {
        println!("found {f}");
    }
    if args.dry_run {
        println!("nothing removed (--dry-run)");
        return Ok(());
    }
    for r in cleanup_leftovers(&args.dsn, password.as_deref(), &table, true).await? {
        // Its description was listed just above.
        println!("removed {}", r.split(" (").next().unwrap_or(&r));
    }
    Ok(())
}

async fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    let password = read_password_file(args.password_file.as_deref())?;
    let baselines = match args.baselines.as_deref() {
        None => None,
        Some("none") => Some(Vec::new()),
        Some(list) => Some(
            list.split(',')
                .map(bench::Baseline::parse)
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
    };
    let opts = bench::BenchOptions {
        dsn: args.dsn,
        password,
        password_file: args.password_file,
        rows: args.rows,
        write_rate: args.write_rate,
        alter: args.alter,
        baselines,
        report_dir: args.report,
        warmup: args.warmup,
        cooldown: args.warmup,
        swivel_args: args
            .swivel_args
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    let shutdown = shutdown_signal("dropping what the bench created");
    let report = bench::run(opts.clone(), shutdown).await?;
    println!("{}", report.server);
    print!("{}", report.table());
    print!("{}", report.summary());
    for file in bench::write_report(&report, &opts.report_dir)? {
        println!("wrote {}", file.display());
    }
    Ok(())
}

impl EngineArgs {
    /// Fill `opts` with these knobs; the control socket defaults to one named for the table.
    fn apply(self, opts: &mut RunOptions) -> anyhow::Result<()> {
        opts.announce = true;
        opts.chunk_size = self.chunk_size;
        opts.threads = self.threads as usize;
        opts.knobs.target_chunk_time = self.target_chunk_time;
        opts.max_rows_per_second = self.max_rows_per_second;
        opts.knobs.dml_batch_size = self.dml_batch_size as usize;
        opts.cut_over_lock_timeout = self.cut_over_lock_timeout;
        opts.cut_over_retries = self.cut_over_retries;
        opts.skip_checksum = self.skip_checksum;
        opts.default_retries = self.default_retries;
        opts.resume = self.resume;
        opts.checkpoint_max_age = self.checkpoint_max_age;
        opts.cut_over_max_wait = self.cut_over_max_wait;
        opts.force_cut_over_after = self.force_cut_over_after;
        opts.knobs.max_lag = self.max_lag_millis;
        opts.knobs.max_load = self.max_load;
        opts.knobs.critical_load = self.critical_load;
        opts.knobs.nice_ratio = self.nice_ratio;
        opts.knobs.throttle_query = self.throttle_query;
        opts.knobs.throttle_http = self.throttle_http;
        opts.knobs.throttle_control_replicas = self.throttle_control_replicas;
        opts.knobs.throttle_flag_file = self.throttle_flag_file;
        opts.knobs.throttle_additional_flag_file = self.throttle_additional_flag_file;
        opts.knobs.postpone_cut_over_flag_file = self.postpone_cut_over_flag_file;
        opts.knobs.panic_flag_file = self.panic_flag_file;
        opts.serve_socket_file = self.serve_socket_file;
        opts.serve_tcp_port = self.serve_tcp_port;
        opts.hooks_path = self.hooks_path;
        opts.hooks_status_interval = self.hooks_status_interval;
        opts.max_retained_wal = self.max_retained_wal;
        opts.drop_old_table = self.drop_old_table;
        opts.progress_interval = Some(self.progress_interval);
        opts.status_file = self.status_file;
        opts.status_interval = self.status_interval;
        if let Some(url) = &opts.knobs.throttle_http {
            if !url.starts_with("http://") {
                anyhow::bail!(
                    "--throttle-http {url}: give an http:// URL (https is not supported yet)"
                );
            }
        }
        Ok(())
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut opts = RunOptions::new(&args.target.dsn, &args.target.table, &args.alter);
    opts.password = args.target.password()?;
    opts.execute = args.execute;
    args.engine.apply(&mut opts)?;
    opts.serve_socket_file.get_or_insert_with(|| {
        swivel::control::socket::default_path(&args.target.dsn, &args.target.table)
    });
    match swivel::run(opts, shutdown_signal("cleaning up")).await? {
        Outcome::Planned(plan) => {
            for line in &plan.lines {
                println!("{line}");
            }
            println!("checks passed; nothing was changed (add --execute to run it)");
        }
        Outcome::MetadataOnly(_) => {
            println!("done: the change ran directly, no copy needed");
        }
        Outcome::Migrated(stats) => {
            let rate = stats.rows_copied as f64 / stats.copy_time.as_secs_f64().max(1e-9);
            let c = &stats.cutover;
            println!(
                "done: {} rows copied in {} ({:.0} rows/s), {} changes replayed, total {}",
                stats.rows_copied,
                format_duration(stats.copy_time),
                rate,
                stats.changes_applied,
                format_duration(stats.total_time),
            );
            println!(
                "cut-over: attempt {} swapped the tables, holding the lock {:.1}ms; writes could \
                 wait on cut-over {:.1}ms in all (longest {:.1}ms in one attempt)",
                c.attempts,
                c.lock_held.as_secs_f64() * 1000.0,
                c.stall.as_secs_f64() * 1000.0,
                c.longest_stall.as_secs_f64() * 1000.0,
            );
            match &stats.checksum {
                Some(k) => println!(
                    "checksum: {} rows in {} chunks equal in {:.1}s, {} chunk(s) copied again; \
                     writes could wait on it {:.1}ms",
                    k.rows,
                    k.chunks,
                    k.time.as_secs_f64(),
                    k.repaired,
                    k.stall.as_secs_f64() * 1000.0,
                ),
                None => println!("checksum: skipped (--skip-checksum)"),
            }
        }
    }
    Ok(())
}
