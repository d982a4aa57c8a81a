//! Bad input on a real MariaDB: each refusal says what is wrong and what to do, and nothing is
//! changed or left behind. One test, run in order: some cases change server-wide settings.

mod common;

use common::{Db, Server};
use swivel::{Error, RunOptions};

async fn refused(dsn: &str, table: &str, alter: &str) -> String {
    let mut opts = RunOptions::new(dsn, table, alter);
    opts.execute = true;
    match swivel::run(opts, std::future::pending()).await {
        Err(e @ Error::Refused(_)) => e.to_string(),
        other => panic!("expected a refusal for {table} / {alter:?}, got {other:?}"),
    }
}

async fn checksum(db: &mut Db, table: &str) -> Vec<Vec<Option<String>>> {
    db.rows(&format!("CHECKSUM TABLE {table}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_explain_and_change_nothing() {
    let dsn = common::my_dsn();
    let mut db = Db::connect(Server::MariaDb).await;
    for t in [
        "myref_t",
        "myref_nopk",
        "myref_parent",
        "myref_child",
        "myref_trg",
    ] {
        db.reset(t).await;
    }
    db.exec("DROP TABLE IF EXISTS myref_child; DROP TABLE IF EXISTS myref_parent")
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE myref_t (id int PRIMARY KEY, k int NOT NULL);
         INSERT INTO myref_t SELECT seq, seq FROM seq_1_to_100;
         CREATE TABLE myref_nopk (a int, b text); INSERT INTO myref_nopk VALUES (1, 'x');
         CREATE TABLE myref_parent (id int PRIMARY KEY);
         CREATE TABLE myref_child (id int PRIMARY KEY, p int, FOREIGN KEY (p) REFERENCES myref_parent (id));
         CREATE TABLE myref_trg (id int PRIMARY KEY, k int);
         CREATE TRIGGER myref_trg_bi BEFORE INSERT ON myref_trg FOR EACH ROW SET NEW.k = 1;",
    )
    .await
    .unwrap();
    let before = checksum(&mut db, "myref_t").await;
    plan_only_changes_nothing_and_instant_changes_run_directly().await;

    let msg = refused(&dsn, "no_such_table", "MODIFY k BIGINT").await;
    assert!(msg.contains("does not exist"), "{msg}");
    let msg = refused(&dsn, "myref_nopk", "MODIFY a BIGINT").await;
    assert!(msg.contains("has no primary key"), "{msg}");
    let msg = refused(&dsn, "myref_t", "MODIFY k").await;
    assert!(msg.contains("does not parse"), "{msg}");
    let msg = refused(&dsn, "myref_t", "MODIFY nosuch BIGINT").await;
    assert!(msg.contains("server rejects the ALTER"), "{msg}");
    let msg = refused(&dsn, "myref_t", "DROP PRIMARY KEY").await;
    assert!(
        msg.contains("does not run") || msg.contains("primary key"),
        "{msg}"
    );
    let msg = refused(&dsn, "myref_t", "ADD UNIQUE (k)").await;
    assert!(msg.contains("UNIQUE"), "{msg}");
    let msg = refused(&dsn, "myref_parent", "ADD COLUMN x int, MODIFY id BIGINT").await;
    assert!(msg.contains("foreign key"), "{msg}");
    let msg = refused(&dsn, "myref_child", "MODIFY p BIGINT").await;
    assert!(msg.contains("foreign key"), "{msg}");
    let msg = refused(&dsn, "myref_trg", "MODIFY k BIGINT").await;
    assert!(msg.contains("has triggers"), "{msg}");

    // A table in the shadow's place: refused. `swivel cleanup` removes only what swivel made
    // (tests/cleanup.rs), so this one, made by hand, it leaves alone.
    db.exec("CREATE TABLE _myref_t_new LIKE myref_t")
        .await
        .unwrap();
    let msg = refused(&dsn, "myref_t", "MODIFY k BIGINT").await;
    assert!(msg.contains("swivel cleanup"), "{msg}");
    let kept = swivel::engine::migrate::cleanup_leftovers(&dsn, None, "myref_t", true).await;
    assert!(
        matches!(&kept, Err(Error::Refused(why)) if why.contains("did not make it")),
        "{kept:?}"
    );
    db.exec("DROP TABLE _myref_t_new").await.unwrap();

    // Server settings, changed for new sessions only and restored.
    db.exec("SET GLOBAL binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    let msg = refused(&dsn, "myref_t", "MODIFY k BIGINT").await;
    db.exec("SET GLOBAL binlog_format = 'ROW'").await.unwrap();
    assert!(msg.contains("binlog_format is STATEMENT"), "{msg}");
    db.exec("SET GLOBAL binlog_row_image = 'MINIMAL'")
        .await
        .unwrap();
    let msg = refused(&dsn, "myref_t", "MODIFY k BIGINT").await;
    db.exec("SET GLOBAL binlog_row_image = 'FULL'")
        .await
        .unwrap();
    assert!(msg.contains("binlog_row_image is MINIMAL"), "{msg}");

    // A user without replication privileges.
    db.exec(
        "DROP USER IF EXISTS 'swivel_norepl'@'%';
         CREATE USER 'swivel_norepl'@'%' IDENTIFIED BY 'pw';
         GRANT ALL ON swivel.* TO 'swivel_norepl'@'%'",
    )
    .await
    .unwrap();
    let mut opts = RunOptions::new(
        "mysql://swivel_norepl@127.0.0.1:33306/swivel",
        "myref_t",
        "MODIFY k BIGINT",
    );
    opts.password = Some("pw".into());
    opts.execute = true;
    let msg = match swivel::run(opts, std::future::pending()).await {
        Err(e @ Error::Refused(_)) => e.to_string(),
        other => panic!("expected a privilege refusal, got {other:?}"),
    };
    assert!(msg.contains("REPLICATION SLAVE"), "{msg}");
    assert!(
        !msg.contains("pw"),
        "the password leaked into the message: {msg}"
    );
    db.exec("DROP USER 'swivel_norepl'@'%'").await.unwrap();

    assert_eq!(
        checksum(&mut db, "myref_t").await,
        before,
        "a refusal changed the table"
    );
    for t in ["myref_t", "myref_nopk", "myref_trg"] {
        db.assert_nothing_left(t).await;
        db.reset(t).await;
    }
    db.exec("DROP TABLE myref_child; DROP TABLE myref_parent")
        .await
        .unwrap();
}

/// Runs inside the test above: it needs the server settings that test changes for a moment.
async fn plan_only_changes_nothing_and_instant_changes_run_directly() {
    let dsn = common::my_dsn();
    let mut db = Db::connect(Server::MariaDb).await;
    db.reset("myplan_t").await;
    db.exec(
        "CREATE TABLE myplan_t (id int PRIMARY KEY, k int NOT NULL);
         INSERT INTO myplan_t SELECT seq, seq FROM seq_1_to_100",
    )
    .await
    .unwrap();
    let plan = swivel::run(
        RunOptions::new(&dsn, "myplan_t", "MODIFY k BIGINT NOT NULL"),
        std::future::pending(),
    )
    .await;
    assert!(matches!(plan, Ok(swivel::Outcome::Planned(_))), "{plan:?}");
    let k = "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = 'myplan_t' AND column_name = 'k'";
    assert_eq!(db.rows(k).await, vec![vec![Some("int".to_string())]]);

    let mut opts = RunOptions::new(&dsn, "myplan_t", "ADD COLUMN x int NOT NULL DEFAULT 7");
    opts.execute = true;
    let outcome = swivel::run(opts, std::future::pending()).await;
    assert!(
        matches!(outcome, Ok(swivel::Outcome::MetadataOnly(_))),
        "{outcome:?}"
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM myplan_t WHERE x = 7").await,
        vec![vec![Some("100".to_string())]]
    );
    db.assert_nothing_left("myplan_t").await;
    db.reset("myplan_t").await;
}
