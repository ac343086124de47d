//! `attnwatch score`: the replay and backtest path. Scores a CSV or Parquet
//! file with the service's own window -> model -> score -> encode code and
//! writes one row per scored point, with the same fields as the Kafka output.
//!
//! The only differences from the live path: samples come from polars
//! instead of JSON, the clock is the data's own time, and the last open
//! bucket of each series is flushed at the end of the file (live, it waits
//! for the next interval's first point).

pub mod cli;
pub mod files;
pub mod plot;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use polars::prelude::{Column, DataFrame};

use crate::config::Config;
use crate::flow::{Outgoing, ScoredPoint, Token};
use crate::ingest::decode::{Sample, Values};
use crate::ingest::stage::{MessageMeta, Planner};
use crate::metrics::Metrics;
use crate::model::worker;
use crate::model::{Forecaster, ModelError};
use crate::publish::encode;
use crate::score::Scorer;
pub use files::{Columns, FileError, SeriesData};

/// Errors of the backtest path.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// Reading or writing files.
    #[error(transparent)]
    File(#[from] FileError),
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Encoding an output row.
    #[error("encoding output: {0}")]
    Encode(#[from] crate::publish::encode::EncodeError),
    /// Reading an encoded row back.
    #[error("decoding output: {0}")]
    Json(#[from] serde_json::Error),
    /// Metrics registry.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Drawing the plot.
    #[error("plot: {0}")]
    Plot(String),
}

/// One scored point, as published (the decoded output JSON).
#[derive(Debug, Clone)]
pub struct Scored {
    /// The output record, exactly as the Kafka path encodes it.
    pub record: serde_json::Value,
    /// The model's detail, for plotting.
    pub point: ScoredPoint,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Input rows.
    pub rows: usize,
    /// Series.
    pub series: usize,
    /// Scored points.
    pub scored: usize,
    /// Anomalies.
    pub anomalies: usize,
    /// Wall time of the scoring (reading and writing excluded).
    pub seconds: f64,
}

/// Score every series of `data` in time order through the service's stages:
/// the planner (window stage and run schedule), [`worker::process_batch`]
/// (forecasts and calibration) and the publish stage's encoding. Points
/// that cannot be scored (no forecast) are counted in `unscored`.
pub fn score_series(
    config: &Config,
    model: &mut dyn Forecaster,
    data: &[SeriesData],
    progress: &ProgressBar,
) -> Result<Vec<Scored>, BacktestError> {
    let contract = model.contract().clone();
    let metrics = Metrics::new()?;
    let mut planner = Planner::new(
        config
            .window
            .settings(contract.window, contract.min_points, config.model.stride),
        crate::ingest::decode::FeatureSet(None),
        metrics,
    );
    let mut scorer = Scorer::new(config.score.clone(), config.window.max_series);
    let meta = MessageMeta {
        token: Token {
            partition: -1,
            offset: -1,
            generation: 0,
        },
        kafka_ts_ms: None,
    };
    let mut out = Vec::new();
    for s in data {
        let mut jobs = Vec::new();
        for (ts, v) in s.ts.iter().zip(&s.values) {
            let sample = Sample {
                series: s.series.clone(),
                ts: *ts,
                values: Values::Single(*v as f32),
                labels: Default::default(),
            };
            jobs.extend(planner.place_sample(sample, meta, *ts));
        }
        jobs.extend(planner.flush(&s.series, meta));
        let (items, _) =
            worker::process_batch(model, &mut scorer, jobs, config.model.max_batch, None);
        for item in items {
            if let Outgoing::Point(point) = item {
                let msg = encode::score_message(&point, &config.publish)?;
                out.push(Scored {
                    record: serde_json::from_slice(&msg.payload)?,
                    point,
                });
            }
        }
        progress.inc(s.ts.len() as u64);
    }
    Ok(out)
}

/// The scored rows as a table: the output record's fields as columns;
/// `labels` and `attention` (and `features`, when present) as JSON text.
pub fn to_frame(scored: &[Scored]) -> Result<DataFrame, BacktestError> {
    let f = |k: &str| -> Vec<Option<f64>> { scored.iter().map(|s| s.record[k].as_f64()).collect() };
    let text = |k: &str| -> Vec<String> {
        scored
            .iter()
            .map(|s| match &s.record[k] {
                serde_json::Value::String(x) => x.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect()
    };
    let columns = vec![
        Column::new("series".into(), text("series")),
        Column::new(
            "ts".into(),
            scored
                .iter()
                .map(|s| s.record["ts"].as_i64())
                .collect::<Vec<_>>(),
        ),
        Column::new("value".into(), f("value")),
        Column::new("score".into(), f("score")),
        Column::new("threshold".into(), f("threshold")),
        Column::new(
            "anomaly".into(),
            scored
                .iter()
                .map(|s| s.record["anomaly"].as_bool())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "alert".into(),
            scored
                .iter()
                .map(|s| s.record["alert"].as_bool())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "incident".into(),
            scored
                .iter()
                .map(|s| s.record["incident"].as_i64())
                .collect::<Vec<_>>(),
        ),
        Column::new("raw_score".into(), f("raw_score")),
        Column::new("channels".into(), text("channels")),
        Column::new("expected".into(), f("expected")),
        Column::new("expected_std".into(), f("expected_std")),
        Column::new("model".into(), text("model")),
        Column::new("labels".into(), text("labels")),
        Column::new("attention".into(), text("attention")),
    ];
    DataFrame::new(scored.len(), columns).map_err(|source| {
        BacktestError::File(FileError::Polars {
            path: PathBuf::from("<output>"),
            source,
        })
    })
}

/// A progress bar over `total` rows that appears only after a second and
/// only on a terminal.
pub fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} scoring {pos}/{len} rows [{bar:40}] {per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Options of one `attnwatch score` run.
#[derive(Debug, Clone)]
pub struct ScoreFile {
    /// Input file.
    pub input: PathBuf,
    /// Output file (.csv or .parquet).
    pub output: PathBuf,
    /// Column mapping.
    pub columns: Columns,
    /// Plot to draw, if any.
    pub plot: Option<PathBuf>,
}

/// Read, score and write one file; draw the plot if asked.
pub fn run(
    config: &Config,
    model: &mut dyn Forecaster,
    opts: &ScoreFile,
) -> Result<Summary, BacktestError> {
    let default_series = opts
        .input
        .file_stem()
        .map_or_else(|| "series".into(), |s| s.to_string_lossy().into_owned());
    let data = files::read_series(&opts.input, &opts.columns, &default_series)?;
    let rows: usize = data.iter().map(|s| s.ts.len()).sum();
    let bar = progress(rows as u64);
    let started = Instant::now();
    let scored = std::thread::scope(|scope| {
        // Reveal the bar after a second, on a terminal only.
        let reveal = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if bar.is_finished() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        });
        let result = score_series(config, model, &data, &bar);
        bar.finish_and_clear();
        let _ = reveal.join();
        result
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let mut df = to_frame(&scored)?;
    files::write_table(&opts.output, &mut df)?;
    if let Some(png) = &opts.plot {
        plot::draw(png, &data, &scored).map_err(BacktestError::Plot)?;
    }
    Ok(Summary {
        rows,
        series: data.len(),
        scored: scored.len(),
        anomalies: scored
            .iter()
            .filter(|s| s.record["anomaly"] == true)
            .count(),
        seconds,
    })
}
