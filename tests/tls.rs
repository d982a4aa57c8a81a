//! TLS on real servers: the testbed's role/user `swivel_tls` may connect only over TLS, so a
//! migration that completes as that user proves every session swivel opens (the replication
//! stream and the binlog connection included) is encrypted; with the CA that signed the
//! server's certificate and full verification it runs, with a CA that did not it is refused
//! before anything is created, saying why.

mod common;

use std::path::PathBuf;

use common::{Db, Server};
use swivel::{Outcome, RunOptions};

fn cert(name: &str) -> String {
    let base =
        std::env::var("SWIVEL_TESTBED_DIR").unwrap_or_else(|_| "/var/tmp/swivel-testbed".into());
    let path = PathBuf::from(base).join("tls").join(name);
    assert!(
        path.is_file(),
        "{} is missing: testbed/testbed.sh start makes it",
        path.display()
    );
    path.display().to_string()
}

/// `swivel_tls` on the testbed, verifying the server against `ca`.
fn dsn(server: Server, ca: &str) -> String {
    match server {
        Server::Postgres => format!(
            "postgres://swivel_tls@127.0.0.1:55432/swivel?sslmode=verify-full&sslrootcert={ca}"
        ),
        Server::MariaDb => format!(
            "mysql://swivel_tls@127.0.0.1:33306/swivel?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"
        ),
    }
}

fn alter(server: Server) -> &'static str {
    match server {
        Server::Postgres => "ALTER COLUMN k TYPE bigint",
        Server::MariaDb => "MODIFY k bigint NOT NULL",
    }
}

async fn make_table(db: &mut Db, server: Server, table: &str) {
    db.reset(table).await;
    let sql = match server {
        Server::Postgres => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL);
             INSERT INTO {table} SELECT i, i FROM generate_series(1, 5000) i"
        ),
        Server::MariaDb => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, k int NOT NULL);
             INSERT INTO {table} SELECT seq, seq FROM seq_1_to_5000"
        ),
    };
    db.exec(&sql).await.unwrap();
}

/// Whether the testbed is in use (its certificates exist); with servers of your own
/// (SWIVEL_PG_DSN), there is no `swivel_tls` to test with.
fn on_testbed() -> bool {
    common::testbed();
    std::env::var("SWIVEL_PG_DSN").is_err()
}

async fn verified_run_completes(server: Server) {
    if !on_testbed() {
        return;
    }
    let table = format!("tls_{}", format!("{server:?}").to_lowercase());
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table).await;
    let mut opts = RunOptions::new(dsn(server, &cert("ca.crt")), &table, alter(server));
    opts.execute = true;
    match swivel::run(opts, std::future::pending()).await {
        Ok(Outcome::Migrated(stats)) => assert_eq!(stats.rows_copied, 5000),
        other => panic!("{server:?}: a run over verified TLS must complete: {other:?}"),
    }
    let rows = db
        .rows(&format!("SELECT count(*), sum(k) FROM {table}"))
        .await;
    assert_eq!(
        rows[0],
        vec![Some("5000".into()), Some("12502500".into())],
        "{server:?}"
    );
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
}

async fn wrong_ca_is_refused(server: Server) {
    if !on_testbed() {
        return;
    }
    let table = format!("tls_wrong_{}", format!("{server:?}").to_lowercase());
    let mut db = Db::connect(server).await;
    make_table(&mut db, server, &table).await;
    let mut opts = RunOptions::new(dsn(server, &cert("other-ca.crt")), &table, alter(server));
    opts.execute = true;
    let err = match swivel::run(opts, std::future::pending()).await {
        Err(e) => e.to_string(),
        Ok(o) => panic!("{server:?}: a server the CA did not sign must be refused: {o:?}"),
    };
    assert!(
        err.to_lowercase().contains("certificate"),
        "{server:?}: the error must say the certificate failed: {err}"
    );
    let shadow = db
        .rows(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = '_{table}_new'"
        ))
        .await;
    assert_eq!(
        shadow[0][0].as_deref(),
        Some("0"),
        "{server:?}: nothing may be created"
    );
    db.assert_nothing_left(&table).await;
    db.reset(&table).await;
}

/// The mode is honoured: without TLS, the server turns swivel away.
async fn disabled_tls_is_turned_away(server: Server) {
    if !on_testbed() {
        return;
    }
    let dsn = match server {
        Server::Postgres => "postgres://swivel_tls@127.0.0.1:55432/swivel?sslmode=disable",
        Server::MariaDb => "mysql://swivel_tls@127.0.0.1:33306/swivel?ssl-mode=DISABLED",
    };
    let opts = RunOptions::new(dsn, "tls_nothing", alter(server));
    let err = swivel::run(opts, std::future::pending())
        .await
        .expect_err("a TLS-only user without TLS must be turned away");
    let text = err.to_string();
    assert!(
        text.contains("no encryption") || text.contains("Access denied"),
        "{server:?}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_verify_full() {
    verified_run_completes(Server::Postgres).await;
    wrong_ca_is_refused(Server::Postgres).await;
    disabled_tls_is_turned_away(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_verify_identity() {
    verified_run_completes(Server::MariaDb).await;
    wrong_ca_is_refused(Server::MariaDb).await;
    disabled_tls_is_turned_away(Server::MariaDb).await;
}
