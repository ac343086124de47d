//! Scoring detector results with the NAB rules, and the summary tables.
//!
//! Oracle figures use one threshold per profile swept over the whole corpus
//! (they use the labels), with the alerts that threshold would raise under
//! the service's incident rule; online figures use the service's own
//! alerts. Both count alerts (incident openings), not every anomalous
//! point: an alert is what pages someone. Per
//! category, the oracle figure keeps the corpus threshold (a per-category
//! threshold would be a stronger oracle still). A category without labelled
//! windows (artificialNoAnomaly) has no normalised score: its false
//! positives are counted instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::nab::{self, LabeledFile, PROFILES};
use super::{FileResult, NabFile};

/// Figures of one category under the standard profile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CategoryFigures {
    /// Labelled windows in the category.
    pub windows: usize,
    /// Normalised score at the corpus oracle threshold (None without windows).
    pub oracle: Option<f64>,
    /// Normalised score of the online flags (None without windows).
    pub online: Option<f64>,
    /// Detections outside windows after probation, at the oracle threshold.
    pub oracle_fp: usize,
    /// The same for the online flags.
    pub online_fp: usize,
    /// Windows detected at the oracle threshold.
    pub oracle_tp: usize,
    /// Windows detected by the online flags.
    pub online_tp: usize,
}

/// Oracle and online figures of one detector.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DetectorReport {
    /// Detector name (the result directory name).
    pub name: String,
    /// Profile -> (normalised score, threshold) with the best corpus threshold.
    pub oracle: BTreeMap<String, (f64, f64)>,
    /// Profile -> normalised score of the online flags.
    pub online: BTreeMap<String, f64>,
    /// Category -> standard-profile figures.
    pub categories: BTreeMap<String, CategoryFigures>,
    /// Seconds spent.
    pub seconds: f64,
    /// Model FLOPs per scored point (the model's per-run FLOPs / stride).
    pub flops_per_point: f64,
    /// Online standard score of each run phase on its own (one entry per
    /// phase; the corpus figure scores all phases together).
    pub online_by_phase: Vec<f64>,
}

/// (true positives, false positives) of `detections` on `f`, after probation.
fn counts(f: &LabeledFile, detections: &[bool]) -> (usize, usize) {
    let start = nab::probation(f.rows);
    let inside = |i: usize| f.windows.iter().any(|&(l, r)| l <= i && i <= r);
    let fp = detections
        .iter()
        .enumerate()
        .skip(start)
        .filter(|(i, d)| **d && !inside(*i))
        .count();
    let tp = f
        .windows
        .iter()
        .filter(|&&(l, r)| (l.max(start)..=r).any(|i| detections.get(i).copied().unwrap_or(false)))
        .count();
    (tp, fp)
}

/// The oracle: the threshold (in [0, 1) units) that maximises the corpus
/// score of the alerts it would raise under the incident rule, with the
/// service's own threshold (score 1.0 is 0.5 in these units) among those
/// tried. Returns (best normalised score, its threshold).
pub fn sweep_alerts(
    files: &[NabFile],
    results: &[FileResult],
    p: &nab::Profile,
    quiet: u32,
) -> (f64, f64) {
    let scores = results
        .iter()
        .flat_map(|r| r.points.iter().filter(|x| x.2).map(|x| x.1));
    // 900 thresholds: each replays the incident rule over every point.
    nab::sweep(scores, (600, 300), &[0.5], p, |t| {
        files
            .iter()
            .zip(results)
            .map(|(f, r)| (&f.labels, r.alerts_at(t, quiet)))
            .collect()
    })
}

