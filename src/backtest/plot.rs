//! `--plot out.png`: the series with its anomalies, the score against the
//! threshold beneath it, and an attention strip for the top anomaly showing
//! which context time ranges its forecast looked at. 1200 x 800 pixels.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::{Scored, SeriesData};

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (1200, 800);

/// Fonts tried, in order (Debian's fonts-dejavu-core, installed by scripts/setup).
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> Result<(), String> {
    let bytes = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| format!("no font found at {FONTS:?} (install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "cannot load the font".to_string())
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%m-%d %H:%M").to_string())
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

/// Draw the plot of the series holding the highest-scoring point.
pub fn draw(path: &Path, data: &[SeriesData], scored: &[Scored]) -> Result<(), String> {
    load_font()?;
    let score = |s: &Scored| s.record["score"].as_f64().unwrap_or(0.0);
    let top = scored
        .iter()
        .max_by(|a, b| score(a).total_cmp(&score(b)))
        .ok_or("nothing was scored")?;
    let name = top.record["series"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let series = data
        .iter()
        .find(|s| s.series == name)
        .ok_or("series of the top point not found")?;
    let mine: Vec<&Scored> = scored
        .iter()
        .filter(|s| s.record["series"] == name.as_str())
        .collect();
    let (t0, t1) = (
        *series.ts.first().ok_or("empty series")?,
        *series.ts.last().ok_or("empty series")?,
    );
    let t1 = t1.max(t0 + 1);
    let (lo, hi) = series
        .values
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let fmt = |x: &i64| when(*x);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (upper, rest) = root.split_vertically(380);
    let (middle, lower) = rest.split_vertically(240);

    // 1. The series, anomalies marked, the top anomaly's context shaded.
    let driver = top.point.driver().ok_or("top point without features")?;
    let ex = &driver.explanation;
    let ranges: Vec<(i64, i64, f64)> = (0..ex.tokens())
        .filter(|k| ex.token_present(*k))
        .map(|k| {
            let (a, b) = ex.token_range(k);
            let m = (0..ex.layers)
                .map(|l| f64::from(ex.layer(l)[k]))
                .sum::<f64>()
                / ex.layers.max(1) as f64;
            (a, b + ex.interval, m)
        })
        .collect();
    let (w0, w1) = (
        ranges.first().map_or(t0, |r| r.0),
        ranges.last().map_or(t1, |r| r.1),
    );
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!(
                "{name}: values, anomalies (red), context of the top anomaly's forecast (blue)"
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(t0..t1, (lo - pad)..(hi + pad))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_label_formatter(&fmt)
        .x_labels(8)
        .draw()
        .map_err(e)?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(w0, lo - pad), (w1, hi + pad)],
            BLUE.mix(0.12).filled(),
        )))
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            series.ts.iter().copied().zip(series.values.iter().copied()),
            BLACK.stroke_width(1),
        ))
        .map_err(e)?;
    chart
        .draw_series(
            mine.iter()
                .filter(|s| s.record["anomaly"] == true)
                .filter_map(|s| {
                    Some(Circle::new(
                        (s.record["ts"].as_i64()?, s.record["value"].as_f64()?),
                        5,
                        RED.stroke_width(2),
                    ))
                }),
        )
        .map_err(e)?;

    // 2. Score and threshold.
    let threshold = top.record["threshold"].as_f64().unwrap_or(1.0);
    let smax = mine
        .iter()
        .map(|s| score(s))
        .fold(threshold * 1.5, f64::max);
    let mut chart = ChartBuilder::on(&middle)
        .caption(
            format!("score (threshold {threshold} in red)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(t0..t1, 0.0..smax * 1.05)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_label_formatter(&fmt)
        .x_labels(8)
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            mine.iter()
                .filter_map(|s| Some((s.record["ts"].as_i64()?, score(s)))),
            BLUE.stroke_width(1),
        ))
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            [(t0, threshold), (t1, threshold)],
            RED.stroke_width(2),
        ))
        .map_err(e)?;

    // 3. Attention of the top anomaly's forecast over its context tokens.
    let peak = ranges.iter().map(|r| r.2).fold(1e-12, f64::max);
    let mut chart = ChartBuilder::on(&lower)
        .caption(
            format!(
                "attention of the top anomaly's forecast ({}, score {:.2}): darker = looked at more",
                when(top.record["ts"].as_i64().unwrap_or(0)),
                score(top)
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(w0..w1.max(w0 + 1), 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_label_formatter(&fmt)
        .x_labels(8)
        .disable_y_mesh()
        .y_labels(0)
        .draw()
        .map_err(e)?;
    chart
        .draw_series(ranges.iter().map(|(a, b, m)| {
            let shade = 1.0 - (m / peak).clamp(0.0, 1.0);
            let c = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
            Rectangle::new([(*a, 0.0), (*b, 1.0)], c.filled())
        }))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
