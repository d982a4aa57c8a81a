//! The figures of a bench: per tool, per phase of the run, and the ratios against the
//! baselines; printed as a table, written as JSON and Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::Sample;

/// What the application's writes saw in one stretch of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteStats {
    pub writes: u64,
    pub errors: u64,
    /// Writes finished per second of the stretch.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl WriteStats {
    pub fn of<'a>(samples: impl Iterator<Item = &'a Sample>, span: Duration) -> WriteStats {
        // Three significant figures from 1µs to an hour.
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant histogram bounds are valid");
        let mut stats = WriteStats::default();
        for s in samples {
            stats.writes += 1;
            stats.errors += u64::from(!s.ok);
            h.saturating_record(s.latency.as_micros().max(1) as u64);
        }
        if stats.writes > 0 {
            stats.per_second = stats.writes as f64 / span.as_secs_f64().max(1e-3);
            stats.p50_ms = h.value_at_quantile(0.50) as f64 / 1000.0;
            stats.p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
            stats.max_ms = h.max() as f64 / 1000.0;
        }
        stats
    }
}

/// The write figures of one run, by stretch.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    /// Before the tool started: the baseline the application is used to.
    pub before: WriteStats,
    /// While the tool ran.
    pub during: WriteStats,
    /// Writes that were in flight while the tables were swapped (swivel: from the cut-over's
    /// start to the swap; offline ALTER: the whole statement). None where the tool does not
    /// say when it swaps.
    pub cutover: Option<WriteStats>,
    pub after: WriteStats,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Lag {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Lag {
    pub fn of(samples_ms: &[u64]) -> Option<Lag> {
        let mut sorted = samples_ms.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64;
        (!sorted.is_empty()).then(|| Lag {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            samples: sorted.len(),
        })
    }
}

/// A moment of a run worth marking on the chart (seconds since the run's origin).
#[derive(Clone, Debug, Serialize)]
pub struct Mark {
    pub label: String,
    pub at_s: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

/// One tool's run on its own fresh copy of the table.
#[derive(Clone, Debug, Serialize)]
pub struct ToolRun {
    /// swivel, offline, copy-floor, pt-osc, pg-repack.
    pub tool: String,
    /// What it did, in words (the exact statement or command).
    pub what: String,
    pub status: Status,
    /// Why it was skipped or how it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rows: u64,
    /// Wall time of the tool, from start to finish.
    pub total_s: Option<f64>,
    /// The copy phase alone (swivel), or the whole statement where copying is all it does.
    pub copy_s: Option<f64>,
    pub copy_rows_per_s: Option<f64>,
    /// From the end of the copy to the tables swapped.
    pub copy_end_to_cutover_s: Option<f64>,
    pub cutover_lock_ms: Option<f64>,
    pub writes: Phases,
    /// Replication lag while swivel ran, sampled from its status file.
    pub lag: Option<Lag>,
    /// Row changes swivel replayed on the shadow table.
    pub changes_replayed: Option<u64>,
    /// Those per second, from the copy's start to the swap.
    pub replayed_per_s: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub marks: Vec<Mark>,
    /// Every write, for the chart; not in the JSON.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl ToolRun {
    /// A run with no figures yet.
    pub fn new(tool: &str, what: &str, status: Status, rows: u64) -> ToolRun {
        ToolRun {
            tool: tool.into(),
            what: what.into(),
            status,
            reason: None,
            rows,
            total_s: None,
            copy_s: None,
            copy_rows_per_s: None,
            copy_end_to_cutover_s: None,
            cutover_lock_ms: None,
            writes: Phases::default(),
            lag: None,
            changes_replayed: None,
            replayed_per_s: None,
            peak_rss_mb: None,
            marks: Vec::new(),
            samples: Vec::new(),
        }
    }

    fn ok(&self) -> bool {
        matches!(self.status, Status::Ok)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    /// swivel's total time over the offline ALTER's.
    pub swivel_over_offline: Option<f64>,
    /// swivel's copy phase over the copy floor's single INSERT … SELECT.
    pub copy_over_copy_floor: Option<f64>,
    /// swivel's total time over pt-online-schema-change's (MySQL/MariaDB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swivel_over_pt_osc: Option<f64>,
    /// swivel's total time over pg_repack's rebuild (PostgreSQL; not the same change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swivel_over_pg_repack: Option<f64>,
    /// swivel's p99 write latency during the run over the p99 before it.
    pub swivel_p99_during_over_before: Option<f64>,
}

/// The goals the project holds swivel to, each with the figure that decides it.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub server: String,
    pub target: String,
    pub rows: u64,
    pub write_rate: u32,
    pub alter: String,
    pub started_unix_ms: u64,
    pub runs: Vec<ToolRun>,
    pub ratios: Ratios,
    pub goals: Vec<Goal>,
}

impl BenchReport {
    pub fn compute_ratios(&mut self) {
        let find = |tool: &str| self.runs.iter().find(|r| r.tool == tool && r.ok());
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let swivel = find("swivel");
        let total = |tool: &str| find(tool).and_then(|r| r.total_s);
        let swivel_total = swivel.and_then(|r| r.total_s);
        self.ratios = Ratios {
            swivel_over_offline: ratio(swivel_total, total("offline")),
            copy_over_copy_floor: ratio(
                swivel.and_then(|r| r.copy_s),
                find("copy-floor").and_then(|r| r.copy_s),
            ),
            swivel_over_pt_osc: ratio(swivel_total, total("pt-osc")),
            swivel_over_pg_repack: ratio(swivel_total, total("pg-repack")),
            swivel_p99_during_over_before: swivel
                .and_then(|r| ratio(Some(r.writes.during.p99_ms), Some(r.writes.before.p99_ms))),
        };
        let goal = |goal: &str, value: Option<f64>, met: fn(f64) -> bool| Goal {
            goal: goal.into(),
            value,
            met: value.map(met),
        };
        self.goals = vec![
            goal(
                "swivel within 1.3x the offline ALTER",
                self.ratios.swivel_over_offline,
                |v| v <= 1.3,
            ),
            goal(
                "copy phase within 1.2x the copy floor",
                self.ratios.copy_over_copy_floor,
                |v| v <= 1.2,
            ),
            goal(
                "write p99 during the run within 2x the p99 before",
                self.ratios.swivel_p99_during_over_before,
                |v| v <= 2.0,
            ),
            goal(
                "no write stalled more than 100 ms at cut-over",
                swivel.and_then(|r| r.writes.cutover.as_ref().map(|c| c.max_ms)),
                |v| v <= 100.0,
            ),
            goal(
                "swivel's peak RSS below 100 MB",
                swivel.and_then(|r| r.peak_rss_mb),
                |v| v < 100.0,
            ),
        ];
    }

    /// The terminal table (also the body of the Markdown report).
    pub fn table(&self) -> String {
        let header = [
            "tool",
            "total",
            "copy",
            "rows/s",
            "copy→swap",
            "lock",
            "p99 before",
            "p99 during",
            "max during",
            "max at swap",
            "writes/s during",
            "errors",
            "replayed",
            "lag p99",
            "lag max",
            "RSS",
        ];
        let mut rows: Vec<Vec<String>> = Vec::new();
        for r in &self.runs {
            if !r.ok() {
                let what = match r.status {
                    Status::Skipped => "skipped",
                    _ => "FAILED",
                };
                let mut row = vec![r.tool.clone(), what.to_string()];
                row.resize(header.len(), String::new());
                rows.push(row);
                continue;
            }
            let w = &r.writes;
            rows.push(vec![
                r.tool.clone(),
                secs(r.total_s),
                secs(r.copy_s),
                num(r.copy_rows_per_s),
                secs(r.copy_end_to_cutover_s),
                ms(r.cutover_lock_ms),
                ms(Some(w.before.p99_ms)),
                ms(Some(w.during.p99_ms)),
                ms(Some(w.during.max_ms)),
                ms(w.cutover.as_ref().map(|c| c.max_ms)),
                format!("{:.0}", w.during.per_second),
                (w.before.errors + w.during.errors + w.after.errors).to_string(),
                r.changes_replayed
                    .map_or("-".into(), |n| format!("{n} ({}/s)", num(r.replayed_per_s))),
                ms(r.lag.as_ref().map(|l| l.p99_ms)),
                ms(r.lag.as_ref().map(|l| l.max_ms)),
                r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0} MB")),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        out.push_str(&line(header.to_vec()));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(rule.iter().map(String::as_str).collect()));
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }

    /// Ratios and goals, one per line.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let r = &self.ratios;
        for (name, v) in [
            ("swivel / offline ALTER", r.swivel_over_offline),
            ("swivel copy / copy floor", r.copy_over_copy_floor),
            ("swivel / pt-online-schema-change", r.swivel_over_pt_osc),
            ("swivel / pg_repack (rebuild)", r.swivel_over_pg_repack),
            (
                "swivel p99 during / before",
                r.swivel_p99_during_over_before,
            ),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "- {name}: {v:.2}x");
            }
        }
        for g in &self.goals {
            let verdict = match g.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            };
            let value = g.value.map_or(String::new(), |v| format!(" ({v:.2})"));
            let _ = writeln!(out, "- goal: {}: {verdict}{value}", g.goal);
        }
        for run in self.runs.iter().filter(|r| !r.ok()) {
            let _ = writeln!(
                out,
                "- {} {}: {}",
                run.tool,
                if matches!(run.status, Status::Skipped) {
                    "skipped"
                } else {
                    "failed"
                },
                run.reason.as_deref().unwrap_or("")
            );
        }
        out
    }

    pub fn markdown(&self, chart: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# swivel bench: {}\n", self.server);
        let _ = writeln!(
            out,
            "{} rows in sysbench's shape on {}; change: `{}`; writes at {}/s before, during and after each run (sysbench oltp_write_only mix); each tool on a fresh copy of the table.\n",
            self.rows, self.target, self.alter, self.write_rate
        );
        out.push_str(&self.table());
        out.push('\n');
        out.push_str(&self.summary());
        out.push_str("\nWhat each run did:\n\n");
        for r in &self.runs {
            let _ = writeln!(out, "- **{}**: {}", r.tool, r.what);
        }
        out.push_str(
            "\nColumns: *total* is the tool's wall time; *copy* is swivel's copy phase, or the \
             whole statement where copying is all it does; *copy→swap* runs from the end of the \
             copy to the swapped tables; *lock* is how long swivel's cut-over held the blocking \
             lock; write latencies run from when each write was due to when it finished, so a \
             write queued behind a blocked one counts its wait; *max at swap* is the longest \
             write in flight during the cut-over; *replayed* counts the row changes swivel \
             replayed on the shadow table, per second from the copy's start to the swap; *lag* \
             is swivel's replication lag, sampled every 100 ms; *RSS* is swivel's peak resident \
             memory.\n",
        );
        if let Some(chart) = chart {
            let _ = writeln!(out, "\n![write latency and throughput]({chart})");
        }
        out
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}s"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(due_ms: u64, latency_ms: u64, ok: bool) -> Sample {
        Sample {
            due: Duration::from_millis(due_ms),
            latency: Duration::from_millis(latency_ms),
            ok,
        }
    }

    #[test]
    fn write_stats_count_errors_and_take_quantiles() {
        let samples: Vec<Sample> = (0..100)
            .map(|i| sample(i * 10, if i == 99 { 500 } else { 2 }, i != 5))
            .collect();
        let s = WriteStats::of(samples.iter(), Duration::from_secs(1));
        assert_eq!((s.writes, s.errors), (100, 1));
        assert_eq!(s.per_second, 100.0);
        assert!((s.p50_ms - 2.0).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 500.0).abs() < 0.5, "{s:?}");
        assert!(WriteStats::of([].iter(), Duration::from_secs(1)).writes == 0);
    }

    #[test]
    fn lag_quantiles() {
        assert!(Lag::of(&[]).is_none());
        let lag = Lag::of(&(1..=100).collect::<Vec<u64>>()).unwrap();
        assert_eq!((lag.p50_ms, lag.max_ms, lag.samples), (51.0, 100.0, 100));
    }
}
