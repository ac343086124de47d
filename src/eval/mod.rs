//! `attnwatch eval nab`: detection quality on NAB-format data.
//!
//! Drives the service's own stages over each file in time order, with no
//! look-ahead: the [`Planner`] (window stage and run schedule), then
//! [`worker::process_batch`] (the model's forecasts, or the rolling z-score
//! baseline's, and the calibration with its online threshold). That is the
//! code path of the inference threads and of `attnwatch score`.
//!
//! Writes NAB-format result files, and a summary with the oracle (best
//! single threshold swept over the corpus) and the online (the service's
//! own anomaly flag) figures, kept apart, for the corpus and per category.

pub mod baseline;
pub mod cli;
pub mod explain;
pub mod nab;
pub mod report;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{ScoreConfig, WindowConfig};
use crate::flow::{Outgoing, Token};
use crate::ingest::decode::{FeatureSet, Sample, Values};
use crate::ingest::stage::{MessageMeta, Planner};
use crate::metrics::Metrics;
use crate::model::worker;
use crate::model::{Forecaster, ModelError};
use crate::score::{Channels, Scorer};
use crate::tools::replay::{self, ReplayError};
pub use baseline::RollingZ;
use nab::LabeledFile;
pub use report::{render, DetectorReport};

/// Errors of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{path}")]
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
    /// Metrics registry.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
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

/// Per-row outputs of one detector on one file.
#[derive(Debug, Clone, Default)]
pub struct FileResult {
    /// Continuous score in [0, 1) per row (0 before the first scored point).
    pub unit: Vec<f64>,
    /// The online alert per row: an anomalous point that opened an incident
    /// (what would page someone; later anomalous points of the same
    /// incident are not detections).
    pub flag: Vec<bool>,
    /// The strongest channel per row (an index into `Channels::NAMES`),
    /// where a point was scored.
    pub channel: Vec<Option<u8>>,
    /// Every scored grid point in time order: its row, its score in [0, 1)
    /// and whether it was past the series' probation (could alert). The
    /// oracle sweep replays the incident rule over these.
    pub points: Vec<(usize, f64, bool)>,
}

impl FileResult {
    /// The alerts per row if the threshold (in [0, 1) units) were `t`: the
    /// service's incident rule (`quiet` points) over the scored points.
    pub fn alerts_at(&self, t: f64, quiet: u32) -> Vec<bool> {
        let mut out = vec![false; self.unit.len()];
        let mut inc = crate::score::Incidents::default();
        for &(row, u, eligible) in &self.points {
            if inc.step(eligible && u >= t, 0, quiet).alert {
                if let Some(o) = out.get_mut(row) {
                    *o = true;
                }
            }
        }
        out
    }
}

/// How one detector runs: its forecaster and the service settings it
/// runs with.
pub struct Detector<'a> {
    /// Result directory name.
    pub name: String,
    /// The model, or a baseline.
    pub model: &'a mut dyn Forecaster,
    /// One run per `stride` values.
    pub stride: usize,
    /// Calibration settings.
    pub score: ScoreConfig,
}

