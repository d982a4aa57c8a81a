//! Where to connect and how each session is set up.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::{Error, MyContext, Result};

#[derive(Clone, Debug)]
pub struct MyTarget {
    opts: Opts,
    db: String,
    /// The URL itself carries a password (visible in the process list).
    pub url_has_password: bool,
}

impl MyTarget {
    /// Parse `mysql://user@host:port/db` (or `mariadb://…`). The password comes from
    /// `password` (--password-file), else `MYSQL_PWD`, else the URL.
    pub fn parse(dsn: &str, password: Option<&str>) -> Result<Self> {
        let url = match dsn.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => dsn.to_string(),
        };
        // The parser's message could echo the URL, and with it a password: keep it out.
        let opts = Opts::from_url(&url).map_err(|_| {
            Error::refused("the connection URL does not parse: use mysql://user@host:port/database")
        })?;
        let db = opts.db_name().map(str::to_string).ok_or_else(|| {
            Error::refused(
                "the connection URL names no database: use mysql://user@host:port/database",
            )
        })?;
        let url_has_password = opts.pass().is_some_and(|p| !p.is_empty());
        let password = password
            .map(str::to_string)
            .or_else(|| std::env::var("MYSQL_PWD").ok());
        let opts = match password {
            Some(p) => Opts::from(OptsBuilder::from_opts(opts).pass(Some(p))),
            None => opts,
        };
        Ok(MyTarget {
            opts,
            db,
            url_has_password,
        })
    }

    /// The parsed connection settings (for tools run beside swivel).
    pub fn opts(&self) -> &Opts {
        &self.opts
    }

    pub fn db(&self) -> &str {
        &self.db
    }

    pub fn host(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }

    /// A session for `role`: UTC (timestamps are replayed as epoch seconds) and READ
    /// COMMITTED, so the copy's `INSERT … SELECT` reads a fresh snapshot without locking rows.
    pub async fn connect(&self, role: &str) -> Result<Conn> {
        let mut conn = Conn::new(self.opts.clone())
            .await
            .my_ctx(format!("connecting to {} ({role})", self.host()))?;
        conn.query_drop(
            "SET NAMES utf8mb4; SET SESSION time_zone = '+00:00'; \
             SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        .await
        .my_ctx(format!("setting up the {role} session"))?;
        Ok(conn)
    }

    /// A plain session for the binlog stream (it becomes a replica connection).
    pub async fn connect_raw(&self, role: &str) -> Result<Conn> {
        Conn::new(self.opts.clone())
            .await
            .my_ctx(format!("connecting to {} ({role})", self.host()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = MyTarget::parse("mariadb://root@127.0.0.1:33306/swivel", None).unwrap();
        assert_eq!(t.db(), "swivel");
        assert!(!t.url_has_password);
        let t = MyTarget::parse("mysql://u:secret@h:3306/db", None).unwrap();
        assert!(t.url_has_password);
        let e = MyTarget::parse("mysql://u:secret@h:3306", None).unwrap_err();
        assert!(e.to_string().contains("names no database"), "{e}");
        let e = MyTarget::parse("mysql://u:secret@h:notaport/db", None).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
