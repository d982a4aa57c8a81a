//! Bad input and interrupted runs on a real PostgreSQL: each refusal says what is wrong, and
//! nothing is changed or left behind.

mod common;

use std::time::Duration;

use swivel::{Error, Outcome, RunOptions};
use tokio_postgres::Client;

async fn table(client: &Client, name: &str, ddl: &str) {
    common::reset(client, name).await;
    client
        .batch_execute(ddl)
        .await
        .expect("creating the test table");
}

async fn checksum(client: &Client, name: &str) -> String {
    client
        .query_one(&format!("SELECT count(*)::text || ':' || coalesce(sum(hashtext(t::text)), 0)::text FROM {name} t"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn refused(dsn: &str, name: &str, alter: &str, execute: bool) -> String {
    let mut opts = RunOptions::new(dsn, name, alter);
    opts.execute = execute;
    match swivel::run(opts, std::future::pending()).await {
        Err(e @ Error::Refused(_)) => e.to_string(),
        other => panic!("expected a refusal for {name} / {alter:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn refusals_explain_and_change_nothing() {
    let dsn = common::pg_dsn();
    let client = common::connect(&dsn).await;

    let msg = refused(&dsn, "no_such_table", "ADD COLUMN x int", true).await;
    assert!(msg.contains("does not exist"), "{msg}");

    table(
        &client,
        "ref_nopk",
        "CREATE TABLE ref_nopk (a int, b text); INSERT INTO ref_nopk VALUES (1, 'x')",
    )
    .await;
    let before = checksum(&client, "ref_nopk").await;
    let msg = refused(&dsn, "ref_nopk", "ALTER COLUMN a TYPE bigint", true).await;
    assert!(msg.contains("has no primary key"), "{msg}");
    assert_eq!(checksum(&client, "ref_nopk").await, before);
    common::assert_nothing_left(&client, "ref_nopk").await;

    table(&client, "ref_t", "CREATE TABLE ref_t (id int PRIMARY KEY, k int); INSERT INTO ref_t SELECT i, i FROM generate_series(1, 100) i").await;
    let before = checksum(&client, "ref_t").await;
    let msg = refused(&dsn, "ref_t", "ALTER COLUMN k TYPE", true).await;
    assert!(msg.contains("does not parse"), "{msg}");
    let msg = refused(&dsn, "ref_t", "ALTER COLUMN nosuch TYPE bigint", true).await;
    assert!(
        msg.contains("server rejects the ALTER") && msg.contains("nosuch"),
        "{msg}"
    );
    let msg = refused(&dsn, "ref_t", "DROP COLUMN id", false).await;
    assert!(msg.contains("changes the primary key"), "{msg}");
    let msg = refused(&dsn, "ref_t", "ADD CONSTRAINT k_unique UNIQUE (k)", true).await;
    assert!(msg.contains("CONCURRENTLY"), "{msg}");
    assert_eq!(checksum(&client, "ref_t").await, before);
    common::assert_nothing_left(&client, "ref_t").await;

    // A table in the shadow's place: refused. `swivel cleanup` removes only what swivel made
    // (tests/cleanup.rs), so this one, made by hand, it leaves alone.
    client
        .batch_execute("CREATE TABLE _ref_t_new (LIKE ref_t)")
        .await
        .unwrap();
    let msg = refused(&dsn, "ref_t", "ALTER COLUMN k TYPE bigint", true).await;
    assert!(
        msg.contains("leftovers") && msg.contains("swivel cleanup"),
        "{msg}"
    );
    let kept = swivel::postgres::cleanup_leftovers(&dsn, None, "ref_t", true).await;
    assert!(
        matches!(&kept, Err(Error::Refused(why)) if why.contains("did not make it")),
        "{kept:?}"
    );
    client.batch_execute("DROP TABLE _ref_t_new").await.unwrap();
    common::assert_nothing_left(&client, "ref_t").await;
    assert_eq!(checksum(&client, "ref_t").await, before);

    common::reset(&client, "ref_nopk").await;
    common::reset(&client, "ref_t").await;
}

#[tokio::test]
async fn wal_level_must_be_logical() {
    let dsn = common::pg_plain_dsn();
    let client = common::connect(&dsn).await;
    table(
        &client,
        "ref_wal",
        "CREATE TABLE ref_wal (id int PRIMARY KEY, k int)",
    )
    .await;
    let msg = refused(&dsn, "ref_wal", "ALTER COLUMN k TYPE bigint", true).await;
    assert!(
        msg.contains("wal_level is replica") && msg.contains("wal_level = logical"),
        "{msg}"
    );
    common::assert_nothing_left(&client, "ref_wal").await;
    // A change that needs no copy needs no logical decoding either: it runs directly.
    let mut opts = RunOptions::new(&dsn, "ref_wal", "ADD COLUMN note text");
    opts.execute = true;
    let outcome = swivel::run(opts, std::future::pending()).await.unwrap();
    assert!(matches!(outcome, Outcome::MetadataOnly(_)), "{outcome:?}");
    let has: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'ref_wal'::regclass AND attname = 'note')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(has, "the metadata-only change did not run");
    common::reset(&client, "ref_wal").await;
}

#[tokio::test]
async fn plan_only_changes_nothing() {
    let dsn = common::pg_dsn();
    let client = common::connect(&dsn).await;
    table(&client, "ref_plan", "CREATE TABLE ref_plan (id int PRIMARY KEY, k int); INSERT INTO ref_plan SELECT i, i FROM generate_series(1, 10) i").await;
    let outcome = swivel::run(
        RunOptions::new(&dsn, "ref_plan", "ALTER COLUMN k TYPE bigint"),
        std::future::pending(),
    )
    .await
    .unwrap();
    let Outcome::Planned(plan) = outcome else {
        panic!("expected a plan, got {outcome:?}")
    };
    assert!(
        plan.lines.iter().any(|l| l.contains("shadow table")),
        "{:?}",
        plan.lines
    );
    let k_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'ref_plan'::regclass AND attname = 'k'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(k_type, "integer");
    common::assert_nothing_left(&client, "ref_plan").await;
    common::reset(&client, "ref_plan").await;
}

#[tokio::test]
async fn interrupted_copy_leaves_the_table_intact() {
    let dsn = common::pg_dsn();
    let client = common::connect(&dsn).await;
    table(&client, "ref_int", "CREATE TABLE ref_int (id int PRIMARY KEY, k int); INSERT INTO ref_int SELECT i, i FROM generate_series(1, 20000) i; ANALYZE ref_int").await;
    let before = checksum(&client, "ref_int").await;
    let mut opts = RunOptions::new(&dsn, "ref_int", "ALTER COLUMN k TYPE bigint");
    opts.execute = true;
    opts.chunk_size = 100;
    opts.max_rows_per_second = Some(2000); // ten seconds of copy: stopped well before the end
    let result = swivel::run(opts, tokio::time::sleep(Duration::from_millis(1500))).await;
    assert!(matches!(result, Err(Error::Interrupted(_))), "{result:?}");
    assert_eq!(checksum(&client, "ref_int").await, before);
    common::assert_nothing_left(&client, "ref_int").await;
    common::reset(&client, "ref_int").await;
}

/// The rule table, proven on the server: for each action, swivel's plan (direct or online) is
/// checked against what PostgreSQL does with the same ALTER on a scratch copy (a changed
/// relfilenode is a rewrite). A direct plan must never meet a rewrite.
#[tokio::test]
async fn rewrite_rules_match_the_server() {
    let dsn = common::pg_dsn();
    let client = common::connect(&dsn).await;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let mut cases: Vec<(&str, bool)> = vec![
        ("ADD COLUMN x int", true),
        ("ADD COLUMN x int NOT NULL DEFAULT 0", true),
        ("ADD COLUMN x text DEFAULT 'a' -- why", true),
        ("ADD COLUMN x timestamptz DEFAULT clock_timestamp()", false),
        ("ADD COLUMN x bigserial", false),
        ("ADD COLUMN x int GENERATED ALWAYS AS IDENTITY", false),
        ("ADD COLUMN x int GENERATED ALWAYS AS (k * 2) STORED", false),
        ("ALTER COLUMN v TYPE varchar(40)", true),
        ("ALTER COLUMN v TYPE text", true),
        ("ALTER COLUMN v TYPE varchar(10)", false),
        ("ALTER COLUMN k TYPE bigint", false),
        ("ALTER COLUMN k TYPE int USING k + 1", false),
        (
            "ALTER COLUMN k SET DEFAULT 7, ALTER COLUMN v DROP NOT NULL",
            true,
        ),
        ("ALTER COLUMN k SET NOT NULL", false),
        ("DROP COLUMN v", true),
    ];
    if version >= 180000 {
        // Virtual, computed on read: 18's default (earlier servers reject it). It needs no
        // rewrite, but swivel's parser does not read it yet, so it is copied online.
        cases.push(("ADD COLUMN x int GENERATED ALWAYS AS (k * 2)", false));
    }
    for (i, (action, direct)) in cases.iter().enumerate() {
        let name = format!("ref_rule_{i}");
        table(&client, &name, &format!("CREATE TABLE {name} (id int PRIMARY KEY, k int, v varchar(20) NOT NULL); CREATE INDEX ON {name} (v); INSERT INTO {name} SELECT g, g, 'v' || g FROM generate_series(1, 100) g")).await;
        let planned = swivel::run(
            RunOptions::new(&dsn, &name, *action),
            std::future::pending(),
        )
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"));
        let Outcome::Planned(plan) = planned else {
            panic!("{action}: expected a plan")
        };
        let scratch = format!("{name}_scratch");
        common::reset(&client, &scratch).await;
        // The table's storage, then its indexes'.
        let storage = format!("SELECT (SELECT relfilenode FROM pg_class WHERE oid = '{scratch}'::regclass)::text, coalesce((SELECT array_agg(relfilenode::text) FROM pg_class WHERE oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = '{scratch}'::regclass)), '{{}}')");
        client.batch_execute(&format!("CREATE TABLE {scratch} (LIKE {name} INCLUDING ALL); INSERT INTO {scratch} SELECT * FROM {name}")).await.unwrap();
        let read = |r: tokio_postgres::Row| (r.get::<_, String>(0), r.get::<_, Vec<String>>(1));
        let before = read(client.query_one(&storage, &[]).await.unwrap());
        let offline =
            swivel::engine::plan::strip_comments(&sqlparser::dialect::PostgreSqlDialect {}, action)
                .unwrap();
        client
            .batch_execute(&format!("ALTER TABLE {scratch} {offline}"))
            .await
            .unwrap();
        let after = read(client.query_one(&storage, &[]).await.unwrap());
        let rewrote = before.0 != after.0 || after.1.iter().any(|i| !before.1.contains(i));
        assert!(
            !(plan.metadata_only && rewrote),
            "{action}: planned as direct, but the server rewrote the table"
        );
        assert_eq!(
            plan.metadata_only, *direct,
            "{action}: direct {} expected {direct} (server rewrote: {rewrote})",
            plan.metadata_only
        );
        common::reset(&client, &scratch).await;
        common::reset(&client, &name).await;
    }
}

/// PostgreSQL 13 (its pgoutput carries no logical messages, which swivel's heartbeat and
/// markers travel in) is refused at plan time, naming the oldest version swivel supports,
/// before anything is made on it.
#[tokio::test]
async fn server_older_than_14_is_refused() {
    common::testbed();
    if std::env::var("SWIVEL_PG_DSN").is_ok() {
        return; // the testbed's servers are not ours to start
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testbed/testbed.sh");
    let started = std::process::Command::new("bash")
        .args([script, "start", "pg13"])
        .status()
        .expect("starting the testbed's PostgreSQL 13");
    assert!(started.success(), "testbed.sh start pg13 failed");
    let dsn = "postgres://postgres@127.0.0.1:55413/swivel";
    let client = common::connect(dsn).await;
    table(
        &client,
        "ref_old",
        "CREATE TABLE ref_old (id int PRIMARY KEY, k int); INSERT INTO ref_old VALUES (1, 1)",
    )
    .await;
    let msg = refused(dsn, "ref_old", "ALTER COLUMN k TYPE bigint", true).await;
    assert!(
        msg.contains("PostgreSQL 13") && msg.contains("older than 14"),
        "{msg}"
    );
    let shadow: Option<String> = client
        .query_one("SELECT to_regclass('_ref_old_new')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shadow, None, "nothing is made on a refused server");
    client.batch_execute("DROP TABLE ref_old").await.unwrap();
}
