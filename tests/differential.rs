//! The differential test of issue 9, one body for both servers: a table with every common
//! column type and its twin get the same random writes in the same transactions (inserts,
//! updates of random column subsets, key changes, deletes, rollbacks) while swivel migrates the
//! first; then the twin gets the same ALTER offline, and the two must be equal on the server:
//! columns and types, indexes, and every row (`EXCEPT ALL` both ways). Writers stop at the swap
//! (a write that lands on the new table is rolled back with its twin write): after it, a write
//! goes straight into the new types, which the twin only reaches through the offline ALTER.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Db, Server};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swivel::{Outcome, RunOptions};

const ROWS: i64 = 20_000;
const WRITERS: i64 = 2;

/// The columns of the test table, with how the workload writes each.
struct Column {
    name: &'static str,
    /// A random SQL literal for the column (None: NULL).
    value: fn(&mut StdRng) -> Option<String>,
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.gen_range(0..xs.len())]
}

fn text(rng: &mut StdRng, alphabet: &[&str], max: usize) -> String {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| pick(rng, alphabet)).collect()
}

const LATIN1: &[&str] = &["a", "b", "z", "ü", "é", "ß", "'", " ", "Ö", "x"];
const UNICODE: &[&str] = &["a", "é", "漢", "🙂", "'", "\\", " ", "ж", "q"];

fn float(rng: &mut StdRng) -> Option<String> {
    Some(format!("{:.6}", rng.gen_range(-10_000.0..10_000.0f64)))
}

fn decimal(rng: &mut StdRng) -> Option<String> {
    Some(format!(
        "{}.{:03}",
        rng.gen_range(-99_999..99_999),
        rng.gen_range(0..1000)
    ))
}

fn pg_columns() -> Vec<Column> {
    fn n<T: std::fmt::Display>(v: T) -> Option<String> {
        Some(v.to_string())
    }
    vec![
        Column {
            name: "i",
            value: |r| n(r.gen_range(-1_000_000..1_000_000)),
        },
        Column {
            name: "si",
            value: |r| n(r.gen_range(-30_000..30_000)),
        },
        Column {
            name: "b",
            value: |r| n(r.gen_range(-2_000_000_000i64..2_000_000_000)),
        },
        Column {
            name: "n",
            value: decimal,
        },
        Column {
            name: "r",
            value: float,
        },
        Column {
            name: "d",
            value: |r| n(format!("{:e}", r.gen::<f64>() * 1e10)),
        },
        Column {
            name: "t",
            value: |r| Some(quoted(&text(r, UNICODE, 30))),
        },
        Column {
            name: "vc",
            value: |r| Some(quoted(&text(r, LATIN1, 20))),
        },
        Column {
            name: "bo",
            value: |r| n(r.gen_bool(0.5)),
        },
        Column {
            name: "ts",
            value: |r| {
                Some(format!(
                    "'2026-{:02}-11 10:{:02}:33.{:06}'",
                    r.gen_range(1..13),
                    r.gen_range(0..60),
                    r.gen_range(0..1_000_000)
                ))
            },
        },
        Column {
            name: "tz",
            value: |r| {
                Some(format!(
                    "'2025-03-0{} 23:59:{:02}.5+0{}'",
                    r.gen_range(1..10),
                    r.gen_range(0..60),
                    r.gen_range(0..10)
                ))
            },
        },
        Column {
            name: "dt",
            value: |r| Some(format!("'19{:02}-02-28'", r.gen_range(0..100))),
        },
        Column {
            name: "tm",
            value: |r| Some(format!("'{:02}:17:01.25'", r.gen_range(0..24))),
        },
        Column {
            name: "iv",
            value: |r| Some(format!("'{} days 02:03:04.5'", r.gen_range(-40..40))),
        },
        Column {
            name: "j",
            value: |r| {
                Some(format!(
                    "'{{\"a\": {}, \"b\": [1, \"x\", null], \"c\": {{\"d\": 1.50}}}}'",
                    r.gen_range(0..100)
                ))
            },
        },
        Column {
            name: "js",
            value: |r| Some(format!("'{{\"z\":  {},  \"a\": 2}}'", r.gen_range(0..100))),
        },
        Column {
            name: "u",
            value: |r| Some(format!("'{:032x}'", r.gen::<u128>())),
        },
        Column {
            name: "by",
            value: |r| Some(format!("'\\x{:x}00ff'", r.gen::<u32>())),
        },
        Column {
            name: "arr",
            value: |r| Some(format!("'{{{},NULL,3}}'", r.gen_range(0..9))),
        },
        Column {
            name: "e",
            value: |r| Some(quoted(pick(r, &["sad", "ok", "happy"]))),
        },
        Column {
            name: "big",
            value: |r| {
                Some(if r.gen_bool(0.3) {
                    format!("repeat(md5('{}'), 150)", r.gen::<u32>())
                } else {
                    quoted(&text(r, UNICODE, 10))
                })
            },
        },
    ]
}

