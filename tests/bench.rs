//! `swivel bench` end to end on the testbed, small: the report holds every figure for swivel
//! and each baseline, and nothing the bench made is left, also after Ctrl-C. Timings are
//! reported, never asserted.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Db, Server};

fn bench(server: Server, report: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swivel"));
    cmd.args(["bench", "--dsn", &server.dsn(), "--report"])
        .arg(report)
        .args(extra);
    cmd
}

/// No table, slot or publication of the bench remains.
async fn assert_bench_left_nothing(server: Server) {
    let mut db = Db::connect(server).await;
    let tables = match server {
        Server::Postgres => {
            "SELECT relname::text FROM pg_class WHERE relname LIKE '%swivel\\_bench%'
             UNION ALL SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'swivel%'
             UNION ALL SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'swivel%'
             UNION ALL SELECT extname::text FROM pg_extension WHERE extname = 'pg_repack'"
        }
        Server::MariaDb => {
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = DATABASE() AND table_name LIKE '%swivel\\_bench%'"
        }
    };
    assert_eq!(
        db.rows(tables).await,
        Vec::<Vec<Option<String>>>::new(),
        "{server:?}: the bench left these behind"
    );
}

fn figure(run: &serde_json::Value, path: &str) -> f64 {
    let v = path
        .split('.')
        .fold(run, |v, key| &v[key])
        .as_f64()
        .unwrap_or_else(|| panic!("{} has no figure {path}: {run}", run["tool"]));
    assert!(v.is_finite() && v >= 0.0, "{path} = {v}");
    v
}

fn report_holds_every_figure(server: Server) {
    let dir = tempdir(&format!("bench-{server:?}"));
    let out = bench(
        server,
        &dir,
        &["--rows", "20000", "--write-rate", "100", "--warmup", "1s"],
    )
    .output()
    .expect("running swivel bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{server:?}: bench failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");

    let label = match server {
        Server::Postgres => "postgres",
        Server::MariaDb => "mysql",
    };
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{label}.json"))).expect("the JSON report"),
    )
    .expect("the JSON report parses");
    let runs = json["runs"].as_array().expect("runs");
    let tools: Vec<&str> = runs.iter().filter_map(|r| r["tool"].as_str()).collect();
    let own_tool = match server {
        Server::Postgres => "pg-repack",
        Server::MariaDb => "pt-osc",
    };
    assert_eq!(tools, ["swivel", "offline", "copy-floor", own_tool]);
    for run in runs {
        let status = run["status"].as_str().unwrap_or_default();
        if status == "skipped" && run["tool"] == own_tool {
            // The tool is not installed here: the reason says how to get it.
            assert!(
                run["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("apt-get install")),
                "{run}"
            );
            continue;
        }
        assert_eq!(status, "ok", "{run}");
        figure(run, "total_s");
        figure(run, "copy_rows_per_s");
        for phase in ["before", "during", "after"] {
            figure(run, &format!("writes.{phase}.p50_ms"));
            figure(run, &format!("writes.{phase}.p99_ms"));
            figure(run, &format!("writes.{phase}.max_ms"));
        }
        // A baseline on 20,000 rows may be over before a write falls due.
        assert!(figure(run, "writes.before.writes") > 0.0, "{run}");
        assert!(figure(run, "writes.after.writes") > 0.0, "{run}");
    }
    let swivel = &runs[0];
    assert!(figure(swivel, "writes.during.writes") > 0.0, "{swivel}");
    figure(swivel, "copy_s");
    figure(swivel, "copy_end_to_cutover_s");
    figure(swivel, "cutover_lock_ms");
    figure(swivel, "writes.cutover.max_ms");
    figure(swivel, "lag.p99_ms");
    assert!(figure(swivel, "peak_rss_mb") > 1.0, "{swivel}");
    figure(&runs[1], "writes.cutover.max_ms");
    figure(&json, "ratios.swivel_over_offline");
    figure(&json, "ratios.copy_over_copy_floor");
    for file in [format!("{label}.md"), format!("{label}.png")] {
        let len = std::fs::metadata(dir.join(&file)).map_or(0, |m| m.len());
        assert!(len > 100, "{file} is missing or empty");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Interrupt the bench while swivel is copying: everything goes.
async fn interrupted_leaves_nothing(server: Server) {
    let dir = tempdir(&format!("bench-int-{server:?}"));
    let mut child = bench(
        server,
        &dir,
        &["--rows", "300000", "--baselines", "none", "--warmup", "1s"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("starting swivel bench");
    let label = match server {
        Server::Postgres => "postgres",
        Server::MariaDb => "mysql",
    };
    let status = dir.join(format!("{label}-swivel-status.jsonl"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        if text.contains("\"phase\":\"copy\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{server:?}: swivel never started copying"
        );
        assert!(child.try_wait().unwrap().is_none(), "the bench ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What Ctrl-C sends.
    // SAFETY: kill only sends a signal to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let exit = child.wait().expect("waiting for the bench");
    assert!(
        !exit.success(),
        "an interrupted bench must not report success"
    );
    assert_bench_left_nothing(server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("swivel-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn postgres_bench() {
    common::testbed();
    report_holds_every_figure(Server::Postgres);
    assert_bench_left_nothing(Server::Postgres).await;
    interrupted_leaves_nothing(Server::Postgres).await;
}

#[tokio::test]
async fn mariadb_bench() {
    common::testbed();
    report_holds_every_figure(Server::MariaDb);
    assert_bench_left_nothing(Server::MariaDb).await;
    interrupted_leaves_nothing(Server::MariaDb).await;
}
