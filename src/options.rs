//! What the user asked for: the target, the change and the knobs of a run.

use std::path::PathBuf;
use std::time::Duration;

use crate::control::Knobs;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Connection URL; its password, if any, is never printed.
    pub dsn: String,
    /// Password read from a file or the environment, kept out of the process list.
    pub password: Option<String>,
    /// `[schema.]name`.
    pub table: String,
    /// What follows `ALTER TABLE name`.
    pub alter: String,
    /// Without it, plan and check only.
    pub execute: bool,
    /// Rows in the first chunk.
    pub chunk_size: u64,
    /// Copiers working at once, on disjoint chunks (`--threads`).
    pub threads: usize,
    /// The steerable knobs' values at start; while the run goes, the live values are in
    /// [`crate::control::Steering`], which the socket and flag files change.
    pub knobs: Knobs,
    pub max_rows_per_second: Option<u32>,
    pub cut_over_lock_timeout: Duration,
    pub cut_over_retries: u32,
    pub drop_old_table: bool,
    /// Print a progress line at this interval (none: stay quiet).
    pub progress_interval: Option<Duration>,
    /// Where to write status as JSON lines, if anywhere.
    pub status_file: Option<PathBuf>,
    /// How often a status line is written to the status file.
    pub status_interval: Duration,
    /// The control socket's path (None: no socket; the command line always gives one).
    pub serve_socket_file: Option<PathBuf>,
    /// Also serve the control protocol on this localhost TCP port.
    pub serve_tcp_port: Option<u16>,
    /// Directory of `swivel-on-…` hook executables.
    pub hooks_path: Option<PathBuf>,
    /// How often the on-status hook runs.
    pub hooks_status_interval: Duration,
    /// After cut-over has failed for this long, wait for `unpostpone` (None: keep retrying).
    pub cut_over_max_wait: Option<Duration>,
    /// Terminate sessions blocking cut-over whose transaction is older than this (None: never).
    pub force_cut_over_after: Option<Duration>,
    /// Print the plan and the socket's path as the run starts (the command line does).
    pub announce: bool,
    /// PostgreSQL: while throttled, replay goes on once the slot retains this many bytes of WAL.
    pub max_retained_wal: u64,
    /// Swap without comparing source and shadow first.
    pub skip_checksum: bool,
    /// How often a chunk or a replay batch whose session was lost runs again on a new one.
    pub default_retries: u32,
    /// Go on from the checkpoint of an interrupted run of the same ALTER.
    pub resume: bool,
    /// A checkpoint older than this is not resumed from.
    pub checkpoint_max_age: Duration,
}

impl RunOptions {
    pub fn new(dsn: impl Into<String>, table: impl Into<String>, alter: impl Into<String>) -> Self {
        RunOptions {
            dsn: dsn.into(),
            password: None,
            table: table.into(),
            alter: alter.into(),
            execute: false,
            chunk_size: 1000,
            threads: 1,
            knobs: Knobs::default(),
            max_rows_per_second: None,
            cut_over_lock_timeout: Duration::from_secs(2),
            cut_over_retries: 10,
            drop_old_table: false,
            progress_interval: None,
            status_file: None,
            status_interval: Duration::from_secs(1),
            serve_socket_file: None,
            serve_tcp_port: None,
            hooks_path: None,
            hooks_status_interval: Duration::from_secs(60),
            cut_over_max_wait: None,
            force_cut_over_after: None,
            max_retained_wal: 1 << 30,
            announce: false,
            skip_checksum: false,
            default_retries: 60,
            resume: false,
            checkpoint_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// How a duration given without a unit is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationUnit {
    /// `--…-millis` options: a bare number is milliseconds.
    Millis,
    /// Every other option: a bare number is refused, so `2000` never means 2000 seconds.
    Required,
}

/// `500ms`, `2s`, `1.5m`, `1h` (or a bare number of milliseconds where `unit` says so). Zero is
/// refused: in every option swivel has, it would mean "forever" or "never" by accident.
pub fn parse_duration(s: &str, unit: DurationUnit) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms or 2s"))?;
    let seconds = match (suffix, unit) {
        ("", DurationUnit::Millis) | ("ms", _) => value / 1000.0,
        ("", DurationUnit::Required) => {
            return Err(format!("{s}: give a unit, e.g. {s}ms or {s}s"));
        }
        ("s", _) => value,
        ("m", _) => value * 60.0,
        ("h", _) => value * 3600.0,
        ("d", _) => value * 86400.0,
        _ => return Err(format!("`{s}`: use ms, s, m, h or d")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!(
            "`{s}`: a duration must be more than zero (zero would mean forever or never here)"
        ));
    }
    if seconds > 365.0 * 86400.0 {
        return Err(format!("`{s}` is more than a year"));
    }
    let d = Duration::from_secs_f64(seconds);
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}` is less than a millisecond"));
    }
    Ok(d)
}

/// `10GB`, `512MB`, `1073741824`: a size in bytes (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512MB or 10GB"))?;
    let scale: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return Err(format!("`{s}`: use B, KB, MB, GB or TB")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("`{s}`: a size must be more than zero")),
        Some(b) => Ok(b),
        None => Err(format!("`{s}` is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units_except_millis_options() {
        use DurationUnit::*;
        assert_eq!(
            parse_duration("500ms", Required),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("2s", Required), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_duration("1.5m", Required),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("1500", Millis),
            Ok(Duration::from_millis(1500))
        );
        let bare = parse_duration("2000", Required).unwrap_err();
        assert_eq!(bare, "2000: give a unit, e.g. 2000ms or 2000s");
        for zero in ["0", "0s", "0ms", "0.0001ms"] {
            assert!(parse_duration(zero, Millis).is_err(), "{zero}");
        }
        assert_eq!(
            parse_duration("2d", Required),
            Ok(Duration::from_secs(2 * 86_400))
        );
        assert!(parse_duration("5w", Required).is_err());
        assert!(parse_duration("", Required).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("10GB"), Ok(10 << 30));
        assert_eq!(parse_bytes("512 MB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1PB").is_err());
    }
}
