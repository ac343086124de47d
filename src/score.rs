//! Score stage: from the model's raw score to a calibrated, normalised score.
//!
//! Pure: no I/O. Each series key keeps a rolling history of its own recent
//! raw scores and an extreme-value threshold over it, SPOT-style (Siffer et
//! al., KDD 2017): the excesses over a high quantile `t` of the history are
//! fitted with a generalised Pareto distribution (method of moments), and the
//! raw threshold is the value exceeded with probability `risk`. It is floored
//! at `min_raw_threshold`. The published score is `raw / raw_threshold`, so a
//! score above 1.0 means anomalous (as in vmanomaly).
//!
//! - No alert until the series has `probation` scored points.
//! - After an alert, no new alert for `cooldown` points: one level shift
//!   fires once, not for every point while the window adapts.
//! - Alerts enter the history capped at twice the threshold, so a recurring
//!   surprise raises the threshold but one huge spike cannot blow up the tail.
//! - The threshold comes from the history *before* the current point.
//! - A second, *run* channel catches sustained moderate surprise that no
//!   single point shows (a cycle gone flat, a changed shape): the median of
//!   the last `run_points` raw scores, calibrated by its own SPOT threshold
//!   (floored at `run_min_raw_threshold`). The median ignores one spike, so
//!   the run channel fires only when most recent points are surprising. The
//!   score is the larger of the two normalised channels.

use lru::LruCache;

use crate::config::ScoreConfig;

/// The score of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Normalised score: above `threshold` means anomalous.
    pub score: f64,
    /// The normalised threshold (from config).
    pub threshold: f64,
    /// `score > threshold`, past probation, outside a cooldown.
    pub anomaly: bool,
    /// The model's raw score (its surprise at the point).
    pub raw_score: f64,
    /// The run channel's normalised score (0 while it has too few points
    /// or is disabled); `score` is the larger of this and the point channel.
    pub run_score: f64,
}

impl Scored {
    /// The score mapped monotonically to [0, 1) (0.5 at the threshold), as
    /// NAB expects: `s / (s + threshold)`.
    pub fn unit(&self) -> f64 {
        self.score / (self.score + self.threshold)
    }
}

/// Rolling calibration state of one series.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Stored raw scores (the point channel's calibration memory).
    history: Ring,
    /// The last `run_points` stored raw scores.
    recent: Ring,
    /// Run-channel medians, as `history` is for points.
    run_history: Ring,
    seen: u64,
    cooldown_left: usize,
}

/// The newest `cap` values pushed (order does not matter to its readers).
#[derive(Debug, Clone, Default)]
struct Ring {
    values: Vec<f32>,
    next: usize,
}

impl Ring {
    fn push(&mut self, cap: usize, x: f32) {
        if cap == 0 {
            return;
        }
        if self.values.len() < cap {
            self.values.push(x);
        } else {
            self.values[self.next] = x;
            self.next = (self.next + 1) % cap;
        }
    }
}

/// SPOT threshold over `history`, floored at `floor` (also the value while
/// the history is too short for a fit).
fn floored_threshold(history: &Ring, floor: f64, cfg: &ScoreConfig) -> f64 {
    spot_threshold(&history.values, cfg.tail_quantile, cfg.risk).map_or(floor, |z| z.max(floor))
}

/// Median of a small non-empty slice (the upper one for an even length).
fn median(xs: &[f32]) -> f64 {
    let mut v = xs.to_vec();
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    f64::from(*m)
}

/// Fewest excesses over the tail quantile for a GPD fit.
const MIN_PEAKS: usize = 8;

impl Calibration {
    fn new(capacity: usize) -> Self {
        Calibration {
            history: Ring {
                values: Vec::with_capacity(capacity),
                next: 0,
            },
            recent: Ring::default(),
            run_history: Ring::default(),
            seen: 0,
            cooldown_left: 0,
        }
    }

    /// The raw-score threshold implied by the history so far.
    pub fn raw_threshold(&self, cfg: &ScoreConfig) -> f64 {
        floored_threshold(&self.history, cfg.min_raw_threshold, cfg)
    }

    /// The run channel's threshold implied by its history so far.
    pub fn run_threshold(&self, cfg: &ScoreConfig) -> f64 {
        floored_threshold(&self.run_history, cfg.run_min_raw_threshold, cfg)
    }

    /// Score a raw value, then update the history.
    pub fn score(&mut self, raw: f64, cfg: &ScoreConfig) -> Scored {
        let raw = if raw.is_finite() {
            raw.max(0.0)
        } else {
            f64::MAX
        };
        let raw_threshold = self.raw_threshold(cfg);
        // Alerts enter the history capped at twice the threshold: a surprise
        // that recurs (a daily transition the window is too short to see
        // coming) then raises the threshold, while one huge spike cannot
        // inflate the fitted tail.
        let stored = raw.min(2.0 * raw_threshold).min(1e30) as f32;
        let point = raw / raw_threshold;
        let run = self.run(stored, cfg);
        let score = point.max(run);
        let eligible = self.seen >= cfg.probation as u64 && self.cooldown_left == 0;
        let anomaly = eligible && score > cfg.threshold;
        self.cooldown_left = if anomaly {
            cfg.cooldown
        } else {
            self.cooldown_left.saturating_sub(1)
        };
        self.history.push(cfg.history, stored);
        self.seen += 1;
        Scored {
            score,
            threshold: cfg.threshold,
            anomaly,
            raw_score: raw,
            run_score: run,
        }
    }