fn my_columns() -> Vec<Column> {
    fn n<T: std::fmt::Display>(v: T) -> Option<String> {
        Some(v.to_string())
    }
    vec![
        Column {
            name: "i",
            value: |r| n(r.gen_range(-1_000_000..1_000_000)),
        },
        Column {
            name: "ui",
            value: |r| n(r.gen_range(0..4_000_000_000u64)),
        },
        Column {
            name: "si",
            value: |r| n(r.gen_range(-30_000..30_000)),
        },
        Column {
            name: "b",
            value: |r| n(r.gen_range(-2_000_000_000i64..2_000_000_000)),
        },
        Column {
            name: "n",
            value: decimal,
        },
        Column {
            name: "r",
            value: float,
        },
        Column {
            name: "d",
            value: |r| n(format!("{:e}", r.gen::<f64>() * 1e10)),
        },
        Column {
            name: "vc",
            value: |r| Some(quoted(&text(r, LATIN1, 20)).replace('\\', "\\\\")),
        },
        Column {
            name: "lat",
            value: |r| Some(quoted(&text(r, LATIN1, 30))),
        },
        Column {
            name: "txt",
            value: |r| Some(quoted(&text(r, UNICODE, 30)).replace('\\', "\\\\")),
        },
        Column {
            name: "ch",
            value: |r| Some(quoted(&text(r, LATIN1, 8))),
        },
        Column {
            name: "bn",
            value: |r| Some(format!("X'{:08x}00ff'", r.gen::<u32>())),
        },
        Column {
            name: "e",
            value: |r| Some(quoted(pick(r, &["sad", "ok", "happy"]))),
        },
        Column {
            name: "st",
            value: |r| Some(quoted(pick(r, &["", "x", "y,z", "x,y,z", "z"]))),
        },
        Column {
            name: "bt",
            value: |r| Some(format!("b'{:b}'", r.gen_range(0..256))),
        },
        Column {
            name: "yr",
            value: |r| n(r.gen_range(1901..2155)),
        },
        Column {
            name: "dt",
            value: |r| Some(format!("'19{:02}-02-28'", r.gen_range(0..100))),
        },
        Column {
            name: "dtm",
            value: |r| {
                Some(format!(
                    "'2026-{:02}-11 10:{:02}:33.{:03}'",
                    r.gen_range(1..13),
                    r.gen_range(0..60),
                    r.gen_range(0..1000)
                ))
            },
        },
        Column {
            name: "ts",
            value: |r| {
                Some(format!(
                    "'2025-03-0{} 23:59:{:02}.{:06}'",
                    r.gen_range(1..10),
                    r.gen_range(0..60),
                    r.gen_range(0..1_000_000)
                ))
            },
        },
        Column {
            name: "tm",
            value: |r| Some(format!("'-{:02}:17:01.25'", r.gen_range(0..800))),
        },
        Column {
            name: "j",
            value: |r| {
                Some(format!(
                    "'{{\"a\": {}, \"b\": [1, \"x\", null], \"c\": {{\"d\": 1.50}}}}'",
                    r.gen_range(0..100)
                ))
            },
        },
        Column {
            name: "big",
            value: |r| {
                Some(if r.gen_bool(0.3) {
                    format!("repeat(md5('{}'), 150)", r.gen::<u32>())
                } else {
                    quoted(&text(r, LATIN1, 10))
                })
            },
        },
    ]
}