/// Run one file through planner -> forecasts -> calibration, in time order.
///
/// The window stage puts the file on its grid; each grid point's score is
/// attributed to the last row of its bucket (the row at which all of the
/// bucket's data had arrived), so no row's result uses later rows. Other
/// rows of a shared bucket, and rows before the first scored point, get 0.
///
/// `phase` names the series (`category/file`, or `category/file#phase` for
/// a phase above 0): the name sets the stagger of the series' run schedule,
/// so phases are the same file scored with its runs at other offsets.
pub fn run_file(
    file: &NabFile,
    window: &WindowConfig,
    detector: &mut Detector<'_>,
    max_batch: usize,
    phase: usize,
) -> Result<FileResult, EvalError> {
    let c = detector.model.contract().clone();
    let settings = window.settings(c.window, c.min_points, detector.stride);
    let mut planner = Planner::new(settings, FeatureSet(None), Metrics::new()?);
    let key = if phase == 0 {
        format!("{}/{}", file.category, file.name)
    } else {
        format!("{}/{}#{phase}", file.category, file.name)
    };
    let meta = MessageMeta {
        token: Token {
            partition: -1,
            offset: -1,
            generation: 0,
        },
        kafka_ts_ms: None,
    };
    let mut jobs = Vec::new();
    for (ts, v) in file.ts.iter().zip(&file.values) {
        let sample = Sample {
            series: key.clone(),
            ts: *ts,
            values: Values::Single(*v as f32),
            labels: BTreeMap::new(),
        };
        // Event time doubles as the clock: idle eviction follows the data.
        jobs.extend(planner.place_sample(sample, meta, *ts));
    }
    jobs.extend(planner.flush(&key, meta));
    let interval = jobs
        .iter()
        .find_map(|j| j.features.iter().find_map(|f| f.run.as_ref()))
        .map_or(1, |w| w.interval.max(1));
    let mut scorer = Scorer::new(detector.score.clone(), 1);
    let (items, stats) = worker::process_batch(detector.model, &mut scorer, jobs, max_batch, None);
    if stats.failed_calls > 0 {
        return Err(EvalError::Model(ModelError::Run(format!(
            "{} inference calls failed on {key}",
            stats.failed_calls
        ))));
    }
    let mut result = FileResult {
        unit: vec![0.0; file.ts.len()],
        flag: vec![false; file.ts.len()],
        channel: vec![None; file.ts.len()],
        points: Vec::new(),
    };
    let probation = detector.score.probation;
    for item in items {
        let Outgoing::Point(p) = item else { continue };
        let end = p.ts.saturating_add(interval);
        let last_row = file.ts.partition_point(|t| *t < end);
        let Some(driver) = p.driver() else { continue };
        let Some(row) = last_row.checked_sub(1) else {
            continue;
        };
        let s = &driver.scored;
        let eligible = result.points.len() >= probation;
        result.points.push((row, s.unit(), eligible));
        let strongest = Channels::NAMES
            .iter()
            .position(|n| *n == s.channels.strongest())
            .map(|i| i as u8);
        if s.alert || !result.flag[row] {
            result.channel[row] = strongest;
        }
        result.unit[row] = result.unit[row].max(s.unit());
        result.flag[row] |= s.alert;
    }
    Ok(result)
}

/// How an evaluation runs, beyond the service's own config.
#[derive(Debug, Clone)]
pub struct Options {
    /// Contexts per inference call (the service's `model.max_batch`).
    pub batch: usize,
    /// Rolling z-score baselines with these window lengths, reported as
    /// `baseline_zscore_w<W>` (384 is the yardstick the issue fixes).
    pub baseline_windows: Vec<usize>,
    /// The model at these strides (the first is reported as `attnwatch`,
    /// the others as `attnwatch_stride<S>`).
    pub strides: Vec<usize>,
    /// Also run the calibration ablations of the model (channels off).
    pub ablation: bool,
    /// Run phases per file (1: one; more: the file is scored once per
    /// phase, with its runs staggered differently, and the figures are for
    /// all phases together).
    pub phases: usize,
    /// Also write the diagnosis (`explain.md`, `explain.json` in each
    /// main detector's result directory: the baselines and `attnwatch`).
    pub explain: bool,
}

/// The calibration variants of the ablation: (suffix, config). For each
/// channel of the configured set: the set without it (what it adds) and
/// the channel alone (what it catches by itself); then the forecast
/// channels together (the model before the range and the memory).
pub fn ablations(base: &ScoreConfig) -> Vec<(String, ScoreConfig)> {
    use crate::config::Channel;
    let with = |channels: Vec<Channel>| ScoreConfig {
        channels,
        ..base.clone()
    };
    let name = |c: Channel| format!("{c:?}").to_lowercase();
    let mut out = Vec::new();
    for &c in &base.channels {
        let rest: Vec<Channel> = base.channels.iter().copied().filter(|x| *x != c).collect();
        if !rest.is_empty() {
            out.push((format!("without_{}", name(c)), with(rest)));
        }
        out.push((format!("only_{}", name(c)), with(vec![c])));
    }
    let forecast: Vec<Channel> = base
        .channels
        .iter()
        .copied()
        .filter(|c| !matches!(c, Channel::Range | Channel::Memory))
        .collect();
    if !forecast.is_empty() && forecast.len() < base.channels.len() {
        out.push(("forecast_channels".to_string(), with(forecast)));
    }
    out
}

/// The yardstick's calibration: the service's settings with the channels
/// a rolling z-score has (the forecast surprise's point, run and shift),
/// so that it measures what the model and the other channels add.
pub fn baseline_score(base: &ScoreConfig) -> ScoreConfig {
    use crate::config::Channel::{Point, Run, Shift};
    ScoreConfig {
        channels: vec![Point, Run, Shift],
        ..base.clone()
    }
}

