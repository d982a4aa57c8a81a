//! What the user asked for: the target, the change and the knobs of a run.

use std::path::PathBuf;
use std::time::Duration;

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
    pub chunk_size: u64,
    pub target_chunk_time: Duration,
    pub max_rows_per_second: Option<u32>,
    pub cut_over_lock_timeout: Duration,
    pub cut_over_retries: u32,
    /// Lag below which cut-over may start.
    pub max_lag: Duration,
    pub drop_old_table: bool,
    /// Print a progress line at this interval (none: stay quiet).
    pub progress_interval: Option<Duration>,
    /// Where to write status as JSON lines, if anywhere.
    pub status_file: Option<PathBuf>,
    /// How often a status line is written to the status file.
    pub status_interval: Duration,
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
            target_chunk_time: Duration::from_millis(500),
            max_rows_per_second: None,
            cut_over_lock_timeout: Duration::from_secs(2),
            cut_over_retries: 10,
            max_lag: Duration::from_millis(1500),
            drop_old_table: false,
            progress_interval: None,
            status_file: None,
            status_interval: Duration::from_secs(1),
        }
    }
}
