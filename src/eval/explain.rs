//! `eval nab --explain`: a diagnosis per labelled window and per file.
//!
//! Pure. For every window: in how many phases an alert caught it, where
//! the first alert fell inside it (a fraction: 0 at its first row, 1 past
//! its last), which channel raised it, and, where it was missed, the
//! highest score inside it. For every file: its false positives (alerts
//! outside every window, after NAB's probation) by channel. Written as
//! `explain.md` and `explain.json` beside the summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::nab;
use super::{FileResult, NabFile};
use crate::flow::Channels;

/// The diagnosis of one labelled window over every phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowDiagnosis {
    /// `category/file`.
    pub file: String,
    /// Window index within the file.
    pub window: usize,
    /// Its rows (inclusive).
    pub rows: (usize, usize),
    /// Phases in which an alert caught it.
    pub caught: usize,
    /// Phases scored.
    pub phases: usize,
    /// Mean position of the first alert inside it, over the phases that
    /// caught it.
    pub position: Option<f64>,
    /// Channel of the first alert -> phases.
    pub channels: BTreeMap<String, usize>,
    /// Over the phases that missed it: the highest score inside it (in
    /// score units: the threshold is 1.0 by default).
    pub missed_max_score: Option<f64>,
}

/// The false positives of one file over every phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileFalsePositives {
    /// `category/file`.
    pub file: String,
    /// Alerts outside every window after probation, all phases together.
    pub count: usize,
    /// Channel -> alerts.
    pub channels: BTreeMap<String, usize>,
}

/// The whole diagnosis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explain {
    /// Detector name.
    pub detector: String,
    /// One entry per labelled window.
    pub windows: Vec<WindowDiagnosis>,
    /// One entry per file.
    pub false_positives: Vec<FileFalsePositives>,
}

fn channel_name(c: Option<u8>) -> String {
    c.and_then(|i| Channels::NAMES.get(usize::from(i)))
        .map_or("?", |n| n)
        .to_string()
}

/// Diagnose `results`, which hold `phases` rounds of `files` (phase-major,
/// as `evaluate` scores them); `threshold` turns [0, 1) units back into
/// scores.
pub fn diagnose(
    detector: &str,
    files: &[NabFile],
    results: &[FileResult],
    phases: usize,
    threshold: f64,
) -> Explain {
    let n = files.len();
    let mut windows = Vec::new();
    let mut fps = Vec::new();
    for (k, f) in files.iter().enumerate() {
        let start = nab::probation(f.labels.rows);
        let name = format!("{}/{}", f.category, f.name);
        let runs: Vec<&FileResult> = (0..phases)
            .filter_map(|ph| results.get(ph * n + k))
            .collect();
        for (w, &(l, r)) in f.labels.windows.iter().enumerate() {
            let mut d = WindowDiagnosis {
                file: name.clone(),
                window: w,
                rows: (l, r),
                caught: 0,
                phases: runs.len(),
                position: None,
                channels: BTreeMap::new(),
                missed_max_score: None,
            };
            let mut pos_sum = 0.0;
            let from = l.max(start);
            for res in &runs {
                let first = (from..=r).find(|&i| res.flag.get(i).copied().unwrap_or(false));
                match first {
                    Some(i) => {
                        d.caught += 1;
                        pos_sum += (i - l) as f64 / (r - l + 1) as f64;
                        *d.channels.entry(channel_name(res.channel[i])).or_default() += 1;
                    }
                    None => {
                        let u = (from..=r)
                            .filter_map(|i| res.unit.get(i))
                            .fold(0.0f64, |a, b| a.max(*b));
                        let s = threshold * u / (1.0 - u).max(1e-12);
                        d.missed_max_score = Some(d.missed_max_score.map_or(s, |m: f64| m.max(s)));
                    }
                }
            }
            if d.caught > 0 {
                d.position = Some(pos_sum / d.caught as f64);
            }
            windows.push(d);
        }
        let inside = |i: usize| f.labels.windows.iter().any(|&(l, r)| l <= i && i <= r);
        let mut fp = FileFalsePositives {
            file: name,
            count: 0,
            channels: BTreeMap::new(),
        };
        for res in &runs {
            for (i, _) in res
                .flag
                .iter()
                .enumerate()
                .skip(start)
                .filter(|(i, a)| **a && !inside(*i))
            {
                fp.count += 1;
                *fp.channels.entry(channel_name(res.channel[i])).or_default() += 1;
            }
        }
        fps.push(fp);
    }
    Explain {
        detector: detector.to_string(),
        windows,
        false_positives: fps,
    }
}

