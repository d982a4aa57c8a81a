//! Where to connect and how each session is set up, TLS included: the mysql client's
//! `ssl-mode` (DISABLED, PREFERRED (the default), REQUIRED, VERIFY_CA, VERIFY_IDENTITY) and
//! `ssl-ca`, given as URL parameters (`mysql://u@h/db?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts};

use crate::error::{Error, MyContext, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "DISABLED" => SslMode::Disabled,
            "PREFERRED" => SslMode::Preferred,
            "REQUIRED" => SslMode::Required,
            "VERIFY_CA" => SslMode::VerifyCa,
            "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
            _ => {
                return Err(Error::refused(format!(
                    "ssl-mode={s} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, \
                     VERIFY_IDENTITY"
                )))
            }
        })
    }
}

/// Take `ssl-mode` and `ssl-ca` out of the URL (the URL parser refuses parameters it does not
/// know); returns them and the URL without them.
fn tls_from_url(url: &str) -> Result<(SslMode, Option<PathBuf>, String)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut ca, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ssl-mode" | "ssl_mode", v)) => mode = Some(SslMode::parse(v)?),
            Some(("ssl-ca" | "ssl_ca", v)) => ca = Some(PathBuf::from(v)),
            _ => rest.push(pair),
        }
    }
    // As the mysql client: a CA given without a mode means verify against it.
    let mode = mode.unwrap_or(if ca.is_some() {
        SslMode::VerifyCa
    } else {
        SslMode::Preferred
    });
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((mode, ca, url))
}

fn ssl_opts(mode: SslMode, ca: Option<PathBuf>) -> Option<SslOpts> {
    let opts = SslOpts::default();
    let opts = match ca {
        Some(ca) => opts
            .with_root_certs(vec![ca.into()])
            .with_disable_built_in_roots(true),
        None => opts,
    };
    match mode {
        SslMode::Disabled => None,
        SslMode::Preferred | SslMode::Required => Some(
            opts.with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa => Some(opts.with_danger_skip_domain_validation(true)),
        SslMode::VerifyIdentity => Some(opts),
    }
}

#[derive(Clone, Debug)]
pub struct MyTarget {
    opts: Opts,
    db: String,
    /// The URL itself carries a password (visible in the process list).
    pub url_has_password: bool,
    ssl_mode: SslMode,
    /// PREFERRED, and the server offered no TLS: connect in plain from then on.
    plain: Arc<AtomicBool>,
}

impl MyTarget {
    /// Parse `mysql://user@host:port/db` (or `mariadb://…`). The password comes from
    /// `password` (--password-file), else `MYSQL_PWD`, else the URL.
    pub fn parse(dsn: &str, password: Option<&str>) -> Result<Self> {
        let url = match dsn.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => dsn.to_string(),
        };
        let (ssl_mode, ca, url) = tls_from_url(&url)?;
        // mysql_async's rustls needs the process-wide provider; installing it twice is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(ca) = ca.as_ref().filter(|ca| !ca.is_file()) {
            return Err(Error::refused(format!(
                "ssl-ca {}: no such file",
                ca.display()
            )));
        }
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
        let mut builder = OptsBuilder::from_opts(opts).ssl_opts(ssl_opts(ssl_mode, ca));
        if let Some(p) = password {
            builder = builder.pass(Some(p));
        }
        Ok(MyTarget {
            opts: Opts::from(builder),
            db,
            url_has_password,
            ssl_mode,
            plain: Arc::new(AtomicBool::new(false)),
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
        let mut conn = self.connect_raw(role).await?;
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
        let context = || format!("connecting to {} ({role})", self.host());
        if self.plain.load(Relaxed) {
            return Conn::new(self.plain_opts()).await.my_ctx(context());
        }
        match Conn::new(self.opts.clone()).await {
            Ok(conn) => Ok(conn),
            Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))
                if self.ssl_mode == SslMode::Preferred =>
            {
                self.plain.store(true, Relaxed);
                Conn::new(self.plain_opts()).await.my_ctx(context())
            }
            Err(e) => Err(e).my_ctx(context()),
        }
    }

    fn plain_opts(&self) -> Opts {
        Opts::from(OptsBuilder::from_opts(self.opts.clone()).ssl_opts(None))
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
        let t = MyTarget::parse("mysql://u@h/db?ssl-mode=verify_identity", None).unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyIdentity);
        assert!(t.opts().ssl_opts().is_some());
        let t = MyTarget::parse("mysql://u@h/db?ssl-mode=DISABLED", None).unwrap();
        assert!(t.opts().ssl_opts().is_none());
        let e = MyTarget::parse("mysql://u@h/db?ssl-mode=ON", None).unwrap_err();
        assert!(e.to_string().contains("VERIFY_IDENTITY"), "{e}");
    }
}
