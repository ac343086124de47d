//! Per-series calibration: from a forecast surprise `z` to a score that
//! means the same on every series.
//!
//! Pure, O(1) time and memory per point. For each point of one series:
//!
//! 1. **Scale correction.** `c²` is the running mean of `z²` (capped, so
//!    one outlier cannot inflate it) over the series' past, a plain mean
//!    during the first `history` points and an exponential one after. The
//!    corrected surprise is `z' = z / c`: a forecaster that is over- or
//!    under-confident on this series is put right.
//! 2. **Three channels**, each a statistic of the recent corrected surprise:
//!    - *point*: the surprisal `u = -ln P(|N| >= |z'|)` of the value itself;
//!    - *run*: the mean surprisal of the last `k = run_points` values (each
//!      capped, so one spike cannot carry a run): sustained surprise, the
//!      short-against-long average of HTM's anomaly likelihood;
//!    - *shift*: `|sum of the last k signed z'| / sqrt(k)` (each capped): a
//!      level shift that no single value shows.
//! 3. **A tail model per channel.** Each channel's statistic is calibrated
//!    against its own history on this series, because real surprises are
//!    neither normal nor independent (a seasonal miss repeats; forecast
//!    errors are autocorrelated). The bulk is a running mean and variance;
//!    beyond `mean + 2 sd`, the exceedance rate is a running mean and the
//!    excesses are fitted with a generalised Pareto distribution (method of
//!    moments over the most recent peaks, kept with running sums). This
//!    gives each channel a tail probability `p` for the new value. Until a
//!    channel has seen `WARM_TAIL` values it uses its null distribution
//!    under independent normal surprises (Exp(1), Gamma(k, 1)/k, |N(0,1)|).
//!
//! The score is `max over channels of -log10(p) / -log10(risk)`: 1.0 is a
//! tail event of probability `risk` on this series, whatever the series, so
//! scores rank across a fleet and one threshold serves all. (HTM's NAB
//! detector publishes the same kind of quantity: a log tail probability.)
//!
//! Alerts: score above `threshold`, after `probation` points, outside the
//! `cooldown` that follows an alert. The state is updated after scoring, so
//! a point never calibrates itself; an alert enters the channel statistics
//! capped at the value that scores 2.0, so one huge event cannot mask the
//! next.

use crate::config::{Channel, ScoreConfig};

/// The score of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Normalised score: above `threshold` means anomalous.
    pub score: f64,
    /// The normalised threshold (from config).
    pub threshold: f64,
    /// `score > threshold`, past probation, outside a cooldown.
    pub anomaly: bool,
    /// The forecast surprise `|z|`, before calibration.
    pub raw_score: f64,
    /// Normalised strength of each channel; `score` is the largest.
    pub channels: Channels,
}

/// Normalised strength of each calibration channel (same units as `score`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Channels {
    /// One surprising point.
    pub point: f64,
    /// Sustained surprise over the last `run_points` points.
    pub run: f64,
    /// A consistent shift of the last `run_points` points.
    pub shift: f64,
    /// The newest pattern's novelty (0 on values that carry none).
    pub novelty: f64,
}

impl Scored {
    /// The score mapped monotonically to [0, 1) (0.5 at the threshold), as
    /// NAB expects: `s / (s + threshold)`.
    pub fn unit(&self) -> f64 {
        self.score / (self.score + self.threshold)
    }
}

/// Cap on `z²` entering the scale correction.
const Z2_CAP: f64 = 25.0;
/// Cap on one point's surprisal in the run mean (p = 1e-4).
const U_CAP: f64 = 9.21;
/// Cap on one point's |z'| in the shift sum.
const Z_CAP: f64 = 4.0;
/// Peaks kept per tail fit.
const PEAKS: usize = 128;
/// Fewest peaks for a GPD fit (fewer: an exponential tail with the bulk's sd).
const MIN_PEAKS: usize = 8;
/// Values before the scale correction is used (a mean of fewer is noise).
const WARM: u64 = 16;
/// Values before a channel's own tail replaces its null distribution.
const WARM_TAIL: u64 = 64;
/// Novelty values per run a calibration tracks (the model's query lengths).
pub const NOVELTY_SCALES: usize = 2;
/// Values before the novelty channel speaks: it has no null distribution,
/// and gets one value per model run (every `model.stride` points).
const WARM_NOVELTY: u64 = 16;

/// The newest values of a fixed-size window with their running sum.
#[derive(Debug, Clone, Default)]
struct Window {
    values: Vec<f32>,
    next: usize,
    sum: f64,
}

