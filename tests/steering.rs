//! Steering a running migration on real servers, through its control socket for real: throttle
//! and resume, chunk size, flag files, postponed cut-over, replica lag, a transaction blocking
//! the cut-over, hooks. Each run migrates while a writer changes the table, and the result must
//! hold every committed write.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{control, status_json, wait_status, Db, Server};
use swivel::{Outcome, RunOptions};

/// A scratch directory for one test's socket and flag files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("swivel-steer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn make_table(db: &mut Db, server: Server, table: &str, rows: i64) {
    db.reset(table).await;
    let sql = match server {
        Server::Postgres => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, pad text);
             INSERT INTO {table} SELECT i, i, md5(i::text) FROM generate_series(1, {rows}) i;
             ANALYZE {table}"
        ),
        Server::MariaDb => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, pad varchar(64));
             INSERT INTO {table} SELECT seq, seq, md5(seq) FROM seq_1_to_{rows};
             ANALYZE TABLE {table}"
        ),
    };
    db.exec(&sql).await.unwrap();
}

fn alter(server: Server) -> &'static str {
    match server {
        Server::Postgres => "ALTER COLUMN k TYPE bigint",
        Server::MariaDb => "MODIFY k BIGINT NOT NULL",
    }
}

/// What a writer saw: the final k of each row it wrote, and how long each write took.
#[derive(Default)]
struct Written {
    k: BTreeMap<i64, i64>,
    latencies: Vec<Duration>,
}

/// Update rows `2..=rows` (never row 1, which a blocker may hold) and insert new rows above
/// `rows`, one write every `every`, each in its own transaction, until `stop`.
async fn writer(
    dsn: String,
    table: String,
    rows: i64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Written {
    let mut db = Db::connect_to(&dsn).await;
    let mut out = Written::default();
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (id, sql) = if n % 2 == 0 {
            let id = 2 + (n * 7919) % (rows - 1);
            (id, format!("UPDATE {table} SET k = {n} WHERE id = {id}"))
        } else {
            let id = rows + n;
            (
                id,
                format!("INSERT INTO {table} (id, k, pad) VALUES ({id}, {n}, 'w')"),
            )
        };
        let started = Instant::now();
        db.exec(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.latencies.push(started.elapsed());
        out.k.insert(id, n);
        tokio::time::sleep(every).await;
    }
    out
}

/// A writer at ~50 writes/s in the background.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Written>,
}

impl Writer {
    fn start(dsn: String, table: String, rows: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis(20);
        let task = tokio::spawn(writer(dsn, table, rows, every, stop.clone()));
        Writer { stop, task }
    }

    /// Stop writing; what was written.
    async fn finish(self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the writer failed")
    }
}

/// The table holds every write the writer made, k has the new type, nothing of swivel's is
/// left.
async fn check_result(db: &mut Db, server: Server, table: &str, rows: i64, written: &Written) {
    let count = db.rows(&format!("SELECT count(*) FROM {table}")).await;
    let inserted = written.k.keys().filter(|id| **id > rows).count() as i64;
    assert_eq!(
        count[0][0].as_deref(),
        Some((rows + inserted).to_string().as_str()),
        "{server:?}: rows lost or added"
    );
    for (id, k) in &written.k {
        let got = db
            .rows(&format!("SELECT k FROM {table} WHERE id = {id}"))
            .await;
        assert_eq!(
            got,
            vec![vec![Some(k.to_string())]],
            "{server:?}: row {id} does not hold the last write"
        );
    }
    let k_type = match server {
        Server::Postgres => format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'k'"
        ),
        Server::MariaDb => format!(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}' AND column_name = 'k'"
        ),
    };
    assert_eq!(
        db.rows(&k_type).await,
        vec![vec![Some("bigint".to_string())]]
    );
    db.assert_nothing_left(table).await;
}

fn rows_copied(s: &serde_json::Value) -> u64 {
    s["rows_copied"].as_u64().unwrap()
}

fn changes_applied(s: &serde_json::Value) -> u64 {
    s["changes_applied"].as_u64().unwrap()
}

