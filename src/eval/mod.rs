//! `attnwatch eval nab`: detection quality on NAB-format data.
//!
//! Drives the service's own stages over each file in time order, with no
//! look-ahead: [`Windows`] (the window stage), the [`Engine`] (the model) or
//! the rolling z-score baseline, and the [`Scorer`] (calibration and online
//! threshold). Every window only holds points up to the one it scores, so
//! batching the windows of a file through the model is still causal; the
//! scorer then runs point by point in time order.
//!
//! Writes NAB-format result files and a summary table with the oracle
//! (best single threshold swept over the corpus) and the online (the
//! service's own anomaly flag) figures, kept apart.

pub mod nab;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{ScoreConfig, WindowConfig};
use crate::model::{Engine, ModelError};
use crate::score::Scorer;
use crate::tools::replay::{self, ReplayError};
use crate::window::{Settings, Windows};
use nab::{LabeledFile, PROFILES};

/// Errors of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A data file could not be parsed.
    #[error(transparent)]
    Data(#[from] ReplayError),
    /// The labels file is malformed.
    #[error("labels: {0}")]
    Labels(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One NAB file with its labels.
#[derive(Debug, Clone)]
pub struct NabFile {
    /// Category (directory), e.g. `realTraffic`.
    pub category: String,
    /// File name, e.g. `speed_7578.csv`.
    pub name: String,
    /// Row timestamps (epoch ms, wall clock read as UTC).
    pub ts: Vec<i64>,
    /// Raw timestamp strings, for the result files.
    pub ts_text: Vec<String>,
    /// Row values.
    pub values: Vec<f64>,
    /// Rows and windows.
    pub labels: LabeledFile,
}

/// Load `<dir>/data/<category>/<file>.csv` and `<dir>/labels/combined_windows.json`.
/// `only` keeps the files whose `category/name` contains one of the strings.
pub fn load_corpus(dir: &Path, only: &[String]) -> Result<Vec<NabFile>, EvalError> {
    let labels_path = dir.join("labels/combined_windows.json");
    let text = std::fs::read_to_string(&labels_path).map_err(io(&labels_path))?;
    let labels: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&text).map_err(|e| EvalError::Labels(e.to_string()))?;
    let mut files = Vec::new();
    for (key, windows) in &labels {
        if !only.is_empty() && !only.iter().any(|o| key.contains(o.as_str())) {
            continue;
        }
        let (category, name) = key
            .split_once('/')
            .ok_or_else(|| EvalError::Labels(format!("key {key:?} is not category/file")))?;
        let path = dir.join("data").join(key);
        let rows = replay::read_csv(&path, "timestamp", "value")?;
        let content = std::fs::read_to_string(&path).map_err(io(&path))?;
        let ts_text: Vec<String> = content
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').next().unwrap_or_default().to_string())
            .collect();
        let ts: Vec<i64> = rows.iter().map(|r| r.ts).collect();
        let mut spans = Vec::with_capacity(windows.len());
        for (a, b) in windows {
            let parse = |s: &str| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                    .map(|t| t.and_utc().timestamp_millis())
                    .map_err(|e| EvalError::Labels(format!("{key}: window bound {s:?}: {e}")))
            };
            spans.push((parse(a)?, parse(b)?));
        }
        files.push(NabFile {
            category: category.to_string(),
            name: name.to_string(),
            labels: LabeledFile {
                rows: rows.len(),
                windows: nab::windows_to_rows(&ts, &spans),
            },
            values: rows.iter().map(|r| r.value).collect(),
            ts,
            ts_text,
        });
    }
    Ok(files)
}

/// What produces the raw score of a window.
pub enum Detector<'a> {
    /// The attention model.
    Model(&'a mut Engine),
    /// Rolling z-score of the newest point against the rest of the window
    /// (NAB's "windowed Gaussian"), with the model's normalisation floor.
    RollingZ,
}

/// Per-row outputs of one detector on one file.
#[derive(Debug, Clone, Default)]
pub struct FileResult {
    /// Continuous score in [0, 1) per row (0 before the first full window).
    pub unit: Vec<f64>,
    /// The online anomaly flag per row.
    pub flag: Vec<bool>,
}

/// Rolling z-score of the last point of `w` against the others.
pub fn rolling_z(w: &[f32]) -> f64 {
    let (ctx, last) = w.split_at(w.len() - 1);
    let ctx: Vec<f64> = ctx
        .iter()
        .filter(|x| !x.is_nan())
        .map(|x| f64::from(*x))
        .collect();
    let n = ctx.len().max(1) as f64;
    let mean = ctx.iter().sum::<f64>() / n;
    let var = ctx.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let floor = 1e-3 * mean.abs() + 1e-6;
    let scale = (var + floor * floor).sqrt();
    (f64::from(last[0]) - mean).abs() / scale
}

