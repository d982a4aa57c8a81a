//! The cut-over loop both backends share: wait until the applier has caught up and nothing
//! holds the cut-over back (throttle, postpone flag file, a failing on-before-cut-over hook),
//! then let the backend try its swap under a short lock timeout. A failed attempt names the
//! sessions in its way, may end them (`--force-cut-over-after`), backs off and tries again. The
//! copy is never thrown away: after `--cut-over-retries` failures in a row the run goes back
//! to catching up for a while, and after `--cut-over-max-wait` it waits for `unpostpone`. Only
//! a stop (panic, a signal, critical load) or a real error ends the run.

use std::time::{Duration, Instant};

use crate::control::hooks::{Hook, Hooks};
use crate::control::reporter::eprintln_above;
use crate::control::Steering;
use crate::engine::backend::{backoff, Backend, CutoverReport, Shared};
use crate::engine::checksum::{self, ChecksumReport};
use crate::engine::progress::{format_duration, Phase};
use crate::error::{Error, Result};
use crate::options::RunOptions;

/// How long to catch up between rounds of attempts.
const BETWEEN_ROUNDS: Duration = Duration::from_secs(10);

/// Cut over; the first time all is ready, the checksum runs first (unless skipped), so it
/// compares what is about to be swapped in, also after a postponement.
pub async fn run<B: Backend>(
    backend: &mut B,
    opts: &RunOptions,
    shared: &Shared,
    hooks: &Hooks,
) -> Result<(CutoverReport, Option<ChecksumReport>)> {
    let (steering, progress) = (&*shared.steering, &*shared.progress);
    let mut checksum: Option<ChecksumReport> = None;
    // When this round of trying began: the first attempt, or the `unpostpone` after a hold.
    let mut trying_since: Option<Instant> = None;
    let mut held = false;
    let mut report = CutoverReport::default();
    let mut in_a_row = 0u32;
    let mut was_postponed = false;
    let mut last_wait = String::new();
    loop {
        // No new attempt, nor more waiting, once the run was told to stop.
        if let Some(stop) = steering.stop_reason() {
            return Err(Error::Interrupted(stop));
        }
        // Ready when caught up, not throttled, not postponed, and the hook agrees.
        let waiting = if let Some(why) = steering.postponed() {
            if !was_postponed {
                was_postponed = true;
                eprintln_above(&format!("swivel: cut-over postponed: {why}"));
                hooks.report(Hook::BeginPostponed, progress, &[]).await;
            }
            Some(why)
        } else if let Some(why) = steering.throttle_reason() {
            Some(format!("throttled ({why})"))
        } else if backend.lag() > steering.max_lag() {
            Some(String::new()) // catching up: the progress line shows the lag
        } else if !opts.skip_checksum && checksum.is_none() {
            checksum = Some(checksum::run(backend, shared, opts).await?);
            continue; // the applier may have fallen behind meanwhile
        } else if let Err(e) = hooks.run(Hook::BeforeCutOver, progress, &[]).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(format!("{e}; cut-over postponed until it succeeds"))
        } else {
            None
        };
        if let Some(why) = waiting {
            backend.check_tail()?;
            if !why.is_empty() && why != last_wait {
                tracing::info!("cut-over waits: {why}");
            }
            last_wait = why;
            progress.set_phase(Phase::CatchingUp);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        was_postponed = false;
        if held {
            held = false; // unpostponed after --cut-over-max-wait: another round
            trying_since = None;
        }
        let since = *trying_since.get_or_insert_with(Instant::now);
        progress.set_phase(Phase::CuttingOver);
        report.attempts += 1;
        steering.set_cutting_over(true);
        let attempt = backend
            .cutover_attempt(report.attempts, opts.cut_over_lock_timeout)
            .await;
        steering.set_cutting_over(false);
        let attempt = attempt?;
        report.stall += attempt.stall;
        report.longest_stall = report.longest_stall.max(attempt.stall);
        if attempt.swapped {
            report.lock_held = attempt.lock_held;
            return Ok((report, checksum));
        }
        in_a_row += 1;
        let label = format!("cut-over attempt {}", report.attempts);
        name_and_force_blockers(backend, opts, &label, &attempt.why).await;
        if opts
            .cut_over_max_wait
            .is_some_and(|max| since.elapsed() >= max)
        {
            eprintln_above(&format!(
                "swivel: cut-over failed for {} (--cut-over-max-wait): staying caught up; send \
                 `unpostpone` on the control socket to try again",
                format_duration(since.elapsed())
            ));
            steering.hold_cut_over();
            held = true;
            in_a_row = 0;
            continue;
        }
        if in_a_row > opts.cut_over_retries {
            eprintln_above(&format!(
                "swivel: {in_a_row} cut-over attempts failed in a row; catching up for {} \
                 before trying again (the copy is kept)",
                format_duration(BETWEEN_ROUNDS)
            ));
            in_a_row = 0;
            wait_caught_up(backend, steering, BETWEEN_ROUNDS).await?;
        } else {
            wait_caught_up(backend, steering, backoff(in_a_row)).await?;
        }
    }
}

/// After a failed lock attempt (cut-over's or the checksum's): say why and name the sessions
/// in the way; with `--force-cut-over-after`, end those whose transaction is older.
pub async fn name_and_force_blockers<B: Backend>(
    backend: &mut B,
    opts: &RunOptions,
    label: &str,
    why: &str,
) {
    let blockers = backend.blockers().await.unwrap_or_else(|e| {
        tracing::warn!("listing the sessions in the lock's way: {e}");
        Vec::new()
    });
    let named: Vec<String> = blockers.iter().map(|b| b.to_string()).collect();
    tracing::warn!(
        "{label}: {why}; the table is released and unchanged{}",
        if named.is_empty() {
            String::new()
        } else {
            format!("; in the way: {}", named.join("; "))
        }
    );
    if let Some(after) = opts.force_cut_over_after {
        for b in blockers.iter().filter(|b| b.transaction_age >= Some(after)) {
            tracing::warn!(
                "--force-cut-over-after {}: ending {b}",
                format_duration(after)
            );
            if let Err(e) = backend.kill_blocker(b).await {
                tracing::warn!("ending {b}: {e}");
            }
        }
    }
}

/// Sleep `d` while replay goes on, noticing a failed applier or a stop.
pub async fn wait_caught_up<B: Backend>(
    backend: &B,
    steering: &Steering,
    d: Duration,
) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        backend.check_tail()?;
        if let Some(stop) = steering.stop_reason() {
            return Err(Error::Interrupted(stop));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
