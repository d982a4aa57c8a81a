//! What people see while a run goes: on a terminal, a live progress bar (phase, percent, rows/s,
//! lag, ETA, throttle state); in a pipe or a log, the plain progress line every
//! --progress-interval.

use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::status;
use crate::engine::backend::Shared;
use crate::engine::progress::Phase;

/// The bar being drawn, if any: log lines are written around it (see [`suspend`]).
static BAR: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();

fn bar_slot() -> &'static Mutex<Option<ProgressBar>> {
    BAR.get_or_init(|| Mutex::new(None))
}

/// Run `write` with the progress bar (if one is drawn) cleared, so a log line does not tear it.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    let bar = bar_slot().lock().unwrap_or_else(|p| p.into_inner()).clone();
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// Print a line on stderr without tearing the bar.
pub fn eprintln_above(line: &str) {
    suspend(|| eprintln!("{line}"));
}

pub struct Reporter {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Reporter {
    /// `every`: the plain line's interval (None: report nothing).
    pub fn start(every: Option<Duration>, shared: &Shared) -> Self {
        let Some(every) = every else {
            return Reporter {
                task: None,
                bar: None,
            };
        };
        let shared = shared.clone();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(
                Some(shared.progress.rows_estimate.load(Relaxed).max(1)),
                ProgressDrawTarget::stderr_with_hz(5),
            );
            let style =
                ProgressStyle::with_template("{prefix:>9} [{bar:25}] {percent:>3}% {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            *bar_slot().lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
            let drawn = bar.clone();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    draw(&drawn, &shared);
                }
            });
            return Reporter {
                task: Some(task),
                bar: Some(bar),
            };
        }
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "swivel: {}",
                    status::line(&shared.progress, &shared.steering)
                );
            }
        });
        Reporter {
            task: Some(task),
            bar: None,
        }
    }
}

fn draw(bar: &ProgressBar, shared: &Shared) {
    let p = &shared.progress;
    let copied = p.rows_copied.load(Relaxed);
    let estimate = p.rows_estimate.load(Relaxed).max(copied).max(1);
    bar.set_length(estimate);
    bar.set_position(match p.phase() {
        Phase::Planning | Phase::Copying => copied,
        Phase::Checksum => p.checksum_rows.load(Relaxed).min(estimate),
        _ => estimate,
    });
    bar.set_prefix(p.phase().name());
    let state = status::state(p, &shared.steering);
    bar.set_message(format!(
        "{copied}/{estimate} rows, {:.0} rows/s, lag {:.1}s, {} replayed, ETA {}{}{state}",
        p.copy_rate(),
        p.lag().as_secs_f64(),
        p.changes_applied.load(Relaxed),
        p.eta(),
        if state.is_empty() { "" } else { "; " },
    ));
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *bar_slot().lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}
