//! The `swivel` binary as an operator runs it, on PostgreSQL: signals a deploy sends, `kill -9`
//! in the middle of a cut-over, and a password that must never show.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{control, wait_status, Db, Server};
use swivel::engine::migrate::cleanup_leftovers;

const PASSWORD: &str = "s3cr3t-Pa55word";

async fn make_table(client: &tokio_postgres::Client, table: &str, rows: i64) {
    common::reset(client, table).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, k int NOT NULL);
             INSERT INTO {table} SELECT i, i FROM generate_series(1, {rows}) i; ANALYZE {table}"
        ))
        .await
        .unwrap();
}

/// SIGTERM and SIGHUP mid-copy: the run cleans up and says so; no password anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_clean_up_and_no_password_shows() {
    let dsn = common::pg_dsn();
    let client = common::connect(&dsn).await;
    for (signal, name) in [(libc::SIGTERM, "term"), (libc::SIGHUP, "hup")] {
        let table = format!("proc_{name}");
        let dir = common::scratch("proc", &table);
        make_table(&client, &table, 20_000).await;
        let (socket, status, password_file) = (
            dir.join("control.sock"),
            dir.join("status.jsonl"),
            dir.join("password"),
        );
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        let mut child = common::swivel(
            &[
                "run",
                "--dsn",
                &dsn,
                "--table",
                &table,
                "--alter",
                "ALTER COLUMN k TYPE bigint",
                "--execute",
                "--max-rows-per-second",
                "2000",
                "--password-file",
                password_file.to_str().unwrap(),
                "--serve-socket-file",
                socket.to_str().unwrap(),
                "--status-file",
                status.to_str().unwrap(),
                "--progress-interval",
                "200ms",
            ],
            &dir,
            "run",
        );
        wait_status(&socket, 30, "the copy to start", |s| {
            s["rows_copied"].as_u64() > Some(0)
        })
        .await;
        let mut said = String::new();
        for line in ["status", "status json", "sup", "help", "max-lag-millis=?"] {
            said.push_str(&control(&socket, line).await);
        }
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        // SAFETY: kill with a valid pid of our own child and a standard signal.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0);
        let exit = child.wait().unwrap();
        assert!(
            !exit.success(),
            "{name}: an interrupted run must not exit 0"
        );
        let stderr = std::fs::read_to_string(dir.join("run.err")).unwrap();
        assert!(
            stderr.contains("interrupted, cleaning up"),
            "{name}: {stderr}"
        );
        common::assert_nothing_left(&client, &table).await;
        assert!(!socket.exists(), "{name}: the socket is removed");
        let everything = [
            said,
            String::from_utf8_lossy(&ps.stdout).into_owned(),
            stderr,
            std::fs::read_to_string(dir.join("run.out")).unwrap(),
            std::fs::read_to_string(&status).unwrap(),
        ];
        for (what, text) in ["socket", "ps", "stderr", "stdout", "status file"]
            .iter()
            .zip(&everything)
        {
            assert!(
                !text.contains(PASSWORD),
                "{name}: the password shows in {what}"
            );
        }
        common::reset(&client, &table).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Whether swivel's cut-over lock request waits in the queue (`waiting` counts it).
async fn queued(db: &mut Db, waiting: &str) -> bool {
    db.rows(waiting).await[0][0].as_deref() != Some("0")
}

/// `kill -9` while swivel waits for its write lock behind a blocking transaction (on
/// PostgreSQL the writer blocks the checksum's lock, which comes first; on MariaDB a reader
/// lets the checksum's READ lock through and blocks cut-over's): the server drops
/// the dead session's lock request well before its 20s lock timeout, so the application's
/// writes do not wait behind a ghost (PostgreSQL: `client_connection_check_interval`; MariaDB:
/// one-second `max_statement_time` slices); the original table is intact, and `swivel cleanup`
/// removes what the dead run left.
async fn killed_at_cut_over(server: Server) {
    let dsn = server.dsn();
    let mut db = Db::connect(server).await;
    let table = format!("proc_kill9_{}", format!("{server:?}").to_lowercase());
    let dir = common::scratch("proc", &table);
    db.reset(&table).await;
    let (create, alter, hold, waiting, k_type, original) = match server {
        Server::Postgres => (
            format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, k int NOT NULL);
                 INSERT INTO {table} SELECT i, i FROM generate_series(1, 5000) i"
            ),
            "ALTER COLUMN k TYPE bigint",
            format!("BEGIN; UPDATE {table} SET k = k WHERE id = 1"),
            format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.relation = '{table}'::regclass AND NOT l.granted
                   AND a.application_name IN ('swivel-cutover', 'swivel-checksum-lock')"
            ),
            format!(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = '{table}'::regclass AND attname = 'k'"
            ),
            "integer",
        ),
        Server::MariaDb => (
            format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, k int NOT NULL);
                 INSERT INTO {table} SELECT seq, seq FROM seq_1_to_5000"
            ),
            "MODIFY k BIGINT NOT NULL",
            format!("BEGIN; SELECT * FROM {table} WHERE id = 1"),
            format!(
                "SELECT count(*) FROM information_schema.processlist \
                 WHERE info LIKE 'LOCK TABLES %{table}%' AND state LIKE '%metadata lock%'"
            ),
            format!(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() \
                 AND table_name = '{table}' AND column_name = 'k'"
            ),
            "int",
        ),
    };
    db.exec(&create).await.unwrap();
    let (socket, postpone) = (dir.join("control.sock"), dir.join("postpone"));
    std::fs::write(&postpone, "").unwrap();
    let mut child = common::swivel(
        &[
            "run",
            "--dsn",
            &dsn,
            "--table",
            &table,
            "--alter",
            alter,
            "--execute",
            "--cut-over-lock-timeout",
            "20s",
            "--serve-socket-file",
            socket.to_str().unwrap(),
            "--postpone-cut-over-flag-file",
            postpone.to_str().unwrap(),
        ],
        &dir,
        "run",
    );
    wait_status(&socket, 60, "the postponed cut-over", |s| {
        s["phase"] == "catch-up" && !s["postponed"].is_null()
    })
    .await;
    let mut blocker = Db::connect(server).await;
    blocker.exec(&hold).await.unwrap();
    control(&socket, "unpostpone").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !queued(&mut db, &waiting).await {
        assert!(
            Instant::now() < deadline,
            "{server:?}: cut-over never queued for its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = Instant::now();
    while queued(&mut db, &waiting).await {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "{server:?}: the dead run's lock request is still queued after 10s (its lock \
             timeout is 20s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{server:?}: the dead run's lock request left the queue {:?} after kill -9",
        killed.elapsed()
    );
    blocker.exec("COMMIT").await.unwrap();
    assert_eq!(
        db.rows(&k_type).await,
        vec![vec![Some(original.to_string())]],
        "{server:?}: the original stays"
    );
    // kill -9 leaves the shadow (and more): `swivel cleanup` removes it. MariaDB counts a run
    // as alive for 10s after its last heartbeat: wait that out.
    let removed = match cleanup_leftovers(&dsn, None, &table, true).await {
        Err(e) if e.to_string().contains("is active") => {
            tokio::time::sleep(Duration::from_secs(11)).await;
            cleanup_leftovers(&dsn, None, &table, true).await
        }
        other => other,
    };
    assert!(
        !removed.unwrap().is_empty(),
        "{server:?}: a killed run leaves something to clean"
    );
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_at_cut_over_leaves_no_lock_request_behind() {
    killed_at_cut_over(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_killed_at_cut_over_leaves_no_lock_request_behind() {
    killed_at_cut_over(Server::MariaDb).await;
}
