//! The model-based concurrency test of DESIGN.md, one body for both servers: random inserts,
//! updates (key changes, unique-value moves and large values included), deletes, multi-row
//! transactions and rollbacks run during the copy and through the cut-over; afterwards the
//! table must equal the writers' model, row for row.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Db, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swivel::{Outcome, RunOptions};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    k: i64,
    u: Option<i32>,
    c: String,
    big: Option<String>,
}

type Model = BTreeMap<i64, Row>;

const WRITERS: i64 = 3;

fn big_value(rng: &mut StdRng) -> String {
    // Large: TOASTed out of line on PostgreSQL (the column is STORAGE EXTERNAL).
    (0..3000)
        .map(|_| char::from(b'a' + rng.gen_range(0..26)))
        .collect()
}

/// A literal for a value the workload makes ([a-z0-9-] only, so no escaping is needed).
fn lit<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or("NULL".to_string(), |v| format!("'{}'", v.to_string()))
}

async fn load_model(db: &mut Db, table: &str) -> Model {
    db.rows(&format!("SELECT id, k, u, c, big FROM {table}"))
        .await
        .into_iter()
        .map(|r| {
            let int = |i: usize| {
                r[i].as_deref()
                    .map(|v| v.parse::<i64>().expect("an integer"))
            };
            (
                int(0).expect("an id"),
                Row {
                    k: int(1).expect("a k"),
                    u: int(2).map(|u| u as i32),
                    c: r[3].clone().expect("a c"),
                    big: r[4].clone(),
                },
            )
        })
        .collect()
}

/// One writer: owns the keys with id % WRITERS == w, so its model part is exact.
async fn writer(
    server: Server,
    table: String,
    w: i64,
    seed: u64,
    mut model: Model,
    stop: Arc<AtomicBool>,
) -> Model {
    let mut db = Db::connect(server).await;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64));
    let mut next_id = model.keys().next_back().copied().unwrap_or(0) + WRITERS * 1000 + w;
    next_id -= next_id.rem_euclid(WRITERS) - w;
    let unique_range = 1 + model.len() as i32 / 4;
    while !stop.load(Ordering::Relaxed) {
        let mut staged = model.clone();
        let ops = rng.gen_range(1..=3);
        db.exec("BEGIN").await.unwrap();
        let mut failed = false;
        for _ in 0..ops {
            let pick = |rng: &mut StdRng, m: &Model| -> Option<i64> {
                let lo = *m.keys().next()?;
                let hi = *m.keys().next_back()?;
                let x = rng.gen_range(lo..=hi);
                m.range(x..).next().map(|(k, _)| *k)
            };
            let op = rng.gen_range(0..100);
            let sql = if op < 30 || staged.is_empty() {
                let id = next_id;
                next_id += WRITERS;
                let row = Row {
                    k: rng.gen_range(0..1_000_000),
                    u: None,
                    c: format!("ins-{seed}-{id}"),
                    big: rng.gen_bool(0.1).then(|| big_value(&mut rng)),
                };
                let sql = format!(
                    "INSERT INTO {table} (id, k, u, c, big) VALUES ({id}, {}, NULL, '{}', {})",
                    row.k,
                    row.c,
                    lit(&row.big)
                );
                staged.insert(id, row);
                sql
            } else if op < 55 {
                // Leaves `big` alone: on PostgreSQL a TOASTed value arrives as "unchanged".
                let id = pick(&mut rng, &staged).unwrap();
                let row = staged.get_mut(&id).unwrap();
                row.k = rng.gen_range(0..1_000_000);
                row.c = format!("upd-{}", rng.gen::<u32>());
                format!(
                    "UPDATE {table} SET k = {}, c = '{}' WHERE id = {id}",
                    row.k, row.c
                )
            } else if op < 63 {
                let id = pick(&mut rng, &staged).unwrap();
                let row = staged.get_mut(&id).unwrap();
                row.big = rng.gen_bool(0.7).then(|| big_value(&mut rng));
                format!("UPDATE {table} SET big = {} WHERE id = {id}", lit(&row.big))
            } else if op < 73 {
                // Moves a unique value between rows; collisions fail and roll back.
                let id = pick(&mut rng, &staged).unwrap();
                let row = staged.get_mut(&id).unwrap();
                row.u = rng.gen_bool(0.8).then(|| rng.gen_range(0..unique_range));
                format!("UPDATE {table} SET u = {} WHERE id = {id}", lit(&row.u))
            } else if op < 83 {
                // A primary key change.
                let id = pick(&mut rng, &staged).unwrap();
                let new_id = next_id;
                next_id += WRITERS;
                let row = staged.remove(&id).unwrap();
                staged.insert(new_id, row);
                format!("UPDATE {table} SET id = {new_id} WHERE id = {id}")
            } else {
                let id = pick(&mut rng, &staged).unwrap();
                staged.remove(&id);
                format!("DELETE FROM {table} WHERE id = {id}")
            };
            if db.exec(&sql).await.is_err() {
                failed = true; // a unique collision or a cut-over hiccup: roll the whole thing back
                break;
            }
        }
        if failed || rng.gen_bool(0.1) {
            db.exec("ROLLBACK").await.unwrap();
        } else if db.exec("COMMIT").await.is_ok() {
            model = staged;
        }
    }
    model
}

