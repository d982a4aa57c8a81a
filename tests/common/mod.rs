//! Test harness: the testbed's real servers, and checks that a run left nothing behind.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;

use tokio_postgres::{Client, NoTls};

/// Start the testbed once per test binary (idempotent), unless DSNs were given.
pub fn testbed() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        if std::env::var("SWIVEL_PG_DSN").is_ok() {
            return;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testbed/testbed.sh");
        let status = Command::new("bash")
            .arg(script)
            .arg("start")
            .status()
            .expect("running testbed/testbed.sh");
        assert!(status.success(), "testbed/testbed.sh start failed");
    });
}

pub fn pg_dsn() -> String {
    testbed();
    std::env::var("SWIVEL_PG_DSN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/swivel".into())
}

/// The testbed's PostgreSQL without logical decoding.
pub fn pg_plain_dsn() -> String {
    testbed();
    std::env::var("SWIVEL_PG_PLAIN_DSN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55433/swivel".into())
}

pub async fn connect(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .expect("connecting to the testbed");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Drop a test table and everything a run may have made for it (an earlier failed test may
/// have left a run's publication behind: it would outlive the table).
pub async fn reset(client: &Client, table: &str) {
    let oids = client
        .query(
            "SELECT c.oid FROM pg_class c WHERE c.oid IN (to_regclass($1), to_regclass($2))",
            &[&table, &format!("_{table}_old")],
        )
        .await
        .expect("looking up the test table");
    for oid in oids {
        let oid: u32 = oid.get(0);
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS swivel_{oid}"))
            .await
            .expect("dropping a leftover publication");
        // Slots are permanent (a killed run can resume): a leftover one would hold WAL.
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&format!("swivel_{oid}")],
            )
            .await
            .expect("dropping a leftover slot");
    }
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}, _{table}_new, _{table}_old, _{table}_swl CASCADE"
        ))
        .await
        .expect("resetting the test table");
}

/// Fail if anything of a swivel run for `table` remains: shadow table, slot or publication.
pub async fn assert_nothing_left(client: &Client, table: &str) {
    let shadow: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&format!("_{table}_new")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shadow, None, "the shadow table of {table} was left behind");
    let state: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&format!("_{table}_swl")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, None, "the state table of {table} was left behind");
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&table])
        .await
        .unwrap()
        .get(0);
    let old_oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&format!("_{table}_old")])
        .await
        .unwrap()
        .get(0);
    for oid in [oid, old_oid].into_iter().flatten() {
        let name = format!("swivel_{oid}");
        let slots: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0, "replication slot {name} was left behind");
        let pubs: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(pubs, 0, "publication {name} was left behind");
        let origins: i64 = client
            .query_one(
                // One per copier with --threads: swivel_<oid>, swivel_<oid>_1, …
                "SELECT count(*) FROM pg_replication_origin
                 WHERE roname = $1 OR roname ~ ('^' || $1 || '_[0-9]+$')",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(origins, 0, "replication origins {name}* were left behind");
    }
}

pub fn my_dsn() -> String {
    testbed();
    std::env::var("SWIVEL_MYSQL_DSN")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:33306/swivel".into())
}

/// The two servers every engine test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Postgres,
    MariaDb,
}

impl Server {
    pub fn dsn(self) -> String {
        match self {
            Server::Postgres => pg_dsn(),
            Server::MariaDb => my_dsn(),
        }
    }
}

/// A session on either server, speaking plain SQL text: enough for workloads and checks.
pub enum Db {
    Pg(Client),
    My(mysql_async::Conn),
}

impl Db {
    pub async fn connect(server: Server) -> Db {
        match server {
            Server::Postgres => Db::Pg(connect(&pg_dsn()).await),
            Server::MariaDb => Db::My(
                mysql_async::Conn::from_url(my_dsn())
                    .await
                    .expect("connecting to the testbed's MariaDB"),
            ),
        }
    }

    /// Run statements; Err carries the server's message.
    pub async fn exec(&mut self, sql: &str) -> Result<(), String> {
        use mysql_async::prelude::Queryable;
        match self {
            Db::Pg(c) => c.batch_execute(sql).await.map_err(|e| format!("{e:?}")),
            Db::My(c) => c.query_drop(sql).await.map_err(|e| e.to_string()),
        }
    }

