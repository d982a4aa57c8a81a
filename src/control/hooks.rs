//! `--hooks-path DIR`: executables named after gh-ost's hooks with `swivel-` for `gh-ost-`
//! (`swivel-on-startup`, `swivel-on-before-cut-over`, …; any name that starts with the hook's
//! runs, in name order), with `SWIVEL_*` environment variables describing the run.
//!
//! As in gh-ost, a failing hook before the swap stops the run (cleanly: the original table is
//! left as it was), except `on-before-cut-over`, whose failure postpones the cut-over until the
//! hook succeeds. `on-status`, `on-interactive-command`, `on-success` and `on-failure` are
//! reported and never change the outcome.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::engine::progress::Progress;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Startup,
    Validated,
    RowcountComplete,
    BeforeRowCopy,
    Status,
    InteractiveCommand,
    RowCopyComplete,
    BeginPostponed,
    BeforeCutOver,
    Success,
    Failure,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Startup => "swivel-on-startup",
            Hook::Validated => "swivel-on-validated",
            Hook::RowcountComplete => "swivel-on-rowcount-complete",
            Hook::BeforeRowCopy => "swivel-on-before-row-copy",
            Hook::Status => "swivel-on-status",
            Hook::InteractiveCommand => "swivel-on-interactive-command",
            Hook::RowCopyComplete => "swivel-on-row-copy-complete",
            Hook::BeginPostponed => "swivel-on-begin-postponed",
            Hook::BeforeCutOver => "swivel-on-before-cut-over",
            Hook::Success => "swivel-on-success",
            Hook::Failure => "swivel-on-failure",
        }
    }
}

/// The hooks directory and what every hook is told about the run.
#[derive(Debug)]
pub struct Hooks {
    dir: Option<PathBuf>,
    env: Vec<(&'static str, String)>,
    started: Instant,
}

impl Hooks {
    /// `table` as `[schema.]name`; `database` from the connection URL.
    pub fn new(dir: Option<PathBuf>, database: &str, table: &str, alter: &str) -> Self {
        let name = table.rsplit('.').next().unwrap_or(table);
        Hooks {
            dir,
            env: vec![
                ("SWIVEL_DATABASE_NAME", database.to_string()),
                ("SWIVEL_TABLE_NAME", table.to_string()),
                ("SWIVEL_SHADOW_TABLE_NAME", format!("_{name}_new")),
                ("SWIVEL_OLD_TABLE_NAME", format!("_{name}_old")),
                ("SWIVEL_DDL", alter.to_string()),
            ],
            started: Instant::now(),
        }
    }

    /// A hooks directory that does not exist is a mistake worth stopping for at start.
    pub fn check(&self) -> Result<()> {
        match &self.dir {
            Some(dir) if !dir.is_dir() => Err(Error::refused(format!(
                "--hooks-path {} is not a directory",
                dir.display()
            ))),
            _ => Ok(()),
        }
    }

    /// The executables for `hook`, in name order.
    fn executables(&self, hook: Hook) -> Vec<PathBuf> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(hook.name()))
            .filter(|e| {
                e.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    fn environment(&self, progress: &Progress, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        env.extend([
            (
                "SWIVEL_ELAPSED_SECONDS".into(),
                self.started.elapsed().as_secs().to_string(),
            ),
            (
                "SWIVEL_ELAPSED_COPY_SECONDS".into(),
                progress
                    .copy_elapsed()
                    .map_or(0, |d| d.as_secs())
                    .to_string(),
            ),
            (
                "SWIVEL_ESTIMATED_ROWS".into(),
                progress.rows_estimate.load(Relaxed).to_string(),
            ),
            (
                "SWIVEL_COPIED_ROWS".into(),
                progress.rows_copied.load(Relaxed).to_string(),
            ),
            ("SWIVEL_STATUS".into(), progress.line()),
        ]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    /// Run `hook`'s executables one after the other; the first that fails is the error.
    pub async fn run(
        &self,
        hook: Hook,
        progress: &Progress,
        extra: &[(&str, String)],
    ) -> Result<()> {
        for exe in self.executables(hook) {
            let out = tokio::process::Command::new(&exe)
                .envs(self.environment(progress, extra))
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| Error::Hook(format!("running {}: {e}", exe.display())))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(Error::Hook(format!(
                    "{} failed ({}): {}",
                    exe.display(),
                    out.status,
                    stderr.trim()
                )));
            }
        }
        Ok(())
    }

    /// Run a hook whose outcome changes nothing; a failure is logged.
    pub async fn report(&self, hook: Hook, progress: &Progress, extra: &[(&str, String)]) {
        if let Err(e) = self.run(hook, progress, extra).await {
            tracing::warn!("{e}");
        }
    }

    /// `on-interactive-command`, in the background: the socket answers without waiting.
    pub fn interactive_command(
        self: &std::sync::Arc<Self>,
        command: &str,
        progress: &std::sync::Arc<Progress>,
    ) {
        if self.executables(Hook::InteractiveCommand).is_empty() {
            return;
        }
        let (hooks, progress, command) = (self.clone(), progress.clone(), command.to_string());
        tokio::spawn(async move {
            hooks
                .report(
                    Hook::InteractiveCommand,
                    &progress,
                    &[("SWIVEL_COMMAND", command)],
                )
                .await;
        });
    }
}
