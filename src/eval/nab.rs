//! The NAB scoring rules, re-implemented from `nab-dev/README.md`.
//!
//! Pure. A file is its row count plus its labelled windows as inclusive row
//! ranges; a detector's output is one boolean per row (a threshold turns
//! continuous scores into detections). The rules:
//! - rows in the probationary period (the first 15% of the file, at most 750
//!   rows) are ignored;
//! - each window rewards only its first detection, at relative position
//!   `y = -(r - i + 1) / w`, with `A_tp * s(y) / s(-1)` where
//!   `s(y) = 2 / (1 + exp(5y)) - 1`; a window without detection costs `A_fn`;
//! - a detection outside every window is a false positive: `A_fp * s(y)`
//!   with `y = |i - r'| / (w' - 1)` relative to the preceding window
//!   (`-A_fp` once `y > 3`, or when no window precedes it);
//! - totals are normalised as `100 (S - S_null) / (S_perfect - S_null)`.

/// An application profile: the weights (A_tp, A_fp, A_fn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Name as NAB writes it.
    pub name: &'static str,
    /// Reward of a detection at a window's first row.
    pub a_tp: f64,
    /// Cost of a false positive far from any window.
    pub a_fp: f64,
    /// Cost of a missed window.
    pub a_fn: f64,
}

/// The three NAB profiles: standard, reward_low_FP_rate, reward_low_FN_rate.
pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        a_tp: 1.0,
        a_fp: 0.11,
        a_fn: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        a_tp: 1.0,
        a_fp: 0.22,
        a_fn: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        a_tp: 1.0,
        a_fp: 0.11,
        a_fn: 2.0,
    },
];

/// One labelled file.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledFile {
    /// Number of rows.
    pub rows: usize,
    /// Anomaly windows as inclusive row ranges, sorted, not overlapping.
    pub windows: Vec<(usize, usize)>,
}

