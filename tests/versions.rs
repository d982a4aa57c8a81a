//! The copy's path on the server under test (`SWIVEL_PG_DSN`; CI runs this on 15, 14 and 18):
//! from PostgreSQL 16 on, the copy's writes carry swivel's replication origin and the stream
//! skips them, unless anything else writes with an origin or the role may not use origins;
//! then, and before 16, the plain path. The plan says which and why, and either path migrates.

mod common;

use swivel::{Outcome, RunOptions};
use tokio_postgres::Client;

async fn server_version(client: &Client) -> i32 {
    client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0)
}

/// The plan's line on the copy's path.
async fn copy_path(dsn: &str, table: &str) -> String {
    let opts = RunOptions::new(dsn, table, "ALTER COLUMN k TYPE bigint");
    match swivel::run(opts, std::future::pending()).await {
        Ok(Outcome::Planned(plan)) => plan
            .lines
            .into_iter()
            .find(|l| l.starts_with("copy path: "))
            .unwrap_or_else(|| panic!("the plan names the copy's path")),
        other => panic!("expected a plan, got {other:?}"),
    }
}

#[tokio::test]
async fn copy_path_follows_the_server() {
    let dsn = common::pg_dsn();
    let client = common::connect(&dsn).await;
    let version = server_version(&client).await;
    let table = "ver_path";
    common::reset(&client, table).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, k int NOT NULL);
             INSERT INTO {table} SELECT i, i FROM generate_series(1, 5000) i; ANALYZE {table}"
        ))
        .await
        .unwrap();

    let path = copy_path(&dsn, table).await;
    eprintln!("PostgreSQL {version}: {path}");
    if version < 160000 {
        assert!(
            path.starts_with("copy path: plain") && path.contains("from PostgreSQL 16 on"),
            "{version}: {path}"
        );
    } else {
        assert!(
            path.starts_with("copy path: origin-filtered"),
            "{version}: {path}"
        );

        // Another origin (a subscription's, say) would be skipped too: the plain path.
        client
            .batch_execute("SELECT pg_replication_origin_create('ver_someone_else')")
            .await
            .unwrap();
        let path = copy_path(&dsn, table).await;
        client
            .batch_execute("SELECT pg_replication_origin_drop('ver_someone_else')")
            .await
            .unwrap();
        assert!(
            path.starts_with("copy path: plain") && path.contains("ver_someone_else"),
            "{path}"
        );

        // A role that may not use origins (they are superuser-only unless granted): plain.
        client
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS ver_plain_role;
                 CREATE ROLE ver_plain_role LOGIN REPLICATION;
                 GRANT CREATE ON SCHEMA public TO ver_plain_role;
                 ALTER TABLE {table} OWNER TO ver_plain_role"
            ))
            .await
            .unwrap();
        let role_dsn = dsn.replacen("postgres@", "ver_plain_role@", 1);
        let path = copy_path(&role_dsn, table).await;
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} OWNER TO postgres;
                 REVOKE CREATE ON SCHEMA public FROM ver_plain_role; DROP ROLE ver_plain_role"
            ))
            .await
            .unwrap();
        assert!(
            path.starts_with("copy path: plain")
                && path.contains("may not use replication origins"),
            "{path}"
        );
    }

    // Whichever path: a run under writes migrates (the table equals a twin given the same
    // writes in the same transactions), and leaves nothing (the origin included).
    let twin = format!("{table}_twin");
    common::reset(&client, &twin).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {twin} (id int PRIMARY KEY, k bigint NOT NULL);
             INSERT INTO {twin} SELECT * FROM {table}"
        ))
        .await
        .unwrap();
    let mut opts = RunOptions::new(&dsn, table, "ALTER COLUMN k TYPE bigint");
    opts.execute = true;
    opts.chunk_size = 500;
    opts.max_rows_per_second = Some(10_000);
    let writer = {
        let client = common::connect(&dsn).await;
        let twin = twin.clone();
        tokio::spawn(async move {
            for i in 1..=300 {
                let id = i * 13 % 5000 + 1;
                client
                    .batch_execute(&format!(
                        "BEGIN; UPDATE {table} SET k = k + 1 WHERE id = {id};
                         UPDATE {twin} SET k = k + 1 WHERE id = {id}; COMMIT"
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    let outcome = swivel::run(opts, std::future::pending()).await;
    writer.await.unwrap();
    assert!(
        matches!(outcome, Ok(Outcome::Migrated(_))),
        "{version}: {outcome:?}"
    );
    let differ: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {table} n FULL JOIN {twin} t USING (id)
                 WHERE n.k IS DISTINCT FROM t.k"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(differ, 0, "{version}: the table equals its twin");
    common::assert_nothing_left(&client, table).await;
    common::reset(&client, table).await;
    common::reset(&client, &twin).await;
}