    /// Run channel: add the stored raw score of the current point, then
    /// score the median of the last `run_points` against the run history
    /// (from before this point) and record it. 0 until the run is full.
    fn run(&mut self, stored: f32, cfg: &ScoreConfig) -> f64 {
        let k = cfg.run_points;
        if k == 0 {
            return 0.0;
        }
        self.recent.push(k, stored);
        if self.recent.values.len() < k {
            return 0.0;
        }
        let m = median(&self.recent.values);
        let threshold = self.run_threshold(cfg);
        let kept = m.min(2.0 * threshold) as f32;
        self.run_history.push(cfg.history, kept);
        m / threshold
    }
}

/// SPOT threshold over `history`: the value exceeded with probability
/// `risk`, from a generalised Pareto fit (method of moments) to the excesses
/// over the `tail_quantile` quantile. `None` with too little history.
pub fn spot_threshold(history: &[f32], tail_quantile: f64, risk: f64) -> Option<f64> {
    let n = history.len();
    if n < MIN_PEAKS * 4 {
        return None;
    }
    let mut buf = history.to_vec();
    let k = ((n as f64 * tail_quantile) as usize).min(n - 1);
    let (_, t, _) = buf.select_nth_unstable_by(k, f32::total_cmp);
    let t = f64::from(*t);
    let (mut count, mut sum, mut sum2) = (0usize, 0.0f64, 0.0f64);
    for &x in history {
        let y = f64::from(x) - t;
        if y > 0.0 {
            count += 1;
            sum += y;
            sum2 += y * y;
        }
    }
    if count < MIN_PEAKS {
        return Some(t);
    }
    let mean = sum / count as f64;
    let var = (sum2 / count as f64 - mean * mean).max(0.0);
    if var <= f64::EPSILON * mean * mean || mean <= 0.0 {
        return Some(t + mean);
    }
    let ratio = mean * mean / var;
    let xi = 0.5 * (1.0 - ratio);
    let sigma = 0.5 * mean * (1.0 + ratio);
    let r = risk * n as f64 / count as f64;
    let z = if xi.abs() < 1e-6 {
        t - sigma * r.ln()
    } else {
        t + sigma / xi * (r.powf(-xi) - 1.0)
    };
    z.is_finite().then_some(z)
}

/// Calibration for many series, at most `max_series` of them: beyond that
/// the least recently scored is dropped (it starts a new probation if it
/// returns), as the window stage drops its window.
#[derive(Debug)]
pub struct Scorer {
    cfg: ScoreConfig,
    max_series: usize,
    series: LruCache<String, Calibration>,
    evicted: u64,
}

impl Scorer {
    /// A scorer with the given settings, holding at most `max_series`
    /// series' calibration (`window.max_series` in the service).
    pub fn new(cfg: ScoreConfig, max_series: usize) -> Self {
        Scorer {
            cfg,
            max_series: max_series.max(1),
            series: LruCache::unbounded(),
            evicted: 0,
        }
    }

    /// Score the raw value of one point of series `key`.
    pub fn score(&mut self, key: &str, raw: f64) -> Scored {
        if let Some(cal) = self.series.get_mut(key) {
            return cal.score(raw, &self.cfg);
        }
        while self.series.len() >= self.max_series {
            if self.series.pop_lru().is_none() {
                break;
            }
            self.evicted += 1;
        }
        let mut cal = Calibration::new(self.cfg.history);
        let scored = cal.score(raw, &self.cfg);
        self.series.put(key.to_owned(), cal);
        scored
    }

