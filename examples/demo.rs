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
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, NoTls};

const ROWS: i64 = 1_000_000;

async fn connect(dsn: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .context("connecting")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

struct WriterReport {
    /// id -> Some(k) if the row should exist with that k, None if deleted.
    touched: HashMap<i64, Option<i64>>,
    writes: u64,
    longest: Duration,
    latencies: Vec<Duration>,
}

async fn writer(dsn: String, stop: Arc<AtomicBool>) -> Result<WriterReport> {
    let client = connect(&dsn).await?;
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
        let id = rng.gen_range(1..=ROWS) as i32;
        let k: i64 = rng.gen_range(0..1_000_000);
        let started = Instant::now();
        match rng.gen_range(0..10) {
            0..=5 => {
                if client
                    .execute(
                        "UPDATE demo SET k = $2::int WHERE id = $1",
                        &[&id, &(k as i32)],
                    )
                    .await?
                    == 1
                {
                    report.touched.insert(id.into(), Some(k));
                }
            }
            6..=7 => {
                let row = client
                    .query_one(
                        "INSERT INTO demo (k, c, pad) VALUES ($1::int, 'demo', 'demo') RETURNING id",
                        &[&(k as i32)],
                    )
                    .await?;
                report.touched.insert(row.get::<_, i32>(0).into(), Some(k));
            }
            _ => {
                client
                    .execute("DELETE FROM demo WHERE id = $1", &[&id])
                    .await?;
                report.touched.insert(id.into(), None);
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
    let dsn = std::env::var("SWIVEL_PG_DSN")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/swivel".into());
    let swivel = std::env::var("SWIVEL_BIN").unwrap_or_else(|_| "target/release/swivel".into());
    let client = connect(&dsn).await?;

    println!("demo: creating table demo with {ROWS} rows (sysbench shape: id, k, c char(120), pad char(60))");
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS demo, _demo_new, _demo_old;
             CREATE TABLE demo (id serial PRIMARY KEY, k int NOT NULL DEFAULT 0,
                                c char(120) NOT NULL DEFAULT '', pad char(60) NOT NULL DEFAULT '');
             INSERT INTO demo (k, c, pad)
               SELECT (i::bigint * 7919) % {ROWS}, md5(i::text) || md5((i + 1)::text), md5((i + 2)::text)
               FROM generate_series(1, {ROWS}) i;
             CREATE INDEX k_1 ON demo (k);"
        ))
        .await
        .context("creating the demo table")?;
    client
        .batch_execute("VACUUM ANALYZE demo")
        .await
        .context("vacuuming the demo table")?;
    println!(
        "demo: table ready in {:.1}s; starting a writer at ~200 writes/s",
        started.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(writer(dsn.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cmd = [
        "run",
        "--dsn",
        &dsn,
        "--table",
        "demo",
        "--alter",
        "ALTER COLUMN k TYPE bigint",
        "--execute",
        "--progress-interval",
        "1s",
    ];
    println!(
        "demo: {swivel} {}",
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
    let k_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'demo'::regclass AND attname = 'k'", &[])
        .await?
        .get(0);
    let ids: Vec<i32> = report.touched.keys().map(|&id| id as i32).collect();
    let actual: HashMap<i64, i64> = client
        .query("SELECT id, k FROM demo WHERE id = ANY($1)", &[&ids])
        .await?
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), r.get::<_, i64>(1)))
        .collect();
    let wrong = report
        .touched
        .iter()
        .filter(|(id, want)| actual.get(id).copied() != **want)
        .count();
    let count: i64 = client
        .query_one("SELECT count(*) FROM demo", &[])
        .await?
        .get(0);
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
        "demo: swivel finished in {:.1}s; the writer made {} writes meanwhile (p99 {:.1}ms, longest {:.1}ms)",
        run_time.as_secs_f64(),
        report.writes,
        p99.as_secs_f64() * 1000.0,
        report.longest.as_secs_f64() * 1000.0
    );
    println!(
        "demo: k is now {k_type}; {} rows touched by the writer checked, {wrong} wrong; {count} rows, {expected} expected",
        report.touched.len()
    );
    let leftovers: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'swivel%')
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'swivel%')
                  + (SELECT count(*) FROM pg_class WHERE relname = '_demo_new')",
            &[],
        )
        .await?
        .get(0);
    if k_type != "bigint" || wrong > 0 || count != expected || leftovers > 0 {
        bail!("the outcome is wrong (type {k_type}, {wrong} wrong rows, {count} rows vs {expected}, {leftovers} leftovers)");
    }

    // For scale: the same rewrite done the blocking way.
    let started = Instant::now();
    client
        .batch_execute("ALTER TABLE _demo_old ALTER COLUMN k TYPE bigint")
        .await?;
    println!(
        "demo: a plain ALTER TABLE of the same table (blocking reads and writes throughout) took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    client.batch_execute("DROP TABLE _demo_old").await?;
    println!("demo: OK");
    Ok(())
}
