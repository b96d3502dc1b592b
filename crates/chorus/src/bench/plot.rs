//! `chorus bench plot`: latency against throughput, from the JSON of several runs, as SVG.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

use super::report::SagaResult;
use crate::exit::UsageError;

/// Draw p50 and p99 end-to-end latency against confirmed orders/s, from `chorus bench saga
/// --json` results.
///
/// Each result is one point of each line: x is the orders confirmed per second it achieved,
/// y its p50 (and p99) latency from send to OrderConfirmed, on a logarithmic scale. The
/// points are joined in order of throughput. Writes an SVG.
#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// The results, as written by `chorus bench saga --json FILE` (two or more).
    #[arg(value_name = "RESULT.json", required = true, num_args = 2..)]
    results: Vec<PathBuf>,
    /// Where to write the SVG.
    #[arg(long, value_name = "FILE", default_value = "saga-latency.svg")]
    out: PathBuf,
    /// The plot's title.
    #[arg(
        long,
        default_value = "Chorus saga: end-to-end latency against throughput"
    )]
    title: String,
}

/// A run's point: (confirmed/s, p50 ms, p99 ms).
type Point = (f64, f64, f64);

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let mut points: Vec<Point> = Vec::new();
    for path in &args.results {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let result: SagaResult = serde_json::from_slice(&text).map_err(|e| {
            UsageError(format!(
                "{} is not a result of `chorus bench saga --json`: {e}",
                path.display()
            ))
        })?;
        if result.end_to_end_ms.count == 0 {
            return Err(UsageError(format!(
                "{}: no order was confirmed in that run, it has no latency to draw",
                path.display()
            ))
            .into());
        }
        points.push((
            result.confirmed_per_second,
            result.end_to_end_ms.p50,
            result.end_to_end_ms.p99,
        ));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    draw(&points, &args.title, &args.out)
        .map_err(|e| anyhow!("cannot draw {}: {e}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}

fn draw(
    points: &[Point],
    title: &str,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let max_x = points.iter().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let max_y = points.iter().map(|p| p.2.max(p.1)).fold(1.0, f64::max) * 2.0;
    let min_y = points
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .max(0.01)
        / 2.0;

    let root = SVGBackend::new(out, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("orders confirmed per second")
        .y_desc("latency, send to OrderConfirmed (ms)")
        .draw()?;
    for (name, color, latency) in [
        ("p50", BLUE, (|p: &Point| p.1) as fn(&Point) -> f64),
        ("p99", RED, |p: &Point| p.2),
    ] {
        chart
            .draw_series(
                LineSeries::new(
                    points.iter().map(|p| (p.0, latency(p))),
                    color.stroke_width(2),
                )
                .point_size(3),
            )?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
