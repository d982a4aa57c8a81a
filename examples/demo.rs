//! The end-to-end demo: a table of a million rows in sysbench's shape, a writer at about 200
//! writes/s, `swivel run … --execute` with its progress, then the outcome checked: the column
//! changed, every row the writer touched as it left it, and the row count right. For scale,
//! it then times a plain (blocking) ALTER TABLE of the same size.
//!
//! Run by `./demo.sh`, which starts the testbed and builds swivel first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use tokio_postgres::NoTls;

const ROWS: i64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Postgres,
    MariaDb,
}

impl Server {
    fn dsn(self) -> String {
        match self {
            Server::Postgres => std::env::var("SWIVEL_PG_DSN")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/swivel".into()),
            Server::MariaDb => std::env::var("SWIVEL_MYSQL_DSN")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:33306/swivel".into()),
        }
    }
}

/// A session on either server, plain SQL text.
enum Db {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

impl Db {
    async fn connect(server: Server) -> Result<Db> {
        Ok(match server {
            Server::Postgres => {
                let (client, connection) = tokio_postgres::connect(&server.dsn(), NoTls)
                    .await
                    .context("connecting")?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Db::Pg(client)
            }
            Server::MariaDb => Db::My(
                mysql_async::Conn::from_url(server.dsn())
                    .await
                    .context("connecting")?,
            ),
        })
    }

    /// Run statements; returns the rows affected by the last one.
    async fn exec(&mut self, sql: &str) -> Result<u64> {
        Ok(match self {
            Db::Pg(c) => c.execute(sql, &[]).await.context("running a statement")?,
            Db::My(c) => {
                c.query_drop(sql).await.context("running a statement")?;
                c.affected_rows()
            }
        })
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Db::Pg(c) => c.batch_execute(sql).await.context("running statements")?,
            Db::My(c) => c.query_drop(sql).await.context("running statements")?,
        }
        Ok(())
    }

    /// First column of every row, as text.
    async fn column(&mut self, sql: &str) -> Result<Vec<String>> {
        Ok(match self {
            Db::Pg(c) => c
                .simple_query(sql)
                .await?
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect(),
            Db::My(c) => c.query::<String, _>(sql).await?,
        })
    }

    /// Insert a row; returns its new id.
    async fn insert(&mut self, k: i64) -> Result<i64> {
        Ok(match self {
            Db::Pg(c) => c
                .query_one(
                    &format!(
                        "INSERT INTO demo (k, c, pad) VALUES ({k}, 'demo', 'demo') RETURNING id"
                    ),
                    &[],
                )
                .await?
                .get::<_, i32>(0)
                .into(),
            Db::My(c) => {
                c.query_drop(format!(
                    "INSERT INTO demo (k, c, pad) VALUES ({k}, 'demo', 'demo')"
                ))
                .await?;
                c.last_insert_id().unwrap_or(0) as i64
            }
        })
    }
}

struct WriterReport {
    /// id -> Some(k) if the row should exist with that k, None if deleted.
    touched: HashMap<i64, Option<i64>>,
    writes: u64,
    longest: Duration,
    latencies: Vec<Duration>,
}

