//! The checksum before cut-over, on real servers: rows made wrong in the shadow table while the
//! cut-over is postponed (changed, missing, extra) are found, copied again and the run
//! completes with the right rows; a difference that copying cannot fix (a trigger on the shadow
//! table) refuses the cut-over, names the key, and leaves both tables for inspection.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{control, run_postponed, Db, Server};
use swivel::{Outcome, RunOptions};

const ROWS: i64 = 20_000;

async fn make_table(db: &mut Db, server: Server, table: &str) {
    db.reset(table).await;
    let sql = match server {
        Server::Postgres => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, pad text NOT NULL);
             INSERT INTO {table} SELECT i, i, md5(i::text) FROM generate_series(1, {ROWS}) i;
             ANALYZE {table}"
        ),
        Server::MariaDb => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL, pad varchar(64) NOT NULL);
             INSERT INTO {table} SELECT seq, seq, md5(seq) FROM seq_1_to_{ROWS};
             ANALYZE TABLE {table}"
        ),
    };
    db.exec(&sql).await.unwrap();
}

fn alter(server: Server) -> &'static str {
    match server {
        Server::Postgres => "ALTER COLUMN k TYPE bigint",
        Server::MariaDb => "MODIFY k bigint NOT NULL",
    }
}

/// Updates `k` of rows 100..5000 until stopped, so the view and the repair take their locks
/// against a live writer; the rows the test damages are never written.
fn writer(server: Server, table: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut db = Db::connect(server).await;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let id = 100 + (n * 7919) % 4900;
            db.exec(&format!("UPDATE {table} SET k = k + 1 WHERE id = {id}"))
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

/// Damage the shadow table: a changed row, a missing one, another changed one far on, and an
/// extra row past the source's last key.
async fn damage(db: &mut Db, table: &str) {
    db.exec(&format!(
        "UPDATE _{table}_new SET pad = 'damaged' WHERE id IN (7, 15007);
         DELETE FROM _{table}_new WHERE id = 9000;
         INSERT INTO _{table}_new (id, k, pad) VALUES (1000000, 0, 'extra')"
    ))
    .await
    .unwrap();
}

async fn differing_rows_are_copied_again(server: Server) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("cks_repair_{}", format!("{server:?}").to_lowercase());
    let dir = common::scratch("checksum", &table);
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(server, table.clone(), stop.clone());
    let opts = RunOptions::new(server.dsn(), &table, alter(server));
    let (run, socket) = run_postponed(opts, &dir).await;
    damage(&mut db, &table).await;
    control(&socket, "unpostpone").await;
    let outcome = run.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let updates = writes.await.unwrap();
    let stats = match outcome {
        Ok(Outcome::Migrated(stats)) => stats,
        other => panic!("{server:?}: {other:?}"),
    };
    let checksum = stats.checksum.expect("the checksum ran");
    assert!(
        checksum.repaired >= 3,
        "{server:?}: the damaged rows lie in at least three chunks: {checksum:?}"
    );
    assert_eq!(checksum.rows, ROWS as u64, "{server:?}: {checksum:?}");
    let expected_pad = match server {
        Server::Postgres => "md5(id::text)",
        Server::MariaDb => "CONVERT(md5(id) USING latin1)",
    };
    let wrong = db
        .rows(&format!(
            "SELECT count(*) FROM {table} WHERE pad <> {expected_pad}"
        ))
        .await;
    assert_eq!(
        wrong[0][0].as_deref(),
        Some("0"),
        "{server:?}: damaged rows remain"
    );
    let count = db
        .rows(&format!("SELECT count(*), max(id) FROM {table}"))
        .await;
    assert_eq!(
        count[0],
        vec![Some(ROWS.to_string()), Some(ROWS.to_string())],
        "{server:?}: a missing row was not restored or an extra one not removed"
    );
    let ks = db
        .rows(&format!(
            "SELECT sum(k) - {} FROM {table}",
            ROWS * (ROWS + 1) / 2
        ))
        .await;
    assert_eq!(
        ks[0][0].as_deref(),
        Some(updates.to_string().as_str()),
        "{server:?}: every update of the writer must be in the migrated table"
    );
    eprintln!(
        "{server:?}: checksum of {} rows in {} chunks took {:?}, {} chunk(s) copied again, \
         writes could wait on it {:?}",
        checksum.rows, checksum.chunks, checksum.time, checksum.repaired, checksum.stall
    );
    db.reset(&table).await;
    db.assert_nothing_left(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn persistent_difference_refuses_cut_over(server: Server) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("cks_refuse_{}", format!("{server:?}").to_lowercase());
    let dir = common::scratch("checksum", &table);
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table).await;
    let opts = RunOptions::new(server.dsn(), &table, alter(server));
    let (run, socket) = run_postponed(opts, &dir).await;
    damage(&mut db, &table).await;
    // Whatever is copied into the shadow, row 7 comes out wrong.
    let trigger = match server {
        Server::Postgres => format!(
            "CREATE FUNCTION {table}_damage() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.id = 7 THEN NEW.pad := 'damaged'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER damage BEFORE INSERT OR UPDATE ON _{table}_new
             FOR EACH ROW EXECUTE FUNCTION {table}_damage()"
        ),
        Server::MariaDb => format!(
            "CREATE TRIGGER {table}_damage BEFORE INSERT ON _{table}_new FOR EACH ROW \
             SET NEW.pad = IF(NEW.id = 7, 'damaged', NEW.pad)"
        ),
    };
    db.exec(&trigger).await.unwrap();
    control(&socket, "unpostpone").await;
    let outcome = run.await.unwrap();
    let message = match outcome {
        Err(e @ swivel::Error::Checksum(_)) => e.to_string(),
        other => panic!("{server:?}: the cut-over must be refused: {other:?}"),
    };
    assert!(
        message.contains("(7)"),
        "{server:?}: name the key: {message}"
    );
    assert!(
        !message.contains("(9000)") && !message.contains("(1000000)"),
        "{server:?}: the rows copying fixed are not named: {message}"
    );
    // The table is the original, untouched; the shadow is kept for inspection.
    let k_type = db
        .rows(&format!(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = '{table}' AND column_name = 'k'"
        ))
        .await;
    assert!(
        matches!(k_type[0][0].as_deref(), Some("int" | "integer")),
        "{server:?}: the table was swapped: {k_type:?}"
    );
    let kept = db
        .rows(&format!("SELECT pad FROM _{table}_new WHERE id = 7"))
        .await;
    assert_eq!(
        kept[0][0].as_deref(),
        Some("damaged"),
        "{server:?}: the shadow must be kept"
    );
    let removed = swivel::engine::migrate::cleanup_leftovers(&server.dsn(), None, &table, true)
        .await
        .unwrap_or_else(|e| panic!("{server:?}: swivel cleanup after a refused cut-over: {e}"));
    assert!(
        removed.iter().any(|r| r.contains(&format!("_{table}_new"))),
        "{server:?}: swivel cleanup removes the kept shadow: {removed:?}"
    );
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
    if server == Server::Postgres {
        db.exec(&format!("DROP FUNCTION IF EXISTS {table}_damage()"))
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A transaction writing the table keeps the checksum's lock away: the checksum keeps trying
/// (the copy is never thrown away over a lock), names the session, and with
/// `--force-cut-over-after` ends it, as cut-over would.
async fn blocker_is_waited_out_then_ended(server: Server) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let table = format!("cks_blocked_{}", format!("{server:?}").to_lowercase());
    let dir = common::scratch("checksum", &table);
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table).await;
    let mut opts = RunOptions::new(server.dsn(), &table, alter(server));
    opts.cut_over_lock_timeout = Duration::from_millis(300);
    opts.force_cut_over_after = Some(Duration::from_secs(2));
    let (run, socket) = run_postponed(opts, &dir).await;
    let mut blocker = Db::connect(server).await;
    blocker
        .exec(&format!("BEGIN; UPDATE {table} SET k = k WHERE id = 1"))
        .await
        .unwrap();
    control(&socket, "unpostpone").await;
    let outcome = run.await.unwrap();
    match outcome {
        Ok(Outcome::Migrated(stats)) => {
            let k = stats.checksum.expect("the checksum ran");
            assert_eq!(k.repaired, 0, "{server:?}: {k:?}");
        }
        other => panic!("{server:?}: the run must outlast the blocker: {other:?}"),
    }
    assert!(
        blocker.exec("COMMIT").await.is_err(),
        "{server:?}: --force-cut-over-after must have ended the blocking session"
    );
    db.reset(&table).await;
    db.assert_nothing_left(&table).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_blocker_is_waited_out_then_ended() {
    common::testbed();
    blocker_is_waited_out_then_ended(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_blocker_is_waited_out_then_ended() {
    common::testbed();
    blocker_is_waited_out_then_ended(Server::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_differing_rows_are_copied_again() {
    common::testbed();
    differing_rows_are_copied_again(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_differing_rows_are_copied_again() {
    common::testbed();
    differing_rows_are_copied_again(Server::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_persistent_difference_refuses_cut_over() {
    common::testbed();
    persistent_difference_refuses_cut_over(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_persistent_difference_refuses_cut_over() {
    common::testbed();
    persistent_difference_refuses_cut_over(Server::MariaDb).await;
}