fn counts(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The diagnosis as markdown: a summary, every window, every file's false
/// positives.
pub fn render(e: &Explain) -> String {
    let total = e.windows.len();
    let phases = e.windows.first().map_or(1, |w| w.phases.max(1));
    let caught: usize = e.windows.iter().map(|w| w.caught).sum();
    let mut by_channel: BTreeMap<String, usize> = BTreeMap::new();
    for w in &e.windows {
        for (c, k) in &w.channels {
            *by_channel.entry(c.clone()).or_default() += k;
        }
    }
    let mut fp_by_channel: BTreeMap<String, usize> = BTreeMap::new();
    for f in &e.false_positives {
        for (c, k) in &f.channels {
            *fp_by_channel.entry(c.clone()).or_default() += k;
        }
    }
    let fp_total: usize = e.false_positives.iter().map(|f| f.count).sum();
    let positions: Vec<f64> = e.windows.iter().filter_map(|w| w.position).collect();
    let mean_pos = positions.iter().sum::<f64>() / positions.len().max(1) as f64;
    let mut s = format!(
        "# Diagnosis of {} ({phases} phase(s))\n\n\
         Windows caught: {caught} of {} ({:.1} per phase of {total}); first alert at {:.2} of the window on average.\n\
         Channels that caught them: {}.\n\
         False positives: {fp_total} ({:.1} per phase); by channel: {}.\n\n\
         | file | window (rows) | caught | position | channel | highest score when missed |\n|---|---|---|---|---|---|\n",
        e.detector,
        total * phases,
        caught as f64 / phases as f64,
        mean_pos,
        counts(&by_channel),
        fp_total as f64 / phases as f64,
        counts(&fp_by_channel),
    );
    for w in &e.windows {
        let _ = writeln!(
            s,
            "| {} | {} ({}..{}) | {}/{} | {} | {} | {} |",
            w.file,
            w.window,
            w.rows.0,
            w.rows.1,
            w.caught,
            w.phases,
            w.position.map_or("-".into(), |p| format!("{p:.2}")),
            counts(&w.channels),
            w.missed_max_score.map_or("-".into(), |m| format!("{m:.2}"))
        );
    }
    s.push_str("\n| file | false positives | by channel |\n|---|---|---|\n");
    for f in &e.false_positives {
        let _ = writeln!(s, "| {} | {} | {} |", f.file, f.count, counts(&f.channels));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::nab::LabeledFile;

    fn file(rows: usize, windows: Vec<(usize, usize)>) -> NabFile {
        NabFile {
            category: "cat".into(),
            name: "f.csv".into(),
            ts: (0..rows as i64).collect(),
            ts_text: vec![String::new(); rows],
            values: vec![0.0; rows],
            labels: LabeledFile { rows, windows },
        }
    }

    fn result(rows: usize, alerts: &[(usize, u8)], units: &[(usize, f64)]) -> FileResult {
        let mut r = FileResult {
            unit: vec![0.0; rows],
            flag: vec![false; rows],
            channel: vec![None; rows],
            points: Vec::new(),
        };
        for &(i, c) in alerts {
            r.flag[i] = true;
            r.channel[i] = Some(c);
        }
        for &(i, u) in units {
            r.unit[i] = u;
        }
        r
    }

    #[test]
    fn windows_are_caught_or_missed_and_false_positives_are_counted() {
        // 100 rows: probation 15; window 40..=49.
        let f = file(100, vec![(40, 49)]);
        // Phase 0: a range alert at row 45 and a memory FP at 70; phase 1:
        // nothing in the window (its highest unit 0.4 is score 0.667), an
        // FP at 10 (in probation: ignored).
        let p0 = result(100, &[(45, 4), (70, 5)], &[]);
        let p1 = result(100, &[(10, 0)], &[(44, 0.4)]);
        let e = diagnose("d", std::slice::from_ref(&f), &[p0, p1], 2, 1.0);
        let w = &e.windows[0];
        assert_eq!((w.caught, w.phases), (1, 2));
        assert_eq!(w.position, Some(0.5));
        assert_eq!(w.channels.get("range"), Some(&1));
        assert!((w.missed_max_score.unwrap() - 0.4 / 0.6).abs() < 1e-9);
        let fp = &e.false_positives[0];
        assert_eq!(fp.count, 1);
        assert_eq!(fp.channels.get("memory"), Some(&1));
        let md = render(&e);
        assert!(
            md.contains("| cat/f.csv | 0 (40..49) | 1/2 | 0.50 | range 1 | 0.67 |"),
            "{md}"
        );
    }
}