/// Run one file through window -> detector -> scorer, in time order.
///
/// The window stage puts the file on its grid; each grid point's score is
/// attributed to the last row of its bucket (the row at which all of the
/// bucket's data had arrived), so no row's result uses later rows. Other
/// rows of a shared bucket, and rows before the first window, get 0.
///
/// `batch` is the number of windows per inference call (the service's
/// `model.max_batch`): attention memory grows with batch x W^2, and on a
/// CPU small batches are fastest.
pub fn run_file(
    file: &NabFile,
    window: &Settings,
    detector: &mut Detector<'_>,
    score: &ScoreConfig,
    batch: usize,
) -> Result<FileResult, EvalError> {
    let mut windows = Windows::new(window.clone());
    let key = format!("{}/{}", file.category, file.name);
    let mut emitted = Vec::new();
    for (ts, v) in file.ts.iter().zip(&file.values) {
        // Event time doubles as the clock: idle eviction follows the data.
        if let Ok(e) = windows.push(&key, *ts, *v as f32, *ts) {
            emitted.extend(e);
        }
    }
    emitted.extend(windows.flush(&key));
    let interval = windows.interval(&key).unwrap_or(1);
    // Grid timestamps are bucket starts; a bucket spans [ts, ts + interval).
    let w = window.window;
    let mut rows = Vec::new();
    let mut flat = Vec::new();
    for e in emitted {
        if let Some(win) = e.window {
            let end = e.ts.saturating_add(interval);
            let last_row = file.ts.partition_point(|t| *t < end);
            if last_row > 0 {
                rows.push(last_row - 1);
                flat.extend_from_slice(&win.values);
            }
        }
    }
    let mut raw = Vec::with_capacity(rows.len());
    match detector {
        Detector::Model(engine) => {
            for chunk in flat.chunks(batch.max(1) * w) {
                let out = engine.infer(chunk.to_vec(), chunk.len() / w)?;
                raw.extend(out.raw_score.iter().map(|x| f64::from(*x)));
            }
        }
        Detector::RollingZ => raw.extend(flat.chunks(w).map(rolling_z)),
    }
    let mut scorer = Scorer::new(score.clone(), 1);
    let mut result = FileResult {
        unit: vec![0.0; file.ts.len()],
        flag: vec![false; file.ts.len()],
    };
    for (&i, r) in rows.iter().zip(raw) {
        let s = scorer.score(&key, r);
        result.unit[i] = s.unit();
        result.flag[i] = s.anomaly;
    }
    Ok(result)
}

/// Oracle and online figures of one detector, per profile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DetectorReport {
    /// Detector name (the result directory name).
    pub name: String,
    /// Profile -> (normalised score, threshold) with the best corpus threshold.
    pub oracle: BTreeMap<String, (f64, f64)>,
    /// Profile -> normalised score of the online flags.
    pub online: BTreeMap<String, f64>,
    /// Seconds spent.
    pub seconds: f64,
}

/// Score `results` (one per file) and write the NAB result files under `out`.
pub fn report(
    name: &str,
    files: &[NabFile],
    results: &[FileResult],
    out: &Path,
    seconds: f64,
) -> Result<DetectorReport, EvalError> {
    let online_name = format!("{name}_online");
    for (f, r) in files.iter().zip(results) {
        let labelled = |i: usize| f.labels.windows.iter().any(|&(l, h)| l <= i && i <= h);
        for (dir, cont) in [(name, true), (online_name.as_str(), false)] {
            let folder = out.join(dir).join(&f.category);
            std::fs::create_dir_all(&folder).map_err(io(&folder))?;
            let path = folder.join(format!("{dir}_{}", f.name));
            let mut text = String::from("timestamp,value,anomaly_score,label\n");
            for i in 0..f.ts.len() {
                let score = if cont {
                    r.unit[i]
                } else {
                    f64::from(u8::from(r.flag[i]))
                };
                let _ = writeln!(
                    text,
                    "{},{},{},{}",
                    f.ts_text.get(i).map_or("", String::as_str),
                    f.values[i],
                    score,
                    u8::from(labelled(i))
                );
            }
            std::fs::write(&path, text).map_err(io(&path))?;
        }
    }
    let mut oracle = BTreeMap::new();
    let mut online = BTreeMap::new();
    for p in PROFILES {
        let cont: Vec<(&LabeledFile, &[f64])> = files
            .iter()
            .zip(results)
            .map(|(f, r)| (&f.labels, r.unit.as_slice()))
            .collect();
        oracle.insert(p.name.to_string(), nab::sweep(&cont, &p));
        let flags: Vec<(&LabeledFile, Vec<bool>)> = files
            .iter()
            .zip(results)
            .map(|(f, r)| (&f.labels, r.flag.clone()))
            .collect();
        online.insert(p.name.to_string(), nab::corpus_score(&flags, &p));
    }
    Ok(DetectorReport {
        name: name.to_string(),
        oracle,
        online,
        seconds,
    })
}

