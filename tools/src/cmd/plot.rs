//! `bench --plot FILE.svg`: per decoded token, a stacked bar of the time compute waited for
//! reads (stall) and the rest of the token's time (compute), and the bytes read during the
//! token as a line on a second axis; from the events of a [`Trace`] (plotters' SVG backend:
//! no fonts or system libraries needed).

use std::path::Path;

use anyhow::{bail, Context};
use flashstream::scheduler::trace::{ArgValue, Event};
use plotters::prelude::*;

/// One decoded token's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBar {
    /// Its position in the sequence.
    pub pos: u64,
    /// Milliseconds its leases waited for reads.
    pub stall_ms: f64,
    /// Milliseconds of the token's pass that were not stalls.
    pub compute_ms: f64,
    /// Bytes of the reads that completed during the token's pass.
    pub read_bytes: u64,
}

fn int_arg(e: &Event, k: &str) -> Option<u64> {
    e.args.iter().find_map(|(n, v)| match v {
        ArgValue::Int(i) if *n == k => Some(*i),
        _ => None,
    })
}

/// The single-token passes of `events` (decode steps), in order, with their stalls and reads.
pub fn token_bars(events: &[Event]) -> Vec<TokenBar> {
    let mut bars = Vec::new();
    for p in events
        .iter()
        .filter(|e| e.cat == "pass" && int_arg(e, "n") == Some(1))
    {
        let (t0, t1) = (p.ts_us, p.ts_us + p.dur_us.unwrap_or(0.0));
        let inside = |e: &&Event| {
            let end = e.ts_us + e.dur_us.unwrap_or(0.0);
            end > t0 && end <= t1
        };
        let stall_us: f64 = events
            .iter()
            .filter(|e| e.cat == "stall")
            .filter(inside)
            .map(|e| e.dur_us.unwrap_or(0.0))
            .sum();
        let read_bytes = events
            .iter()
            .filter(|e| e.cat == "read")
            .filter(inside)
            .filter_map(|e| int_arg(e, "bytes"))
            .sum();
        let total = (t1 - t0) / 1e3;
        let stall_ms = (stall_us / 1e3).min(total);
        bars.push(TokenBar {
            pos: int_arg(p, "pos").unwrap_or(0),
            stall_ms,
            compute_ms: total - stall_ms,
            read_bytes,
        });
    }
    bars
}

/// The colour of the compute part of each bar (tests count the bars by it).
pub const COMPUTE_RGB: (u8, u8, u8) = (70, 120, 200);
const STALL_RGB: (u8, u8, u8) = (220, 80, 60);
const READ_RGB: (u8, u8, u8) = (40, 160, 80);

/// Draws `bars` into an SVG file at `path` titled `title`.
pub fn draw(path: &Path, title: &str, bars: &[TokenBar]) -> anyhow::Result<()> {
    if bars.is_empty() {
        bail!("no decoded tokens to plot");
    }
    // Check the file can be written first: plotters reports a failed write only vaguely.
    std::fs::File::create(path).with_context(|| {
        format!(
            "cannot write the plot {} (--plot): give a path in a writable directory",
            path.display()
        )
    })?;
    let n = bars.len();
    let y_max = bars
        .iter()
        .map(|b| b.stall_ms + b.compute_ms)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let y2_max = bars
        .iter()
        .map(|b| mib(b.read_bytes))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let draw_err = |e: String| anyhow::anyhow!("drawing the plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..y_max)
        .map_err(|e| draw_err(e.to_string()))?
        .set_secondary_coord(0f64..n as f64, 0f64..y2_max);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("decoded token")
        .y_desc("ms per token")
        .x_label_formatter(&|x| format!("{}", *x as usize + 1))
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    chart
        .configure_secondary_axes()
        .y_desc("MiB read during the token")
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    let stall = RGBColor(STALL_RGB.0, STALL_RGB.1, STALL_RGB.2);
    let compute = RGBColor(COMPUTE_RGB.0, COMPUTE_RGB.1, COMPUTE_RGB.2);
    let read = RGBColor(READ_RGB.0, READ_RGB.1, READ_RGB.2);
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let x = i as f64;
            Rectangle::new([(x + 0.15, 0.0), (x + 0.85, b.stall_ms)], stall.filled())
        }))
        .map_err(|e| draw_err(e.to_string()))?
        .label("stall (waiting for reads)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], stall.filled()));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let x = i as f64;
            Rectangle::new(
                [
                    (x + 0.15, b.stall_ms),
                    (x + 0.85, b.stall_ms + b.compute_ms),
                ],
                compute.filled(),
            )
        }))
        .map_err(|e| draw_err(e.to_string()))?
        .label("compute")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], compute.filled()));
    chart
        .draw_secondary_series(LineSeries::new(
            bars.iter()
                .enumerate()
                .map(|(i, b)| (i as f64 + 0.5, mib(b.read_bytes))),
            read.stroke_width(2),
        ))
        .map_err(|e| draw_err(e.to_string()))?
        .label("MiB read (right axis)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], read.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(e.to_string()))?;
    root.present().map_err(|e| draw_err(e.to_string()))?;
    Ok(())
}