/// Throttled, nothing moves: neither the copy nor the replay, although the writer writes.
async fn assert_paused(socket: &Path, server: Server, why: &str) {
    // A chunk already in flight ends and the throttler's next look may be a tick away: wait
    // until nothing has moved for 300ms (a busy machine may take a while), then watch.
    let mut a = status_json(socket).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = status_json(socket).await;
        let still =
            rows_copied(&now) == rows_copied(&a) && changes_applied(&now) == changes_applied(&a);
        a = now;
        if still {
            break;
        }
    }
    assert_eq!(a["throttled"], true, "{server:?}: {a}");
    let reason = a["throttle_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(why),
        "{server:?}: throttled for `{reason}`, not {why}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = status_json(socket).await;
    assert_eq!(
        rows_copied(&a),
        rows_copied(&b),
        "{server:?}: the copy went on while throttled"
    );
    assert_eq!(
        changes_applied(&a),
        changes_applied(&b),
        "{server:?}: the replay went on while throttled"
    );
    assert!(
        b["state"]
            .as_str()
            .unwrap_or_default()
            .contains("throttled"),
        "{server:?}: the state does not say throttled: {b}"
    );
}

/// Wait until the copy moves again.
async fn assert_moving(socket: &Path, server: Server) {
    let a = rows_copied(&status_json(socket).await);
    wait_status(socket, 30, "the copy to go on", |s| {
        rows_copied(s) > a || s["phase"] != "copy"
    })
    .await;
    let _ = server;
}

