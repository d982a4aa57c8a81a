//! One SQL session on either server, plain text statements: what the bench needs to build its
//! table, drive its writes and run the baselines.

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use swivel::error::{MyContext, PgContext};
use swivel::mysql::MyTarget;
use swivel::postgres::PgTarget;

/// Which server a URL points at, with its parsed settings.
#[derive(Clone, Debug)]
pub enum Target {
    Pg(Box<PgTarget>),
    My(MyTarget),
}

impl Target {
    pub fn parse(dsn: &str, password: Option<&str>) -> Result<Target> {
        let scheme = swivel::engine::migrate::dsn_scheme(dsn);
        Ok(match scheme {
            "postgres" | "postgresql" => Target::Pg(Box::new(PgTarget::parse(dsn, password)?)),
            "mysql" | "mariadb" => Target::My(MyTarget::parse(dsn, password)?),
            _ => anyhow::bail!(
                "unknown connection URL scheme `{scheme}`: use postgres://user@host:port/db or \
                 mysql://user@host:port/db"
            ),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Target::Pg(_))
    }

    pub async fn connect(&self, role: &str) -> Result<Db> {
        Ok(match self {
            Target::Pg(t) => Db::Pg(t.connect(role).await?.0),
            Target::My(t) => Db::My(t.connect(role).await?),
        })
    }
}

pub enum Db {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

impl Db {
    /// Run one or more statements.
    pub async fn exec(&mut self, sql: &str) -> Result<(), swivel::Error> {
        let context = || format!("running `{}`", first_line(sql));
        match self {
            Db::Pg(c) => c.batch_execute(sql).await.ctx(context()),
            Db::My(c) => c.query_drop(sql).await.my_ctx(context()),
        }
    }

    /// The first column of every row, as text (NULL as empty).
    pub async fn column(&mut self, sql: &str) -> Result<Vec<String>> {
        let context = || format!("running `{}`", first_line(sql));
        Ok(match self {
            Db::Pg(c) => c.simple_query(sql).await.ctx(context()).map(|messages| {
                messages
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap_or_default().to_string())
                        }
                        _ => None,
                    })
                    .collect()
            })?,
            Db::My(c) => c
                .query::<Option<String>, _>(sql)
                .await
                .my_ctx(context())?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
        })
    }

    /// The first column of the first row.
    pub async fn scalar(&mut self, sql: &str) -> Result<String> {
        self.column(sql)
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("`{}` returned no row", first_line(sql)))
    }

    /// The session is gone (killed, network): open a new one.
    pub fn is_closed(&self) -> bool {
        match self {
            Db::Pg(c) => c.is_closed(),
            Db::My(_) => false,
        }
    }
}

fn first_line(sql: &str) -> &str {
    let sql = sql.trim();
    sql.lines().next().unwrap_or(sql)
}
