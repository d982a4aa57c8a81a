//! `swivel migrate` on the testbed's real servers, each case in a database of its own (the
//! history and the runner's lock are per database): up → down → up leaves the schema as it was
//! at each step; an edited applied file is drift until repaired; two runners never apply at
//! once; a failed statement leaves a true history; a large table's ALTER runs online under
//! writes and equals its twin altered offline, a small one's runs directly.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Db, Server};

/// A fresh database `name` on `server`, its URL, and a session on it.
async fn fresh_database(server: Server, name: &str) -> (String, Db) {
    let mut admin = Db::connect(server).await;
    match server {
        Server::Postgres => {
            admin
                .exec(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
        Server::MariaDb => {
            admin
                .exec(&format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .unwrap();
        }
    }
    admin
        .exec(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let base = server.dsn();
    let dsn = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let db = Db::connect_to(&dsn).await;
    (dsn, db)
}

async fn drop_database(server: Server, name: &str) {
    let mut admin = Db::connect(server).await;
    let force = if server == Server::Postgres {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin
        .exec(&format!("DROP DATABASE IF EXISTS {name}{force}"))
        .await
        .unwrap();
}

/// `swivel migrate <args> --dsn <dsn> --dir <dir>` to its end: success, and what it said.
fn migrate(args: &[&str], dsn: &str, dir: &Path, name: &str) -> (bool, String) {
    let mut all: Vec<String> = ["migrate"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    all.extend([
        "--dsn".to_string(),
        dsn.to_string(),
        "--dir".to_string(),
        dir.join("migrations").display().to_string(),
    ]);
    let ok = common::swivel(&all, dir, name).wait().unwrap().success();
    (ok, common::output(dir, name))
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join("migrations").join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// The schema, as the server's own dump tool or SHOW CREATE TABLE gives it, without the
/// history table.
async fn schema(server: Server, db: &mut Db, dsn: &str) -> String {
    match server {
        Server::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .args([
                    "--schema-only",
                    "--no-owner",
                    "-T",
                    "swivel_schema_history",
                    "-d",
                    dsn,
                ])
                .output()
                .expect("running pg_dump");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                // \restrict carries a random key per dump.
                .filter(|l| !l.starts_with("--") && !l.starts_with('\\') && !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        }
        Server::MariaDb => {
            let tables = db
                .rows(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = \
                     DATABASE() AND table_name <> 'swivel_schema_history' ORDER BY table_name",
                )
                .await;
            let mut out = String::new();
            for t in tables {
                let t = t[0].clone().unwrap();
                let create = db.rows(&format!("SHOW CREATE TABLE `{t}`")).await;
                let text = create[0][1].clone().unwrap();
                // The next AUTO_INCREMENT value is data, not schema.
                let text: String = text
                    .split(' ')
                    .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                    .collect::<Vec<_>>()
                    .join(" ");
                out.push_str(&text);
                out.push('\n');
            }
            out
        }
    }
}

/// (version, type, success) of each history row, in order.
async fn history(db: &mut Db) -> Vec<(String, String, String)> {
    db.rows(
        "SELECT version, type, CASE WHEN success THEN 'ok' ELSE 'failed' END \
         FROM swivel_schema_history ORDER BY installed_rank",
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap(),
            r[1].clone().unwrap(),
            r[2].clone().unwrap(),
        )
    })
    .collect()
}

fn h(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

async fn up_down_up(server: Server) {
    let name = format!("swivel_mig_updown_{server:?}").to_lowercase();
    let (dsn, mut db) = fresh_database(server, &name).await;
    let dir = common::scratch("migrate", &name);
    let (k_type, k_back, index) = match server {
        Server::Postgres => (
            "ALTER COLUMN k TYPE bigint",
            "ALTER COLUMN k TYPE integer",
            "concurrently: CREATE INDEX CONCURRENTLY orders_status ON orders (status)",
        ),
        Server::MariaDb => (
            "MODIFY k BIGINT NOT NULL",
            "MODIFY k INT NOT NULL",
            "inplace: CREATE INDEX orders_status ON orders (status) ALGORITHM=INPLACE LOCK=NONE",
        ),
    };
    write(
        &dir,
        "V1__create_orders.sql",
        "-- +swivel Up\n\
         CREATE TABLE orders (id int PRIMARY KEY, k int NOT NULL);\n\
         INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30);\n\
         -- +swivel Down\n\
         DROP TABLE orders;\n",
    );
    write(
        &dir,
        "V2__add_status.sql",
        &format!(
            "-- +swivel Up\n\
             ALTER TABLE orders ADD COLUMN status varchar(20);\n\
             ALTER TABLE orders {k_type};\n\
             CREATE INDEX orders_status ON orders (status);\n\
             -- +swivel Down\n\
             DROP INDEX orders_status{on};\n\
             ALTER TABLE orders {k_back};\n\
             ALTER TABLE orders DROP COLUMN status;\n",
            on = if server == Server::MariaDb {
                " ON orders"
            } else {
                ""
            }
        ),
    );
    write(
        &dir,
        "V10__create_items.sql",
        "-- +swivel Up\n\
         CREATE TABLE items (id int PRIMARY KEY, order_id int NOT NULL);\n\
         -- +swivel Down\n\
         DROP TABLE items;\n",
    );

    // The plan changes nothing.
    let (ok, said) = migrate(&["plan"], &dsn, &dir, "plan");
    assert!(ok, "{server:?}: {said}");
    assert!(said.contains(index), "{server:?}: {said}");
    assert!(
        said.contains("direct (the table does not exist yet;"),
        "{server:?}: {said}"
    );
    let here = match server {
        Server::Postgres => "current_schema()",
        Server::MariaDb => "DATABASE()",
    };
    let none = db
        .number(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = {here} \
             AND table_name IN ('orders', 'swivel_schema_history')"
        ))
        .await;
    assert_eq!(none, 0, "{server:?}: plan changed nothing");

    let (ok, said) = migrate(&["up", "--to", "1", "--execute"], &dsn, &dir, "up1");
    assert!(ok, "{server:?}: {said}");
    let at_1 = schema(server, &mut db, &dsn).await;
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "up");
    assert!(ok, "{server:?}: {said}");
    assert!(
        said.contains("2 migration(s) applied"),
        "{server:?}: {said}"
    );
    let at_10 = schema(server, &mut db, &dsn).await;
    assert_ne!(at_1, at_10);
    assert!(at_10.contains("orders_status"), "{server:?}: {at_10}");
    assert_eq!(
        history(&mut db).await,
        h(&[("1", "SQL", "ok"), ("2", "SQL", "ok"), ("10", "SQL", "ok")])
    );
    let (_, said) = migrate(&["status"], &dsn, &dir, "status");
    assert!(
        said.lines()
            .any(|l| l.starts_with("2 ") && l.contains("applied") && l.contains("line 4:")),
        "{server:?}: {said}"
    );

    let (ok, said) = migrate(&["down", "--steps", "2", "--execute"], &dsn, &dir, "down");
    assert!(ok, "{server:?}: {said}");
    assert!(said.contains("2 migration(s) undone"), "{server:?}: {said}");
    assert_eq!(
        schema(server, &mut db, &dsn).await,
        at_1,
        "{server:?}: down undid 10 and 2"
    );
    assert_eq!(db.number("SELECT count(*) FROM orders").await, 3);
    assert_eq!(
        history(&mut db).await,
        h(&[
            ("1", "SQL", "ok"),
            ("2", "SQL", "ok"),
            ("10", "SQL", "ok"),
            ("10", "UNDO_SQL", "ok"),
            ("2", "UNDO_SQL", "ok"),
        ])
    );
    let (_, said) = migrate(&["status"], &dsn, &dir, "status2");
    let states: Vec<&str> = said
        .lines()
        .skip(1)
        .map(|l| {
            ["applied", "pending"]
                .into_iter()
                .find(|s| l.contains(&format!("  {s}  ")))
                .unwrap_or(l)
        })
        .collect();
    assert_eq!(
        states,
        ["applied", "pending", "pending"],
        "{server:?}: {said}"
    );

    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "up2");
    assert!(ok, "{server:?}: {said}");
    assert_eq!(
        schema(server, &mut db, &dsn).await,
        at_10,
        "{server:?}: up again"
    );
    let (ok, said) = migrate(&["validate"], &dsn, &dir, "validate");
    assert!(
        ok && said.contains("valid: 3 migration file(s), 3 applied, 0 pending"),
        "{said}"
    );
    drop_database(server, &name).await;
}

async fn drift_is_refused_until_repaired(server: Server) {
    let name = format!("swivel_mig_drift_{server:?}").to_lowercase();
    let (dsn, mut db) = fresh_database(server, &name).await;
    let dir = common::scratch("migrate", &name);
    let v1 = write(
        &dir,
        "V1__t.sql",
        "-- +swivel Up\nCREATE TABLE t (id int PRIMARY KEY);\n-- +swivel Down\nDROP TABLE t;\n",
    );
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "up");
    assert!(ok, "{said}");
    std::fs::write(
        &v1,
        "-- +swivel Up\nCREATE TABLE t (id bigint PRIMARY KEY);\n-- +swivel Down\nDROP TABLE t;\n",
    )
    .unwrap();
    write(
        &dir,
        "V2__u.sql",
        "-- +swivel Up\nCREATE TABLE u (id int PRIMARY KEY);\n-- +swivel Down\nDROP TABLE u;\n",
    );
    let (ok, said) = migrate(&["validate"], &dsn, &dir, "validate");
    assert!(!ok, "{server:?}: drift fails validate: {said}");
    assert!(
        said.contains("V1 (t): applied with checksum") && said.contains("was edited"),
        "{said}"
    );
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "up2");
    assert!(!ok && said.contains("was edited"), "{server:?}: {said}");
    let here = match server {
        Server::Postgres => "current_schema()",
        Server::MariaDb => "DATABASE()",
    };
    let u = db
        .number(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = {here} \
             AND table_name = 'u'"
        ))
        .await;
    assert_eq!(u, 0, "{server:?}: nothing applied while drifted");
    let (ok, said) = migrate(&["repair"], &dsn, &dir, "repair");
    assert!(
        ok && said.contains("recorded the new checksum of V1"),
        "{said}"
    );
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "up3");
    assert!(ok, "{server:?}: {said}");
    assert_eq!(
        history(&mut db).await,
        h(&[("1", "SQL", "ok"), ("2", "SQL", "ok")])
    );
    drop_database(server, &name).await;
}