    /// Series dropped for `max_series` since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
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
            risk: 1e-3,
            tail_quantile: 0.9,
            min_raw_threshold: 4.0,
            cooldown: 0,
            run_points: 0,
            run_min_raw_threshold: 1.5,
        }
    }

    /// A calm raw score for point `i`: 0.5..0.8, period 7.
    fn calm(i: usize) -> f64 {
        0.5 + 0.3 * ((i % 7) as f64 / 7.0)
    }

    #[test]
    fn no_alert_during_probation() {
        let mut s = Scorer::new(cfg(), 100);
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
        let mut s = Scorer::new(cfg(), 100);
        for i in 0..100 {
            let r = s.score("a", calm(i));
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
        let mut s = Scorer::new(cfg(), 100);
        // A series whose raw scores routinely reach 6 is not alerting at 6.
        for i in 0..200 {
            s.score("noisy", if i % 2 == 0 { 1.0 } else { 6.0 });
        }
        let r = s.score("noisy", 6.0);
        assert!(!r.anomaly, "{r:?}");
        // The floor holds for a perfectly quiet series: raw 3 is not anomalous.
        for _ in 0..200 {
            s.score("quiet", 0.0);
        }
        let r = s.score("quiet", 3.0);
        assert!(!r.anomaly && (r.score - 0.75).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn spot_threshold_matches_the_exponential_tail() {
        // Exponential(1) samples: the excesses over any quantile are again
        // exponential (xi = 0), so z(risk) = -ln(risk).
        let n = 20_000;
        let history: Vec<f32> = (0..n)
            .map(|i| -((1.0 - (i as f64 + 0.5) / n as f64).ln()) as f32)
            .collect();
        let z = spot_threshold(&history, 0.98, 1e-4).unwrap();
        assert!((z - (1e4f64).ln()).abs() < 0.25, "{z}");
        assert!(spot_threshold(&history[..10], 0.98, 1e-4).is_none());
    }

    #[test]
    fn cooldown_suppresses_repeated_alerts_and_alerts_enter_history_capped() {
        let mut c = cfg();
        c.cooldown = 5;
        let mut s = Scorer::new(c, 100);
        for i in 0..100 {
            s.score("a", calm(i));
        }
        let first = s.score("a", 50.0);
        assert!(first.anomaly);
        let during: Vec<bool> = (0..5).map(|_| s.score("a", 49.0).anomaly).collect();
        assert_eq!(during, vec![false; 5], "cooldown");
        let hist = &s.series.peek("a").unwrap().history.values;
        // Threshold was the floor (4.0): the alert is stored as 8.0, not 50.
        assert!(
            !hist.contains(&50.0) && hist.contains(&8.0),
            "the alert enters capped"
        );
        assert!(hist.iter().all(|x| *x < 50.0));
    }

    #[test]
    fn run_channel_catches_sustained_moderate_surprise() {
        let mut c = cfg();
        c.run_points = 8;
        c.min_raw_threshold = 3.0;
        let mut s = Scorer::new(c.clone(), 100);
        for i in 0..200 {
            assert!(!s.score("a", calm(i)).anomaly);
        }
        // Raw 2.5 never crosses the point floor (3.0): only the run can fire.
        let run: Vec<Scored> = (0..8).map(|_| s.score("a", 2.5)).collect();
        assert!(run.iter().all(|r| r.raw_score / 3.0 < 1.0));
        let first = run.iter().position(|r| r.anomaly).expect("the run fires");
        // The (upper) median of 8 turns once half of the run is surprising.
        assert_eq!(first, 3, "{run:?}");
        assert!(run[first].run_score > 1.0 && run[first].score == run[first].run_score);

        // Without the run channel the same points never alert.
        c.run_points = 0;
        let mut off = Scorer::new(c, 100);
        for i in 0..200 {
            off.score("a", calm(i));
        }
        assert!((0..8).all(|_| !off.score("a", 2.5).anomaly));
    }

    #[test]
    fn one_spike_does_not_raise_the_run_channel() {
        let mut c = cfg();
        c.run_points = 8;
        let mut s = Scorer::new(c, 100);
        for i in 0..200 {
            s.score("a", calm(i));
        }
        let spike = s.score("a", 40.0);
        assert!(spike.anomaly && spike.run_score < 1.0, "{spike:?}");
        for i in 0..8 {
            let r = s.score("a", calm(i));
            assert!(r.run_score < 1.0 && !r.anomaly, "{r:?}");
        }
    }

    #[test]
    fn series_beyond_max_series_evict_the_least_recent() {
        let mut s = Scorer::new(cfg(), 2);
        s.score("a", 1.0);
        s.score("b", 1.0);
        s.score("a", 1.0); // a is now the most recent
        s.score("c", 1.0); // evicts b
        assert_eq!(s.series.len(), 2);
        assert_eq!(s.take_evicted(), 1);
        assert_eq!(s.take_evicted(), 0);
        assert!(s.series.peek("a").is_some() && s.series.peek("b").is_none());
        // a kept its history; a returning b starts over.
        assert_eq!(s.series.peek("a").unwrap().seen, 2);
        s.score("b", 1.0);
        assert_eq!(s.series.peek("b").unwrap().seen, 1);
    }

    #[test]
    fn non_finite_raw_is_maximal_not_nan() {
        let mut s = Scorer::new(cfg(), 100);
        let r = s.score("a", f64::NAN);
        assert!(r.score.is_finite() && r.score > 1.0);
    }

    #[test]
    fn history_is_bounded() {
        let mut c = cfg();
        c.run_points = 8;
        let mut s = Scorer::new(c, 100);
        for i in 0..10_000 {
            s.score("a", (i % 13) as f64);
        }
        let cal = s.series.peek("a").unwrap();
        assert_eq!(cal.history.values.len(), 64);
        assert_eq!(cal.run_history.values.len(), 64);
        assert_eq!(cal.recent.values.len(), 8);
    }
}