/// A fault injected into the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Kill the session holding the cut-over lock, once; the run retries. With `then_panic`,
    /// send `panic` on the control socket right after: the run must stop and leave the
    /// original table as the writers left it.
    KillLocker {
        then_panic: bool,
    },
    /// MariaDB: a session holds a metadata lock on the shadow table (an open transaction that
    /// read it) through the first cut-over attempt.
    ShadowReader,
    /// MariaDB: a session writes to the table in STATEMENT format during the copy.
    StatementWriter,
    /// `throttle` and `no-throttle` on the control socket, turn about, through the whole run.
    ThrottleToggle,
    /// PostgreSQL: the heartbeat's session ended from the server side mid-copy; the run must
    /// reconnect it (without heartbeats the lag only grows and cut-over never starts).
    KillHeartbeat,
    /// Kill the copy's session three times mid-copy: each time the chunk is copied again on a
    /// new session (`--default-retries`), the run goes on.
    KillCopier,
    /// PostgreSQL: end the session that finds where chunks end three times mid-copy: it is
    /// opened again and the copy goes on.
    KillChunkFinder,
    /// Kill the applier's session three times while it replays: each batch is applied again on
    /// a new session.
    KillApplier,
    /// Kill the change stream's session (the walsender; the binlog dump thread) twice mid-copy:
    /// the stream is opened again from the last applied position.
    KillStream,
    /// Kill the session holding the checksum's write lock, once: a view opened without the
    /// lock would see writes the shadow lacks, so it must be thrown away and opened again.
    KillChecksumLocker,
}

