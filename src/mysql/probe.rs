//! The throttler's readings on MySQL/MariaDB: global status variables for load, and each
//! control replica's lag read from swivel's heartbeat row in the changelog table, as gh-ost
//! does: the row carries the time it was written on the primary, so its age on the replica is
//! the replica's lag, whatever the replication topology. Before the changelog exists (or when
//! it has not reached the replica yet) the replica's own `Seconds_Behind_Master` stands in.

use std::collections::HashMap;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{MyTarget, Names};
use crate::control::throttler::Probe;
use crate::engine::replay::now_micros;
use crate::error::{Error, MyContext, Result};

pub struct MyProbe {
    target: MyTarget,
    password: Option<String>,
    names: Names,
    primary: Option<Conn>,
    replicas: HashMap<String, Conn>,
}

impl MyProbe {
    pub fn new(target: MyTarget, password: Option<String>, names: Names) -> Self {
        MyProbe {
            target,
            password,
            names,
            primary: None,
            replicas: HashMap::new(),
        }
    }

    async fn primary(&mut self) -> Result<&mut Conn> {
        if self.primary.is_none() {
            self.primary = Some(self.target.connect("throttler").await?);
        }
        self.primary
            .as_mut()
            .ok_or_else(|| Error::Stream("no throttler session".into()))
    }
}

impl Probe for MyProbe {
    async fn load(&mut self, name: &str) -> Result<u64> {
        let conn = self.primary().await?;
        // SHOW cannot be prepared; the name is letters, digits and `_` (checked when the load
        // was parsed), with `_` escaped so LIKE matches it alone.
        let pattern = name.replace('_', "\\_");
        let row: Result<Option<(String, String)>> = conn
            .query_first(format!("SHOW GLOBAL STATUS LIKE '{pattern}'"))
            .await
            .my_ctx("reading a status variable");
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                self.primary = None; // a lost session is opened again next time
                return Err(e);
            }
        };
        let (_, value) = row
            .ok_or_else(|| Error::refused(format!("the server has no status variable `{name}`")))?;
        value.parse().map_err(|_| {
            Error::refused(format!("status variable {name} is `{value}`, not a count"))
        })
    }

    async fn query_value(&mut self, sql: &str) -> Result<f64> {
        let conn = self.primary().await?;
        let value: Option<Option<String>> = match conn.query_first(sql).await {
            Ok(v) => v,
            Err(e) => {
                self.primary = None;
                return Err(Error::my("running --throttle-query", e));
            }
        };
        match value.flatten() {
            None => Ok(0.0),
            Some(text) => text.parse().map_err(|_| {
                Error::refused(format!("--throttle-query returned `{text}`, not a number"))
            }),
        }
    }

    async fn replica_lag(&mut self, dsn: &str) -> Result<Duration> {
        if !self.replicas.contains_key(dsn) {
            let target = MyTarget::parse(dsn, self.password.as_deref())?;
            let conn = target.connect("throttler").await?;
            self.replicas.insert(dsn.to_string(), conn);
        }
        let changelog = self.names.changelog_q();
        let Some(conn) = self.replicas.get_mut(dsn) else {
            return Err(Error::Stream("no replica session".into()));
        };
        let beat: std::result::Result<Option<u64>, _> = conn
            .query_first(format!("SELECT value FROM {changelog} WHERE id = 1"))
            .await;
        match beat {
            Ok(Some(sent)) => Ok(Duration::from_micros(now_micros().saturating_sub(sent))),
            Ok(None) | Err(mysql_async::Error::Server(_)) => {
                // No heartbeat there yet: the replica's own estimate.
                let status: Option<mysql_async::Row> = conn
                    .query_first("SHOW SLAVE STATUS")
                    .await
                    .my_ctx("reading the replica's status")?;
                let behind: Option<Option<u64>> =
                    status.and_then(|r| r.get_opt("Seconds_Behind_Master")?.ok());
                match behind {
                    Some(Some(s)) => Ok(Duration::from_secs(s)),
                    Some(None) => Err(Error::refused("replication is not running there")),
                    None => Err(Error::refused(
                        "it is not a replica (SHOW SLAVE STATUS is empty)",
                    )),
                }
            }
            Err(e) => {
                self.replicas.remove(dsn);
                Err(Error::my("reading the heartbeat on the replica", e))
            }
        }
    }

    async fn retained_wal(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }
}