async fn writer(server: Server, stop: Arc<AtomicBool>) -> Result<WriterReport> {
    let mut db = Db::connect(server).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut report = WriterReport {
        touched: HashMap::new(),
        writes: 0,
        longest: Duration::ZERO,
        latencies: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let id = rng.gen_range(1..=ROWS);
        let k: i64 = rng.gen_range(0..1_000_000);
        let started = Instant::now();
        match rng.gen_range(0..10) {
            0..=5 => {
                if db
                    .exec(&format!("UPDATE demo SET k = {k} WHERE id = {id}"))
                    .await?
                    == 1
                {
                    report.touched.insert(id, Some(k));
                }
            }
            6..=7 => {
                let id = db.insert(k).await?;
                report.touched.insert(id, Some(k));
            }
            _ => {
                db.exec(&format!("DELETE FROM demo WHERE id = {id}"))
                    .await?;
                report.touched.insert(id, None);
            }
        }
        let took = started.elapsed();
        report.longest = report.longest.max(took);
        report.latencies.push(took);
        report.writes += 1;
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let servers: &[Server] = match which.as_str() {
        "postgres" => &[Server::Postgres],
        "mariadb" | "mysql" => &[Server::MariaDb],
        "all" => &[Server::Postgres, Server::MariaDb],
        other => bail!("unknown server {other}: use postgres, mariadb or all"),
    };
    for &server in servers {
        demo(server)
            .await
            .with_context(|| format!("the {server:?} demo"))?;
    }
    println!("demo: OK");
    Ok(())
}

async fn demo(server: Server) -> Result<()> {
    let dsn = server.dsn();
    let swivel = std::env::var("SWIVEL_BIN").unwrap_or_else(|_| "target/release/swivel".into());
    let mut db = Db::connect(server).await?;
    let tag = format!("demo[{server:?}]");

    println!("{tag}: creating table demo with {ROWS} rows (sysbench shape: id, k, c char(120), pad char(60))");
    let started = Instant::now();
    let (create, alter) = match server {
        Server::Postgres => (
            format!(
                "DROP TABLE IF EXISTS demo, _demo_new, _demo_old;
                 CREATE TABLE demo (id serial PRIMARY KEY, k int NOT NULL DEFAULT 0,
                                    c char(120) NOT NULL DEFAULT '', pad char(60) NOT NULL DEFAULT '');
                 INSERT INTO demo (k, c, pad)
                   SELECT (i::bigint * 7919) % {ROWS}, md5(i::text) || md5((i + 1)::text), md5((i + 2)::text)
                   FROM generate_series(1, {ROWS}) i;
                 CREATE INDEX k_1 ON demo (k);"
            ),
            "ALTER COLUMN k TYPE bigint",
        ),
        Server::MariaDb => (
            format!(
                "DROP TABLE IF EXISTS demo, _demo_new, _demo_old, _demo_swl, demo__swivel_del;
                 CREATE TABLE demo (id int AUTO_INCREMENT PRIMARY KEY, k int NOT NULL DEFAULT 0,
                                    c char(120) NOT NULL DEFAULT '', pad char(60) NOT NULL DEFAULT '',
                                    KEY k_1 (k)) ENGINE=InnoDB;
                 INSERT INTO demo (k, c, pad)
                   SELECT (seq * 7919) % {ROWS}, concat(md5(seq), md5(seq + 1)), md5(seq + 2)
                   FROM seq_1_to_{ROWS};
                 ANALYZE TABLE demo;"
            ),
            "MODIFY k BIGINT NOT NULL DEFAULT 0",
        ),
    };
    db.batch(&create).await.context("creating the demo table")?;
    if server == Server::Postgres {
        db.batch("VACUUM ANALYZE demo").await?;
    }
    println!(
        "{tag}: table ready in {:.1}s; starting a writer at ~200 writes/s",
        started.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(writer(server, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cmd = [
        "run",
        "--dsn",
        &dsn,
        "--table",
        "demo",
        "--alter",
        alter,
        "--execute",
        "--progress-interval",
        "1s",
    ];
    println!(
        "{tag}: {swivel} {}",
        cmd.map(|a| if a.contains(' ') {
            format!("\"{a}\"")
        } else {
            a.to_string()
        })
        .join(" ")
    );
    let run_started = Instant::now();
    let status = tokio::process::Command::new(&swivel)
        .args(cmd)
        .status()
        .await
        .context("running swivel")?;
    let run_time = run_started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = writes.await.context("the writer panicked")??;
    if !status.success() {
        bail!("swivel failed ({status})");
    }

    // Check the outcome.
    let (k_type, pair, leftovers) = match server {
        Server::Postgres => (
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'demo'::regclass AND attname = 'k'",
            "id || ':' || k",
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'swivel%')
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'swivel%')
                  + (SELECT count(*) FROM pg_class WHERE relname = '_demo_new')",
        ),
        Server::MariaDb => (
            "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'demo' AND column_name = 'k'",
            "concat(id, ':', k)",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE()
               AND table_name IN ('_demo_new', '_demo_swl', 'demo__swivel_del')",
        ),
    };
    let k_type = db.column(k_type).await?.concat();
    let ids: Vec<String> = report.touched.keys().map(i64::to_string).collect();
    let actual: HashMap<i64, i64> = db
        .column(&format!(
            "SELECT {pair} FROM demo WHERE id IN ({})",
            ids.join(",")
        ))
        .await?
        .iter()
        .filter_map(|p| {
            let (id, k) = p.split_once(':')?;
            Some((id.parse().ok()?, k.parse().ok()?))
        })
        .collect();
    let wrong = report
        .touched
        .iter()
        .filter(|(id, want)| actual.get(id).copied() != **want)
        .count();
    let count: i64 = db
        .column("SELECT count(*) FROM demo")
        .await?
        .concat()
        .parse()?;
    let inserted = report
        .touched
        .iter()
        .filter(|(&id, v)| id > ROWS && v.is_some())
        .count() as i64;
    let deleted = report
        .touched
        .iter()
        .filter(|(&id, v)| id <= ROWS && v.is_none())
        .count() as i64;
    let expected = ROWS + inserted - deleted;
    report.latencies.sort();
    let p99 = report
        .latencies
        .get(report.latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "{tag}: swivel finished in {:.1}s; the writer made {} writes meanwhile (p99 {:.1}ms, longest {:.1}ms)",
        run_time.as_secs_f64(),
        report.writes,
        p99.as_secs_f64() * 1000.0,
        report.longest.as_secs_f64() * 1000.0
    );
    println!(
        "{tag}: k is now {k_type}; {} rows touched by the writer checked, {wrong} wrong; {count} rows, {expected} expected",
        report.touched.len()
    );
    let leftovers: i64 = db.column(leftovers).await?.concat().parse()?;
    if k_type != "bigint" || wrong > 0 || count != expected || leftovers > 0 {
        bail!("the outcome is wrong (type {k_type}, {wrong} wrong rows, {count} rows vs {expected}, {leftovers} leftovers)");
    }

    // For scale: the same rewrite done the blocking way, on the kept original (no writes).
    let plain = match server {
        Server::Postgres => "ALTER TABLE _demo_old ALTER COLUMN k TYPE bigint",
        Server::MariaDb => "ALTER TABLE _demo_old MODIFY k BIGINT NOT NULL DEFAULT 0",
    };
    let started = Instant::now();
    db.batch(plain).await?;
    println!(
        "{tag}: a plain ALTER TABLE of the same table (blocking writes throughout, no writer) took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if server == Server::MariaDb {
        pt_online_schema_change(&tag).await;
    }
    db.batch("DROP TABLE _demo_old").await?;
    Ok(())
}

/// pt-online-schema-change rewriting the same 1M rows (k back to INT: the same amount of
/// work), when percona-toolkit is installed.
async fn pt_online_schema_change(tag: &str) {
    let started = Instant::now();
    let status = tokio::process::Command::new("pt-online-schema-change")
        .args([
            "--alter",
            "MODIFY k INT NOT NULL DEFAULT 0",
            "--execute",
            "--recursion-method=none",
            "--no-check-alter",
            "--quiet",
            "h=127.0.0.1,P=33306,u=root,D=swivel,t=_demo_old",
        ])
        .status()
        .await;
    match status {
        Ok(s) if s.success() => println!(
            "{tag}: pt-online-schema-change of the same table (no writer) took {:.1}s",
            started.elapsed().as_secs_f64()
        ),
        Ok(s) => println!("{tag}: pt-online-schema-change failed ({s}); skipped"),
        Err(e) => println!(
            "{tag}: pt-online-schema-change is not installed ({e}); skipped (apt-get install percona-toolkit)"
        ),
    }
}
