//! `kill -9` in the middle of the copy, during catch-up and during cut-over, then `--resume`, on
//! both servers: the resumed run goes on from the checkpoint (not from the first row) and, with
//! writers busy throughout, ends with a table equal to its twin altered offline and nothing of
//! the run left. On the way: what refuses, and how.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_status, Db, Server};

const ROWS: i64 = 60_000;

/// Run `swivel` with `args` to its end: whether it succeeded, and what it said.
fn run_to_end(args: &[String], dir: &Path, name: &str) -> (bool, String) {
    let ok = common::swivel(args, dir, name).wait().unwrap().success();
    (ok, common::output(dir, name))
}

/// Where in the run the first swivel is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kill {
    /// Once it has copied some chunks.
    MidCopy,
    /// Likewise, four copiers at once (and four again on resume): chunks committed above a
    /// gap are copied again.
    MidCopyFourThreads,
    /// Copied and caught up, its cut-over postponed.
    CatchUp,
    /// While a cut-over attempt waits for its lock behind an open transaction.
    CutOver,
}

async fn killed_then_resumed(server: Server, when: Kill) {
    let dsn = server.dsn();
    let mut db = Db::connect(server).await;
    let table = format!("resume_{server:?}_{when:?}").to_lowercase();
    let twin = format!("{table}_twin");
    db.reset(&table).await;
    db.reset(&twin).await;
    let (fill, alter, other_alter) = match server {
        Server::Postgres => (
            format!("INSERT INTO {table} SELECT i, i FROM generate_series(1, {ROWS}) i"),
            "ALTER COLUMN k TYPE bigint",
            "ALTER COLUMN k TYPE numeric",
        ),
        Server::MariaDb => (
            format!("INSERT INTO {table} SELECT seq, seq FROM seq_1_to_{ROWS}"),
            "MODIFY k BIGINT NOT NULL",
            "MODIFY k DECIMAL(20) NOT NULL",
        ),
    };
    for t in [&table, &twin] {
        db.exec(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, k int NOT NULL)"
        ))
        .await
        .unwrap();
    }
    db.exec(&fill).await.unwrap();
    db.exec(&format!("INSERT INTO {twin} SELECT * FROM {table}"))
        .await
        .unwrap();
    let analyze = match server {
        Server::Postgres => format!("ANALYZE {table}"),
        Server::MariaDb => format!("ANALYZE TABLE {table}"),
    };
    db.exec(&analyze).await.unwrap();

    let dir = common::scratch("resume", &table);
    let socket = dir.join("control.sock");
    let run = |extra: &[&str], alter: &str| -> Vec<String> {
        let mut args: Vec<String> = ["run", "--dsn", &dsn, "--table", &table, "--alter", alter]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(common::twin_writer(
        Db::connect(server).await,
        table.clone(),
        ROWS,
        Duration::from_millis(2),
        stop.clone(),
    ));

    // The first run: slowed down, killed once it has saved a checkpoint past some chunks, or
    // once it has caught up, or while it waits in cut-over.
    let flag = dir.join("postpone.flag");
    let mut extra = vec!["--execute", "--serve-socket-file", socket.to_str().unwrap()];
    let mut blocker = None;
    match when {
        Kill::MidCopy => extra.extend(["--max-rows-per-second", "5000"]),
        Kill::MidCopyFourThreads => extra.extend([
            "--max-rows-per-second",
            "5000",
            "--threads",
            "4",
            "--chunk-size",
            "200",
        ]),
        Kill::CatchUp => {
            std::fs::write(&flag, "").unwrap();
            extra.extend(["--postpone-cut-over-flag-file", flag.to_str().unwrap()]);
        }
        Kill::CutOver => {
            // An open transaction that read the table: the cut-over's lock waits behind it.
            let mut b = Db::connect(server).await;
            b.exec("BEGIN").await.unwrap();
            b.rows(&format!("SELECT * FROM {table} LIMIT 1")).await;
            blocker = Some(b);
            extra.extend(["--cut-over-lock-timeout", "5s"]);
        }
    }
    let mut first = common::swivel(&run(&extra, alter), &dir, "first");
    match when {
        Kill::MidCopy | Kill::MidCopyFourThreads => {
            wait_status(&socket, 60, "25,000 rows copied", |s| {
                s["rows_copied"].as_u64() >= Some(25_000)
            })
            .await;
        }
        Kill::CatchUp => {
            wait_status(&socket, 90, "the postponed cut-over", |s| {
                s["phase"] == "catch-up" && !s["postponed"].is_null()
            })
            .await;
            // Catch-up begins just before the checkpoint of the finished copy is saved: kill
            // once it is (killed earlier, the resume rightly copies again from the one before).
            let saved = match server {
                Server::Postgres => format!("SELECT checkpoint FROM _{table}_swl WHERE id = 1"),
                Server::MariaDb => format!("SELECT state FROM _{table}_swl WHERE id = 5"),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !db
                .rows(&saved)
                .await
                .first()
                .and_then(|r| r[0].clone())
                .is_some_and(|c| c.contains("\"copied\":true"))
            {
                assert!(
                    Instant::now() < deadline,
                    "{server:?}: no checkpoint of the finished copy"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Kill::CutOver => {
            wait_status(&socket, 90, "cut-over", |s| s["phase"] == "cut-over").await;
            // Well inside the attempt: the lock is requested.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    first.kill().unwrap(); // SIGKILL: no cleanup
    first.wait().unwrap();
    let _ = std::fs::remove_file(&socket);
    if let Some(mut b) = blocker {
        b.exec("ROLLBACK").await.unwrap();
    }
    let in_shadow = db
        .number(&format!("SELECT count(*) FROM _{table}_new"))
        .await;
    assert!(in_shadow > 0, "{server:?}: the killed run left its copy");
    if (server, when) == (Server::MariaDb, Kill::CutOver) {
        let sentry = db
            .number(&format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
                 AND table_name = '{table}__swivel_del'"
            ))
            .await;
        assert_eq!(
            sentry, 1,
            "the run was killed in cut-over, its sentry there"
        );
    }

    // The dead run counts as alive until its walsender has gone (PostgreSQL) or its heartbeat
    // is 10s old (MariaDB): until then every attempt is refused as such.
    let until_dead = |args: Vec<String>, name: &'static str| {
        let dir = dir.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let (ok, said) = run_to_end(&args, &dir, name);
                if ok || !said.contains("is active") || Instant::now() > deadline {
                    return (ok, said);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    if when == Kill::MidCopy {
        // Without --resume, the leftovers are refused, and the message names both ways on.
        let (ok, said) = until_dead(run(&[], alter), "plain").await;
        assert!(!ok);
        assert!(
            said.contains("--resume") && said.contains("swivel cleanup"),
            "{server:?}: {said}"
        );
        // A resume with another ALTER is refused.
        let (ok, said) = until_dead(run(&["--execute", "--resume"], other_alter), "other").await;
        assert!(!ok);
        assert!(said.contains("same ALTER"), "{server:?}: {said}");
    }

    let resume: &[&str] = match when {
        Kill::MidCopyFourThreads => &["--execute", "--resume", "--threads", "4"],
        _ => &["--execute", "--resume"],
    };
    let (ok, said) = until_dead(run(resume, alter), "resume").await;
    assert!(ok, "{server:?}, {when:?}: the resume failed: {said}");
    stop.store(true, Relaxed);
    let writes = writes.await.unwrap();
    let resumed_at: u64 = said
        .lines()
        .find_map(|l| l.strip_prefix("resume: from the checkpoint saved "))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{server:?}: the resume says where it went on from: {said}"));
    assert!(
        resumed_at > 0,
        "{server:?}: the resume went on after the copied rows, not from the first: {said}"
    );
    if !matches!(when, Kill::MidCopy | Kill::MidCopyFourThreads) {
        assert!(
            said.contains("(the copy is done)"),
            "{server:?}, {when:?}: the resume copies nothing again: {said}"
        );
    }

    db.exec(&format!("ALTER TABLE {twin} {alter}"))
        .await
        .unwrap();
    for (a, b) in [(&table, &twin), (&twin, &table)] {
        let differ = db
            .number(&format!(
                "SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) d"
            ))
            .await;
        assert_eq!(differ, 0, "{server:?}: {a} has rows {b} lacks");
    }
    let k_type = match server {
        Server::Postgres => format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = '{table}'::regclass AND attname = 'k'"
        ),
        Server::MariaDb => format!(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = '{table}' AND column_name = 'k'"
        ),
    };
    assert!(
        matches!(db.rows(&k_type).await[0][0].as_deref(), Some("bigint")),
        "{server:?}: the column was changed"
    );
    db.assert_nothing_left(&table).await;
    eprintln!(
        "{server:?}, {when:?}: killed at {in_shadow} rows in the shadow, resumed after \
         {resumed_at} rows, {writes} writes throughout"
    );
    db.reset(&table).await;
    db.reset(&twin).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_killed_mid_copy_resumes_from_its_checkpoint() {
    killed_then_resumed(Server::Postgres, Kill::MidCopy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_run_killed_mid_copy_resumes_from_its_checkpoint() {
    killed_then_resumed(Server::MariaDb, Kill::MidCopy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_with_four_threads_killed_mid_copy_resumes() {
    killed_then_resumed(Server::Postgres, Kill::MidCopyFourThreads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_run_with_four_threads_killed_mid_copy_resumes() {
    killed_then_resumed(Server::MariaDb, Kill::MidCopyFourThreads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_killed_in_catch_up_resumes_from_its_checkpoint() {
    killed_then_resumed(Server::Postgres, Kill::CatchUp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_run_killed_in_catch_up_resumes_from_its_checkpoint() {
    killed_then_resumed(Server::MariaDb, Kill::CatchUp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_killed_in_cut_over_resumes_from_its_checkpoint() {
    killed_then_resumed(Server::Postgres, Kill::CutOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_run_killed_in_cut_over_resumes_from_its_checkpoint() {
    killed_then_resumed(Server::MariaDb, Kill::CutOver).await;
}
