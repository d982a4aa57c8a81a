//! The runner's own session on either server: it holds the migration lock, reads and writes the
//! history, and runs the statements that go directly. (The online engine opens its own.)

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::error::{Error, MyContext, PgContext, Result};
use crate::lint::Server;
use crate::mysql::MyTarget;
use crate::postgres::PgTarget;

/// The advisory lock's key on PostgreSQL ("swivel" in ASCII): one runner per database.
const PG_LOCK_KEY: i64 = 0x7377_6976_656c;

/// A session, with (PostgreSQL) its backend pid.
pub enum Session {
    Pg(tokio_postgres::Client, i32),
    My(mysql_async::Conn),
}

impl Session {
    pub async fn connect(dsn: &str, password: Option<&str>) -> Result<Session> {
        match crate::engine::migrate::dsn_scheme(dsn) {
            "postgres" | "postgresql" => {
                let (client, pid) = PgTarget::parse(dsn, password)?.connect("migrate").await?;
                Ok(Session::Pg(client, pid))
            }
            "mysql" | "mariadb" => {
                let target = MyTarget::parse(dsn, password)?;
                let mut conn = target.connect_raw("migrate").await?;
                conn.query_drop("SET NAMES utf8mb4")
                    .await
                    .my_ctx("setting up the session")?;
                Ok(Session::My(conn))
            }
            other => Err(Error::refused(format!(
                "unknown connection URL scheme `{other}`: use postgres://user@host:port/db or \
                 mysql://user@host:port/db"
            ))),
        }
    }

    /// Cancel what `self` is running, from a session of its own (`self` is busy with it).
    /// The statement fails on the server; `self` can be used again.
    pub async fn cancel_running(&self, dsn: &str, password: Option<&str>) -> Result<()> {
        let cancel = match self {
            Session::Pg(_, pid) => format!("SELECT pg_cancel_backend({pid})"),
            Session::My(conn) => format!("KILL QUERY {}", conn.id()),
        };
        Session::connect(dsn, password)
            .await?
            .execute(&cancel)
            .await
    }

    pub fn server(&self) -> Server {
        match self {
            Session::Pg(..) => Server::Postgres,
            Session::My(_) => Server::Mysql,
        }
    }

