//! `swivel cleanup` removes what a crashed run left, and only that: a user's table that merely
//! has the shadow's name is refused and kept, and so is a run that is still alive. The table's
//! own comment survives a migration (the shadow carries swivel's mark until the swap).

mod common;

use std::time::{Duration, Instant};

use common::{Db, Server};
use swivel::engine::migrate::cleanup_leftovers;
use swivel::{Error, Outcome, RunOptions};

async fn cleanup(server: Server, table: &str) -> Result<Vec<String>, Error> {
    cleanup_leftovers(&server.dsn(), None, table, true).await
}

fn alter(server: Server) -> &'static str {
    match server {
        Server::Postgres => "ALTER COLUMN k TYPE bigint",
        Server::MariaDb => "MODIFY k BIGINT NOT NULL",
    }
}

async fn comment(db: &mut Db, server: Server, table: &str) -> Option<String> {
    let sql = match server {
        Server::Postgres => format!("SELECT obj_description('{table}'::regclass, 'pg_class')"),
        Server::MariaDb => format!(
            "SELECT table_comment FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '{table}'"
        ),
    };
    db.rows(&sql).await[0][0].clone()
}

async fn only_swivels_own(server: Server) {
    let table = format!("clean_{}", format!("{server:?}").to_lowercase());
    let shadow = format!("_{table}_new");
    let mut db = Db::connect(server).await;
    db.reset(&table).await;
    let create = match server {
        Server::Postgres => format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, k int NOT NULL);
             INSERT INTO {table} SELECT i, i FROM generate_series(1, 20000) i;
             COMMENT ON TABLE {table} IS 'orders of the shop'; ANALYZE {table}"
        ),
        Server::MariaDb => format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, k int NOT NULL) COMMENT='orders of the shop';
             INSERT INTO {table} SELECT seq, seq FROM seq_1_to_20000; ANALYZE TABLE {table}"
        ),
    };
    db.exec(&create).await.unwrap();
    let count = format!("SELECT count(*) FROM {table}");
    let before = db.rows(&count).await;

    // A user's table with the shadow's name: refused, kept, nothing else touched.
    db.exec(&format!("CREATE TABLE {shadow} (note varchar(20))"))
        .await
        .unwrap();
    db.exec(&format!("INSERT INTO {shadow} VALUES ('mine')"))
        .await
        .unwrap();
    let refusal = cleanup(server, &table).await.unwrap_err().to_string();
    assert!(refusal.contains("did not make it"), "{server:?}: {refusal}");
    assert_eq!(
        db.rows(&format!("SELECT note FROM {shadow}")).await,
        vec![vec![Some("mine".to_string())]],
        "{server:?}: cleanup touched a user's table"
    );
    db.exec(&format!("DROP TABLE {shadow}")).await.unwrap();

    // A run that dies mid-copy (its future dropped: no cleanup, as with kill -9).
    let mut opts = RunOptions::new(server.dsn(), &table, alter(server));
    opts.execute = true;
    opts.chunk_size = 100;
    opts.max_rows_per_second = Some(2000);
    let crashed = tokio::time::timeout(
        Duration::from_millis(2000),
        swivel::run(opts, std::future::pending()),
    )
    .await;
    assert!(
        crashed.is_err(),
        "{server:?}: the run should still be copying"
    );
    let crashed_at = Instant::now();
    // Its leftovers are swivel's; a run counts as alive for a while after its last heartbeat
    // (MariaDB: 10s), and a dying session may keep its slot a moment (PostgreSQL).
    // First the listing: what is there, what keeping it costs, what removing it gives up.
    let dir = common::scratch("cleanup", &table);
    let dsn = server.dsn();
    let listed = loop {
        let args = ["cleanup", "--dsn", &dsn, "--table", &table, "--dry-run"];
        let ok = common::swivel(&args, &dir, "dry").wait().unwrap().success();
        let said = common::output(&dir, "dry");
        if ok {
            break said;
        }
        assert!(
            said.contains("is active") && crashed_at.elapsed() < Duration::from_secs(30),
            "{server:?}: {said}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        listed.contains("found table")
            && listed.contains(&shadow)
            && listed.contains("rows copied, `--resume` goes on from there")
            && listed.contains("nothing removed (--dry-run)"),
        "{server:?}: {listed}"
    );
    if server == Server::Postgres {
        assert!(listed.contains("of WAL"), "{listed}");
    }
    assert!(
        db.number(&format!("SELECT count(*) FROM {shadow}")).await > 0,
        "{server:?}: --dry-run removed the shadow"
    );
    // Without --table: every run's leftovers in the database, this one among them.
    let args = ["cleanup", "--dsn", &dsn];
    assert!(common::swivel(&args, &dir, "all").wait().unwrap().success());
    let all = common::output(&dir, "all");
    assert!(
        all.contains(&format!(
            "of table {}",
            match server {
                Server::Postgres => table.clone(),
                Server::MariaDb => format!("swivel.{table}"),
            }
        )),
        "{server:?}: {all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let removed = loop {
        match cleanup(server, &table).await {
            Ok(removed) => break removed,
            Err(e) if e.to_string().contains("is active") => {
                assert!(
                    crashed_at.elapsed() < Duration::from_secs(30),
                    "{server:?}: still active: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{server:?}: {e}"),
        }
    };
    assert!(
        removed.iter().any(|r| r.contains(&shadow)),
        "{server:?}: the crashed run's shadow was not removed: {removed:?}"
    );
    db.assert_nothing_left(&table).await;
    assert_eq!(
        db.rows(&count).await,
        before,
        "{server:?}: the table changed"
    );

    // A run that completes keeps the table's comment.
    let mut opts = RunOptions::new(server.dsn(), &table, alter(server));
    opts.execute = true;
    let outcome = swivel::run(opts, std::future::pending()).await;
    assert!(
        matches!(outcome, Ok(Outcome::Migrated(_))),
        "{server:?}: {outcome:?}"
    );
    assert_eq!(
        comment(&mut db, server, &table).await.as_deref(),
        Some("orders of the shop"),
        "{server:?}: the table lost its comment"
    );
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cleanup_removes_only_swivels_own() {
    only_swivels_own(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cleanup_removes_only_swivels_own() {
    only_swivels_own(Server::MariaDb).await;
}