/// Score one detector's results; `quiet` is the incident rule's
/// `score.incident_quiet`, `phases` the number of run phases `files` holds
/// one after another.
pub fn score(
    name: &str,
    files: &[NabFile],
    results: &[FileResult],
    quiet: u32,
    phases: usize,
    seconds: f64,
    flops_per_point: f64,
) -> DetectorReport {
    let mut oracle = BTreeMap::new();
    let mut online = BTreeMap::new();
    for p in PROFILES {
        oracle.insert(p.name.to_string(), sweep_alerts(files, results, &p, quiet));
        let flags: Vec<(&LabeledFile, Vec<bool>)> = files
            .iter()
            .zip(results)
            .map(|(f, r)| (&f.labels, r.flag.clone()))
            .collect();
        online.insert(p.name.to_string(), nab::corpus_score(&flags, &p));
    }
    let standard = PROFILES[0];
    let threshold = oracle.get(standard.name).map_or(f64::INFINITY, |x| x.1);
    let mut categories = BTreeMap::new();
    let mut names: Vec<&str> = files.iter().map(|f| f.category.as_str()).collect();
    names.dedup();
    for cat in names {
        let mine: Vec<(&NabFile, &FileResult)> = files
            .iter()
            .zip(results)
            .filter(|(f, _)| f.category == cat)
            .collect();
        let windows: usize = mine.iter().map(|(f, _)| f.labels.windows.len()).sum();
        let at_oracle: Vec<(&LabeledFile, Vec<bool>)> = mine
            .iter()
            .map(|(f, r)| (&f.labels, r.alerts_at(threshold, quiet)))
            .collect();
        let flags: Vec<(&LabeledFile, Vec<bool>)> = mine
            .iter()
            .map(|(f, r)| (&f.labels, r.flag.clone()))
            .collect();
        let sum = |d: &[(&LabeledFile, Vec<bool>)]| {
            d.iter().fold((0, 0), |acc, (f, x)| {
                let (tp, fp) = counts(f, x);
                (acc.0 + tp, acc.1 + fp)
            })
        };
        let (oracle_tp, oracle_fp) = sum(&at_oracle);
        let (online_tp, online_fp) = sum(&flags);
        categories.insert(
            cat.to_string(),
            CategoryFigures {
                windows,
                oracle: (windows > 0).then(|| nab::corpus_score(&at_oracle, &standard)),
                online: (windows > 0).then(|| nab::corpus_score(&flags, &standard)),
                oracle_fp,
                online_fp,
                oracle_tp,
                online_tp,
            },
        );
    }
    let per_phase = files.len() / phases.max(1);
    let online_by_phase = if phases > 1 && per_phase > 0 {
        files
            .chunks(per_phase)
            .zip(results.chunks(per_phase))
            .map(|(fs, rs)| {
                let flags: Vec<(&LabeledFile, Vec<bool>)> = fs
                    .iter()
                    .zip(rs)
                    .map(|(f, r)| (&f.labels, r.flag.clone()))
                    .collect();
                nab::corpus_score(&flags, &standard)
            })
            .collect()
    } else {
        Vec::new()
    };
    DetectorReport {
        name: name.to_string(),
        oracle,
        online,
        categories,
        seconds,
        flops_per_point,
        online_by_phase,
    }
}

/// The results tables (markdown): the corpus, then each category.
pub fn render(reports: &[DetectorReport], files: &[NabFile], model_id: &str) -> String {
    let windows: usize = files.iter().map(|f| f.labels.windows.len()).sum();
    let rows: usize = files.iter().map(|f| f.ts.len()).sum();
    let mut s = format!(
        "NAB scores on {} files ({rows} rows, {windows} windows); model {model_id}\n\n\
         | detector | oracle std / lowFP / lowFN | online std / lowFP / lowFN | MFLOP/point | seconds |\n|---|---|---|---|---|\n",
        files.len()
    );
    for r in reports {
        let o = |p: &str| r.oracle.get(p).map_or(f64::NAN, |x| x.0);
        let n = |p: &str| r.online.get(p).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.3} | {:.1} |",
            r.name,
            o("standard"),
            o("reward_low_FP_rate"),
            o("reward_low_FN_rate"),
            n("standard"),
            n("reward_low_FP_rate"),
            n("reward_low_FN_rate"),
            r.flops_per_point / 1e6,
            r.seconds
        );
    }
    let cats: Vec<String> = reports
        .first()
        .map(|r| r.categories.keys().cloned().collect())
        .unwrap_or_default();
    if !cats.is_empty() {
        s.push_str("\nPer category, standard profile, oracle (corpus threshold) / online; windows caught and false positives after probation as (TP/windows, FP). A category without windows has no normalised score.\n\n| detector |");
        for c in &cats {
            let _ = write!(s, " {c} |");
        }
        s.push_str(" worst |\n|---|");
        for _ in &cats {
            s.push_str("---|");
        }
        s.push_str("---|\n");
        for r in reports {
            let _ = write!(s, "| {} |", r.name);
            let mut worst: Option<(f64, f64)> = None;
            for c in &cats {
                let Some(f) = r.categories.get(c) else {
                    s.push_str(" |");
                    continue;
                };
                match (f.oracle, f.online) {
                    (Some(o), Some(n)) => {
                        worst = Some(worst.map_or((o, n), |(a, b)| (a.min(o), b.min(n))));
                        let _ = write!(
                            s,
                            " {o:.1} / {n:.1} ({}/{}, {}; {}/{}, {}) |",
                            f.oracle_tp,
                            f.windows,
                            f.oracle_fp,
                            f.online_tp,
                            f.windows,
                            f.online_fp
                        );
                    }
                    _ => {
                        let _ = write!(s, " FP {} / {} |", f.oracle_fp, f.online_fp);
                    }
                }
            }
            match worst {
                Some((o, n)) => {
                    let _ = writeln!(s, " {o:.1} / {n:.1} |");
                }
                None => s.push_str(" |\n"),
            }
        }
    }
    for r in reports.iter().filter(|r| !r.online_by_phase.is_empty()) {
        let v = &r.online_by_phase;
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let each: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        let _ = writeln!(
            s,
            "\n{}: online standard of each phase alone: {} (range {lo:.1} to {hi:.1}; phase 0 is the 1-phase figure).",
            r.name,
            each.join(", ")
        );
    }
    s.push_str("\noracle: one threshold per profile swept over the whole corpus (chosen with the labels), alerts raised by the service's incident rule at that threshold; online: the service's own alerts (anomalous points that open an incident).\n");
    s
}