impl Window {
    /// Push `x`; returns the value it replaced, if the window was full.
    fn push(&mut self, cap: usize, x: f32) -> Option<f32> {
        if cap == 0 {
            return None;
        }
        let old = if self.values.len() < cap {
            self.values.push(x);
            None
        } else {
            let old = self.values[self.next];
            self.sum -= f64::from(old);
            self.values[self.next] = x;
            self.next = (self.next + 1) % cap;
            Some(old)
        };
        self.sum += f64::from(x);
        old
    }

    fn full(&self, cap: usize) -> bool {
        cap > 0 && self.values.len() >= cap
    }

    /// Recompute the sum from the values (bounds float drift).
    fn resum(&mut self) {
        self.sum = self.values.iter().map(|x| f64::from(*x)).sum();
    }
}

/// The streaming tail model of one channel statistic.
#[derive(Debug, Clone)]
struct Tail {
    /// Values before `ln_sf` answers.
    warm: u64,
    /// A normal tail only (for a log-scale statistic with few values).
    normal: bool,
    n: u64,
    mean: f64,
    var: f64,
    /// Running mean of 1[x > mean + 2 sd].
    exceed: f64,
    /// Recent excesses over mean + 2 sd.
    peaks: Window,
    peaks_sq: f64,
}

impl Tail {
    fn new(warm: u64, normal: bool) -> Self {
        Tail {
            warm,
            normal,
            n: 0,
            mean: 0.0,
            var: 0.0,
            exceed: 0.0,
            peaks: Window::default(),
            peaks_sq: 0.0,
        }
    }

    fn sd(&self) -> f64 {
        self.var.max(1e-12).sqrt()
    }

    /// `ln P(X >= x)` under this channel's history (`None` while warming up).
    fn ln_sf(&self, x: f64) -> Option<f64> {
        if self.n < self.warm {
            return None;
        }
        let sd = self.sd();
        let t = self.mean + 2.0 * sd;
        if x <= t || self.exceed <= 0.0 || self.normal {
            return Some(ln_upper_normal((x - self.mean) / sd));
        }
        let excess = x - t;
        let k = self.peaks.values.len();
        let ln_tail = if k < MIN_PEAKS {
            -excess / sd
        } else {
            let m = (self.peaks.sum / k as f64).max(1e-12);
            let v = (self.peaks_sq / k as f64 - m * m).max(0.0);
            let ratio = if v > 0.0 { m * m / v } else { f64::INFINITY };
            let xi = (0.5 * (1.0 - ratio)).clamp(0.0, 0.45);
            let sigma = if ratio.is_finite() {
                0.5 * m * (1.0 + ratio)
            } else {
                m
            };
            if xi.abs() < 1e-6 || !ratio.is_finite() {
                -excess / sigma
            } else {
                let base = 1.0 + xi * excess / sigma;
                if base <= 0.0 {
                    -745.0 // beyond the fitted (bounded) tail's end
                } else {
                    -base.ln() / xi
                }
            }
        };
        Some(self.exceed.ln() + ln_tail)
    }

    fn update(&mut self, x: f64, alpha: f64) {
        let t = self.mean + 2.0 * self.sd();
        let over = self.n >= self.warm.min(WARM) && x > t;
        if over {
            let e = (x - t).min(1e6) as f32;
            if let Some(old) = self.peaks.push(PEAKS, e) {
                self.peaks_sq -= f64::from(old) * f64::from(old);
            }
            self.peaks_sq += f64::from(e) * f64::from(e);
        }
        let d = x - self.mean;
        self.mean += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        self.exceed += alpha * (f64::from(u8::from(over)) - self.exceed);
        self.n += 1;
        if self.n.is_multiple_of(4096) {
            self.peaks.resum();
            self.peaks_sq = self
                .peaks
                .values
                .iter()
                .map(|p| f64::from(*p).powi(2))
                .sum();
        }
    }

