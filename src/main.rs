//! The `swivel` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use swivel::migrate::Outcome;
use swivel::progress::format_duration;
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
    Run(RunArgs),
    /// Remove what a crashed run left behind (shadow table, publication, slot).
    Cleanup(CleanupArgs),
    /// Measure swivel against the baselines on a scratch table under a write workload.
    Bench(BenchArgs),
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
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
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
    /// Rows in the first chunk; later chunks are sized to --target-chunk-time.
    #[arg(long, default_value_t = 1000)]
    chunk_size: u64,
    /// Time each chunk should take, e.g. 500ms.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    target_chunk_time: Duration,
    /// Upper bound on rows copied per second.
    #[arg(long)]
    max_rows_per_second: Option<u32>,
    /// How long cut-over waits for its lock (and for the stream to drain) per attempt.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    cut_over_lock_timeout: Duration,
    /// Cut-over attempts after the first.
    #[arg(long, default_value_t = 10)]
    cut_over_retries: u32,
    /// Replication lag under which cut-over may start, e.g. 1500ms.
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    max_lag_millis: Duration,
    /// Drop the old table after a successful cut-over (default: keep it as _<table>_old).
    #[arg(long)]
    drop_old_table: bool,
    /// Seconds between progress lines.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    progress_interval: Duration,
    /// Write machine-readable status here: a JSON line every --status-interval, then a last
    /// line with the outcome and when each phase began.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Time between status-file lines.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    status_interval: Duration,
}

#[derive(Args)]
struct CleanupArgs {
    #[command(flatten)]
    target: Target,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms or 2s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{s}`: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWIVEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swivel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Bench(args) => bench_command(args).await,
        Command::Cleanup(args) => {
            let password = args.target.password()?;
            let removed = swivel::migrate::cleanup_leftovers(
                &args.target.dsn,
                password.as_deref(),
                &args.target.table,
            )
            .await?;
            if removed.is_empty() {
                println!("nothing to clean up for {}", args.target.table);
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
    }
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
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("swivel: interrupted, dropping what the bench created");
    };
    let report = bench::run(opts.clone(), shutdown).await?;
    println!("{}", report.server);
    print!("{}", report.table());
    print!("{}", report.summary());
    for file in bench::write_report(&report, &opts.report_dir)? {
        println!("wrote {}", file.display());
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut opts = RunOptions::new(&args.target.dsn, &args.target.table, &args.alter);
    opts.password = args.target.password()?;
    opts.execute = args.execute;
    opts.chunk_size = args.chunk_size;
    opts.target_chunk_time = args.target_chunk_time;
    opts.max_rows_per_second = args.max_rows_per_second;
    opts.cut_over_lock_timeout = args.cut_over_lock_timeout;
    opts.cut_over_retries = args.cut_over_retries;
    opts.max_lag = args.max_lag_millis;
    opts.drop_old_table = args.drop_old_table;
    opts.progress_interval = Some(args.progress_interval);
    opts.status_file = args.status_file;
    opts.status_interval = args.status_interval;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("swivel: interrupted, cleaning up");
    };
    match swivel::run(opts, shutdown).await? {
        Outcome::Planned(plan) => {
            for line in &plan.lines {
                println!("{line}");
            }
            println!("checks passed; nothing was changed (add --execute to run it)");
        }
        Outcome::MetadataOnly(plan) => {
            for line in &plan.lines {
                println!("{line}");
            }
            println!("done: the change ran directly, no copy needed");
        }
        Outcome::Migrated(stats) => {
            for line in &stats.plan.lines {
                println!("{line}");
            }
            let rate = stats.rows_copied as f64 / stats.copy_time.as_secs_f64().max(1e-9);
            println!(
                "done: {} rows copied in {} ({:.0} rows/s), {} changes replayed, cut-over held the lock {:.1}ms (attempt {}), total {}",
                stats.rows_copied,
                format_duration(stats.copy_time),
                rate,
                stats.changes_applied,
                stats.cutover.lock_held.as_secs_f64() * 1000.0,
                stats.cutover.attempts,
                format_duration(stats.total_time),
            );
        }
    }
    Ok(())
}
