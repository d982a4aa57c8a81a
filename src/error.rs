//! Library errors. A refusal says what is wrong and what to do; everything else carries the
//! step that failed.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The migration cannot be run safely as asked; nothing was changed.
    #[error("refused: {0}")]
    Refused(String),
    /// A database statement failed.
    #[error("{context}: {message}")]
    Database {
        context: String,
        message: String,
        code: Option<String>,
        /// The session is gone (network, server restart, ended by an administrator): what it
        /// ran may be done again on a new one.
        lost: bool,
    },
    /// The change stream failed or sent something we cannot replay.
    #[error("change stream: {0}")]
    Stream(String),
    /// The run was stopped (Ctrl-C, panic command) before it finished.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A hook failed where its failure stops the run.
    #[error("hook: {0}")]
    Hook(String),
    /// The checksum found rows that differ even after they were copied again: cut-over is
    /// refused and both tables are left as they are.
    #[error("checksum: {0}")]
    Checksum(String),
    /// Cut-over could not take its locks or drain the stream within its retries.
    #[error("cut-over failed: {0}")]
    Cutover(String),
}

impl Error {
    pub fn refused(msg: impl fmt::Display) -> Self {
        Error::Refused(msg.to_string())
    }

    /// A replication stream's error: lost (the stream may be opened again) unless the server
    /// refused what was asked for good (the slot or publication does not exist) or the
    /// stream itself made no sense.
    pub fn pg_stream(context: impl fmt::Display, e: pgwire_replication::PgWireError) -> Self {
        use pgwire_replication::PgWireError as W;
        let lost = match &e {
            W::Io(_) | W::Task(_) => true,
            W::Server(m) => !m.contains("does not exist"),
            _ => false,
        };
        Error::Database {
            context: context.to_string(),
            message: e.to_string(),
            code: None,
            lost,
        }
    }

    /// A PostgreSQL error with the step it happened in, showing the server's own message.
    pub fn pg(context: impl fmt::Display, e: tokio_postgres::Error) -> Self {
        // Class 08 (connection exception), 57P01-03 (terminated by an administrator, crash,
        // cannot connect now), or no reply at all.
        let lost = e.is_closed()
            || match e.code() {
                Some(c) => {
                    c.code().starts_with("08") || matches!(c.code(), "57P01" | "57P02" | "57P03")
                }
                None => e.as_db_error().is_none(),
            };
        let (message, code) = match e.as_db_error() {
            Some(db) => {
                let mut m = db.message().to_string();
                if let Some(d) = db.detail() {
                    m.push_str(&format!(" ({d})"));
                }
                (m, Some(db.code().code().to_string()))
            }
            None => {
                // A failed TLS handshake says why only in its sources.
                let mut m = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    m.push_str(&format!(": {s}"));
                    source = s.source();
                }
                (m, None)
            }
        };
        Error::Database {
            context: context.to_string(),
            message,
            code,
            lost,
        }
    }

    /// Whether the statement failed because its session is gone, so that it may be run again on
    /// a new session.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Database { lost: true, .. })
    }

    /// The SQLSTATE of a database error, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Attach a context to a tokio-postgres result.
pub trait PgContext<T> {
    fn ctx(self, context: impl fmt::Display) -> Result<T>;
}

impl<T> PgContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn ctx(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::pg(context, e))
    }
}

impl Error {
    /// A MySQL/MariaDB error with the step it happened in; the code is the server's error
    /// number (e.g. "1205" for a lock wait timeout).
    pub fn my(context: impl fmt::Display, e: mysql_async::Error) -> Self {
        // 1927: the session was killed; 1053: the server is shutting down; an I/O error or a
        // closed connection on our side.
        let lost = match &e {
            mysql_async::Error::Server(s) => matches!(s.code, 1927 | 1053),
            mysql_async::Error::Io(_) => true,
            mysql_async::Error::Driver(d) => {
                matches!(d, mysql_async::DriverError::ConnectionClosed)
            }
            _ => false,
        };
        let (message, code) = match &e {
            mysql_async::Error::Server(s) => (s.message.clone(), Some(s.code.to_string())),
            other => (other.to_string(), None),
        };
        Error::Database {
            context: context.to_string(),
            message,
            code,
            lost,
        }
    }
}

/// Attach a context to a mysql_async result.
pub trait MyContext<T> {
    fn my_ctx(self, context: impl fmt::Display) -> Result<T>;
}

impl<T> MyContext<T> for std::result::Result<T, mysql_async::Error> {
    fn my_ctx(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::my(context, e))
    }
}