    /// The smallest x whose `ln_sf` is at most `ln_p` (bisection on the
    /// monotone tail); used to cap alerts entering the history.
    fn quantile(&self, ln_p: f64) -> Option<f64> {
        self.ln_sf(self.mean)?;
        let (mut lo, mut hi) = (self.mean, self.mean + self.sd());
        let mut guard = 0;
        while self.ln_sf(hi).is_some_and(|l| l > ln_p) && guard < 64 {
            lo = hi;
            hi = self.mean + (hi - self.mean) * 2.0;
            guard += 1;
        }
        for _ in 0..40 {
            let mid = 0.5 * (lo + hi);
            if self.ln_sf(mid).is_some_and(|l| l > ln_p) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    }
}

/// Rolling calibration state of one series (about 2.3 KiB when warm).
#[derive(Debug, Clone)]
pub struct Calibration {
    seen: u64,
    cooldown_left: usize,
    /// Running mean of capped z².
    z2: f64,
    /// Last `run_points` capped surprisals.
    run: Window,
    /// Last `run_points` capped signed z'.
    shift: Window,
    /// Tail models: point, run, shift, then one per novelty scale.
    tails: [Tail; 3 + NOVELTY_SCALES],
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            seen: 0,
            cooldown_left: 0,
            z2: 0.0,
            run: Window::default(),
            shift: Window::default(),
            tails: [
                Tail::new(WARM_TAIL, false),
                Tail::new(WARM_TAIL, false),
                Tail::new(WARM_TAIL, false),
                Tail::new(WARM_NOVELTY, false),
                Tail::new(WARM_NOVELTY, false),
            ],
        }
    }
}

impl Calibration {
    /// A fresh calibration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Points scored so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Weight of the newest observation in the running means: a plain mean
    /// for the first `history` points, exponential after.
    fn alpha(&self, cfg: &ScoreConfig) -> f64 {
        1.0 / (self.seen + 1).min(cfg.history.max(1) as u64) as f64
    }

    /// Score the forecast surprise `z` of the next point (and the novelty
    /// of the newest pattern at each query length, on the values that carry
    /// it), then learn.
    pub fn score(&mut self, z: f64, novelty: &[f32], cfg: &ScoreConfig) -> Scored {
        // NaN (a broken forecast) is maximal surprise; everything stays finite.
        let z = if z.is_nan() { 1e6 } else { z.clamp(-1e6, 1e6) };
        let c2 = if self.seen >= WARM {
            self.z2.max(1e-4)
        } else {
            1.0
        };
        let zc = z / c2.sqrt();
        let u = -ln_two_sided(zc);
        let k = cfg.run_points.max(1);
        self.run.push(k, u.min(U_CAP) as f32);
        self.shift.push(k, zc.clamp(-Z_CAP, Z_CAP) as f32);
        let full = self.run.full(k);
        let run_x = self.run.sum / k as f64;
        let shift_x = self.shift.sum.abs() / (k as f64).sqrt();
        // ln p per channel: the series' own tail, or the null while warming up.
        let ln_p = [
            self.tails[0].ln_sf(u).unwrap_or(-u),
            self.tails[1]
                .ln_sf(run_x)
                .unwrap_or_else(|| ln_gamma_sf(k, run_x * k as f64)),
            self.tails[2]
                .ln_sf(shift_x)
                .unwrap_or_else(|| ln_two_sided(shift_x)),
        ];
        let unit = -cfg.risk.log10();
        let on = |c: Channel| cfg.channels.contains(&c);
        let strength = |i: usize, c: Channel| {
            if on(c) && (i == 0 || full) {
                to_strength(ln_p[i]) / unit
            } else {
                0.0
            }
        };
        // The model gives ln(1e-3 + d), d the mean squared distance per
        // point to the best match, and exactly 0 where the query found no
        // match (too little context); each scale's tail is fitted to d.
        let novelty: Vec<f64> = novelty
            .iter()
            .take(NOVELTY_SCALES)
            .map(|&n| novelty_distance(n))
            .collect();
        let mut novelty_s = 0.0f64;
        if on(Channel::Novelty) {
            for (i, d) in novelty.iter().enumerate().filter(|(_, d)| d.is_finite()) {
                // No null distribution: silent until the series' own tail exists.
                let s = self.tails[3 + i]
                    .ln_sf(*d)
                    .map_or(0.0, |l| to_strength(l) / unit);
                novelty_s = novelty_s.max(s);
            }
        }
        let channels = Channels {
            point: strength(0, Channel::Point),
            run: strength(1, Channel::Run),
            shift: strength(2, Channel::Shift),
            novelty: novelty_s,
        };
        let score = channels
            .point
            .max(channels.run)
            .max(channels.shift)
            .max(channels.novelty);
        let eligible = self.seen >= cfg.probation as u64 && self.cooldown_left == 0;
        let anomaly = eligible && score > cfg.threshold;
        self.cooldown_left = if anomaly {
            cfg.cooldown
        } else {
            self.cooldown_left.saturating_sub(1)
        };
        // While a point tail warms up, its values are capped by the null.
        let u_learn = u.min(-2.0 * cfg.risk.ln());
        self.learn(z, [u_learn, run_x, shift_x], full, cfg);
        for (i, d) in novelty.into_iter().enumerate() {
            if d.is_finite() {
                self.learn_tail(3 + i, d, cfg);
            }
        }
        Scored {
            score,
            threshold: cfg.threshold,
            anomaly,
            raw_score: z.abs(),
            channels,
        }
    }