async fn socket_steers_the_run(server: Server) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("steer_{}", format!("{server:?}").to_lowercase());
    let rows = 30_000;
    let dir = scratch(&table);
    let (socket, throttle_flag, postpone_flag) = (
        dir.join("control.sock"),
        dir.join("throttle.flag"),
        dir.join("postpone.flag"),
    );
    std::fs::write(&postpone_flag, "").unwrap();
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table, rows).await;
    let writes = Writer::start(server.dsn(), table.clone(), rows);

    let mut opts = RunOptions::new(server.dsn(), &table, alter(server));
    opts.execute = true;
    opts.chunk_size = 500;
    opts.knobs.target_chunk_time = Duration::from_millis(50);
    opts.max_rows_per_second = Some(3000);
    opts.serve_socket_file = Some(socket.clone());
    opts.knobs.throttle_flag_file = Some(throttle_flag.clone());
    opts.knobs.postpone_cut_over_flag_file = Some(postpone_flag.clone());
    let run = tokio::spawn(swivel::run(opts, std::future::pending()));

    wait_status(&socket, 30, "the copy to start", |s| rows_copied(s) > 0).await;
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "{server:?}: the socket must be private to its owner"
    );
    assert!(control(&socket, "help").await.contains("no-throttle"));
    let unknown = control(&socket, "frobnicate").await;
    assert!(unknown.starts_with("error: unknown command"), "{unknown}");
    assert!(control(&socket, "max-lag-millis=0")
        .await
        .starts_with("error:"));
    assert_eq!(control(&socket, "max-lag-millis=?").await, "1500");
    let sup = control(&socket, "sup").await;
    assert!(sup.starts_with("copy:"), "{sup}");
    assert!(control(&socket, "status")
        .await
        .contains(&format!("# Migrating {table}")));

    // The socket's throttle.
    let reply = control(&socket, "throttle").await;
    assert!(reply.starts_with("throttled"), "{reply}");
    assert_paused(&socket, server, "commanded by user").await;
    assert_eq!(control(&socket, "chunk-size=300").await, "chunk-size=300");
    assert_eq!(control(&socket, "no-throttle").await, "not throttled");
    assert_moving(&socket, server).await;
    wait_status(&socket, 10, "the pinned chunk size", |s| {
        s["chunk_size"] == 300 || s["phase"] != "copy"
    })
    .await;

    // The flag file.
    std::fs::write(&throttle_flag, "").unwrap();
    assert_paused(&socket, server, "flag file").await;
    std::fs::remove_file(&throttle_flag).unwrap();
    assert_moving(&socket, server).await;

    // Load, as gh-ost names it (on PostgreSQL Threads_connected counts client backends), and a
    // throttle query.
    assert_eq!(
        control(&socket, "max-load=Threads_connected=1").await,
        "max-load=Threads_connected=1"
    );
    assert_paused(&socket, server, "max-load Threads_connected=").await;
    assert_eq!(control(&socket, "max-load=").await, "max-load=");
    assert_moving(&socket, server).await;
    control(&socket, "throttle-query=SELECT 1").await;
    assert_paused(&socket, server, "throttle-query returned 1").await;
    control(&socket, "throttle-query=SELECT 0").await;
    assert_moving(&socket, server).await;

    // Postponed: caught up, replaying, not cutting over.
    let s = wait_status(&socket, 60, "the postponed cut-over", |s| {
        s["phase"] == "catch-up" && !s["postponed"].is_null()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = status_json(&socket).await;
    assert_eq!(
        later["phase"], "catch-up",
        "{server:?}: cut over while postponed"
    );
    assert!(
        changes_applied(&later) > changes_applied(&s),
        "{server:?}: a postponed run must keep replaying: {later}"
    );
    let reply = control(&socket, "unpostpone").await;
    assert!(reply.starts_with("cut-over unpostponed"), "{reply}");
    let outcome = run.await.unwrap();
    let written = writes.finish().await;
    let stats = match outcome {
        Ok(Outcome::Migrated(stats)) => stats,
        other => panic!("{server:?}: {other:?}"),
    };
    assert!(!postpone_flag.exists(), "unpostpone removes the flag file");
    assert!(!socket.exists(), "the socket is removed at exit");
    check_result(&mut db, server, &table, rows, &written).await;
    eprintln!(
        "{server:?}: {} rows copied, {} changes replayed, cut-over attempt {} held the lock {:?}",
        stats.rows_copied, stats.changes_applied, stats.cutover.attempts, stats.cutover.lock_held
    );
    db.reset(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_socket_steers_the_run() {
    socket_steers_the_run(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_socket_steers_the_run() {
    socket_steers_the_run(Server::MariaDb).await;
}

/// How the test deals with the transaction in cut-over's way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocker {
    /// It commits after a while; cut-over retries until then.
    Commits,
    /// `--force-cut-over-after` ends it.
    Forced,
    /// `--cut-over-max-wait` runs out first: the run waits, caught up, for `unpostpone`.
    OutlastsMaxWait,
}

async fn blocked_cut_over(server: Server, blocker: Blocker) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!(
        "blocked_{}_{}",
        format!("{server:?}").to_lowercase(),
        format!("{blocker:?}").to_lowercase()
    );
    let rows = 5_000;
    let dir = scratch(&table);
    let (socket, postpone_flag) = (dir.join("control.sock"), dir.join("postpone.flag"));
    std::fs::write(&postpone_flag, "").unwrap();
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table, rows).await;
    let writes = Writer::start(server.dsn(), table.clone(), rows);
    let lock_timeout = Duration::from_millis(300);
    let mut opts = RunOptions::new(server.dsn(), &table, alter(server));
    opts.execute = true;
    opts.serve_socket_file = Some(socket.clone());
    opts.knobs.postpone_cut_over_flag_file = Some(postpone_flag.clone());
    opts.cut_over_lock_timeout = lock_timeout;
    opts.cut_over_retries = 3;
    // These measure cut-over's attempts against the blocker; the checksum, which would meet
    // the blocker first on PostgreSQL (a writer blocks its lock too), is tested on its own.
    opts.skip_checksum = true;
    match blocker {
        Blocker::Forced => opts.force_cut_over_after = Some(Duration::from_secs(1)),
        Blocker::OutlastsMaxWait => opts.cut_over_max_wait = Some(Duration::from_secs(1)),
        Blocker::Commits => {}
    }
    let run = tokio::spawn(swivel::run(opts, std::future::pending()));
    wait_status(&socket, 60, "the postponed cut-over", |s| {
        s["phase"] == "catch-up" && !s["postponed"].is_null()
    })
    .await;

    // A transaction that holds a lock on the table: cut-over's lock must wait for it.
    let mut holder = Db::connect(server).await;
    let hold = match server {
        Server::Postgres => format!("BEGIN; UPDATE {table} SET pad = 'held' WHERE id = 1"),
        Server::MariaDb => format!("BEGIN; SELECT * FROM {table} WHERE id = 1"),
    };
    holder.exec(&hold).await.unwrap();
    let held_at = Instant::now();
    control(&socket, "unpostpone").await;
    let outcome = match blocker {
        Blocker::Commits => {
            // Several attempts fail meanwhile; the run keeps its copy and retries.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let s = status_json(&socket).await;
            assert_ne!(
                s["phase"], "done",
                "{server:?}: swapped past a lock it cannot take"
            );
            holder.exec("COMMIT").await.unwrap();
            run.await.unwrap()
        }
        Blocker::OutlastsMaxWait => {
            let held = wait_status(&socket, 30, "cut-over to give up and wait", |s| {
                s["postponed"]
                    .as_str()
                    .is_some_and(|p| p.contains("--cut-over-max-wait"))
            })
            .await;
            assert_eq!(held["phase"], "catch-up", "{server:?}: {held}");
            let applied = changes_applied(&held);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let later = status_json(&socket).await;
            assert!(
                changes_applied(&later) > applied && later["phase"] == "catch-up",
                "{server:?}: a held cut-over must stay caught up and not swap: {later}"
            );
            holder.exec("COMMIT").await.unwrap();
            control(&socket, "unpostpone").await;
            run.await.unwrap()
        }
        Blocker::Forced => {
            let outcome = run.await.unwrap();
            let commit = holder.exec("COMMIT").await;
            assert!(
                commit.is_err(),
                "{server:?}: the blocking session should have been ended"
            );
            outcome
        }
    };
    let blocked_for = held_at.elapsed();
    let written = writes.finish().await;
    let stats = match outcome {
        Ok(Outcome::Migrated(stats)) => stats,
        other => panic!("{server:?}: {other:?}"),
    };
    let c = &stats.cutover;
    assert!(
        c.attempts > 1,
        "{server:?}: the first attempt cannot have passed the blocker"
    );
    let longest_write = written.latencies.iter().max().copied().unwrap_or_default();
    let slow: Duration = written
        .latencies
        .iter()
        .filter(|l| **l > Duration::from_millis(50))
        .sum();
    eprintln!(
        "{server:?} {blocker:?}: blocked {blocked_for:?}; {} attempts; swivel: stall {:?} in all, \
         longest {:?}, lock held {:?}; writer: {} writes, longest {longest_write:?}, {slow:?} in \
         writes over 50ms",
        c.attempts,
        c.stall,
        c.longest_stall,
        c.lock_held,
        written.latencies.len()
    );
    // The report must cover what the writer felt: no write waited longer than the longest
    // stall swivel reports (plus the write's own round trip and commit).
    assert!(
        longest_write <= c.longest_stall + Duration::from_millis(500),
        "{server:?}: a write waited {longest_write:?}, longer than the reported longest stall {:?}",
        c.longest_stall
    );
    check_result(&mut db, server, &table, rows, &written).await;
    db.reset(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_over_waits_out_a_blocking_transaction() {
    blocked_cut_over(Server::Postgres, Blocker::Commits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_cut_over_waits_out_a_blocking_transaction() {
    blocked_cut_over(Server::MariaDb, Blocker::Commits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_over_max_wait_then_unpostpone() {
    blocked_cut_over(Server::Postgres, Blocker::OutlastsMaxWait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_cut_over_max_wait_then_unpostpone() {
    blocked_cut_over(Server::MariaDb, Blocker::OutlastsMaxWait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_force_cut_over_ends_the_blocker() {
    blocked_cut_over(Server::Postgres, Blocker::Forced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_force_cut_over_ends_the_blocker() {
    blocked_cut_over(Server::MariaDb, Blocker::Forced).await;
}

/// Pausing replay on a replica throttles the run; resuming lets it finish.
async fn replica_lag_throttles(server: Server) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (primary, replica) = match server {
        Server::Postgres => (common::pg_dsn(), common::pg_standby_dsn()),
        Server::MariaDb => (common::my_repl_dsn(), common::my_replica_dsn()),
    };
    let table = format!("lagged_{}", format!("{server:?}").to_lowercase());
    let rows = 20_000;
    let dir = scratch(&table);
    let socket = dir.join("control.sock");
    let mut db = Db::connect_to(&primary).await;
    make_table(&mut db, server, &table, rows).await;
    let mut on_replica = Db::connect_to(&replica).await;
    let writes = Writer::start(primary.clone(), table.clone(), rows);
    let mut opts = RunOptions::new(&primary, &table, alter(server));
    opts.execute = true;
    opts.chunk_size = 500;
    opts.knobs.target_chunk_time = Duration::from_millis(50);
    opts.max_rows_per_second = Some(3000);
    opts.knobs.max_lag = Duration::from_millis(1000);
    opts.knobs.throttle_control_replicas = vec![replica.clone()];
    opts.serve_socket_file = Some(socket.clone());
    let run = tokio::spawn(swivel::run(opts, std::future::pending()));
    wait_status(&socket, 30, "the copy to start", |s| rows_copied(s) > 0).await;

    let (pause, resume) = match server {
        Server::Postgres => (
            "SELECT pg_wal_replay_pause()",
            "SELECT pg_wal_replay_resume()",
        ),
        Server::MariaDb => ("STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD"),
    };
    on_replica.exec(pause).await.unwrap();
    let s = wait_status(&socket, 30, "throttling on the replica's lag", |s| {
        s["throttle_reason"]
            .as_str()
            .is_some_and(|r| r.contains("replica"))
    })
    .await;
    // "lags …ms", or, when the pause came before swivel's heartbeat row reached the replica,
    // the replica's own status ("replication is not running"): both throttle.
    eprintln!("{server:?}: {}", s["throttle_reason"]);
    assert_paused(&socket, server, "replica").await;
    on_replica.exec(resume).await.unwrap();
    let outcome = run.await.unwrap();
    let written = writes.finish().await;
    assert!(
        matches!(outcome, Ok(Outcome::Migrated(_))),
        "{server:?}: {outcome:?}"
    );
    check_result(&mut db, server, &table, rows, &written).await;
    db.reset(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replica_lag_throttles() {
    replica_lag_throttles(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_replica_lag_throttles() {
    replica_lag_throttles(Server::MariaDb).await;
}

/// Hooks run in order with the run's description; a failing on-before-cut-over hook postpones
/// the cut-over until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooks_run_in_order_and_can_hold_the_cut_over() {
    use std::os::unix::fs::PermissionsExt;
    let table = "hooked";
    let dir = scratch(table);
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let log = dir.join("hooks.log");
    let tries = dir.join("tries");
    let script = |name: &str, body: &str| {
        let path = hooks.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for hook in [
        "startup",
        "validated",
        "rowcount-complete",
        "before-row-copy",
        "row-copy-complete",
        "success",
        "failure",
    ] {
        script(
            &format!("swivel-on-{hook}"),
            &format!(
                "echo \"{hook} $SWIVEL_TABLE_NAME $SWIVEL_COPIED_ROWS\" >> {}",
                log.display()
            ),
        );
    }
    // Fails twice, then lets the cut-over go.
    script(
        "swivel-on-before-cut-over",
        &format!(
            "echo x >> {tries}; echo \"before-cut-over\" >> {log}; [ $(wc -l < {tries}) -gt 2 ]",
            tries = tries.display(),
            log = log.display()
        ),
    );
    let mut db = Db::connect(Server::Postgres).await;
    make_table(&mut db, Server::Postgres, table, 2_000).await;
    let mut opts = RunOptions::new(Server::Postgres.dsn(), table, alter(Server::Postgres));
    opts.execute = true;
    opts.hooks_path = Some(hooks.clone());
    let outcome = swivel::run(opts, std::future::pending()).await;
    assert!(matches!(outcome, Ok(Outcome::Migrated(_))), "{outcome:?}");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "startup hooked 0",
            "validated hooked 0",
            "rowcount-complete hooked 0",
            "before-row-copy hooked 0",
            "row-copy-complete hooked 2000",
            "before-cut-over",
            "before-cut-over",
            "before-cut-over",
            "success hooked 2000",
        ]
    );
    db.reset(table).await;

    // A failing on-startup hook stops the run before anything is made.
    script("swivel-on-startup", "echo no >&2; exit 3");
    make_table(&mut db, Server::Postgres, table, 10).await;
    let mut opts = RunOptions::new(Server::Postgres.dsn(), table, alter(Server::Postgres));
    opts.execute = true;
    opts.hooks_path = Some(hooks);
    let outcome = swivel::run(opts, std::future::pending()).await;
    match outcome {
        Err(swivel::Error::Hook(why)) => assert!(why.contains("swivel-on-startup"), "{why}"),
        other => panic!("{other:?}"),
    }
    db.assert_nothing_left(table).await;
    db.reset(table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The WAL swivel's slot makes the server keep.
async fn retained(db: &mut Db) -> String {
    let sql =
        "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint \
               FROM pg_replication_slots WHERE slot_name LIKE 'swivel_%'";
    db.rows(sql).await[0][0].clone().unwrap_or_default()
}

/// PostgreSQL: while throttled the slot retains WAL; at `--max-retained-wal` the replay goes on
/// (the copy stays paused) so the server's disk does not fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_wal_bound_lets_replay_go_on() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let server = Server::Postgres;
    let table = "wal_bound";
    let rows = 20_000;
    let dir = scratch(table);
    let socket = dir.join("control.sock");
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, table, rows).await;
    let writes = Writer::start(server.dsn(), table.to_string(), rows);
    let mut opts = RunOptions::new(server.dsn(), table, alter(server));
    opts.execute = true;
    opts.chunk_size = 500;
    opts.knobs.target_chunk_time = Duration::from_millis(50);
    opts.max_rows_per_second = Some(3000);
    // Far above what copying 20,000 rows retains, well under what the bulk update below does.
    opts.max_retained_wal = 8 << 20;
    opts.serve_socket_file = Some(socket.clone());
    let run = tokio::spawn(swivel::run(opts, std::future::pending()));
    wait_status(&socket, 30, "the copy to start", |s| rows_copied(s) > 0).await;
    control(&socket, "throttle").await;
    // Retained WAL is the whole server's since the slot's restart point: tests running beside
    // this one may reach the bound too, which only makes the replay go on sooner. So this test
    // checks what happens at the bound, not that replay pauses below it (the others do).
    wait_status(&socket, 30, "the throttle", |s| s["throttled"] == true).await;
    eprintln!(
        "retained while throttled: {} bytes",
        retained(&mut db).await
    );
    // Well over the bound's worth of WAL while the replay is paused.
    db.exec(&format!(
        "UPDATE {table} SET pad = repeat(md5(pad), 16) WHERE id > 1"
    ))
    .await
    .unwrap();
    eprintln!(
        "retained after a bulk update: {} bytes",
        retained(&mut db).await
    );
    let forced = wait_status(&socket, 30, "the WAL bound to force the replay on", |s| {
        s["replay_forced_by_wal_bound"] == true
    })
    .await;
    assert_eq!(forced["throttled"], true);
    let copied = rows_copied(&forced);
    // The bulk update's rows below the watermark (the copied ones) are replayed; the others
    // are the copy's to read later.
    let s = wait_status(&socket, 60, "the replay to go on at the bound", |s| {
        changes_applied(s) > changes_applied(&forced) + 1_000
    })
    .await;
    assert_eq!(
        rows_copied(&s),
        copied,
        "the copy stays paused at the bound"
    );
    eprintln!("retained once replayed: {} bytes", retained(&mut db).await);
    control(&socket, "no-throttle").await;
    let outcome = run.await.unwrap();
    let written = writes.finish().await;
    assert!(matches!(outcome, Ok(Outcome::Migrated(_))), "{outcome:?}");
    check_result(&mut db, server, table, rows, &written).await;
    db.reset(table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--critical-load` (PostgreSQL) and `--panic-flag-file` (MariaDB) stop the run cleanly: the
/// original table is left as the writer left it, nothing of swivel's remains.
async fn stopped_cleanly(server: Server) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("stopped_{}", format!("{server:?}").to_lowercase());
    let rows = 20_000;
    let dir = scratch(&table);
    let (socket, panic_flag) = (dir.join("control.sock"), dir.join("panic.flag"));
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table, rows).await;
    let writes = Writer::start(server.dsn(), table.clone(), rows);
    let mut opts = RunOptions::new(server.dsn(), &table, alter(server));
    opts.execute = true;
    opts.max_rows_per_second = Some(3000);
    opts.serve_socket_file = Some(socket.clone());
    opts.knobs.panic_flag_file = Some(panic_flag.clone());
    let run = tokio::spawn(swivel::run(opts, std::future::pending()));
    wait_status(&socket, 30, "the copy to start", |s| rows_copied(s) > 0).await;
    let expected = match server {
        Server::Postgres => {
            let reply = control(&socket, "critical-load=Threads_connected=1").await;
            assert_eq!(reply, "critical-load=Threads_connected=1");
            "critical-load reached: Threads_connected="
        }
        Server::MariaDb => {
            std::fs::write(&panic_flag, "").unwrap();
            "panic flag file"
        }
    };
    let outcome = run.await.unwrap();
    let written = writes.finish().await;
    match outcome {
        Err(swivel::Error::Interrupted(why)) => {
            assert!(why.contains(expected), "{server:?}: stopped for {why}")
        }
        other => panic!("{server:?}: {other:?}"),
    }
    // The original: every write there, k still int.
    let count = db.rows(&format!("SELECT count(*) FROM {table}")).await;
    let inserted = written.k.keys().filter(|id| **id > rows).count() as i64;
    assert_eq!(
        count[0][0].as_deref(),
        Some((rows + inserted).to_string().as_str())
    );
    db.assert_nothing_left(&table).await;
    assert!(!socket.exists(), "the socket is removed");
    db.reset(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_critical_load_stops_the_run_cleanly() {
    stopped_cleanly(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_panic_flag_file_stops_the_run_cleanly() {
    stopped_cleanly(Server::MariaDb).await;
}
