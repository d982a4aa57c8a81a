//! The throttler: looks at every throttle source a few times a second and writes its verdict
//! into [`Steering`]. Sources, with gh-ost's flag names: `--throttle-flag-file`,
//! `--throttle-additional-flag-file`, `--max-load`, `--throttle-control-replicas` with
//! `--max-lag-millis`, `--throttle-query`, `--throttle-http`. `--critical-load` and
//! `--panic-flag-file` stop the run. A source that cannot be read throttles (and says why):
//! not knowing the load is no reason to add to it.
//!
//! The server-specific readings come from a backend's [`Probe`].

use std::time::Duration;

use super::{Knobs, Steering};
use crate::error::Result;

/// How often the sources are read.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// What the throttler needs from a server family.
#[allow(async_fn_in_trait)]
pub trait Probe {
    /// The current value of a load variable (`Threads_running`, …).
    async fn load(&mut self, name: &str) -> Result<u64>;
    /// The first column of the query's first row, as a number (no row: 0).
    async fn query_value(&mut self, sql: &str) -> Result<f64>;
    /// How far the replica at `dsn` is behind the primary.
    async fn replica_lag(&mut self, dsn: &str) -> Result<Duration>;
    /// PostgreSQL: the WAL swivel's slot makes the server keep, in bytes (None elsewhere).
    async fn retained_wal(&mut self) -> Result<Option<u64>>;
}

/// Read every source until the run ends; returns only to stop the run (critical load, panic
/// flag file), with the reason.
pub async fn run<P: Probe>(mut probe: P, steering: &Steering, max_retained_wal: u64) -> String {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut critical_strikes = 0u32;
    loop {
        tick.tick().await;
        let knobs = steering.knobs();
        if let Some(file) = knobs.panic_flag_file.as_ref().filter(|f| f.exists()) {
            let why = format!("panic flag file {} exists", file.display());
            steering.stop(why.clone());
            return why;
        }
        match critical(&mut probe, &knobs).await {
            // Twice in a row, a tick apart, as gh-ost's critical-load-interval-millis does: one
            // spike of a noisy counter should not end a run of hours.
            Some(why) if critical_strikes >= 1 => {
                let why = format!("critical-load reached: {why}");
                steering.stop(why.clone());
                return why;
            }
            Some(why) => {
                tracing::warn!("critical-load reached: {why}; checking again before stopping");
                critical_strikes += 1;
            }
            None => critical_strikes = 0,
        }
        steering.set_source_throttle(reason(&mut probe, &knobs).await);
        if let Ok(Some(retained)) = probe.retained_wal().await {
            bound_wal(steering, retained, max_retained_wal);
        }
    }
}

/// While throttled, replay goes on once the slot retains `bound` bytes, until it is back under
/// half of it: the server's disk is the thing that must not run out.
fn bound_wal(steering: &Steering, retained: u64, bound: u64) {
    if !steering.replay_forced() && retained >= bound && steering.is_throttled() {
        tracing::warn!(
            "the replication slot retains {} MB of WAL (bound: --max-retained-wal {} MB): \
             replaying changes although throttled, the copy stays paused",
            retained >> 20,
            bound >> 20
        );
        steering.set_replay_forced(true);
    } else if steering.replay_forced() && (retained < bound / 2 || !steering.is_throttled()) {
        steering.set_replay_forced(false);
    }
}

async fn critical<P: Probe>(probe: &mut P, knobs: &Knobs) -> Option<String> {
    for (name, limit) in knobs.critical_load.iter() {
        match probe.load(name).await {
            Ok(v) if v >= limit => return Some(format!("{name}={v} >= {limit}")),
            Ok(_) => {}
            // Unknown is not critical: max-load throttles on the same error.
            Err(e) => tracing::warn!("critical-load: cannot read {name}: {e}"),
        }
    }
    None
}

/// Why to throttle now, from the first source that says so.
async fn reason<P: Probe>(probe: &mut P, knobs: &Knobs) -> Option<String> {
    for file in [
        &knobs.throttle_flag_file,
        &knobs.throttle_additional_flag_file,
    ]
    .into_iter()
    .flatten()
    {
        if file.exists() {
            return Some(format!("flag file {} exists", file.display()));
        }
    }
    for (name, limit) in knobs.max_load.iter() {
        match probe.load(name).await {
            Ok(v) if v >= limit => return Some(format!("max-load {name}={v} >= {limit}")),
            Ok(_) => {}
            Err(e) => return Some(format!("max-load: cannot read {name}: {e}")),
        }
    }
    for dsn in &knobs.throttle_control_replicas {
        match probe.replica_lag(dsn).await {
            Ok(lag) if lag > knobs.max_lag => {
                return Some(format!(
                    "replica {} lags {}ms > max-lag-millis {}",
                    redact(dsn),
                    lag.as_millis(),
                    knobs.max_lag.as_millis()
                ))
            }
            Ok(_) => {}
            Err(e) => return Some(format!("replica {}: cannot read its lag: {e}", redact(dsn))),
        }
    }
    if let Some(sql) = &knobs.throttle_query {
        match probe.query_value(sql).await {
            Ok(v) if v > 0.0 => return Some(format!("throttle-query returned {v}")),
            Ok(_) => {}
            Err(e) => return Some(format!("throttle-query failed: {e}")),
        }
    }
    if let Some(url) = &knobs.throttle_http {
        if let Some(why) = http_says_throttle(url).await {
            return Some(why);
        }
    }
    None
}