    /// The number a query returns (its first column of its first row; NULL is 0).
    pub async fn number(&mut self, sql: &str) -> i64 {
        self.rows(sql).await[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .expect("a number")
    }

    /// All rows of a query, every value as text (None for NULL).
    pub async fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        use mysql_async::prelude::Queryable;
        match self {
            Db::Pg(c) => c
                .simple_query(sql)
                .await
                .expect("querying")
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect(),
            Db::My(c) => c
                .query::<mysql_async::Row, _>(sql)
                .await
                .expect("querying")
                .into_iter()
                .map(|r| {
                    r.unwrap()
                        .into_iter()
                        .map(|v| match v {
                            mysql_async::Value::NULL => None,
                            mysql_async::Value::Bytes(b) => {
                                Some(String::from_utf8_lossy(&b).into_owned())
                            }
                            other => Some(other.as_sql(true)),
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// Drop a test table and everything a run may have made for it.
    pub async fn reset(&mut self, table: &str) {
        let sql = match self {
            Db::Pg(c) => return reset(c, table).await,
            Db::My(_) => format!(
                "DROP TABLE IF EXISTS {table}, _{table}_new, _{table}_old, _{table}_swl, {table}__swivel_del"
            ),
        };
        self.exec(&sql).await.expect("resetting the test table");
    }

    /// Fail if anything of a swivel run for `table` remains.
    pub async fn assert_nothing_left(&mut self, table: &str) {
        match self {
            Db::Pg(c) => assert_nothing_left(c, table).await,
            Db::My(_) => {
                let left = self
                    .rows(&format!(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() \
                         AND table_name IN ('_{table}_new', '_{table}_swl', '{table}__swivel_del')"
                    ))
                    .await;
                assert!(left.is_empty(), "left behind for {table}: {left:?}");
            }
        }
    }
}

/// A control socket path of its own for a test run on `table`.
/// Copiers for the suites that take `--threads` from the environment (`SWIVEL_TEST_THREADS`,
/// default 1): CI runs the differential test with 4 too.
pub fn test_threads() -> usize {
    std::env::var("SWIVEL_TEST_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

pub fn socket_path(table: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("swivel-test-{}-{table}.sock", std::process::id()))
}

/// Send one command line to a run's control socket and return its reply, waiting (up to 30s)
/// for the socket to appear.
pub async fn control(socket: &std::path::Path, line: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("no control socket at {}: {e}", socket.display())
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("writing to the control socket");
    stream.shutdown().await.expect("closing the write side");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .await
        .expect("reading the control socket's reply");
    reply.trim_end().to_string()
}

/// The testbed's streaming standby of the logical PostgreSQL.
pub fn pg_standby_dsn() -> String {
    testbed();
    std::env::var("SWIVEL_PG_STANDBY_DSN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55434/swivel".into())
}

/// The MariaDB primary's database that its testbed replica copies.
pub fn my_repl_dsn() -> String {
    testbed();
    std::env::var("SWIVEL_MYSQL_REPL_DSN")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:33306/swivel_repl".into())
}

/// The testbed's MariaDB replica (database swivel_repl only).
pub fn my_replica_dsn() -> String {
    testbed();
    std::env::var("SWIVEL_MYSQL_REPLICA_DSN")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:33307/swivel_repl".into())
}

impl Db {
    /// A session on the server a connection URL names.
    pub async fn connect_to(dsn: &str) -> Db {
        if dsn.starts_with("mysql://") {
            Db::My(
                mysql_async::Conn::from_url(dsn)
                    .await
                    .expect("connecting to the testbed's MariaDB"),
            )
        } else {
            Db::Pg(connect(dsn).await)
        }
    }
}

/// `status json` on a run's control socket, parsed.
pub async fn status_json(socket: &std::path::Path) -> serde_json::Value {
    let reply = control(socket, "status json").await;
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("status json: {e}: {reply}"))
}

/// Poll `status json` until `ready` says so; panics with the last status after `secs`.
pub async fn wait_status(
    socket: &std::path::Path,
    secs: u64,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let s = status_json(socket).await;
        if ready(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {secs}s for {what}; status: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Start `opts` with its control socket and a postpone flag file in `dir`; returns the run and
/// its socket once it has copied everything and waits, caught up, for `unpostpone`.
pub async fn run_postponed(
    mut opts: swivel::RunOptions,
    dir: &std::path::Path,
) -> (
    tokio::task::JoinHandle<swivel::Result<swivel::Outcome>>,
    std::path::PathBuf,
) {
    let (socket, flag) = (dir.join("control.sock"), dir.join("postpone.flag"));
    std::fs::write(&flag, "").unwrap();
    opts.execute = true;
    opts.serve_socket_file = Some(socket.clone());
    opts.knobs.postpone_cut_over_flag_file = Some(flag);
    let run = tokio::spawn(swivel::run(opts, std::future::pending()));
    wait_status(&socket, 60, "the postponed cut-over", |s| {
        s["phase"] == "catch-up" && !s["postponed"].is_null()
    })
    .await;
    (run, socket)
}

/// An empty directory of its own for a test's files (`what`: the test binary; `name`: the case).
pub fn scratch(what: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("swivel-{what}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start the `swivel` binary with `args`, its output in `dir`/`name`.out and `name`.err.
pub fn swivel<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    dir: &std::path::Path,
    name: &str,
) -> std::process::Child {
    let file = |ext: &str| std::fs::File::create(dir.join(format!("{name}.{ext}"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_swivel"))
        .args(args)
        .stdout(file("out"))
        .stderr(file("err"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("starting swivel")
}

/// What a `swivel` started by [`swivel`] as `name` wrote, stdout then stderr.
pub fn output(dir: &std::path::Path, name: &str) -> String {
    let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap();
    format!("{}{}", read("out"), read("err"))
}

/// The same random write on `table` and on `<table>_twin`, in one transaction each, every
/// `pause`, until `stop`: updates, deletes, inserts and key changes over ids 1..=`rows`.
/// Returns how many it made.
pub async fn twin_writer(
    mut db: Db,
    table: String,
    rows: i64,
    pause: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let twin = format!("{table}_twin");
    let (mut seed, mut done) = (0x2545_f491_u64, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = (seed >> 33) as i64 % rows + 1;
        let fresh = 10_000_000 + done as i64;
        let sql = match (seed >> 20) % 4 {
            0 => format!("UPDATE {{T}} SET k = k + 1 WHERE id = {r}"),
            1 => format!("DELETE FROM {{T}} WHERE id = {r}"),
            2 => format!("INSERT INTO {{T}} (id, k) VALUES ({fresh}, {r})"),
            _ => format!("UPDATE {{T}} SET id = {fresh} WHERE id = {r}"),
        };
        db.exec("BEGIN").await.unwrap();
        let ok = db.exec(&sql.replace("{T}", &table)).await.is_ok()
            && db.exec(&sql.replace("{T}", &twin)).await.is_ok();
        db.exec(if ok { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        done += 1;
        tokio::time::sleep(pause).await;
    }
    done
}