/// NAB's scaled sigmoid.
pub fn sigmoid(y: f64) -> f64 {
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// Rows of the probationary period.
pub fn probation(rows: usize) -> usize {
    ((rows as f64 * 0.15).floor() as usize).min(750)
}

/// Map window timestamps to inclusive row ranges over sorted row timestamps.
/// A window with no row inside it is dropped.
pub fn windows_to_rows(ts: &[i64], windows: &[(i64, i64)]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = windows
        .iter()
        .filter_map(|&(start, end)| {
            let l = ts.partition_point(|t| *t < start);
            let r = ts.partition_point(|t| *t <= end);
            (r > l).then(|| (l, r - 1))
        })
        .collect();
    out.sort_unstable();
    out
}

impl LabeledFile {
    /// Raw score of `detections` (one per row) under `p`.
    pub fn score(&self, detections: &[bool], p: &Profile) -> f64 {
        let start = probation(self.rows);
        let mut first_hit: Vec<Option<usize>> = vec![None; self.windows.len()];
        let mut total = 0.0;
        let mut w = 0; // index of the first window whose end is >= i
        for (i, &hit) in detections.iter().enumerate().take(self.rows) {
            while w < self.windows.len() && self.windows[w].1 < i {
                w += 1;
            }
            if !hit || i < start {
                continue;
            }
            match self.windows.get(w) {
                Some(&(l, _)) if l <= i => {
                    if first_hit[w].is_none() {
                        first_hit[w] = Some(i);
                    }
                }
                _ => total += self.false_positive(i, w, p),
            }
        }
        for (k, &(l, r)) in self.windows.iter().enumerate() {
            total += match first_hit[k] {
                Some(i) => {
                    let width = (r - l + 1) as f64;
                    let y = -((r - i + 1) as f64) / width;
                    p.a_tp * sigmoid(y) / sigmoid(-1.0)
                }
                None => -p.a_fn,
            };
        }
        total
    }

    /// Cost of a false positive at row `i`; `next` is the index of the first
    /// window ending at or after `i` (so `next - 1` precedes it).
    fn false_positive(&self, i: usize, next: usize, p: &Profile) -> f64 {
        let Some(&(l, r)) = next.checked_sub(1).and_then(|k| self.windows.get(k)) else {
            return -p.a_fp;
        };
        let width = r - l + 1;
        if width < 2 {
            return -p.a_fp;
        }
        let y = (i - r) as f64 / (width - 1) as f64;
        if y > 3.0 {
            -p.a_fp
        } else {
            p.a_fp * sigmoid(y)
        }
    }
}

/// Normalise a corpus total: 0 for the null detector, 100 for the perfect one.
pub fn normalise(total: f64, windows: usize, p: &Profile) -> f64 {
    let null = -p.a_fn * windows as f64;
    let perfect = p.a_tp * windows as f64;
    if perfect == null {
        return 0.0;
    }
    100.0 * (total - null) / (perfect - null)
}

/// Normalised corpus score of per-file detections.
pub fn corpus_score(files: &[(&LabeledFile, Vec<bool>)], p: &Profile) -> f64 {
    let total: f64 = files.iter().map(|(f, d)| f.score(d, p)).sum();
    let windows: usize = files.iter().map(|(f, _)| f.windows.len()).sum();
    normalise(total, windows, p)
}

/// Sweep one threshold over the whole corpus (the oracle figure NAB
/// publishes): `detect(t)` gives every file's detections at threshold `t`,
/// and the thresholds tried are `tries.0` spread over the ranks of
/// `scores`, their `tries.1` highest distinct values, `extra`, and "detect
/// nothing". Returns (best normalised score, its threshold).
pub fn sweep<'a>(
    scores: impl Iterator<Item = f64>,
    tries: (usize, usize),
    extra: &[f64],
    p: &Profile,
    detect: impl Fn(f64) -> Vec<(&'a LabeledFile, Vec<bool>)>,
) -> (f64, f64) {
    let mut all: Vec<f64> = scores.filter(|x| x.is_finite()).collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    let n = all.len();
    let spread = tries.0.min(n);
    let mut candidates: Vec<f64> = (0..spread).map(|k| all[k * n / spread.max(1)]).collect();
    candidates.extend(all.iter().rev().take(tries.1));
    candidates.extend_from_slice(extra);
    candidates.push(f64::INFINITY); // detect nothing
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let mut best = (f64::NEG_INFINITY, f64::INFINITY);
    for &t in &candidates {
        let score = corpus_score(&detect(t), p);
        if score > best.0 {
            best = (score, t);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Profile = PROFILES[0];

    fn file() -> LabeledFile {
        // 100 rows: probation = 15; one window at rows 40..=49 (w = 10).
        LabeledFile {
            rows: 100,
            windows: vec![(40, 49)],
        }
    }

    fn hits(rows: usize, at: &[usize]) -> Vec<bool> {
        (0..rows).map(|i| at.contains(&i)).collect()
    }

    #[test]
    fn detection_at_a_windows_first_row_earns_exactly_a_tp() {
        let s = file().score(&hits(100, &[40]), &STD);
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        // Only the first detection counts; later ones inside are free.
        let s2 = file().score(&hits(100, &[40, 41, 49]), &STD);
        assert_eq!(s, s2);
        // Later in the window earns less: at the last row, y = -1/10.
        let late = file().score(&hits(100, &[49]), &STD);
        assert!((late - sigmoid(-0.1) / sigmoid(-1.0)).abs() < 1e-12);
        assert!(late < 0.5 && late > 0.0);
    }

    #[test]
    fn the_null_detector_scores_minus_a_fn_per_window() {
        let f = LabeledFile {
            rows: 1000,
            windows: vec![(300, 310), (600, 650)],
        };
        for p in PROFILES {
            assert_eq!(f.score(&vec![false; 1000], &p), -2.0 * p.a_fn);
            assert_eq!(normalise(-2.0 * p.a_fn, 2, &p), 0.0);
            assert_eq!(normalise(2.0 * p.a_tp, 2, &p), 100.0);
        }
    }

    #[test]
    fn false_positives_are_weighted_by_distance_after_a_window() {
        let f = file();
        // Row 54: y = (54 - 49) / (10 - 1) = 5/9; the window itself was missed.
        let s = f.score(&hits(100, &[54]), &STD);
        let want = 0.11 * sigmoid(5.0 / 9.0) - 1.0;
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
        // Right after the window the cost is small; beyond y = 3 it is the full A_fp.
        let near = f.score(&hits(100, &[50]), &STD) + 1.0;
        // y = 1/9: s(y) = -0.2706, so the cost is about 0.03.
        assert!(
            (near - 0.11 * sigmoid(1.0 / 9.0)).abs() < 1e-12 && near > -0.11 * 0.3,
            "{near}"
        );
        let far = f.score(&hits(100, &[49 + 28]), &STD) + 1.0; // y = 28/9 > 3
        assert!((far + 0.11).abs() < 1e-12);
        // With no window before it, a false positive costs A_fp.
        let before = f.score(&hits(100, &[20]), &STD) + 1.0;
        assert!((before + 0.11).abs() < 1e-12);
    }

    #[test]
    fn detections_in_probation_are_ignored() {
        let f = LabeledFile {
            rows: 100,
            windows: vec![(5, 12)],
        };
        // Probation is 15 rows: the window's rows are all in it.
        assert_eq!(f.score(&hits(100, &[5, 14]), &STD), -1.0);
        assert_eq!(probation(100), 15);
        assert_eq!(probation(100_000), 750);
    }

    #[test]
    fn windows_map_to_rows_inclusively() {
        let ts: Vec<i64> = (0..10).map(|i| i * 10).collect();
        assert_eq!(
            windows_to_rows(&ts, &[(15, 45), (90, 200), (300, 400)]),
            vec![(2, 4), (9, 9)]
        );
    }

    #[test]
    fn sweep_finds_the_threshold_that_catches_the_window_early() {
        let f = file();
        let mut scores = vec![0.1; 100];
        scores[40] = 0.9;
        scores[70] = 0.5;
        let (best, t) = sweep(scores.iter().copied(), (1500, 500), &[], &STD, |t| {
            vec![(&f, scores.iter().map(|x| *x >= t).collect())]
        });
        assert!((best - 100.0).abs() < 1e-9, "{best}");
        assert!(t > 0.5 && t <= 0.9);
    }
}