/// gh-ost's rule: anything but a 200 within a second throttles.
async fn http_says_throttle(url: &str) -> Option<String> {
    let target = url.to_string();
    let checked = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(1)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        agent.get(&target).call().map(|r| r.status().as_u16())
    })
    .await;
    match checked {
        Ok(Ok(200)) => None,
        Ok(Ok(status)) => Some(format!("throttle-http {url} answered {status}")),
        Ok(Err(e)) => Some(format!("throttle-http {url} failed: {e}")),
        Err(e) => Some(format!("throttle-http {url}: {e}")),
    }
}

/// A connection URL without its password, for messages.
pub fn redact(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return dsn.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => dsn.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Knobs;
    use crate::error::Error;

    /// A probe whose readings the test sets.
    struct Fixed {
        load: u64,
        lag: Duration,
        wal: u64,
    }

    impl Probe for Fixed {
        async fn load(&mut self, name: &str) -> Result<u64> {
            match name {
                "Threads_running" => Ok(self.load),
                _ => Err(Error::Stream(format!("no variable {name}"))),
            }
        }
        async fn query_value(&mut self, sql: &str) -> Result<f64> {
            Ok(sql.len() as f64 - 8.0) // "SELECT 1" → 0
        }
        async fn replica_lag(&mut self, _: &str) -> Result<Duration> {
            Ok(self.lag)
        }
        async fn retained_wal(&mut self) -> Result<Option<u64>> {
            Ok(Some(self.wal))
        }
    }

    #[tokio::test]
    async fn each_source_gives_its_reason() {
        let mut knobs = Knobs::default();
        let mut p = Fixed {
            load: 10,
            lag: Duration::from_millis(100),
            wal: 0,
        };
        assert_eq!(reason(&mut p, &knobs).await, None);
        knobs.max_load = "Threads_running=10".parse().unwrap();
        assert_eq!(
            reason(&mut p, &knobs).await.as_deref(),
            Some("max-load Threads_running=10 >= 10")
        );
        knobs.max_load = "Nope=10".parse().unwrap();
        assert!(reason(&mut p, &knobs)
            .await
            .unwrap()
            .contains("cannot read Nope"));
        knobs.max_load = Default::default();
        knobs.throttle_control_replicas = vec!["postgres://u:secret@r/db".into()];
        knobs.max_lag = Duration::from_millis(50);
        let why = reason(&mut p, &knobs).await.unwrap();
        assert!(
            why.contains("lags 100ms") && !why.contains("secret"),
            "{why}"
        );
        knobs.throttle_control_replicas.clear();
        knobs.throttle_query = Some("SELECT 1".into());
        assert_eq!(reason(&mut p, &knobs).await, None);
        knobs.throttle_query = Some("SELECT 1000".into());
        assert!(reason(&mut p, &knobs).await.is_some());
        knobs.throttle_query = None;
        knobs.throttle_http = Some("http://127.0.0.1:9/".into());
        assert!(reason(&mut p, &knobs)
            .await
            .unwrap()
            .contains("throttle-http"));
    }

    /// A one-shot HTTP server answering `status`; its URL.
    async fn answering(status: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn http_check_throttles_on_anything_but_200() {
        assert_eq!(http_says_throttle(&answering("200 OK").await).await, None);
        let why = http_says_throttle(&answering("503 Service Unavailable").await)
            .await
            .unwrap();
        assert!(why.contains("answered 503"), "{why}");
    }

    #[test]
    fn wal_bound_forces_replay_with_hysteresis() {
        let s = Steering::new(Knobs::default());
        s.set_commanded_throttle(true);
        bound_wal(&s, 900, 1000);
        assert!(s.replay_paused());
        bound_wal(&s, 1000, 1000);
        assert!(!s.replay_paused(), "at the bound replay goes on");
        bound_wal(&s, 600, 1000);
        assert!(!s.replay_paused(), "until well under it");
        bound_wal(&s, 400, 1000);
        assert!(s.replay_paused());
    }
}