    fn learn(&mut self, z: f64, xs: [f64; 3], full: bool, cfg: &ScoreConfig) {
        let a = self.alpha(cfg);
        self.z2 += a * ((z * z).min(Z2_CAP) - self.z2);
        for (i, x) in xs.into_iter().enumerate() {
            if i > 0 && !full {
                continue;
            }
            self.learn_tail(i, x, cfg);
        }
        self.seen += 1;
        if self.seen.is_multiple_of(4096) {
            self.run.resum();
            self.shift.resum();
        }
    }

    /// Update tail `i` with `x`; values beyond the strength that scores 2.0
    /// enter capped there.
    fn learn_tail(&mut self, i: usize, x: f64, cfg: &ScoreConfig) {
        let cap_ln_p = -2.0 * (-cfg.risk.log10()) * std::f64::consts::LN_10;
        let tail = &mut self.tails[i];
        let x = match tail.ln_sf(x) {
            Some(l) if l < cap_ln_p => tail.quantile(cap_ln_p).unwrap_or(x).min(x),
            _ => x,
        };
        let alpha = 1.0 / (tail.n + 1).min(cfg.history.max(1) as u64) as f64;
        tail.update(x, alpha);
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.run.values.capacity()
            + self.shift.values.capacity()
            + self
                .tails
                .iter()
                .map(|t| t.peaks.values.capacity())
                .sum::<usize>())
            * std::mem::size_of::<f32>()
    }
}

/// `ln P(N(0,1) >= x)` (one-sided), accurate far into the tail.
pub fn ln_upper_normal(x: f64) -> f64 {
    if x < 0.0 {
        (1.0 - 0.5 * ln_erfc(-x / std::f64::consts::SQRT_2).exp()).ln()
    } else {
        ln_erfc(x / std::f64::consts::SQRT_2) - std::f64::consts::LN_2
    }
}

/// `ln` of the smallest positive f64: no channel claims a p below it.
const LN_P_MIN: f64 = -744.44;

/// `-log10 p` from `ln p`, at most 323.3 (so a score is at most 323.3
/// divided by `-log10 risk`, and always finite).
fn to_strength(ln_p: f64) -> f64 {
    (-ln_p.max(LN_P_MIN) / std::f64::consts::LN_10).max(0.0)
}

/// The best-match distance d from the model's novelty output
/// `ln(1e-3 + d)`; NaN (no value) for the model's "no match" 0.
fn novelty_distance(n: f32) -> f64 {
    if n == 0.0 {
        return f64::NAN;
    }
    (f64::from(n).exp() - 1e-3).max(0.0)
}

/// `ln P(|N(0,1)| >= |z|)`, accurate far into the tail.
pub fn ln_two_sided(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    ln_erfc(x)
}

/// `ln erfc(x)` for x >= 0: the complementary error function by its
/// continued-fraction-free Chebyshev fit (Numerical Recipes' erfcc, relative
/// error < 1.2e-7), computed in logs so that it never underflows.
fn ln_erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t.ln() - x * x + poly
}

