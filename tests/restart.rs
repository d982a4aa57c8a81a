//! A server restart in the middle of the copy (what a failover or a crash looks like to swivel):
//! every session is opened again once the server is back (PostgreSQL's stream on its permanent
//! slot, MariaDB's from the last applied binlog position), and the run completes with the
//! table altered and nothing of it left. Alone in its binary: the restart ends every session
//! on the server.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{control, status_json, Db, Server};
use swivel::{Outcome, RunOptions};
use tokio::task::JoinHandle;

/// Poll the run's status until `ready` says so; the run ending meanwhile fails the test with
/// its outcome (a missing socket would only say that it is gone).
async fn while_running(
    run: &mut JoinHandle<swivel::Result<Outcome>>,
    socket: &Path,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if run.is_finished() {
            panic!("the run ended before {what}: {:?}", run.await.unwrap());
        }
        if socket.exists() {
            let s = status_json(socket).await;
            if ready(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "waited for {what}: {s}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn restart_mid_run(server: Server) {
    common::testbed();
    if std::env::var("SWIVEL_PG_DSN").is_ok() {
        return; // not our servers to restart
    }
    let table = format!("restart_mid_run_{server:?}").to_lowercase();
    let mut db = Db::connect(server).await;
    db.reset(&table).await;
    let (fill, alter, k_type) = match server {
        Server::Postgres => (
            format!("INSERT INTO {table} SELECT i, i FROM generate_series(1, 20000) i"),
            "ALTER COLUMN k TYPE bigint",
            format!(
                "SELECT format_type(atttypid, atttypmod), (SELECT count(*) FROM {table}) \
                 FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'k'"
            ),
        ),
        Server::MariaDb => (
            format!("INSERT INTO {table} SELECT seq, seq FROM seq_1_to_20000"),
            "MODIFY k BIGINT NOT NULL",
            format!(
                "SELECT data_type, (SELECT count(*) FROM {table}) FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = '{table}' AND column_name = 'k'"
            ),
        ),
    };
    db.exec(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL)"
    ))
    .await
    .unwrap();
    db.exec(&fill).await.unwrap();
    let dir = common::scratch("restart", &table);
    // Slowed down, so that the server goes away mid-copy; held before cut-over until the test
    // has written after the restart.
    let (socket, flag) = (dir.join("control.sock"), dir.join("postpone.flag"));
    std::fs::write(&flag, "").unwrap();
    let mut opts = RunOptions::new(server.dsn(), &table, alter);
    opts.execute = true;
    opts.max_rows_per_second = Some(4000);
    opts.serve_socket_file = Some(socket.clone());
    opts.knobs.postpone_cut_over_flag_file = Some(flag);
    let mut run = tokio::spawn(swivel::run(opts, std::future::pending()));
    while_running(
        &mut run,
        &socket,
        &format!("{server:?}: 5,000 rows copied"),
        |s| s["rows_copied"].as_u64() >= Some(5_000),
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testbed/testbed.sh");
    let command = match server {
        Server::Postgres => "restart-pg",
        Server::MariaDb => "restart-mariadb",
    };
    let status = Command::new("bash")
        .args([script, command, "3"])
        .status()
        .expect("restarting a testbed server");
    assert!(status.success());
    // Writes while the run finds the server back: the stream must replay them.
    let mut db = Db::connect(server).await;
    db.exec(&format!("UPDATE {table} SET k = k + 1 WHERE id <= 100"))
        .await
        .unwrap();
    if run.is_finished() {
        panic!(
            "{server:?}: the run ended at the restart: {:?}",
            run.await.unwrap()
        );
    }
    let copied = status_json(&socket).await["rows_copied"].as_u64();
    assert!(
        copied < Some(20_000),
        "{server:?}: the server went away mid-copy ({copied:?} rows copied when it was back)"
    );
    while_running(
        &mut run,
        &socket,
        &format!("{server:?}: the postponed cut-over"),
        |s| s["phase"] == "catch-up" && !s["postponed"].is_null(),
    )
    .await;
    control(&socket, "unpostpone").await;
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run must end after the restart")
        .unwrap();
    match outcome {
        Ok(Outcome::Migrated(stats)) => eprintln!(
            "{server:?}: the run completed after the restart: {} changes replayed, cut-over {:?}",
            stats.changes_applied, stats.cutover
        ),
        other => {
            panic!("{server:?}: the run must reconnect and complete after the restart: {other:?}")
        }
    }
    let k = db.rows(&k_type).await;
    assert_eq!(
        k[0],
        vec![Some("bigint".into()), Some("20000".into())],
        "{server:?}: the table is altered, every row there"
    );
    let bumped = db
        .number(&format!("SELECT count(*) FROM {table} WHERE k = id + 1"))
        .await;
    assert_eq!(
        bumped, 100,
        "{server:?}: the writes after the restart were replayed"
    );
    // Cleanup waited for the server and removed what the run made.
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_run_reconnects_and_completes() {
    restart_mid_run(Server::Postgres).await;
    if std::env::var("SWIVEL_PG_DSN").is_ok() {
        return;
    }
    // Leave the testbed as found: its standby streams from this server again.
    let mut db = Db::connect(Server::Postgres).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db
        .number("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the testbed's standby did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_restart_mid_run_reconnects_and_completes() {
    restart_mid_run(Server::MariaDb).await;
}
