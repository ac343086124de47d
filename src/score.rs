//! Score stage: from the model's raw score to a calibrated, normalised score.
//!
//! Pure: no I/O. Each series key keeps a rolling history of its own recent raw
//! scores. The raw threshold is the robust band `median + band * 1.4826 * MAD`
//! of that history, floored at `min_raw_threshold`; the published score is
//! `raw / raw_threshold`, so a score above 1.0 means anomalous (as in
//! vmanomaly). No alert is raised until a series has `probation` scored points.
//!
//! The calibration is computed from the history *before* the current point is
//! added, so a point cannot mask itself.

use std::collections::HashMap;

use crate::config::ScoreConfig;

/// The score of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Normalised score: above `threshold` means anomalous.
    pub score: f64,
    /// The normalised threshold (from config).
    pub threshold: f64,
    /// `score > threshold` and the series is past probation.
    pub anomaly: bool,
    /// The model's raw score (its surprise at the point).
    pub raw_score: f64,
}

/// Rolling calibration state of one series.
#[derive(Debug, Clone)]
pub struct Calibration {
    history: Vec<f32>,
    next: usize,
    seen: u64,
}

impl Calibration {
    fn new(capacity: usize) -> Self {
        Calibration {
            history: Vec::with_capacity(capacity),
            next: 0,
            seen: 0,
        }
    }

    /// The raw-score threshold implied by the history so far.
    fn raw_threshold(&self, cfg: &ScoreConfig) -> f64 {
        if self.history.len() < 8 {
            return cfg.min_raw_threshold;
        }
        let mut buf: Vec<f32> = self.history.clone();
        let median = quantile_mid(&mut buf);
        for v in buf.iter_mut() {
            *v = (*v - median).abs();
        }
        let mad = quantile_mid(&mut buf);
        let band = f64::from(median) + cfg.band * 1.4826 * f64::from(mad);
        band.max(cfg.min_raw_threshold)
    }

    /// Score a raw value, then add it to the history.
    pub fn score(&mut self, raw: f64, cfg: &ScoreConfig) -> Scored {
        let raw = if raw.is_finite() {
            raw.max(0.0)
        } else {
            f64::MAX
        };
        let raw_threshold = self.raw_threshold(cfg);
        let score = raw / raw_threshold;
        let anomaly = score > cfg.threshold && self.seen >= cfg.probation as u64;
        let stored = raw.min(1e30) as f32;
        if self.history.len() < cfg.history {
            self.history.push(stored);
        } else {
            self.history[self.next] = stored;
            self.next = (self.next + 1) % cfg.history;
        }
        self.seen += 1;
        Scored {
            score,
            threshold: cfg.threshold,
            anomaly,
            raw_score: raw,
        }
    }
}

/// The median of `buf` (upper median for even lengths); reorders `buf`.
fn quantile_mid(buf: &mut [f32]) -> f32 {
    let mid = buf.len() / 2;
    let (_, m, _) = buf.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

/// Calibration for many series.
#[derive(Debug)]
pub struct Scorer {
    cfg: ScoreConfig,
    series: HashMap<String, Calibration>,
}

impl Scorer {
    /// A scorer with the given settings.
    pub fn new(cfg: ScoreConfig) -> Self {
        Scorer {
            cfg,
            series: HashMap::new(),
        }
    }

    /// Score the raw value of one point of series `key`.
    pub fn score(&mut self, key: &str, raw: f64) -> Scored {
        let cap = self.cfg.history;
        let cal = match self.series.get_mut(key) {
            Some(c) => c,
            None => self
                .series
                .entry(key.to_owned())
                .or_insert_with(|| Calibration::new(cap)),
        };
        cal.score(raw, &self.cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ScoreConfig {
        ScoreConfig {
            threshold: 1.0,
            probation: 20,
            history: 64,
            band: 6.0,
            min_raw_threshold: 4.0,
        }
    }

    #[test]
    fn no_alert_during_probation() {
        let mut s = Scorer::new(cfg());
        for i in 0..20 {
            // Ever larger raw scores: each is above the band of the ones before.
            let r = s.score("a", 10.0 * 4f64.powi(i));
            assert!(!r.anomaly, "point {i} alerted in probation");
            assert!(r.score > 1.0, "{r:?}");
        }
        assert!(s.score("a", 1e30).anomaly);
    }

    #[test]
    fn spike_after_calm_history_is_anomalous() {
        let mut s = Scorer::new(cfg());
        for i in 0..100 {
            let r = s.score("a", 0.5 + 0.3 * ((i % 7) as f64 / 7.0));
            assert!(!r.anomaly);
            assert!(r.score < 1.0);
        }
        let r = s.score("a", 12.0);
        assert!(r.anomaly, "{r:?}");
        assert!(r.score > 2.0);
        assert_eq!(r.raw_score, 12.0);
    }

    #[test]
    fn threshold_adapts_to_a_noisy_series() {
        let mut s = Scorer::new(cfg());
        // A series whose raw scores routinely reach 6 is not alerting at 6.
        for i in 0..200 {
            s.score("noisy", if i % 2 == 0 { 1.0 } else { 6.0 });
        }
        let r = s.score("noisy", 6.0);
        assert!(!r.anomaly, "{r:?}");
        // The floor holds for a perfectly calm series: raw 3 is not anomalous.
        for _ in 0..200 {
            s.score("calm", 0.0);
        }
        let r = s.score("calm", 3.0);
        assert!(!r.anomaly && (r.score - 0.75).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn non_finite_raw_is_maximal_not_nan() {
        let mut s = Scorer::new(cfg());
        let r = s.score("a", f64::NAN);
        assert!(r.score.is_finite() && r.score > 1.0);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Scorer::new(cfg());
        for i in 0..10_000 {
            s.score("a", (i % 13) as f64);
        }
        assert_eq!(s.series["a"].history.len(), 64);
    }
}