/// How an evaluation runs, beyond the service's own config.
#[derive(Debug, Clone)]
pub struct Options {
    /// Windows per inference call (the service's `model.max_batch`).
    pub batch: usize,
    /// Extra rolling z-score baselines with these window lengths, reported
    /// as `baseline_zscore_w<W>` (the default baseline uses the model's W).
    pub baseline_windows: Vec<usize>,
}

/// Evaluate the baseline(s) and the model on every file of `files`; write
/// results and `summary.md` / `summary.json` under `out`.
pub fn run(
    files: &[NabFile],
    engine: &mut Engine,
    window: &WindowConfig,
    score: &ScoreConfig,
    options: &Options,
    out: &Path,
) -> Result<Vec<DetectorReport>, EvalError> {
    let (w, min_points) = (engine.contract().window, engine.contract().min_points);
    let model_id = engine.contract().id();
    let mut detectors = vec![(
        "baseline_zscore".to_string(),
        Detector::RollingZ,
        window.settings(w, min_points),
    )];
    for &bw in &options.baseline_windows {
        detectors.push((
            format!("baseline_zscore_w{bw}"),
            Detector::RollingZ,
            window.settings(bw, min_points.min(bw)),
        ));
    }
    detectors.push((
        "attnwatch".to_string(),
        Detector::Model(engine),
        window.settings(w, min_points),
    ));
    let mut reports = Vec::new();
    for (name, mut detector, settings) in detectors {
        let started = Instant::now();
        let mut results = Vec::with_capacity(files.len());
        for (k, f) in files.iter().enumerate() {
            results.push(run_file(f, &settings, &mut detector, score, options.batch)?);
            eprintln!(
                "eval {name}: {}/{} {}/{} ({} rows)",
                k + 1,
                files.len(),
                f.category,
                f.name,
                f.ts.len()
            );
        }
        reports.push(report(
            &name,
            files,
            &results,
            out,
            started.elapsed().as_secs_f64(),
        )?);
    }
    let summary = render(&reports, files, &model_id);
    let md = out.join("summary.md");
    std::fs::write(&md, &summary).map_err(io(&md))?;
    let js = out.join("summary.json");
    let json = serde_json::to_string_pretty(&reports).unwrap_or_default();
    std::fs::write(&js, json).map_err(io(&js))?;
    Ok(reports)
}

/// The results table (markdown).
pub fn render(reports: &[DetectorReport], files: &[NabFile], model_id: &str) -> String {
    let windows: usize = files.iter().map(|f| f.labels.windows.len()).sum();
    let rows: usize = files.iter().map(|f| f.ts.len()).sum();
    let mut s = format!(
        "NAB scores on {} files ({rows} rows, {windows} windows); model {model_id}\n\n\
         | detector | oracle std / lowFP / lowFN | online std / lowFP / lowFN |\n|---|---|---|\n",
        files.len()
    );
    for r in reports {
        let o = |p: &str| r.oracle.get(p).map_or(f64::NAN, |x| x.0);
        let n = |p: &str| r.online.get(p).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |",
            r.name,
            o("standard"),
            o("reward_low_FP_rate"),
            o("reward_low_FN_rate"),
            n("standard"),
            n("reward_low_FP_rate"),
            n("reward_low_FN_rate")
        );
    }
    s.push_str("\noracle: one threshold per profile swept over the whole corpus (chosen with the labels); online: the service's own anomaly flag.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_z_of_a_spike() {
        let mut w = vec![1.0f32, 3.0, 1.0, 3.0];
        w.push(10.0);
        // context mean 2, std 1 -> z = 8 (the floor is negligible)
        assert!((rolling_z(&w) - 8.0).abs() < 1e-3, "{}", rolling_z(&w));
        assert!(rolling_z(&[5.0, 5.0, 5.0, 5.0]).abs() < 1e-9);
    }
}
