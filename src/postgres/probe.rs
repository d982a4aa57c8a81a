//! The throttler's readings on PostgreSQL: load as the server's own counts of backends, the
//! lag of each control replica (its replay position against the primary's), and the WAL our
//! slot makes the primary keep.
//!
//! Load names: `active_backends` (client backends running a query; gh-ost's `Threads_running`
//! is accepted for it, so a runbook works unchanged) and `backends` (`Threads_connected`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::PgTarget;
use crate::control::throttler::Probe;
use crate::error::{Error, PgContext, Result};

/// How long the primary's positions are remembered: a replica further behind reads as this.
const HISTORY: Duration = Duration::from_secs(600);

pub struct PgProbe {
    target: PgTarget,
    password: Option<String>,
    slot: String,
    primary: Option<Client>,
    replicas: HashMap<String, Client>,
    /// The primary's WAL position over time, to turn a replica's position into a lag.
    positions: VecDeque<(Instant, u64)>,
}

impl PgProbe {
    pub fn new(target: PgTarget, password: Option<String>, slot: String) -> Self {
        PgProbe {
            target,
            password,
            slot,
            primary: None,
            replicas: HashMap::new(),
            positions: VecDeque::new(),
        }
    }

    async fn primary(&mut self) -> Result<&Client> {
        if !self.primary.as_ref().is_some_and(|c| !c.is_closed()) {
            let (client, _) = self.target.connect("throttler").await?;
            self.primary = Some(client);
        }
        self.primary
            .as_ref()
            .ok_or_else(|| Error::Stream("no throttler session".into()))
    }

    async fn replica(&mut self, dsn: &str) -> Result<&Client> {
        if !self.replicas.get(dsn).is_some_and(|c| !c.is_closed()) {
            let target = PgTarget::parse(dsn, self.password.as_deref())?;
            let (client, _) = target.connect("throttler").await?;
            self.replicas.insert(dsn.to_string(), client);
        }
        self.replicas
            .get(dsn)
            .ok_or_else(|| Error::Stream("no replica session".into()))
    }

    /// Note the primary's position now.
    async fn sample_primary(&mut self) -> Result<u64> {
        let lsn: i64 = self
            .primary()
            .await?
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
                &[],
            )
            .await
            .ctx("reading the primary's WAL position")?
            .get(0);
        let now = Instant::now();
        self.positions.push_back((now, lsn as u64));
        while self
            .positions
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > HISTORY)
        {
            self.positions.pop_front();
        }
        Ok(lsn as u64)
    }
}

/// The lag of a replica that has replayed up to `replayed`, given the primary's positions
/// over time (oldest first): zero if it has everything the primary had at the last look,
/// otherwise the age of the newest look whose position it has replayed.
pub fn lag_from_positions(
    positions: &VecDeque<(Instant, u64)>,
    replayed: u64,
    now: Instant,
) -> Duration {
    match positions.back() {
        None => Duration::ZERO,
        Some((_, newest)) if replayed >= *newest => Duration::ZERO,
        Some(_) => positions
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= replayed)
            .or(positions.front())
            .map_or(Duration::ZERO, |(at, _)| now.duration_since(*at)),
    }
}

impl Probe for PgProbe {
    async fn load(&mut self, name: &str) -> Result<u64> {
        let filter = match name.to_ascii_lowercase().as_str() {
            "active_backends" | "threads_running" => "AND state = 'active'",
            "backends" | "threads_connected" => "",
            _ => {
                return Err(Error::refused(format!(
                    "`{name}` is not a PostgreSQL load: use active_backends (or \
                     Threads_running) or backends (or Threads_connected)"
                )))
            }
        };
        let n: i64 = self
            .primary()
            .await?
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                     AND pid <> pg_backend_pid() {filter}"
                ),
                &[],
            )
            .await
            .ctx("counting backends")?
            .get(0);
        Ok(n as u64)
    }

    async fn query_value(&mut self, sql: &str) -> Result<f64> {
        let messages = self
            .primary()
            .await?
            .simple_query(sql)
            .await
            .ctx("running --throttle-query")?;
        for m in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                let text = row.get(0).unwrap_or("0");
                return match text {
                    "t" => Ok(1.0),
                    "f" => Ok(0.0),
                    _ => text.parse().map_err(|_| {
                        Error::refused(format!("--throttle-query returned `{text}`, not a number"))
                    }),
                };
            }
        }
        Ok(0.0)
    }

    async fn replica_lag(&mut self, dsn: &str) -> Result<Duration> {
        self.sample_primary().await?;
        let replayed: Option<i64> = self
            .replica(dsn)
            .await?
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint",
                &[],
            )
            .await
            .ctx("reading the replica's replay position")?
            .get(0);
        let replayed = replayed.ok_or_else(|| {
            Error::refused("it is not a standby (pg_last_wal_replay_lsn() is NULL)")
        })?;
        Ok(lag_from_positions(
            &self.positions,
            replayed as u64,
            Instant::now(),
        ))
    }

    async fn retained_wal(&mut self) -> Result<Option<u64>> {
        let slot = self.slot.clone();
        let row = self
            .primary()
            .await?
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ctx("reading the slot's retained WAL")?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|b| b.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_lag_from_the_primarys_positions() {
        let t0 = Instant::now();
        let s = |ms: u64, lsn: u64| (t0 + Duration::from_millis(ms), lsn);
        let positions: VecDeque<_> = [s(0, 100), s(250, 200), s(500, 300)].into();
        let now = t0 + Duration::from_millis(600);
        assert_eq!(lag_from_positions(&positions, 300, now), Duration::ZERO);
        assert_eq!(
            lag_from_positions(&positions, 250, now),
            Duration::from_millis(350),
            "it has what the primary had at 250ms"
        );
        assert_eq!(
            lag_from_positions(&positions, 50, now),
            Duration::from_millis(600),
            "behind everything remembered: at least the oldest look"
        );
        assert_eq!(lag_from_positions(&VecDeque::new(), 0, now), Duration::ZERO);
    }
}