    /// Run SQL as written (any statement; PostgreSQL's simple protocol).
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        let context = || format!("running `{}`", one_line(sql));
        match self {
            Session::Pg(c, _) => c.batch_execute(sql).await.ctx(context()),
            Session::My(c) => c.query_drop(sql).await.my_ctx(context()),
        }
    }

    /// Every row of a query, each column as text (NULL as None).
    pub async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let context = || format!("running `{}`", one_line(sql));
        match self {
            Session::Pg(c, _) => {
                let mut out = Vec::new();
                for m in c.simple_query(sql).await.ctx(context())? {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                    }
                }
                Ok(out)
            }
            Session::My(c) => {
                let rows: Vec<mysql_async::Row> = c.query(sql).await.my_ctx(context())?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                r.get_opt::<Option<String>, _>(i)
                                    .and_then(|v| v.ok())
                                    .flatten()
                            })
                            .collect()
                    })
                    .collect())
            }
        }
    }

    /// The first column of the first row, as text.
    pub async fn value(&mut self, sql: &str) -> Result<Option<String>> {
        Ok(self
            .rows(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten())
    }

    /// A string literal for this server.
    pub fn literal(&self, s: &str) -> String {
        match self {
            Session::Pg(..) => crate::postgres::quote_literal(s),
            // Hex, so that no sql_mode (NO_BACKSLASH_ESCAPES) changes what it reads back.
            Session::My(_) => {
                let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
                format!("CONVERT(X'{hex}' USING utf8mb4)")
            }
        }
    }

    /// Take the migration lock, waiting up to `wait`; says once whom it waits for.
    pub async fn lock(&mut self, wait: Duration) -> Result<()> {
        let started = Instant::now();
        let mut said = false;
        loop {
            let got = match self {
                Session::Pg(..) => {
                    self.value(&format!("SELECT pg_try_advisory_lock({PG_LOCK_KEY})"))
                        .await?
                        .as_deref()
                        == Some("t")
                }
                Session::My(_) => {
                    self.value("SELECT GET_LOCK(CONCAT('swivel_migrate.', DATABASE()), 0)")
                        .await?
                        .as_deref()
                        == Some("1")
                }
            };
            if got {
                return Ok(());
            }
            let holder = self.lock_holder().await?;
            if started.elapsed() >= wait {
                return Err(Error::refused(format!(
                    "another runner holds the migration lock ({holder}) and did not release it \
                     within --lock-wait {}s: two runners never apply at once; wait for it to \
                     finish, or give a longer --lock-wait",
                    wait.as_secs()
                )));
            }
            if !said {
                eprintln!("swivel: waiting for the migration lock, held by {holder}");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn lock_holder(&mut self) -> Result<String> {
        let row = match self {
            Session::Pg(..) => {
                self.rows(&format!(
                    "SELECT a.pid::text, coalesce(a.application_name, ''), \
                            coalesce(a.client_addr::text, 'local') \
                     FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                     WHERE l.locktype = 'advisory' AND l.granted \
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                       AND ((l.classid::bigint << 32) | l.objid::bigint) = {PG_LOCK_KEY}"
                ))
                .await?
            }
            Session::My(_) => {
                self.rows(
                    "SELECT IS_USED_LOCK(CONCAT('swivel_migrate.', DATABASE())), '', ''",
                )
                .await?
            }
        };
        Ok(match row.into_iter().next() {
            Some(r) => {
                let f = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                match self {
                    Session::Pg(..) => format!("pid {} {} from {}", f(0), f(1), f(2)),
                    Session::My(_) => format!("connection {}", f(0)),
                }
            }
            None => "a session that just let go".to_string(),
        })
    }

    /// Bound how long a direct statement waits for its locks (the application's queries queue
    /// behind a DDL that waits).
    pub async fn set_lock_timeout(&mut self, timeout: Duration) -> Result<()> {
        match self {
            Session::Pg(..) => {
                self.execute(&format!("SET lock_timeout = '{}ms'", timeout.as_millis()))
                    .await
            }
            // Whole seconds, at least one: MariaDB and MySQL take no fraction.
            Session::My(_) => {
                self.execute(&format!(
                    "SET SESSION lock_wait_timeout = {}",
                    timeout.as_secs().max(1)
                ))
                .await
            }
        }
    }

    /// The user the history records as having applied a migration.
    pub async fn user(&mut self) -> Result<String> {
        let sql = match self {
            Session::Pg(..) => "SELECT current_user",
            Session::My(_) => "SELECT CURRENT_USER()",
        };
        Ok(self.value(sql).await?.unwrap_or_default())
    }

    /// Rows in `table`, counted up to `limit` (a bounded scan), and its size on disk; None when
    /// it does not exist.
    pub async fn table_size(&mut self, table: &str, limit: u64) -> Result<Option<(u64, u64)>> {
        let quote = match self {
            Session::Pg(..) => crate::postgres::quote_ident,
            Session::My(_) => crate::mysql::quote_ident,
        };
        let quoted = table.split('.').map(quote).collect::<Vec<_>>().join(".");
        let bytes = match self {
            Session::Pg(..) => {
                self.value(&format!(
                    "SELECT pg_total_relation_size(to_regclass({}))",
                    crate::postgres::quote_literal(&quoted)
                ))
                .await?
            }
            Session::My(_) => {
                let (schema, name) = match table.split_once('.') {
                    Some((s, n)) => (self.literal(s), self.literal(n)),
                    None => ("DATABASE()".to_string(), self.literal(table)),
                };
                self.value(&format!(
                    "SELECT data_length + index_length FROM information_schema.tables \
                     WHERE table_schema = {schema} AND table_name = {name}"
                ))
                .await?
            }
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let rows = self
            .value(&format!(
                "SELECT count(*) FROM (SELECT 1 FROM {quoted} LIMIT {limit}) AS bounded"
            ))
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Some((rows, bytes.parse().unwrap_or(0))))
    }
}

/// A statement on one line, shortened, for messages.
pub fn one_line(sql: &str) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        let cut: String = flat.chars().take(117).collect();
        format!("{cut}...")
    } else {
        flat
    }
}