fn columns(server: Server) -> Vec<Column> {
    match server {
        Server::Postgres => pg_columns(),
        Server::MariaDb => my_columns(),
    }
}

/// Create `table` and its twin with the same rows.
/// `composite`: the key is (id, tag), tag a text column ordered by bytes (`COLLATE "C"`,
/// `utf8mb4_bin`), and key changes move both.
async fn create(db: &mut Db, server: Server, table: &str, composite: bool) {
    let twin = format!("{table}_twin");
    db.reset(table).await;
    db.reset(&twin).await;
    // On a fresh server, parallel tests create the enum type at once: the loser of that race
    // sees a unique violation, not duplicate_object.
    let sql = match server {
        Server::Postgres => format!(
            "DO $$ BEGIN CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             CREATE TABLE {table} (id bigint PRIMARY KEY, i int, si smallint, b bigint, n numeric(12,3),
               r real, d double precision, t text, vc varchar(40), bo boolean, ts timestamp(6),
               tz timestamptz, dt date, tm time, iv interval, j jsonb, js json, u uuid, by bytea,
               arr int[], e mood, big text);
             ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE INDEX ON {table} (i);
             INSERT INTO {table} SELECT g, g * 7 % 100000, g % 30000, g::bigint * 1000003 % 2000000000,
               (g % 9999) + 0.125, (g % 1000) / 7.0, g / 3.0, 'täxt ' || g, 'v' || g, g % 2 = 0,
               '2026-01-01'::timestamp + g * interval '1.000001 second', '2026-01-01 00:00+02'::timestamptz + g * interval '1 minute',
               '2000-01-01'::date + g % 5000, time '00:00' + g * interval '1 second', g * interval '1.5 second',
               jsonb_build_object('g', g, 'l', jsonb_build_array(g, 'x')), ('{{\"g\":  ' || g || '}}')::json,
               md5(g::text)::uuid, decode(md5(g::text), 'hex'), ARRAY[g, g + 1],
               (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood,
               CASE WHEN g % 400 = 0 THEN repeat(md5(g::text), 150) ELSE 'small ' || g END
             FROM generate_series(1, {ROWS}) g;
             CREATE TABLE {twin} (LIKE {table} INCLUDING ALL);
             INSERT INTO {twin} SELECT * FROM {table};
             ALTER TABLE {table} SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05, toast.autovacuum_enabled = false);
             ALTER TABLE {twin} SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05, toast.autovacuum_enabled = false);
             ANALYZE {table};"
        ),
        Server::MariaDb => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, i int, ui int unsigned, si smallint, b bigint,
               n decimal(12,3), r float, d double, vc varchar(40), lat varchar(60) CHARACTER SET latin1,
               txt text, ch char(8), bn varbinary(16), e enum('sad','ok','happy'), st set('x','y','z'),
               bt bit(8), yr year, dt date, dtm datetime(3), ts timestamp(6) NULL, tm time(3), j json,
               big longtext, KEY (i)) DEFAULT CHARSET utf8mb4;
             INSERT INTO {table} SELECT seq, seq * 7 % 100000, seq * 211, seq % 30000, seq * 1000003 % 2000000000,
               (seq % 9999) + 0.125, (seq % 1000) / 7.0, seq / 3.0, concat('v', seq), concat('für ', seq),
               concat('tëxt 🙂 ', seq), left(concat('c', seq), 8), unhex(md5(seq)),
               elt(1 + seq % 3, 'sad', 'ok', 'happy'), elt(1 + seq % 4, '', 'x', 'y,z', 'x,z'),
               seq % 256, 1901 + seq % 254, DATE'2000-01-01' + INTERVAL (seq % 5000) DAY,
               TIMESTAMP'2026-01-01 00:00:00' + INTERVAL (seq * 1001000) MICROSECOND,
               TIMESTAMP'2025-01-01 00:00:00' + INTERVAL seq SECOND, sec_to_time(CAST(seq AS SIGNED) % 80000 - 40000 + 0.257),
               json_object('g', seq, 'l', json_array(seq, 'x')),
               IF(seq % 400 = 0, repeat(md5(seq), 150), concat('small ', seq))
             FROM seq_1_to_{ROWS};
             CREATE TABLE {twin} LIKE {table};
             INSERT INTO {twin} SELECT * FROM {table};
             ANALYZE TABLE {table};"
        ),
    };
    db.exec(&sql).await.unwrap();
    if composite {
        let rekey = match server {
            Server::Postgres => "ALTER TABLE {T} ADD COLUMN tag text COLLATE \"C\" NOT NULL DEFAULT '';
                 UPDATE {T} SET tag = 'k' || (id % 7);
                 ALTER TABLE {T} ALTER COLUMN tag DROP DEFAULT, DROP CONSTRAINT {T}_pkey, ADD PRIMARY KEY (id, tag)"
                .to_string(),
            Server::MariaDb => "ALTER TABLE {T} ADD COLUMN tag varchar(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '';
                 UPDATE {T} SET tag = concat('k', id % 7);
                 ALTER TABLE {T} ALTER COLUMN tag DROP DEFAULT, DROP PRIMARY KEY, ADD PRIMARY KEY (id, tag)".to_string(),
        };
        for t in [table.to_string(), twin] {
            db.exec(&rekey.replace("{T}", &t)).await.unwrap();
        }
    }
}

