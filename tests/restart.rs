//! A server restart in the middle of a run (what a failover or a crash looks like to swivel):
//! every session is opened again once the server is back (the stream on its permanent slot),
//! and the run completes with the table altered and nothing of it left. Alone in its binary:
//! the restart ends every session on the server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{control, run_postponed, Db, Server};
use swivel::{Outcome, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_run_reconnects_or_fails_cleanly() {
    common::testbed();
    if std::env::var("SWIVEL_PG_DSN").is_ok() {
        return; // not our server to restart
    }
    let table = "restart_mid_run";
    let mut db = Db::connect(Server::Postgres).await;
    db.reset(table).await;
    db.exec(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL);
         INSERT INTO {table} SELECT i, i FROM generate_series(1, 20000) i"
    ))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("swivel-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = RunOptions::new(Server::Postgres.dsn(), table, "ALTER COLUMN k TYPE bigint");
    let (run, socket) = run_postponed(opts, &dir).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testbed/testbed.sh");
    let status = Command::new("bash")
        .args([script, "restart-pg", "3"])
        .status()
        .expect("restarting the testbed's PostgreSQL");
    assert!(status.success());
    // Let the run find the server back, then let it cut over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    control(&socket, "unpostpone").await;
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run must end after the restart")
        .unwrap();
    match outcome {
        Ok(Outcome::Migrated(stats)) => eprintln!(
            "the run completed after the restart: {} changes replayed, cut-over {:?}",
            stats.changes_applied, stats.cutover
        ),
        other => panic!("the run must reconnect and complete after the restart: {other:?}"),
    }
    let mut db = Db::connect(Server::Postgres).await;
    let k = db
        .rows(&format!(
            "SELECT format_type(atttypid, atttypmod), (SELECT count(*) FROM {table}) \
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'k'"
        ))
        .await;
    assert_eq!(
        k[0],
        vec![Some("bigint".into()), Some("20000".into())],
        "the table is altered, every row there"
    );
    // Cleanup waited for the server and removed what the run made.
    db.assert_nothing_left(table).await;
    db.reset(table).await;
    // Leave the testbed as found: its standby streams from this server again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db
        .rows("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        .await[0][0]
        .as_deref()
        == Some("0")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the testbed's standby did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
