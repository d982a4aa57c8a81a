//! Connections to the target server: ordinary sessions (tokio-postgres) and the replication
//! session (pgwire-replication), built from one URL. The password never leaves this module.

use std::str::FromStr;

use pgwire_replication::{Lsn, ReplicationConfig};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::{Client, NoTls};

use super::tls::{PgTls, SslMode};
use crate::error::{Error, PgContext, Result};

/// Session settings that make values print and parse the same way on every connection: the
/// applier turns pgoutput's text back into values on another session.
const SESSION_SETTINGS: &str =
    "SET datestyle = 'ISO, MDY'; SET intervalstyle = 'postgres'; SET extra_float_digits = 3; \
     SET bytea_output = 'hex'; SET statement_timeout = 0";
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,MDY -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex";

#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: PgTls,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.describe())
    }
}

impl PgTarget {
    /// Parse a postgres:// URL. The password comes from the URL, else `password`, else
    /// `PGPASSWORD`.
    pub fn parse(dsn: &str, password: Option<&str>) -> Result<Self> {
        let (tls, dsn) = PgTls::from_url(dsn)?;
        let mut config = tokio_postgres::Config::from_str(&dsn).map_err(|e| {
            Error::refused(format!(
                "the connection URL does not parse ({e}); use postgres://user@host:port/db"
            ))
        })?;
        if config.get_password().is_none() {
            if let Some(p) = password
                .map(str::to_string)
                .or_else(|| std::env::var("PGPASSWORD").ok())
            {
                config.password(p);
            }
        }
        if config.get_user().is_none() {
            config.user(std::env::var("PGUSER").as_deref().unwrap_or("postgres"));
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(PgTarget { config, tls })
    }

    /// The parsed connection settings (for tools run beside swivel, such as `swivel bench`'s
    /// baselines).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// user@host:port/db, without the password.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        format!(
            "{}@{}:{}/{}",
            self.config.get_user().unwrap_or(""),
            host,
            self.port(),
            self.config.get_dbname().unwrap_or("")
        )
    }

    fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// An ordinary session, tagged `swivel-<role>` in pg_stat_activity. Returns it with its
    /// backend pid, so cleanup can end it if the run is interrupted mid-statement.
    pub async fn connect(&self, role: &str) -> Result<(Client, i32)> {
        let mut config = self.config.clone();
        config.application_name(format!("swivel-{role}"));
        let failed = |e| Error::pg(format!("connecting to {}", self.describe()), e);
        let client = match self.tls.client_config()? {
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection closed: {e}");
                    }
                });
                client
            }
            Some(tls) => {
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                let (client, connection) = config.connect(connector).await.map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection closed: {e}");
                    }
                });
                client
            }
        };
        client
            .batch_execute(SESSION_SETTINGS)
            .await
            .ctx("setting up the session")?;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ctx("reading the backend pid")?
            .get(0);
        Ok((client, pid))
    }

    /// Settings for a replication session on `slot`, streaming `publication`.
    pub fn replication_config(&self, slot: &str, publication: &str) -> Result<ReplicationConfig> {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let password = self
            .config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let tls = self.tls.replication(&host);
        let cfg = ReplicationConfig::new(
            host,
            self.config.get_user().unwrap_or("postgres"),
            password,
            self.config.get_dbname().unwrap_or("postgres"),
            slot,
            publication,
        )
        .with_port(self.port())
        .with_tls(tls)
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(std::time::Duration::from_secs(1))
        .with_buffer_size(4096)
        .with_options(SESSION_OPTIONS)
        .with_application_name("swivel-stream");
        Ok(cfg)
    }
}