/// `ln P(Gamma(k, 1) >= s)` for integer k >= 1:
/// `P = e^-s * sum_{i<k} s^i / i!`, summed in logs.
pub fn ln_gamma_sf(k: usize, s: f64) -> f64 {
    if s <= 0.0 {
        return 0.0;
    }
    let ln_s = s.ln();
    let mut terms = Vec::with_capacity(k);
    let mut ln_fact = 0.0;
    for i in 0..k.max(1) {
        if i > 0 {
            ln_fact += (i as f64).ln();
        }
        terms.push(i as f64 * ln_s - ln_fact);
    }
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - m).exp()).sum();
    (-s + m + sum.ln()).min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ScoreConfig {
        ScoreConfig {
            probation: 20,
            history: 500,
            risk: 1e-3,
            cooldown: 0,
            run_points: 8,
            ..ScoreConfig::default()
        }
    }

    /// Deterministic standard-normal-ish surprises (a fixed pseudo-random sequence).
    fn normal(i: usize) -> f64 {
        // Sum of 12 uniforms minus 6: mean 0, variance 1.
        let mut x = (i as u64)
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let mut s = 0.0;
        for _ in 0..12 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            s += (x >> 11) as f64 / (1u64 << 53) as f64;
        }
        s - 6.0
    }

    #[test]
    fn normal_tails_are_right() {
        // P(|N| >= 1.96) = 0.05, P(|N| >= 5) = 5.733e-7.
        assert!((ln_two_sided(1.96).exp() - 0.05).abs() < 1e-4);
        assert!((ln_two_sided(5.0).exp() / 5.733e-7 - 1.0).abs() < 1e-3);
        assert!(ln_two_sided(40.0).is_finite() && ln_two_sided(40.0) < -700.0);
        assert!((ln_two_sided(0.0)).abs() < 1e-6);
    }

    #[test]
    fn gamma_tail_is_right() {
        // Gamma(1, 1) is Exp(1); Gamma(3, 1) at 6: e^-6 (1 + 6 + 18) = 0.061969.
        assert!((ln_gamma_sf(1, 2.0) + 2.0).abs() < 1e-12);
        assert!((ln_gamma_sf(3, 6.0).exp() - 0.061_969_8).abs() < 1e-6);
        assert_eq!(ln_gamma_sf(5, 0.0), 0.0);
    }

    #[test]
    fn a_spike_in_calm_data_is_anomalous_and_probation_holds() {
        let c = cfg();
        let mut cal = Calibration::new();
        let early = cal.score(50.0, &[], &c);
        assert!(early.score > 1.0 && !early.anomaly, "probation: {early:?}");
        for i in 0..300 {
            let r = cal.score(normal(i), &[], &c);
            assert!(r.channels.point.is_finite());
        }
        let r = cal.score(8.0, &[], &c);
        assert!(r.anomaly && r.score > 2.0, "{r:?}");
        assert_eq!(r.raw_score, 8.0);
    }

    #[test]
    fn calm_data_raises_few_alerts() {
        let c = cfg();
        let mut cal = Calibration::new();
        let alerts = (0..20_000)
            .filter(|&i| cal.score(normal(i), &[], &c).anomaly)
            .count();
        // Three channels at risk 1e-3: 60 nominal in 20k points.
        assert!(alerts < 60, "{alerts} alerts in calm data");
    }

    #[test]
    fn the_scale_correction_adapts_to_an_overconfident_forecaster() {
        let c = cfg();
        let mut cal = Calibration::new();
        // Surprises three times wider than the forecaster claims.
        let alerts = (0..5_000)
            .filter(|&i| cal.score(3.0 * normal(i), &[], &c).anomaly)
            .count();
        assert!(alerts < 20, "{alerts}");
        let r = cal.score(3.0 * 7.0, &[], &c);
        assert!(
            r.anomaly,
            "a 7-sigma point in its own units still alerts: {r:?}"
        );
    }

    #[test]
    fn a_sustained_moderate_surprise_fires_the_run_channel_not_the_point_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..500 {
            cal.score(normal(i), &[], &c);
        }
        // |z| = 2.5 alternating in sign: no single point reaches risk 1e-3
        // (p = 0.012), and the signs cancel in the shift channel.
        let mut fired = None;
        for j in 0..8 {
            let r = cal.score(if j % 2 == 0 { 2.5 } else { -2.5 }, &[], &c);
            assert!(r.channels.point < 1.0);
            if r.anomaly && fired.is_none() {
                fired = Some((j, r));
            }
        }
        let (_, r) = fired.expect("the run channel fires");
        assert!(
            r.channels.run > 1.0 && r.channels.run >= r.channels.shift,
            "{r:?}"
        );
    }

    #[test]
    fn a_level_shift_fires_the_shift_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..500 {
            cal.score(normal(i), &[], &c);
        }
        // +1.6 sigma on every point: p = 0.11 each, but 8 in a row is a shift.
        let r = (0..8)
            .map(|j| cal.score(1.6 + 0.1 * normal(j), &[], &c))
            .last();
        let r = r.unwrap();
        assert!(r.channels.shift > 1.0 && r.channels.point < 1.0, "{r:?}");
    }

    #[test]
    fn one_spike_does_not_fire_the_run_or_shift_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..500 {
            cal.score(normal(i), &[], &c);
        }
        let spike = cal.score(30.0, &[], &c);
        assert!(spike.anomaly && spike.channels.point > 1.0);
        for i in 0..8 {
            let r = cal.score(normal(1000 + i), &[], &c);
            assert!(r.channels.run < 1.0 && r.channels.shift < 1.0, "{r:?}");
        }
    }

    #[test]
    fn the_tail_model_learns_that_a_heavy_tailed_series_is_routinely_surprising() {
        let c = cfg();
        let mut cal = Calibration::new();
        // Every 20th point is a 5-sigma surprise: routine for this series.
        for i in 0..3_000 {
            let z = if i % 20 == 0 { 5.0 } else { normal(i) };
            cal.score(z, &[], &c);
        }
        let r = cal.score(5.0, &[], &c);
        assert!(
            !r.anomaly,
            "a routine 5-sigma point is not anomalous here: {r:?}"
        );
        let r = cal.score(40.0, &[], &c);
        assert!(r.anomaly, "far beyond the routine it is: {r:?}");
    }

    #[test]
    fn autocorrelated_surprises_do_not_keep_the_shift_channel_up() {
        let c = cfg();
        let mut cal = Calibration::new();
        // A seasonal miss: the forecast is off by +-1.5 sd for 50 points at a time.
        let mut alerts = 0;
        for i in 0..6_000 {
            let z = if (i / 50) % 2 == 0 { 1.5 } else { -1.5 } + 0.5 * normal(i);
            if cal.score(z, &[], &c).anomaly {
                alerts += 1;
            }
        }
        // Nominal under the null: 3 channels x risk x 6000 = 18. Calibrated
        // against the null instead, the shift channel alone fires hundreds
        // of times here.
        assert!(alerts < 18, "{alerts} alerts on a routine seasonal miss");
    }

    #[test]
    fn no_match_novelty_is_ignored_not_learned_as_a_constant() {
        // The model outputs exactly 0 where a query finds no match (too
        // little context). Learned as d = 0.999 it made a constant tail
        // (sd 1e-6), and the first real value scored 1.2e11 (speed_7578).
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..100 {
            let r = cal.score(normal(i), &[0.0, 0.0], &c);
            assert_eq!(r.channels.novelty, 0.0);
        }
        let nov = |d: f64| (1e-3 + d).ln() as f32;
        for i in 0..40 {
            cal.score(normal(200 + i), &[nov(1.0 + 0.2 * normal(i).abs())], &c);
        }
        let r = cal.score(normal(300), &[nov(1.4)], &c);
        assert!(r.channels.novelty < 1.0, "a usual distance: {r:?}");
        let r = cal.score(normal(301), &[nov(30.0)], &c);
        assert!(r.channels.novelty > 1.0, "a far one: {r:?}");
    }

    #[test]
    fn scores_are_bounded_even_against_a_constant_history() {
        let c = cfg();
        let mut cal = Calibration::new();
        for _ in 0..500 {
            cal.score(0.0, &[], &c);
        }
        let r = cal.score(1e6, &[], &c);
        let max = -LN_P_MIN / std::f64::consts::LN_10 / -c.risk.log10();
        assert!(r.anomaly && r.score <= max + 1e-9, "{r:?}");
        assert!(r.score > 0.9 * max, "{r:?}");
    }

    #[test]
    fn upper_normal_tail_is_right() {
        assert!((ln_upper_normal(1.645).exp() - 0.05).abs() < 1e-3);
        assert!((ln_upper_normal(-1.645).exp() - 0.95).abs() < 1e-3);
        assert!((ln_upper_normal(0.0).exp() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn cooldown_suppresses_repeated_alerts() {
        let mut c = cfg();
        c.cooldown = 5;
        let mut cal = Calibration::new();
        for i in 0..300 {
            cal.score(normal(i), &[], &c);
        }
        assert!(cal.score(20.0, &[], &c).anomaly);
        assert!((0..5).all(|_| !cal.score(20.0, &[], &c).anomaly));
        assert!(cal.score(20.0, &[], &c).anomaly);
    }

    #[test]
    fn non_finite_surprise_is_maximal_not_nan() {
        let c = cfg();
        let mut cal = Calibration::new();
        let r = cal.score(f64::NAN, &[], &c);
        assert!(r.score.is_finite() && r.score > 1.0, "{r:?}");
        let r = cal.score(f64::INFINITY, &[], &c);
        assert!(r.score.is_finite() && r.score > 1.0, "{r:?}");
    }
}
