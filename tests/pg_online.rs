//! The model-based concurrency test of DESIGN.md on a real PostgreSQL: random inserts,
//! updates (key changes, unique-value moves and TOASTed values included), deletes, multi-row
//! transactions and rollbacks run during the copy and through the cut-over; afterwards the
//! table must equal the writers' model, row for row.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swivel::{Outcome, RunOptions};
use tokio_postgres::Client;

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
    // Out of line: the column is STORAGE EXTERNAL, so anything over ~2 kB is TOASTed.
    (0..3000)
        .map(|_| char::from(b'a' + rng.gen_range(0..26)))
        .collect()
}

async fn load_model(client: &Client, table: &str) -> Model {
    client
        .query(
            &format!("SELECT id, k::bigint, u, c, big FROM {table}"),
            &[],
        )
        .await
        .expect("reading the table")
        .iter()
        .map(|r| {
            (
                r.get(0),
                Row {
                    k: r.get(1),
                    u: r.get(2),
                    c: r.get(3),
                    big: r.get(4),
                },
            )
        })
        .collect()
}

/// One writer: owns the keys with id % WRITERS == w, so its model part is exact.
async fn writer(
    dsn: String,
    table: String,
    w: i64,
    seed: u64,
    mut model: Model,
    stop: Arc<AtomicBool>,
) -> Model {
    let client = common::connect(&dsn).await;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64));
    let mut next_id = model.keys().next_back().copied().unwrap_or(0) + WRITERS * 1000 + w;
    next_id -= next_id.rem_euclid(WRITERS) - w;
    let unique_range = 1 + model.len() as i32 / 4;
    while !stop.load(Ordering::Relaxed) {
        let mut staged = model.clone();
        let ops = rng.gen_range(1..=3);
        client.batch_execute("BEGIN").await.unwrap();
        let mut failed = false;
        for _ in 0..ops {
            let pick = |rng: &mut StdRng, m: &Model| -> Option<i64> {
                let lo = *m.keys().next()?;
                let hi = *m.keys().next_back()?;
                let x = rng.gen_range(lo..=hi);
                m.range(x..).next().map(|(k, _)| *k)
            };
            let op = rng.gen_range(0..100);
            let result = if op < 30 || staged.is_empty() {
                let id = next_id;
                next_id += WRITERS;
                let row = Row {
                    k: rng.gen_range(0..1_000_000),
                    u: None,
                    c: format!("ins-{seed}-{id}"),
                    big: rng.gen_bool(0.1).then(|| big_value(&mut rng)),
                };
                let r = client
                    .execute(
                        &format!(
                            "INSERT INTO {table} (id, k, u, c, big) VALUES ($1, $2, $3, $4, $5)"
                        ),
                        &[&id, &(row.k as i32), &row.u, &row.c, &row.big],
                    )
                    .await;
                staged.insert(id, row);
                r
            } else if op < 55 {
                // Leaves `big` alone: a TOASTed value arrives as "unchanged".
                let id = pick(&mut rng, &staged).unwrap();
                let row = staged.get_mut(&id).unwrap();
                row.k = rng.gen_range(0..1_000_000);
                row.c = format!("upd-{}", rng.gen::<u32>());
                client
                    .execute(
                        &format!("UPDATE {table} SET k = $2, c = $3 WHERE id = $1"),
                        &[&id, &(row.k as i32), &row.c],
                    )
                    .await
            } else if op < 63 {
                let id = pick(&mut rng, &staged).unwrap();
                let row = staged.get_mut(&id).unwrap();
                row.big = rng.gen_bool(0.7).then(|| big_value(&mut rng));
                client
                    .execute(
                        &format!("UPDATE {table} SET big = $2 WHERE id = $1"),
                        &[&id, &row.big],
                    )
                    .await
            } else if op < 73 {
                // Moves a unique value between rows; collisions fail and roll back.
                let id = pick(&mut rng, &staged).unwrap();
                let row = staged.get_mut(&id).unwrap();
                row.u = rng.gen_bool(0.8).then(|| rng.gen_range(0..unique_range));
                client
                    .execute(
                        &format!("UPDATE {table} SET u = $2 WHERE id = $1"),
                        &[&id, &row.u],
                    )
                    .await
            } else if op < 83 {
                // A primary key change.
                let id = pick(&mut rng, &staged).unwrap();
                let new_id = next_id;
                next_id += WRITERS;
                let row = staged.remove(&id).unwrap();
                staged.insert(new_id, row);
                client
                    .execute(
                        &format!("UPDATE {table} SET id = $2 WHERE id = $1"),
                        &[&id, &new_id],
                    )
                    .await
            } else {
                let id = pick(&mut rng, &staged).unwrap();
                staged.remove(&id);
                client
                    .execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id])
                    .await
            };
            if result.is_err() {
                failed = true; // a unique collision or a cut-over hiccup: roll the whole thing back
                break;
            }
        }
        if failed || rng.gen_bool(0.1) {
            client.batch_execute("ROLLBACK").await.unwrap();
        } else if client.batch_execute("COMMIT").await.is_ok() {
            model = staged;
        }
    }
    model
}