/// Evaluate the baseline(s) and the model on every file of `files`; write
/// results and `summary.md` / `summary.json` under `out`.
pub fn run(
    files: &[NabFile],
    model: &mut dyn Forecaster,
    window: &WindowConfig,
    score: &ScoreConfig,
    options: &Options,
    out: &Path,
) -> Result<Vec<DetectorReport>, EvalError> {
    let model_id = model.contract().id();
    let mut reports = Vec::new();
    // One detector: a model (or baseline) at a stride with a calibration.
    let mut run_one = |name: String,
                       model: &mut dyn Forecaster,
                       stride: usize,
                       score: ScoreConfig,
                       explain: bool|
     -> Result<(), EvalError> {
        let mut d = Detector {
            name,
            model,
            stride,
            score,
        };
        let explain = explain && options.explain;
        let report = evaluate(
            files,
            window,
            &mut d,
            options.batch,
            options.phases,
            explain,
            out,
        )?;
        reports.push(report);
        Ok(())
    };
    for &bw in &options.baseline_windows {
        // The yardstick scores from the 16th value, as it always has.
        let mut b = RollingZ::new(bw, 16);
        let name = format!("baseline_zscore_w{bw}");
        run_one(name.clone(), &mut b, 1, baseline_score(score), true)?;
    }
    for (i, &stride) in options.strides.iter().enumerate() {
        let name = if i == 0 {
            "attnwatch".to_string()
        } else {
            format!("attnwatch_stride{stride}")
        };
        run_one(name.clone(), &mut *model, stride, score.clone(), i == 0)?;
        if options.ablation && i == 0 {
            for (suffix, cfg) in ablations(score) {
                run_one(format!("{name}_{suffix}"), &mut *model, stride, cfg, false)?;
            }
        }
    }
    let mut summary = render(&reports, files, &model_id);
    if options.phases > 1 {
        summary.push_str(&format!(
            "\nEvery figure is for {} run phases of each file together (the file scored once per phase, its runs staggered differently).\n",
            options.phases
        ));
    }
    let md = out.join("summary.md");
    std::fs::write(&md, &summary).map_err(io(&md))?;
    let js = out.join("summary.json");
    let json = serde_json::to_string_pretty(&reports).unwrap_or_default();
    std::fs::write(&js, json).map_err(io(&js))?;
    Ok(reports)
}

/// Run one detector over every file and score it; with `explain`, also
/// write its diagnosis.
pub fn evaluate(
    files: &[NabFile],
    window: &WindowConfig,
    detector: &mut Detector<'_>,
    batch: usize,
    phases: usize,
    explain: bool,
    out: &Path,
) -> Result<DetectorReport, EvalError> {
    let started = Instant::now();
    let mut all_files = Vec::with_capacity(files.len() * phases.max(1));
    let mut results = Vec::with_capacity(files.len() * phases.max(1));
    for phase in 0..phases.max(1) {
        for (k, f) in files.iter().enumerate() {
            results.push(run_file(f, window, detector, batch, phase)?);
            all_files.push(f.clone());
            eprintln!(
                "eval {} (phase {phase}): {}/{} {}/{} ({} rows)",
                detector.name,
                k + 1,
                files.len(),
                f.category,
                f.name,
                f.ts.len()
            );
        }
    }
    // NAB result files: the first phase.
    write_results(&detector.name, files, &results[..files.len()], out)?;
    if explain {
        let e = explain::diagnose(
            &detector.name,
            files,
            &results,
            phases.max(1),
            detector.score.threshold,
        );
        let dir = out.join(&detector.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let md = dir.join("explain.md");
        std::fs::write(&md, explain::render(&e)).map_err(io(&md))?;
        let js = dir.join("explain.json");
        let json = serde_json::to_string_pretty(&e).unwrap_or_default();
        std::fs::write(&js, json).map_err(io(&js))?;
    }
    let c = detector.model.contract();
    let runs_per_point = 1.0 / detector.stride.max(1) as f64;
    Ok(report::score(
        &detector.name,
        &all_files,
        &results,
        detector.score.incident_quiet,
        phases.max(1),
        started.elapsed().as_secs_f64(),
        c.flops_per_run as f64 * runs_per_point,
    ))
}

/// Write NAB-format result files: `<name>/` with scores in [0, 1) and
/// `<name>_online/` with the 0/1 flags.
fn write_results(
    name: &str,
    files: &[NabFile],
    results: &[FileResult],
    out: &Path,
) -> Result<(), EvalError> {
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
    Ok(())
}
