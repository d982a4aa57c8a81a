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

/// Drop a test table and everything a run may have made for it.
pub async fn reset(client: &Client, table: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}, _{table}_new, _{table}_old CASCADE"
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
    }
}