async fn migrate_under_load(seed: u64, rows: i64) {
    let dsn = common::pg_dsn();
    let table = format!("model_{seed}_{rows}");
    let client = common::connect(&dsn).await;
    common::reset(&client, &table).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, u int UNIQUE, c text NOT NULL, big text);
             ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE INDEX ON {table} (k);
             INSERT INTO {table} (id, k, c, big)
               SELECT i * {WRITERS}, i % 1000, 'c' || i,
                      CASE WHEN i % 500 = 0 THEN repeat(md5(i::text), 100) END
               FROM generate_series(1, {rows}) i;
             ANALYZE {table};"
        ))
        .await
        .unwrap();
    let initial = load_model(&client, &table).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let part: Model = initial
                .iter()
                .filter(|(id, _)| id.rem_euclid(WRITERS) == w)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            tokio::spawn(writer(
                dsn.clone(),
                table.clone(),
                w,
                seed,
                part,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut opts = RunOptions::new(&dsn, &table, "ALTER COLUMN k TYPE bigint");
    opts.execute = true;
    opts.chunk_size = 500;
    opts.target_chunk_time = Duration::from_millis(50);
    opts.cut_over_lock_timeout = Duration::from_millis(500);
    opts.cut_over_retries = 30;
    let outcome = swivel::run(opts, std::future::pending()).await;
    // Writes go on against the new table after the swap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut model = Model::new();
    for w in writers {
        model.extend(w.await.unwrap());
    }
    let stats = match outcome {
        Ok(Outcome::Migrated(stats)) => stats,
        other => panic!("seed {seed}: the migration did not complete: {other:?}"),
    };

    let actual = load_model(&client, &table).await;
    let k_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'k'", &[&table])
        .await
        .unwrap()
        .get(0);
    assert_eq!(k_type, "bigint", "seed {seed}: the ALTER was not applied");
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
        panic!(
            "seed {seed}: the migrated table differs from the model ({} rows vs {}): missing {missing:?}, extra {extra:?}, different {differ:?}",
            actual.len(),
            model.len()
        );
    }
    assert!(
        stats.changes_applied > 0,
        "seed {seed}: no change was replayed, the test proved nothing"
    );
    common::assert_nothing_left(&client, &table).await;
    eprintln!(
        "seed {seed}: {} rows, {} copied, {} changes replayed, lock held {:?}",
        actual.len(),
        stats.rows_copied,
        stats.changes_applied,
        stats.cutover.lock_held
    );
    common::reset(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_1() {
    migrate_under_load(1, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_2() {
    migrate_under_load(2, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_3() {
    migrate_under_load(3, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_4_with_200k_rows() {
    migrate_under_load(4, 200_000).await;
}
