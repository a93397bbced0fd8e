//! The per-token latency figure of `bench --plot`: latency against token index, and its histogram.

use std::path::Path;

use plotters::prelude::*;

/// Draws `latencies_ms` (one per generated token) into an SVG at `path`.
pub fn latency_svg(path: &Path, latencies_ms: &[f64], title: &str) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let max = latencies_ms.iter().copied().fold(0.0, f64::max) * 1.1;
    let n = latencies_ms.len();

    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0..n, 0.0..max)?;
    chart
        .configure_mesh()
        .x_desc("token index")
        .y_desc("latency (ms)")
        .draw()?;
    chart.draw_series(LineSeries::new(
        latencies_ms.iter().enumerate().map(|(i, &v)| (i, v)),
        &BLUE,
    ))?;

    let bins = 40usize;
    let lo = latencies_ms.iter().copied().fold(f64::MAX, f64::min);
    let width = ((max / 1.1 - lo) / bins as f64).max(1e-9);
    let mut counts = vec![0usize; bins];
    for &v in latencies_ms {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(1);
    let mut hist = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..lo + width * bins as f64, 0..peak + 1)?;
    hist.configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("tokens")
        .draw()?;
    hist.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + i as f64 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
    }))?;
    root.present()?;
    Ok(())
}