/// Wait until `table` exists (polling `db`); false if `stop` comes first.
async fn appears(db: &mut Db, table: &str, stop: &AtomicBool) -> bool {
    let sql = format!(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'"
    );
    while !stop.load(Ordering::Relaxed) {
        if !db.rows(&sql).await.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Hold `_<table>_new` in an open transaction from the copy until the first cut-over attempt
/// has created its sentry, and a second longer; true if it did.
async fn hold_shadow(table: String, stop: Arc<AtomicBool>) -> bool {
    let mut poll = Db::connect(Server::MariaDb).await;
    let mut holder = Db::connect(Server::MariaDb).await;
    // After the shadow's ALTER (k becomes bigint), which the hold would block.
    let altered = format!(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() \
         AND table_name = '_{table}_new' AND column_name = 'k' AND data_type = 'bigint'"
    );
    while poll.rows(&altered).await.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder.exec("BEGIN").await.unwrap();
    holder
        .exec(&format!("SELECT count(*) FROM _{table}_new"))
        .await
        .unwrap();
    let seen = appears(&mut poll, &format!("{table}__swivel_del"), &stop).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    holder.exec("COMMIT").await.unwrap();
    seen
}

/// Once the copy runs, write to the table in STATEMENT format (a no-op the model need not
/// know about, but a statement in the binlog all the same); true if it did.
async fn statement_write(table: String, stop: Arc<AtomicBool>) -> bool {
    let mut db = Db::connect(Server::MariaDb).await;
    if !appears(&mut db, &format!("_{table}_new"), &stop).await {
        return false;
    }
    // Well after the stream's start, well before the copy's end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.exec("SET SESSION binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    db.exec(&format!("UPDATE {table} SET k = k + 1 WHERE id = -1"))
        .await
        .unwrap();
    true
}

/// Kill the session that holds the cut-over lock on `table`, the first time one does; true if
/// it did.
async fn kill_locker(
    server: Server,
    table: String,
    stop: Arc<AtomicBool>,
    panic_socket: Option<std::path::PathBuf>,
    checksum: bool,
) -> bool {
    let mut db = Db::connect(server).await;
    let find = match server {
        // The session sits idle in its transaction after LOCK TABLE.
        Server::Postgres => format!(
            "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' \
             AND application_name = '{}' AND query LIKE 'LOCK TABLE %{table}%'",
            if checksum {
                "swivel-checksum-lock"
            } else {
                "swivel-cutover"
            }
        ),
        // The session holding LOCK TABLES … WRITE (cut-over) or READ (checksum) on the table.
        Server::MariaDb => {
            // Ships with the server; lists who holds which metadata lock.
            let _ = db.exec("INSTALL SONAME 'metadata_lock_info'").await;
            format!(
                "SELECT thread_id FROM information_schema.metadata_lock_info \
                 WHERE table_name = '{table}' AND lock_mode = '{}'",
                if checksum {
                    "MDL_SHARED_READ_ONLY"
                } else {
                    "MDL_SHARED_NO_READ_WRITE"
                }
            )
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(id) = db
            .rows(&find)
            .await
            .into_iter()
            .next()
            .and_then(|r| r[0].clone())
        {
            let kill = match server {
                Server::Postgres => format!("SELECT pg_terminate_backend({id})"),
                Server::MariaDb => format!("KILL {id}"),
            };
            db.exec(&kill)
                .await
                .expect("killing the cut-over lock session");
            if let Some(socket) = panic_socket {
                let reply = common::control(&socket, "panic").await;
                assert!(reply.starts_with("panic: stopping"), "{reply}");
            }
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// End swivel's heartbeat session once the copy runs; true if it did.
async fn kill_heartbeat(stop: Arc<AtomicBool>) -> bool {
    let mut db = Db::connect(Server::Postgres).await;
    let find = "SELECT pid FROM pg_stat_activity WHERE application_name = 'swivel-heartbeat'";
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(pid) = db
            .rows(find)
            .await
            .into_iter()
            .next()
            .and_then(|r| r[0].clone())
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            db.exec(&format!("SELECT pg_terminate_backend({pid})"))
                .await
                .expect("ending the heartbeat session");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// End the applier's session three times while it replays into this run's shadow; true if it
/// did.
async fn kill_applier(server: Server, table: String, stop: Arc<AtomicBool>) -> bool {
    let mut db = Db::connect(server).await;
    let find = match server {
        Server::Postgres => format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'swivel-apply' \
             AND query LIKE '%\"_{table}_new\"%'"
        ),
        Server::MariaDb => format!(
            "SELECT id FROM information_schema.processlist \
             WHERE info LIKE 'REPLACE INTO `swivel`.`_{table}_new` (%) VALUES%' \
                OR info LIKE 'DELETE FROM `swivel`.`_{table}_new`%'"
        ),
    };
    // Not while the run prepares its statements (that is start-up, before any change is
    // replayed, and ends the run): once the copy goes, the session only replays.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    kill_repeatedly(&mut db, server, &find, &stop, 3, Duration::from_millis(300)).await
}

/// The highest connection id of a binlog dump thread (0: none).
async fn newest_dump_thread(db: &mut Db) -> u64 {
    let newest = db
        .number(
            "SELECT coalesce(max(id), 0) FROM information_schema.processlist \
             WHERE command LIKE 'Binlog Dump%'",
        )
        .await;
    newest as u64
}

/// End the change stream's session twice once the copy runs; true if it did. On MariaDB a dump
/// thread says nothing of whose it is: the newest one opened after the run started is taken
/// (another test's run beside this one would reconnect as well).
async fn kill_stream(server: Server, table: String, before: u64, stop: Arc<AtomicBool>) -> bool {
    let mut db = Db::connect(server).await;
    let find = match server {
        Server::Postgres => format!(
            "SELECT active_pid FROM pg_replication_slots \
             WHERE slot_name = 'swivel_' || '{table}'::regclass::oid AND active_pid IS NOT NULL"
        ),
        Server::MariaDb => format!(
            "SELECT max(id) FROM information_schema.processlist \
             WHERE command LIKE 'Binlog Dump%' AND id > {before}"
        ),
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    kill_repeatedly(&mut db, server, &find, &stop, 2, Duration::from_millis(700)).await
}

/// Kill the session `find` names, `times` times, `apart`; false if `stop` comes first.
async fn kill_repeatedly(
    db: &mut Db,
    server: Server,
    find: &str,
    stop: &AtomicBool,
    times: u32,
    apart: Duration,
) -> bool {
    let mut kills = 0;
    while kills < times {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(id) = db
            .rows(find)
            .await
            .into_iter()
            .next()
            .and_then(|r| r[0].clone())
        {
            let kill = match server {
                Server::Postgres => format!("SELECT pg_terminate_backend({id})"),
                Server::MariaDb => format!("KILL {id}"),
            };
            // The session may have ended on its own meanwhile.
            let _ = db.exec(&kill).await;
            kills += 1;
            tokio::time::sleep(apart).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// End the copy's session three times while it works on a chunk; true if it did.
async fn kill_copier(server: Server, table: String, stop: Arc<AtomicBool>) -> bool {
    let mut db = Db::connect(server).await;
    let find = match server {
        // This run's copier only: other tests run beside this one.
        Server::Postgres => format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'swivel-copy' \
             AND state IN ('active', 'idle in transaction') AND query LIKE '%{table}%'"
        ),
        Server::MariaDb => format!(
            "SELECT id FROM information_schema.processlist \
             WHERE info LIKE 'REPLACE INTO `swivel`.`_{table}_new`%'"
        ),
    };
    kill_repeatedly(&mut db, server, &find, &stop, 3, Duration::from_millis(300)).await
}

/// End the session that finds the chunks' ends three times mid-copy (idle between its queries,
/// mostly); true if it did.
async fn kill_chunk_finder(table: String, stop: Arc<AtomicBool>) -> bool {
    let mut db = Db::connect(Server::Postgres).await;
    // Its last query names the table, which keeps other tests' runs out.
    let find = format!(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'swivel-chunks' \
         AND query LIKE '%{table}%'"
    );
    kill_repeatedly(
        &mut db,
        Server::Postgres,
        &find,
        &stop,
        3,
        Duration::from_millis(300),
    )
    .await
}

/// Throttle and release the run every 150ms through its control socket; true if it did.
async fn toggle_throttle(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> bool {
    let mut toggles = 0;
    while !stop.load(Ordering::Relaxed) {
        let command = if toggles % 2 == 0 {
            "throttle"
        } else {
            "no-throttle"
        };
        // The run may end (and its socket go away) at any moment.
        if let Ok(mut s) = tokio::net::UnixStream::connect(&socket).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut reply = String::new();
            if s.write_all(format!("{command}\n").as_bytes()).await.is_ok()
                && s.shutdown().await.is_ok()
                && s.read_to_string(&mut reply).await.is_ok()
                && !reply.starts_with("error")
            {
                toggles += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    toggles > 2
}

async fn migrate_under_load(server: Server, seed: u64, rows: i64) {
    run_model(server, seed, rows, Fault::None).await;
}

async fn run_model(server: Server, seed: u64, rows: i64, fault: Fault) {
    run_model_threads(server, seed, rows, fault, 1).await;
}

/// The model test with `threads` copiers: chunks in flight together commit out of order.
async fn run_model_threads(server: Server, seed: u64, rows: i64, fault: Fault, threads: usize) {
    // Cut-over retries and their reasons show in a failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("model_{seed}_{rows}");
    let mut db = Db::connect(server).await;
    db.reset(&table).await;
    let (create, alter) = match server {
        Server::Postgres => (
            format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, u int UNIQUE, c text NOT NULL, big text);
                 ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
                 CREATE INDEX ON {table} (k);
                 INSERT INTO {table} (id, k, c, big)
                   SELECT i * {WRITERS}, i % 1000, 'c' || i,
                          CASE WHEN i % 500 = 0 THEN repeat(md5(i::text), 100) END
                   FROM generate_series(1, {rows}) i;
                 ANALYZE {table};"
            ),
            "ALTER COLUMN k TYPE bigint",
        ),
        Server::MariaDb => (
            format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, u int UNIQUE, c varchar(200) NOT NULL, big longtext, KEY (k));
                 INSERT INTO {table} (id, k, c, big)
                   SELECT seq * {WRITERS}, seq % 1000, concat('c', seq),
                          IF(seq % 500 = 0, repeat(md5(seq), 100), NULL)
                   FROM seq_1_to_{rows};
                 ANALYZE TABLE {table};"
            ),
            "MODIFY k BIGINT NOT NULL",
        ),
    };
    db.exec(&create).await.unwrap();
    let initial = load_model(&mut db, &table).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let part: Model = initial
                .iter()
                .filter(|(id, _)| id.rem_euclid(WRITERS) == w)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            tokio::spawn(writer(server, table.clone(), w, seed, part, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut opts = RunOptions::new(server.dsn(), &table, alter);
    opts.execute = true;
    opts.chunk_size = 500;
    opts.threads = threads;
    opts.knobs.target_chunk_time = Duration::from_millis(50);
    opts.cut_over_lock_timeout = Duration::from_millis(500);
    opts.cut_over_retries = 30;
    let killer_stop = Arc::new(AtomicBool::new(false));
    let killer = match fault {
        Fault::None => None,
        Fault::KillLocker { then_panic } => {
            let socket = then_panic.then(|| common::socket_path(&format!("{server:?}-{table}")));
            opts.serve_socket_file = socket.clone();
            Some(tokio::spawn(kill_locker(
                server,
                table.clone(),
                killer_stop.clone(),
                socket,
                false,
            )))
        }
        Fault::KillChecksumLocker => Some(tokio::spawn(kill_locker(
            server,
            table.clone(),
            killer_stop.clone(),
            None,
            true,
        ))),
        Fault::ShadowReader => Some(tokio::spawn(hold_shadow(
            table.clone(),
            killer_stop.clone(),
        ))),
        Fault::StatementWriter => Some(tokio::spawn(statement_write(
            table.clone(),
            killer_stop.clone(),
        ))),
        Fault::KillHeartbeat => {
            // A copy of a few seconds: longer than --max-lag-millis after the kill, so a run
            // without heartbeats could never cut over.
            opts.max_rows_per_second = Some(5000);
            Some(tokio::spawn(kill_heartbeat(killer_stop.clone())))
        }
        Fault::KillCopier => {
            opts.max_rows_per_second = Some(5000);
            Some(tokio::spawn(kill_copier(
                server,
                table.clone(),
                killer_stop.clone(),
            )))
        }
        Fault::KillStream => {
            // A copy of about 7s: room for two kills and reconnects however slow the machine.
            opts.max_rows_per_second = Some(3000);
            let before = match server {
                Server::Postgres => 0,
                Server::MariaDb => newest_dump_thread(&mut db).await,
            };
            Some(tokio::spawn(kill_stream(
                server,
                table.clone(),
                before,
                killer_stop.clone(),
            )))
        }
        Fault::KillChunkFinder => {
            opts.max_rows_per_second = Some(5000);
            Some(tokio::spawn(kill_chunk_finder(
                table.clone(),
                killer_stop.clone(),
            )))
        }
        Fault::KillApplier => {
            opts.max_rows_per_second = Some(5000);
            Some(tokio::spawn(kill_applier(
                server,
                table.clone(),
                killer_stop.clone(),
            )))
        }
        Fault::ThrottleToggle => {
            let socket = common::socket_path(&format!("{server:?}-{table}"));
            opts.serve_socket_file = Some(socket.clone());
            // Long enough a copy for the throttle to come and go many times within it.
            opts.max_rows_per_second = Some(5000);
            Some(tokio::spawn(toggle_throttle(socket, killer_stop.clone())))
        }
    };
    // A run that cannot finish (a stuck cut-over, say) fails the test instead of hanging it.
    let outcome = tokio::time::timeout(
        Duration::from_secs(180),
        swivel::run(opts, std::future::pending()),
    )
    .await
    .unwrap_or_else(|_| panic!("{server:?} seed {seed}: the run did not finish in 180s"));
    if let Some(killer) = killer {
        killer_stop.store(true, Ordering::Relaxed);
        assert!(
            killer.await.unwrap(),
            "{server:?} seed {seed}: the fault {fault:?} was not injected; the run: {outcome:?}"
        );
    }
    // Writes go on against the new table after the swap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut model = Model::new();
    for w in writers {
        model.extend(w.await.unwrap());
    }
    let stats = match (fault, outcome) {
        (_, Ok(Outcome::Migrated(stats))) => Some(stats),
        (Fault::KillLocker { then_panic: true }, Err(swivel::Error::Interrupted(why)))
            if why.contains("panic") =>
        {
            eprintln!("{server:?} seed {seed}: stopped as expected: {why}");
            None
        }
        (Fault::StatementWriter, Err(swivel::Error::Stream(why)))
            if why.contains("binlog_format") && why.contains("reconnect") =>
        {
            eprintln!("{server:?} seed {seed}: stopped as expected: {why}");
            None
        }
        (_, other) => panic!("{server:?} seed {seed}: the migration did not complete: {other:?}"),
    };

    let actual = load_model(&mut db, &table).await;
    let k_type = match server {
        Server::Postgres => format!("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'k'"),
        Server::MariaDb => format!("SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}' AND column_name = 'k'"),
    };
    let k_type = db.rows(&k_type).await;
    let expected_type = match (&stats, server) {
        (Some(_), _) => "bigint",
        (None, Server::Postgres) => "integer",
        (None, Server::MariaDb) => "int",
    };
    assert_eq!(
        k_type,
        vec![vec![Some(expected_type.to_string())]],
        "{server:?} seed {seed}: the table has the wrong type"
    );
    // The indexes survive the swap (PostgreSQL builds the secondary ones after the copy).
    let indexes = match server {
        Server::Postgres => format!(
            "SELECT indexdef FROM pg_indexes WHERE tablename = '{table}' ORDER BY indexdef"
        ),
        Server::MariaDb => format!(
            "SELECT DISTINCT concat(index_name, ' ', column_name, ' ', non_unique) FROM information_schema.statistics
             WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY 1"
        ),
    };
    let indexes = db.rows(&indexes).await;
    assert_eq!(
        indexes.len(),
        3,
        "{server:?} seed {seed}: the table should keep its key, unique and k indexes: {indexes:?}"
    );
    if actual != model {
        let missing: Vec<_> = model
            .keys()
            .filter(|k| !actual.contains_key(k))
            .take(5)
            .collect();
        let extra: Vec<_> = actual
            .keys()
            .filter(|k| !model.contains_key(k))
            .take(5)
            .collect();
        let differ: Vec<_> = model
            .iter()
            .filter(|(k, v)| actual.get(k).is_some_and(|a| a != *v))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        let sample: Vec<_> = extra
            .iter()
            .chain(differ.iter())
            .map(|k| (k, actual.get(k), model.get(k)))
            .map(|(k, a, m)| format!("{k}: table {a:?} model {m:?}"))
            .collect();
        eprintln!(
            "{server:?} seed {seed}: {}",
            sample
                .join("\n")
                .chars()
                .filter(|c| *c != 'x')
                .take(3000)
                .collect::<String>()
        );
        panic!(
            "{server:?} seed {seed}: the migrated table differs from the model ({} rows vs {}): missing {missing:?}, extra {extra:?}, different {differ:?}",
            actual.len(),
            model.len()
        );
    }
    db.assert_nothing_left(&table).await;
    if let Some(stats) = stats {
        assert!(
            stats.changes_applied > 0,
            "{server:?} seed {seed}: no change was replayed, the test proved nothing"
        );
        let checksum = stats
            .checksum
            .as_ref()
            .unwrap_or_else(|| panic!("{server:?} seed {seed}: the checksum did not run"));
        assert_eq!(
            checksum.repaired, 0,
            "{server:?} seed {seed}: the checksum found rows the engine got wrong: {checksum:?}"
        );
        if matches!(fault, Fault::KillLocker { .. }) {
            assert!(
                stats.cutover.attempts > 1,
                "{server:?} seed {seed}: the killed attempt cannot have succeeded"
            );
        }
        eprintln!(
            "{server:?} seed {seed}: {} rows, {} copied, {} changes replayed, lock held {:?}, {} cut-over attempt(s)",
            actual.len(),
            stats.rows_copied,
            stats.changes_applied,
            stats.cutover.lock_held,
            stats.cutover.attempts
        );
    }
    db.reset(&table).await;
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_1() {
        migrate_under_load(Server::Postgres, 1, 20_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_2() {
        migrate_under_load(Server::Postgres, 2, 20_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_3() {
        migrate_under_load(Server::Postgres, 3, 5_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_4_with_200k_rows() {
        migrate_under_load(Server::Postgres, 4, 200_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_seed_21() {
        run_model_threads(Server::Postgres, 21, 20_000, Fault::None, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_seed_22() {
        run_model_threads(Server::Postgres, 22, 20_000, Fault::None, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_seed_23_with_200k_rows() {
        run_model_threads(Server::Postgres, 23, 200_000, Fault::None, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_copy_sessions_killed() {
        run_model_threads(Server::Postgres, 24, 20_000, Fault::KillCopier, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_chunk_session_killed() {
        run_model_threads(Server::Postgres, 25, 20_000, Fault::KillChunkFinder, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cut_over_lock_killed_then_retried() {
        run_model(
            Server::Postgres,
            5,
            20_000,
            Fault::KillLocker { then_panic: false },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn throttled_on_and_off() {
        run_model(Server::Postgres, 9, 20_000, Fault::ThrottleToggle).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn checksum_lock_killed() {
        run_model(Server::Postgres, 11, 20_000, Fault::KillChecksumLocker).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn copy_session_killed() {
        run_model(Server::Postgres, 12, 20_000, Fault::KillCopier).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn apply_session_killed() {
        run_model(Server::Postgres, 13, 20_000, Fault::KillApplier).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_session_killed() {
        run_model(Server::Postgres, 14, 20_000, Fault::KillStream).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn heartbeat_session_killed() {
        run_model(Server::Postgres, 10, 20_000, Fault::KillHeartbeat).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cut_over_lock_killed_then_panic_leaves_the_original() {
        run_model(
            Server::Postgres,
            6,
            20_000,
            Fault::KillLocker { then_panic: true },
        )
        .await;
    }
}

mod mariadb {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_1() {
        migrate_under_load(Server::MariaDb, 1, 20_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_2() {
        migrate_under_load(Server::MariaDb, 2, 20_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_3() {
        migrate_under_load(Server::MariaDb, 3, 5_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seed_4_with_200k_rows() {
        migrate_under_load(Server::MariaDb, 4, 200_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_seed_21() {
        run_model_threads(Server::MariaDb, 21, 20_000, Fault::None, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_seed_22() {
        run_model_threads(Server::MariaDb, 22, 20_000, Fault::None, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_seed_23_with_200k_rows() {
        run_model_threads(Server::MariaDb, 23, 200_000, Fault::None, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn four_threads_copy_sessions_killed() {
        run_model_threads(Server::MariaDb, 24, 20_000, Fault::KillCopier, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cut_over_lock_killed_then_retried() {
        run_model(
            Server::MariaDb,
            5,
            20_000,
            Fault::KillLocker { then_panic: false },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn cut_over_lock_killed_then_panic_leaves_the_original() {
        run_model(
            Server::MariaDb,
            6,
            20_000,
            Fault::KillLocker { then_panic: true },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn checksum_lock_killed() {
        run_model(Server::MariaDb, 11, 20_000, Fault::KillChecksumLocker).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn copy_session_killed() {
        run_model(Server::MariaDb, 12, 20_000, Fault::KillCopier).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn apply_session_killed() {
        run_model(Server::MariaDb, 13, 20_000, Fault::KillApplier).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stream_session_killed() {
        run_model(Server::MariaDb, 14, 20_000, Fault::KillStream).await;
    }

    /// The rename queues on the shadow table, not on the table: the attempt must not go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shadow_table_held_at_cut_over() {
        run_model(Server::MariaDb, 7, 20_000, Fault::ShadowReader).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn throttled_on_and_off() {
        run_model(Server::MariaDb, 9, 20_000, Fault::ThrottleToggle).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn statement_format_writer_stops_the_run() {
        run_model(Server::MariaDb, 8, 20_000, Fault::StatementWriter).await;
    }
}

/// A chunk of n rows ends at the n-th key in key order (ids 1..=20000: in text order the
/// 1000th would be 10898, and chunks would hold wildly more rows than asked for).
async fn chunks_count_rows_in_key_order<B: swivel::engine::backend::Backend>(mut backend: B) {
    use swivel::engine::watermark::KeyPart;
    backend.plan().await.unwrap();
    backend.prepare().await.unwrap();
    let first = backend.chunk_end(None, 1000).await;
    let second = match &first {
        Ok(end) => backend.chunk_end(end.as_ref(), 1000).await,
        Err(_) => Ok(None),
    };
    backend.cleanup(false, false).await.unwrap();
    assert_eq!(first.unwrap(), Some(vec![KeyPart::Int(1000)]));
    assert_eq!(second.unwrap(), Some(vec![KeyPart::Int(2000)]));
}

async fn chunk_test_table(server: Server) -> (Db, RunOptions) {
    let table = "chunk_order";
    let mut db = Db::connect(server).await;
    db.reset(table).await;
    let fill = match server {
        Server::Postgres => format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, k int);
             INSERT INTO {table} SELECT i, i FROM generate_series(1, 20000) i"
        ),
        Server::MariaDb => format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, k int);
             INSERT INTO {table} SELECT seq, seq FROM seq_1_to_20000"
        ),
    };
    db.exec(&fill).await.unwrap();
    let alter = match server {
        Server::Postgres => "ALTER COLUMN k TYPE bigint",
        Server::MariaDb => "MODIFY k BIGINT",
    };
    let mut opts = RunOptions::new(server.dsn(), table, alter);
    opts.execute = true;
    (db, opts)
}

/// Both backends, through the same checks.
async fn chunk_test(server: Server) {
    let (mut db, opts) = chunk_test_table(server).await;
    let shared = swivel::engine::backend::Shared::new(&opts);
    match server {
        Server::Postgres => {
            let backend = swivel::postgres::PgBackend::connect(opts, shared);
            chunks_count_rows_in_key_order(backend.await.unwrap()).await
        }
        Server::MariaDb => {
            let backend = swivel::mysql::MyBackend::connect(opts, shared);
            chunks_count_rows_in_key_order(backend.await.unwrap()).await
        }
    }
    db.assert_nothing_left("chunk_order").await;
    db.reset("chunk_order").await;
}

#[tokio::test]
async fn postgres_chunks_count_rows_in_key_order() {
    chunk_test(Server::Postgres).await;
}

#[tokio::test]
async fn mariadb_chunks_count_rows_in_key_order() {
    chunk_test(Server::MariaDb).await;
}