async fn two_runners_never_apply_at_once(server: Server) {
    let name = format!("swivel_mig_lock_{server:?}").to_lowercase();
    let (dsn, mut db) = fresh_database(server, &name).await;
    let dir = common::scratch("migrate", &name);
    let sleep = match server {
        Server::Postgres => "SELECT pg_sleep(4)",
        Server::MariaDb => "DO SLEEP(4)",
    };
    write(
        &dir,
        "V1__slow.sql",
        &format!(
            "-- +swivel Up\nCREATE TABLE t (id int PRIMARY KEY);\n{sleep};\n\
             -- +swivel Down\nDROP TABLE t;\n"
        ),
    );
    let mut args: Vec<String> = ["migrate", "up", "--execute", "--dsn", &dsn, "--dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.join("migrations").display().to_string());
    let mut first = common::swivel(&args, &dir, "first");
    let held = match server {
        Server::Postgres => {
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                .to_string()
        }
        Server::MariaDb => format!("SELECT IS_USED_LOCK('swivel_migrate.{name}') IS NOT NULL"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.number(&held).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{server:?}: the first runner took no lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, said) = migrate(
        &["up", "--execute", "--lock-wait", "1s"],
        &dsn,
        &dir,
        "second",
    );
    assert!(!ok, "{server:?}: {said}");
    assert!(
        said.contains("another runner holds the migration lock"),
        "{server:?}: {said}"
    );
    assert!(
        first.wait().unwrap().success(),
        "{}",
        common::output(&dir, "first")
    );
    // Once the first is done, the second waits no more and finds nothing to do.
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "third");
    assert!(
        ok && said.contains("nothing to apply"),
        "{server:?}: {said}"
    );
    assert_eq!(history(&mut db).await, h(&[("1", "SQL", "ok")]));
    drop_database(server, &name).await;
}

async fn a_failed_statement_leaves_a_true_history(server: Server) {
    let name = format!("swivel_mig_fail_{server:?}").to_lowercase();
    let (dsn, mut db) = fresh_database(server, &name).await;
    let dir = common::scratch("migrate", &name);
    // The unique index fails on the duplicate: it runs outside a transaction on both servers.
    let v1 = write(
        &dir,
        "V1__a.sql",
        "-- +swivel Up\n\
         CREATE TABLE a (id int NOT NULL);\n\
         INSERT INTO a VALUES (1), (1);\n\
         CREATE UNIQUE INDEX a_id ON a (id);\n\
         -- +swivel Down\n\
         DROP TABLE a;\n",
    );
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "up");
    assert!(!ok, "{server:?}: {said}");
    assert!(said.contains("V1 failed"), "{server:?}: {said}");
    assert_eq!(history(&mut db).await, h(&[("1", "SQL", "failed")]));
    let (_, said) = migrate(&["status"], &dsn, &dir, "status");
    assert!(
        said.contains("2 statement(s) completed; the statement on line 4 failed")
            && said.contains("swivel migrate repair"),
        "{server:?}: {said}"
    );
    if server == Server::Postgres {
        let invalid = db
            .number("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            .await;
        assert_eq!(
            invalid, 0,
            "the failed concurrent build's index was dropped"
        );
    }
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "again");
    assert!(!ok && said.contains("did not finish"), "{server:?}: {said}");
    // Fix forward: the data, then the history.
    db.exec("DELETE FROM a").await.unwrap();
    db.exec("DROP TABLE a").await.unwrap();
    std::fs::write(
        &v1,
        "-- +swivel Up\n\
         CREATE TABLE a (id int NOT NULL);\n\
         INSERT INTO a VALUES (1), (2);\n\
         CREATE UNIQUE INDEX a_id ON a (id);\n\
         -- +swivel Down\n\
         DROP TABLE a;\n",
    )
    .unwrap();
    let (ok, said) = migrate(&["repair"], &dsn, &dir, "repair");
    assert!(
        ok && said.contains("removed the failed run of V1 (2 statement(s) had completed)"),
        "{server:?}: {said}"
    );
    let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "fixed");
    assert!(ok, "{server:?}: {said}");
    assert_eq!(history(&mut db).await, h(&[("1", "SQL", "ok")]));

    if server == Server::Postgres {
        // Direct statements only: one transaction, so a failure leaves nothing of it.
        write(
            &dir,
            "V2__b.sql",
            "-- +swivel Up\n\
             CREATE TABLE b (id int);\n\
             INSERT INTO no_such_table VALUES (1);\n\
             -- +swivel Down\n\
             DROP TABLE b;\n",
        );
        let (ok, said) = migrate(&["up", "--execute"], &dsn, &dir, "tx");
        assert!(!ok && said.contains("nothing of it was applied"), "{said}");
        let b = db
            .number("SELECT count(*) FROM pg_class WHERE relname = 'b'")
            .await;
        assert_eq!(b, 0, "the transaction was rolled back");
        assert_eq!(history(&mut db).await, h(&[("1", "SQL", "ok")]));
    }
    drop_database(server, &name).await;
}

