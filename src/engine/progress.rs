//! Live counters of a run and the plain progress line printed from them.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Planning = 0,
    Copying = 1,
    CatchingUp = 2,
    CuttingOver = 3,
    Done = 4,
    Checksum = 5,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Copying,
            2 => Phase::CatchingUp,
            3 => Phase::CuttingOver,
            4 => Phase::Done,
            5 => Phase::Checksum,
            _ => Phase::Planning,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Planning => "planning",
            Phase::Copying => "copy",
            Phase::CatchingUp => "catch-up",
            Phase::CuttingOver => "cut-over",
            Phase::Done => "done",
            Phase::Checksum => "checksum",
        }
    }
}

#[derive(Debug)]
pub struct Progress {
    phase: AtomicU8,
    pub rows_copied: AtomicU64,
    pub rows_estimate: AtomicU64,
    pub chunk_size: AtomicU64,
    pub changes_applied: AtomicU64,
    /// Replication lag in milliseconds, as last measured by the heartbeat.
    pub lag_ms: AtomicU64,
    /// Source rows the checksum has compared, and chunks it copied again.
    pub checksum_rows: AtomicU64,
    pub checksum_repaired: AtomicU64,
    copy_started: Mutex<Option<Instant>>,
    /// When each phase began (and other milestones), for the status file.
    events: Mutex<Vec<(&'static str, SystemTime)>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: AtomicU8::new(Phase::Planning as u8),
            rows_copied: AtomicU64::new(0),
            rows_estimate: AtomicU64::new(0),
            chunk_size: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            checksum_rows: AtomicU64::new(0),
            checksum_repaired: AtomicU64::new(0),
            copy_started: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        }
    }
}

impl Progress {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    /// Enter `phase`; the status file's events record when each phase was entered (each time
    /// it is entered again, as cut-over is after a failed attempt).
    pub fn set_phase(&self, phase: Phase) {
        if phase == Phase::Copying {
            let mut started = self.copy_started.lock().unwrap_or_else(|p| p.into_inner());
            started.get_or_insert_with(Instant::now);
        }
        if self.phase.swap(phase as u8, Relaxed) != phase as u8 {
            self.mark(phase.name());
        }
    }

    /// Record that `event` happened now (a phase began, the tables were swapped).
    pub fn mark(&self, event: &'static str) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.push((event, SystemTime::now()));
    }

    /// The milestones so far, as (name, milliseconds since the epoch).
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .map(|(name, at)| (*name, unix_ms(*at)))
            .collect()
    }

    /// The current state as one JSON object: one line of the status file.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "unix_ms": unix_ms(SystemTime::now()),
            "phase": self.phase().name(),
            "rows_copied": self.rows_copied.load(Relaxed),
            "rows_estimate": self.rows_estimate.load(Relaxed),
            "rows_per_second": self.copy_rate().round(),
            "chunk_size": self.chunk_size.load(Relaxed),
            "lag_ms": self.lag_ms.load(Relaxed),
            "changes_applied": self.changes_applied.load(Relaxed),
            "checksum_rows": self.checksum_rows.load(Relaxed),
            "checksum_repaired_chunks": self.checksum_repaired.load(Relaxed),
        })
    }

    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.lag_ms.load(Relaxed))
    }

    pub fn copy_elapsed(&self) -> Option<Duration> {
        let started = self.copy_started.lock().unwrap_or_else(|p| p.into_inner());
        started.map(|s| s.elapsed())
    }

    /// Rows per second over the copy so far.
    pub fn copy_rate(&self) -> f64 {
        match self.copy_elapsed() {
            Some(e) if e.as_secs_f64() > 0.0 => {
                self.rows_copied.load(Relaxed) as f64 / e.as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// One progress line: phase, rows copied / estimated, rows/s, lag, ETA.
    pub fn line(&self) -> String {
        let copied = self.rows_copied.load(Relaxed);
        let estimate = self.rows_estimate.load(Relaxed).max(copied);
        let percent = |n: u64| {
            if estimate > 0 {
                n as f64 * 100.0 / estimate as f64
            } else {
                100.0
            }
        };
        if self.phase() == Phase::Checksum {
            // The copy is done: what moves now is the comparison.
            let compared = self.checksum_rows.load(Relaxed);
            return format!(
                "checksum: {compared}/{estimate} rows compared ({:.1}%), {} chunk(s) copied again, \
                 lag {:.1}s, {} changes replayed",
                percent(compared),
                self.checksum_repaired.load(Relaxed),
                self.lag().as_secs_f64(),
                self.changes_applied.load(Relaxed),
            );
        }
        format!(
            "{}: {}/{} rows ({:.1}%), {:.0} rows/s, chunk {}, lag {:.1}s, {} changes replayed, ETA {}",
            self.phase().name(),
            copied,
            estimate,
            percent(copied),
            self.copy_rate(),
            self.chunk_size.load(Relaxed),
            self.lag().as_secs_f64(),
            self.changes_applied.load(Relaxed),
            self.eta()
        )
    }

    /// How long the rest of the copy should take at the rate so far ("-" outside the copy).
    pub fn eta(&self) -> String {
        let copied = self.rows_copied.load(Relaxed);
        let left = self.rows_estimate.load(Relaxed).saturating_sub(copied);
        let rate = self.copy_rate();
        if self.phase() == Phase::Copying && rate > 0.0 {
            format_duration(Duration::from_secs_f64(left as f64 / rate))
        } else {
            "-".to_string()
        }
    }
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}s", s)
    }
}
