//! The PNG chart: for each tool, the writes' latency and throughput over time, with the
//! phases of the run marked.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::{BenchReport, Status, ToolRun};

/// Latency is the largest of each 250 ms: a stall shows as a spike, not averaged away.
const LATENCY_BUCKET: Duration = Duration::from_millis(250);
const FONT: &str = "sans-serif";
/// Where Debian and most distributions keep a sans font; plotters draws text with it.
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

pub fn draw(report: &BenchReport, path: &Path) -> Result<()> {
    load_font()?;
    let runs: Vec<&ToolRun> = report
        .runs
        .iter()
        .filter(|r| matches!(r.status, Status::Ok) && !r.samples.is_empty())
        .collect();
    if runs.is_empty() {
        bail!("no run has writes to draw");
    }
    let root = BitMapBackend::new(path, (1200, 280 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let panels = root.split_evenly((runs.len(), 1));
    for (panel, run) in panels.iter().zip(&runs) {
        draw_run(panel, run, &report.server)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn draw_run(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    run: &ToolRun,
    server: &str,
) -> Result<()> {
    let end = run
        .samples
        .iter()
        .map(|s| s.done().as_secs_f64())
        .fold(1.0, f64::max);
    let latency = max_latency_per_bucket(run);
    let throughput = writes_per_second(run);
    let top = latency.iter().map(|p| p.1).fold(10.0, f64::max) * 2.0;
    let top_rate = throughput.iter().map(|p| p.1).fold(10.0, f64::max) * 1.3;

    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} on {server}: {}", run.tool, short(&run.what)),
            (FONT, 16),
        )
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.1f64..top).log_scale())
        .map_err(plot_err)?
        .set_secondary_coord(0f64..end, 0f64..top_rate);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("write latency, ms (max per 250 ms)")
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_err)?;
    chart
        .configure_secondary_axes()
        .y_desc("writes/s")
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_secondary_series(LineSeries::new(throughput, BLUE.mix(0.5)))
        .map_err(plot_err)?
        .label("writes/s (right)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.mix(0.5)));
    chart
        .draw_series(LineSeries::new(latency, RED.stroke_width(2)))
        .map_err(plot_err)?
        .label("max write latency (left)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    for (i, mark) in run.marks.iter().enumerate() {
        let line = [(mark.at_s, 0.1), (mark.at_s, top)];
        chart
            .draw_series(LineSeries::new(line, BLACK.mix(0.5)))
            .map_err(plot_err)?;
        // Stagger the labels so marks close together stay readable.
        let y = top / 1.6f64.powi(1 + (i % 3) as i32);
        chart
            .draw_series(std::iter::once(Text::new(
                mark.label.clone(),
                (mark.at_s, y),
                (FONT, 12),
            )))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn max_latency_per_bucket(run: &ToolRun) -> Vec<(f64, f64)> {
    let mut buckets: Vec<f64> = Vec::new();
    for s in &run.samples {
        let i = (s.due.as_millis() / LATENCY_BUCKET.as_millis()) as usize;
        if buckets.len() <= i {
            buckets.resize(i + 1, 0.0);
        }
        buckets[i] = buckets[i].max(s.latency.as_secs_f64() * 1000.0);
    }
    buckets
        .into_iter()
        .enumerate()
        .filter(|(_, v)| *v > 0.0)
        .map(|(i, v)| ((i as f64 + 0.5) * LATENCY_BUCKET.as_secs_f64(), v.max(0.1)))
        .collect()
}

fn writes_per_second(run: &ToolRun) -> Vec<(f64, f64)> {
    let mut per_second: Vec<f64> = Vec::new();
    for s in run.samples.iter().filter(|s| s.ok) {
        let i = s.done().as_secs() as usize;
        if per_second.len() <= i {
            per_second.resize(i + 1, 0.0);
        }
        per_second[i] += 1.0;
    }
    // The last second is cut short by the end of the run; leave it out.
    per_second.pop();
    per_second
        .into_iter()
        .enumerate()
        .map(|(i, n)| (i as f64 + 0.5, n))
        .collect()
}

fn short(what: &str) -> String {
    let first = what.split(':').next().unwrap_or(what).replace('`', "");
    if first.chars().count() > 90 {
        format!("{}…", first.chars().take(90).collect::<String>())
    } else {
        first
    }
}

/// plotters draws text with a font it is given: the first of the usual system fonts found.
fn load_font() -> Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = FONT_FILES
                .iter()
                .find_map(|f| std::fs::read(f).ok())
                .ok_or_else(|| {
                    format!(
                        "no font to draw text with (looked for {}; Debian: apt-get install fonts-dejavu-core)",
                        FONT_FILES.join(", ")
                    )
                })?;
            // Loaded once per process and kept for its life, as plotters requires.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| "the font file does not load".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}