/// SIGTERM in the middle of a migration: the run stops at once, and the history says which
/// statements completed and that the one running was interrupted.
async fn interrupted_midway(server: Server) {
    let name = format!("swivel_mig_sigterm_{server:?}").to_lowercase();
    let (dsn, mut db) = fresh_database(server, &name).await;
    let dir = common::scratch("migrate", &name);
    let sleep = match server {
        Server::Postgres => "SELECT pg_sleep(60)",
        Server::MariaDb => "DO SLEEP(60)",
    };
    // The index takes the migration out of one transaction on PostgreSQL too.
    write(
        &dir,
        "V1__slow.sql",
        &format!(
            "-- +swivel Up\nCREATE TABLE t (id int PRIMARY KEY, k int);\n\
             CREATE INDEX t_k ON t (k);\n{sleep};\n-- +swivel Down\nDROP TABLE t;\n"
        ),
    );
    let mut args: Vec<String> = ["migrate", "up", "--execute", "--dsn", &dsn, "--dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.join("migrations").display().to_string());
    let mut child = common::swivel(&args, &dir, "up");
    let sleeping = match server {
        Server::Postgres => {
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'"
        }
        Server::MariaDb => {
            "SELECT count(*) FROM information_schema.processlist WHERE info LIKE 'DO SLEEP(60)%'"
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.number(sleeping).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{server:?}: the migration never got to its sleep"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "{server:?}: an interrupted migration is no success"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{server:?}: it stopped at the signal, not after the sleep"
    );
    assert_eq!(history(&mut db).await, h(&[("1", "SQL", "failed")]));
    let (_, said) = migrate(&["status"], &dsn, &dir, "status");
    assert!(
        said.contains("2 statement(s) completed; the statement on line 4 failed: interrupted"),
        "{server:?}: {said}"
    );
    drop_database(server, &name).await;
}

async fn a_large_table_runs_online(server: Server) {
    const ROWS: i64 = 1_000_000;
    let name = format!("swivel_mig_online_{server:?}").to_lowercase();
    let (dsn, mut db) = fresh_database(server, &name).await;
    let dir = common::scratch("migrate", &name);
    let (fill, alter, k_type) = match server {
        Server::Postgres => (
            "SELECT i, i FROM generate_series(1, {n}) i",
            "ALTER COLUMN k TYPE bigint",
            "SELECT data_type FROM information_schema.columns WHERE table_name = '{t}' AND column_name = 'k'",
        ),
        Server::MariaDb => (
            "SELECT seq, seq FROM seq_1_to_{n}",
            "MODIFY k BIGINT NOT NULL",
            "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{t}' AND column_name = 'k'",
        ),
    };
    for (t, n) in [("big", ROWS), ("big_twin", ROWS), ("small", 1000)] {
        db.exec(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, k int NOT NULL)"
        ))
        .await
        .unwrap();
        db.exec(&format!(
            "INSERT INTO {t} {}",
            fill.replace("{n}", &n.to_string())
        ))
        .await
        .unwrap();
    }
    write(
        &dir,
        "V1__widen_k.sql",
        &format!(
            "-- +swivel Up\nALTER TABLE big {alter};\nALTER TABLE small {alter};\n\
             -- +swivel Down\nSELECT 1;\n"
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(common::twin_writer(
        Db::connect_to(&dsn).await,
        "big".into(),
        ROWS,
        Duration::from_millis(5),
        stop.clone(),
    ));
    // The writer's deletes take the table below 1,000,000 rows.
    let (ok, said) = migrate(
        &["up", "--execute", "--online-threshold", "900000"],
        &dsn,
        &dir,
        "up",
    );
    stop.store(true, Relaxed);
    let writes = writes.await.unwrap();
    assert!(ok, "{server:?}: {said}");
    assert!(
        writes > 100,
        "{server:?}: the writer ran throughout ({writes})"
    );
    assert!(
        said.contains("line 2: online (big has at least 900000 rows"),
        "{server:?}: {said}"
    );
    assert!(
        said.contains("line 3: direct (small has 1000 rows"),
        "{server:?}: {said}"
    );
    let runs = db
        .rows("SELECT statements FROM swivel_schema_history WHERE version = '1'")
        .await[0][0]
        .clone()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs[0]["how"], "online", "{runs}");
    assert!(
        runs[0]["rows_copied"].as_u64() >= Some(ROWS as u64 - 10_000),
        "{runs}"
    );
    assert_eq!(runs[0]["old_table"], "_big_old", "{runs}");
    assert_eq!(runs[1]["how"], "direct", "{runs}");

    db.exec(&format!("ALTER TABLE big_twin {alter}"))
        .await
        .unwrap();
    for (a, b) in [("big", "big_twin"), ("big_twin", "big")] {
        let differ = db
            .number(&format!(
                "SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) d"
            ))
            .await;
        assert_eq!(differ, 0, "{server:?}: {a} has rows {b} lacks");
    }
    for t in ["big", "small"] {
        let ty = db.rows(&k_type.replace("{t}", t)).await[0][0]
            .clone()
            .unwrap();
        assert_eq!(ty, "bigint", "{server:?}: {t}.k");
    }
    db.assert_nothing_left("big").await;

    // A change that needs no copy runs beside the kept original.
    let (note, widen_again, to_text) = match server {
        Server::Postgres => (
            "ADD COLUMN note text",
            "ALTER COLUMN k TYPE numeric",
            "ALTER COLUMN k TYPE text",
        ),
        Server::MariaDb => (
            "ADD COLUMN note text",
            "MODIFY k DECIMAL(20) NOT NULL",
            "MODIFY k VARCHAR(30) NOT NULL",
        ),
    };
    write(
        &dir,
        "V2__note.sql",
        &format!("-- +swivel Up\nALTER TABLE big {note};\n-- +swivel Down\nSELECT 1;\n"),
    );
    let threshold = ["--online-threshold", "900000"];
    let (ok, said) = migrate(
        &[&["up", "--execute"][..], &threshold].concat(),
        &dsn,
        &dir,
        "note",
    );
    assert!(ok, "{server:?}: {said}");
    assert!(said.contains("line 2: metadata-only"), "{server:?}: {said}");

    // Two copies of one table in one migration are refused before anything runs.
    db.exec("DROP TABLE _big_old").await.unwrap();
    write(
        &dir,
        "V3__twice.sql",
        &format!(
            "-- +swivel Up\nALTER TABLE big {widen_again};\nALTER TABLE big ADD COLUMN x int;\n\
             ALTER TABLE big {to_text};\n-- +swivel Down\nSELECT 1;\n"
        ),
    );
    let (ok, said) = migrate(
        &[&["up", "--execute"][..], &threshold].concat(),
        &dsn,
        &dir,
        "twice",
    );
    assert!(!ok, "{server:?}: {said}");
    assert!(
        said.contains("lines 2 and 4 both copy big: put their actions in one ALTER TABLE"),
        "{server:?}: {said}"
    );
    let k = db.rows(&k_type.replace("{t}", "big")).await[0][0]
        .clone()
        .unwrap();
    assert_eq!(k, "bigint", "{server:?}: nothing of V3 ran");
    drop_database(server, &name).await;
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn up_down_up() {
        super::up_down_up(Server::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn drift_is_refused_until_repaired() {
        super::drift_is_refused_until_repaired(Server::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_runners_never_apply_at_once() {
        super::two_runners_never_apply_at_once(Server::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_statement_leaves_a_true_history() {
        super::a_failed_statement_leaves_a_true_history(Server::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_large_table_runs_online() {
        super::a_large_table_runs_online(Server::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn interrupted_midway() {
        super::interrupted_midway(Server::Postgres).await;
    }
}

mod mariadb {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn up_down_up() {
        super::up_down_up(Server::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn drift_is_refused_until_repaired() {
        super::drift_is_refused_until_repaired(Server::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_runners_never_apply_at_once() {
        super::two_runners_never_apply_at_once(Server::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_statement_leaves_a_true_history() {
        super::a_failed_statement_leaves_a_true_history(Server::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_large_table_runs_online() {
        super::a_large_table_runs_online(Server::MariaDb).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn interrupted_midway() {
        super::interrupted_midway(Server::MariaDb).await;
    }
}