/// Something that changes when `table` stops being the original table (the swap, or a direct
/// ALTER). Read inside a writer's transaction after it wrote to the table, whose lock keeps the
/// answer true until the transaction ends.
async fn fingerprint(db: &mut Db, server: Server, table: &str) -> String {
    let sql = match server {
        Server::Postgres => format!(
            "SELECT '{table}'::regclass::oid::text || ':' || string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ),
        Server::MariaDb => format!("SHOW CREATE TABLE {table}"),
    };
    let rows = db.rows(&sql).await;
    rows.into_iter()
        .next()
        .and_then(|r| r.last().cloned().flatten())
        .unwrap_or_default()
}

/// One writer: owns the ids with id % WRITERS == w. Returns the longest single write to the
/// migrated table and how many transactions committed.
async fn writer(
    server: Server,
    table: String,
    w: i64,
    composite: bool,
    stop: Arc<AtomicBool>,
) -> (Duration, u64) {
    let seed = 9;
    let mut db = Db::connect(server).await;
    let twin = format!("{table}_twin");
    let cols = columns(server);
    let mut rng = StdRng::seed_from_u64(seed * 100 + w as u64);
    let mut ids: Vec<i64> = (1..=ROWS).filter(|i| i % WRITERS == w).collect();
    let mut next_id = ROWS * 10 + w;
    let original = fingerprint(&mut db, server, &table).await;
    let (mut longest, mut committed) = (Duration::ZERO, 0);
    while !stop.load(Ordering::Relaxed) {
        let mut staged = ids.clone();
        let mut failed = false;
        db.exec("BEGIN").await.unwrap();
        for _ in 0..rng.gen_range(1..=3) {
            let op = rng.gen_range(0..100);
            let sql = if op < 25 || staged.is_empty() {
                let id = next_id;
                next_id += WRITERS;
                staged.push(id);
                let chosen: Vec<&Column> = cols.iter().filter(|_| rng.gen_bool(0.7)).collect();
                let names: Vec<&str> = chosen.iter().map(|c| c.name).collect();
                let values: Vec<String> = chosen
                    .iter()
                    .map(|c| (c.value)(&mut rng).unwrap_or("NULL".into()))
                    .collect();
                let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                let mut values = values;
                if composite {
                    names.push("tag".into());
                    values.push(format!("'k{}'", rng.gen_range(0..7)));
                }
                let sep = if names.is_empty() { "" } else { ", " };
                format!(
                    "INSERT INTO {{T}} (id{sep}{}) VALUES ({id}{sep}{})",
                    names.join(", "),
                    values.join(", ")
                )
            } else if op < 65 {
                // A random subset of columns; on PostgreSQL `big` left alone arrives as
                // "unchanged TOAST".
                let id = staged[rng.gen_range(0..staged.len())];
                let sets: Vec<String> = (0..rng.gen_range(1..=4))
                    .map(|_| {
                        let c = &cols[rng.gen_range(0..cols.len())];
                        let v = if rng.gen_bool(0.1) {
                            None
                        } else {
                            (c.value)(&mut rng)
                        };
                        format!("{} = {}", c.name, v.unwrap_or("NULL".into()))
                    })
                    .collect();
                format!("UPDATE {{T}} SET {} WHERE id = {id}", sets.join(", "))
            } else if op < 80 {
                let at = rng.gen_range(0..staged.len());
                let (id, new_id) = (staged[at], next_id);
                next_id += WRITERS;
                staged[at] = new_id;
                if composite {
                    let tag = rng.gen_range(0..7);
                    format!("UPDATE {{T}} SET id = {new_id}, tag = 'k{tag}' WHERE id = {id}")
                } else {
                    format!("UPDATE {{T}} SET id = {new_id} WHERE id = {id}")
                }
            } else {
                let id = staged.swap_remove(rng.gen_range(0..staged.len()));
                format!("DELETE FROM {{T}} WHERE id = {id}")
            };
            let started = Instant::now();
            let on_table = db.exec(&sql.replace("{T}", &table)).await;
            longest = longest.max(started.elapsed());
            if on_table.is_err() || db.exec(&sql.replace("{T}", &twin)).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            let _ = db.exec("ROLLBACK").await;
            continue;
        }
        if fingerprint(&mut db, server, &table).await != original {
            // This transaction wrote to the new table: undo it with its twin, and stop.
            db.exec("ROLLBACK").await.unwrap();
            break;
        }
        if rng.gen_bool(0.1) {
            db.exec("ROLLBACK").await.unwrap();
        } else if db.exec("COMMIT").await.is_ok() {
            ids = staged;
            committed += 1;
        }
    }
    (longest, committed)
}

/// `columns` of `table` for a row comparison (cast to text on PostgreSQL, where json has no
/// equality), leaving out `skip`.
async fn select_list(db: &mut Db, server: Server, table: &str, skip: &[&str]) -> String {
    let sql = match server {
        Server::Postgres => format!(
            "SELECT attname FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0
             AND NOT attisdropped ORDER BY attnum"
        ),
        Server::MariaDb => format!(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE()
             AND table_name = '{table}' ORDER BY ordinal_position"
        ),
    };
    db.rows(&sql)
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .filter(|c| !skip.contains(&c.as_str()))
        .map(|c| match server {
            Server::Postgres => format!("\"{c}\"::text"),
            Server::MariaDb => format!("`{c}`"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Columns and types, then indexes, of `table`, with names of its own stripped.
async fn schema(db: &mut Db, server: Server, table: &str) -> Vec<Vec<Option<String>>> {
    let (columns, indexes) = match server {
        Server::Postgres => (
            format!(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull::text, (atthasdef)::text,
                        attgenerated::text, attidentity::text
                 FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            format!(
                "SELECT indisunique::text, indisprimary::text, substring(pg_get_indexdef(indexrelid) from ' USING .*')
                 FROM pg_index WHERE indrelid = '{table}'::regclass ORDER BY 3"
            ),
        ),
        Server::MariaDb => (
            format!(
                "SELECT column_name, column_type, collation_name, is_nullable, column_default, extra
                 FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}'
                 ORDER BY ordinal_position"
            ),
            format!(
                "SELECT index_name, seq_in_index, column_name, non_unique FROM information_schema.statistics
                 WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY 1, 2"
            ),
        ),
    };
    let mut out = db.rows(&columns).await;
    out.push(vec![Some("-- indexes".into())]);
    out.extend(db.rows(&indexes).await);
    if server == Server::Postgres {
        // Storage parameters, the table's and its TOAST table's: the offline ALTER keeps them.
        out.push(vec![Some("-- storage parameters".into())]);
        out.extend(
            db.rows(&format!(
                "SELECT array_to_string(c.reloptions, ','), array_to_string(t.reloptions, ',')
                 FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
                 WHERE c.oid = '{table}'::regclass"
            ))
            .await,
        );
    }
    out
}

/// Migrate `diff_<case>` with `alter` under the twin workload and compare with the twin altered
/// offline. `skip`: columns whose values the server assigns in an order of its own (a new
/// serial), compared for presence only.
async fn differential(server: Server, case: &str, alter: &str, skip: &[&str]) -> String {
    differential_keyed(server, case, alter, skip, false).await
}

async fn differential_keyed(
    server: Server,
    case: &str,
    alter: &str,
    skip: &[&str],
    composite: bool,
) -> String {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("diff_{case}");
    let twin = format!("{table}_twin");
    let mut db = Db::connect(server).await;
    create(&mut db, server, &table, composite).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(server, table.clone(), w, composite, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut opts = RunOptions::new(server.dsn(), &table, alter);
    opts.execute = true;
    opts.threads = common::test_threads();
    if opts.threads == 1 {
        opts.chunk_size = 1000;
        opts.knobs.target_chunk_time = Duration::from_millis(100);
        // A couple of seconds of copy, so the writes meet every phase.
        opts.max_rows_per_second = Some(10_000);
    } else {
        // Small chunks, unlimited: several are read at once, committing out of order, and the
        // copy lasts long enough for the writes to meet it.
        opts.chunk_size = 100;
        opts.knobs.target_chunk_time = Duration::from_millis(20);
    }
    opts.cut_over_lock_timeout = Duration::from_millis(500);
    opts.cut_over_retries = 30;
    let outcome = swivel::run(opts, std::future::pending()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut longest, mut committed) = (Duration::ZERO, 0);
    for w in writers {
        let (l, c) = w.await.unwrap();
        longest = longest.max(l);
        committed += c;
    }
    let how = match outcome {
        Ok(Outcome::Migrated(stats)) => format!(
            "online: {} rows copied, {} changes replayed, lock held {:?}",
            stats.rows_copied, stats.changes_applied, stats.cutover.lock_held
        ),
        Ok(Outcome::MetadataOnly(_)) => "directly (metadata only)".to_string(),
        other => panic!("{server:?} {case}: the migration did not complete: {other:?}"),
    };
    db.exec(&format!("ALTER TABLE {twin} {alter}"))
        .await
        .unwrap_or_else(|e| panic!("{server:?} {case}: the offline ALTER failed: {e}"));

    assert_eq!(
        schema(&mut db, server, &table).await,
        schema(&mut db, server, &twin).await,
        "{server:?} {case}: columns or indexes differ from the offline ALTER's"
    );
    if server == Server::Postgres {
        let stats = db
            .number(&format!(
                "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema() AND tablename = '{table}'"
            ))
            .await;
        assert!(
            stats > 0,
            "{server:?} {case}: the new table has no statistics for the planner"
        );
    }
    let list = select_list(&mut db, server, &table, skip).await;
    let differ = |a: &str, b: &str| {
        format!("SELECT count(*) FROM (SELECT {list} FROM {a} EXCEPT ALL SELECT {list} FROM {b}) x")
    };
    let only_migrated = db.number(&differ(&table, &twin)).await;
    let only_offline = db.number(&differ(&twin, &table)).await;
    let rows = db.number(&format!("SELECT count(*) FROM {table}")).await;
    if only_migrated + only_offline > 0 {
        let sample = db
            .rows(&format!(
                "SELECT {list} FROM {table} EXCEPT ALL SELECT {list} FROM {twin} LIMIT 3"
            ))
            .await;
        panic!(
            "{server:?} {case}: {only_migrated} rows only in the migrated table, {only_offline} only in the offline one (of {rows}); e.g. {sample:?}"
        );
    }
    for c in skip {
        let nulls = db
            .number(&format!("SELECT count(*) FROM {table} WHERE {c} IS NULL"))
            .await;
        assert_eq!(nulls, 0, "{server:?} {case}: {c} has NULLs");
    }
    eprintln!(
        "{server:?} {case}: {rows} rows equal to the offline ALTER's; ran {how}; {committed} writer transactions; longest write {longest:?}"
    );
    assert!(
        committed > 0,
        "{server:?} {case}: no write happened, the test proved nothing"
    );
    assert!(
        longest < Duration::from_secs(1),
        "{server:?} {case}: a write to the table waited {longest:?}"
    );
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
    db.reset(&twin).await;
    how
}

mod postgres {
    use super::*;

    async fn case(name: &str, alter: &str) -> String {
        differential(Server::Postgres, name, alter, &[]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn widen_int() {
        case(
            "pg_widen",
            "ALTER COLUMN i TYPE bigint, ALTER COLUMN si TYPE int",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn narrow_bigint() {
        case("pg_narrow", "ALTER COLUMN b TYPE int").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn real_to_double() {
        case("pg_real", "ALTER COLUMN r TYPE double precision").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn numeric_precision() {
        case("pg_numeric", "ALTER COLUMN n TYPE numeric(14,2)").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn add_column_with_comment() {
        let how = case(
            "pg_addcol",
            "ADD COLUMN note text DEFAULT 'x' -- for the support team",
        )
        .await;
        assert!(how.starts_with("directly"), "{how}");
    }

    /// A composite key with a text part in byte order, and key changes moving both parts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn composite_text_key() {
        let how = differential_keyed(
            Server::Postgres,
            "pg_ckey",
            "ALTER COLUMN i TYPE bigint",
            &[],
            true,
        )
        .await;
        assert!(how.starts_with("online"), "{how}");
    }

    /// Binary-coercible: no rewrite, so it runs directly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn varchar_widened_directly() {
        let how = case(
            "pg_vcwiden",
            "ALTER COLUMN vc TYPE varchar(80), ALTER COLUMN vc SET DEFAULT 'v'",
        )
        .await;
        assert!(how.starts_with("directly"), "{how}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn add_bigserial_online() {
        differential(
            Server::Postgres,
            "pg_serial",
            "ADD COLUMN s bigserial",
            &["s"],
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn temporal_precision() {
        case(
            "pg_temporal",
            "ALTER COLUMN ts TYPE timestamp(0), ALTER COLUMN tm TYPE time(1)",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn drop_and_generated() {
        case(
            "pg_generated",
            "DROP COLUMN js, ADD COLUMN g bigint GENERATED ALWAYS AS (i::bigint * 2) STORED",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn enum_and_json_to_text() {
        case(
            "pg_totext",
            "ALTER COLUMN e TYPE text, ALTER COLUMN j TYPE text, ALTER COLUMN vc TYPE varchar(25)",
        )
        .await;
    }
}

mod mariadb {
    use super::*;

    async fn case(name: &str, alter: &str) -> String {
        differential(Server::MariaDb, name, alter, &[]).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn widen_and_narrow_int() {
        case(
            "my_ints",
            "MODIFY i BIGINT, MODIFY b INT, MODIFY ui BIGINT UNSIGNED",
        )
        .await;
    }

    /// A composite key with a `_bin` text part, and key changes moving both parts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn composite_text_key() {
        let how =
            differential_keyed(Server::MariaDb, "my_ckey", "MODIFY i BIGINT", &[], true).await;
        assert!(how.starts_with("online"), "{how}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn float_to_double() {
        case("my_float", "MODIFY r DOUBLE").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn decimal_precision() {
        case("my_decimal", "MODIFY n DECIMAL(14,2)").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn enum_and_set_reordered() {
        case(
            "my_members",
            "MODIFY e ENUM('happy','ok','sad','meh'), MODIFY st SET('z','y','x','w')",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn enum_to_varchar() {
        case("my_enumtext", "MODIFY e VARCHAR(10), MODIFY st VARCHAR(20)").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn latin1_to_utf8mb4() {
        case("my_toutf8", "MODIFY lat VARCHAR(60) CHARACTER SET utf8mb4").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn utf8mb4_to_latin1() {
        case("my_tolatin1", "MODIFY vc VARCHAR(40) CHARACTER SET latin1").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn convert_to_character_set() {
        case("my_convert", "CONVERT TO CHARACTER SET utf8mb4").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn add_column_with_comment() {
        case(
            "my_addcol",
            "ADD COLUMN note varchar(20) NOT NULL DEFAULT 'x' /* for the support team */",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn generated_column_and_index() {
        case(
            "my_generated",
            "ADD COLUMN g BIGINT AS (i * 2) STORED, ADD INDEX (b), DROP COLUMN ch",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn temporal_precision() {
        case(
            "my_temporal",
            "MODIFY dtm DATETIME(6), MODIFY ts TIMESTAMP(0) NULL, MODIFY tm TIME(0), MODIFY yr SMALLINT",
        )
        .await;
    }
}
