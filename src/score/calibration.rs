//! Forecast channels: from a forecast surprise `z` (and the model's
//! novelty) to tail probabilities on the series' own history.
//!
//! Pure, O(1) time and memory per point. For each scored point of one
//! series:
//!
//! 1. **Scale correction.** `c²` is the running mean of `z²` (capped, so
//!    one outlier cannot inflate it) over the series' past, a plain mean
//!    during the first `history` points and an exponential one after. The
//!    corrected surprise is `z' = z / c`: a forecaster that is over- or
//!    under-confident on this series is put right.
//! 2. **Channels**, each a statistic of the recent corrected surprise:
//!    - *point*: the surprisal `u = -ln P(|N| >= |z'|)` of the value itself;
//!    - *run*: the mean surprisal of the last `k = run_points` values (each
//!      capped, so one spike cannot carry a run): sustained surprise;
//!    - *shift*: `|sum of the last k signed z'| / sqrt(k)` (each capped): a
//!      level shift that no single value shows;
//!    - *novelty*: the model's distance from the newest pattern to its best
//!      match in the context (on the first value after each run).
//! 3. **A tail model per channel** ([`Tail`]): each statistic is calibrated
//!    against its own history on this series, because real surprises are
//!    neither normal nor independent (a seasonal miss repeats; forecast
//!    errors are autocorrelated). Until a channel has seen `WARM_TAIL`
//!    values it uses its null distribution under independent normal
//!    surprises (Exp(1), Gamma(k, 1)/k, |N(0,1)|); novelty has none and
//!    stays silent until its own tail exists.
//!
//! Each channel's strength is [`strength`]: `-log10(p K) / -log10(risk)`,
//! where `K` is the number of tests its family makes on the value (point,
//! run and shift are three statistics of one surprise stream; novelty has
//! one per query length), so that a family raises a score of 1.0 on an
//! ordinary value with probability `risk`, whatever the series. The state
//! is updated after scoring, so a point never calibrates itself; a value
//! beyond the strength 2.0 enters its tail capped there, so one huge event
//! cannot mask the next.

use super::tail::{ln_gamma_sf, ln_two_sided, strength, Ring, Tail};
use crate::config::{Channel, ScoreConfig};

/// The forecast channels' strengths for one point (0 for a channel that is
/// off or has nothing to say).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ForecastScore {
    /// The forecast surprise `|z|`, before calibration.
    pub raw_score: f64,
    /// One surprising value.
    pub point: f64,
    /// Sustained surprise over the last `run_points` values.
    pub run: f64,
    /// A consistent shift of the last `run_points` values.
    pub shift: f64,
    /// The model's novelty of the newest pattern.
    pub novelty: f64,
}

/// Cap on `z²` entering the scale correction.
const Z2_CAP: f64 = 25.0;
/// Cap on one point's surprisal in the run mean (p = 1e-4).
const U_CAP: f64 = 9.21;
/// Cap on one point's |z'| in the shift sum.
const Z_CAP: f64 = 4.0;
/// Values before the scale correction is used (a mean of fewer is noise).
const WARM: u64 = 16;
/// Values before a channel's own tail replaces its null distribution.
const WARM_TAIL: u64 = 64;
/// Novelty values per run a calibration tracks (the model's query lengths).
pub const NOVELTY_SCALES: usize = 2;
/// Values before the novelty channel speaks: it has no null distribution,
/// and gets one value per model run (every `model.stride` points).
const WARM_NOVELTY: u64 = 16;

/// Tail indices.
const POINT: usize = 0;
const RUN: usize = 1;
const SHIFT: usize = 2;
const NOVELTY: usize = 3;

/// Rolling forecast-channel state of one series (about 2.3 KiB when warm).
#[derive(Debug, Clone)]
pub struct Calibration {
    seen: u64,
    /// Running mean of capped z².
    z2: f64,
    /// Last `run_points` capped surprisals.
    run: Ring,
    /// Last `run_points` capped signed z'.
    shift: Ring,
    /// Tail models: point, run, shift, then one per novelty scale.
    tails: [Tail; 3 + NOVELTY_SCALES],
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            seen: 0,
            z2: 0.0,
            run: Ring::default(),
            shift: Ring::default(),
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

    /// Score the forecast surprise `z` of the next point (and the novelty
    /// of the newest pattern at each query length, on the values that carry
    /// it), then learn.
    pub fn score(&mut self, z: f64, novelty: &[f32], cfg: &ScoreConfig) -> ForecastScore {
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
            self.tails[POINT].ln_sf(u).unwrap_or(-u),
            self.tails[RUN]
                .ln_sf(run_x)
                .unwrap_or_else(|| ln_gamma_sf(k, run_x * k as f64)),
            self.tails[SHIFT]
                .ln_sf(shift_x)
                .unwrap_or_else(|| ln_two_sided(shift_x)),
        ];
        let risk = cfg.risk;
        let on = |c: Channel| cfg.channels.contains(&c);
        let family = [Channel::Point, Channel::Run, Channel::Shift]
            .into_iter()
            .filter(|c| on(*c))
            .count();
        let strength_of = |i: usize, c: Channel| {
            if on(c) && (i == POINT || full) {
                strength(ln_p[i], family, risk)
            } else {
                0.0
            }
        };
        // The model gives ln(1e-3 + d), d the mean squared distance per
        // point to the best match, and exactly 0 where the query found no
        // match (too little context); each scale's tail is fitted to d.
        let mut distances = [f64::NAN; NOVELTY_SCALES];
        for (d, &n) in distances.iter_mut().zip(novelty) {
            *d = novelty_distance(n);
        }
        let mut novelty_s = 0.0f64;
        if on(Channel::Novelty) {
            let tests = distances.iter().filter(|d| d.is_finite()).count();
            for (i, d) in distances.iter().enumerate().filter(|(_, d)| d.is_finite()) {
                let s = self.tails[NOVELTY + i]
                    .ln_sf(*d)
                    .map_or(0.0, |l| strength(l, tests, risk));
                novelty_s = novelty_s.max(s);
            }
        }
        let scored = ForecastScore {
            raw_score: z.abs(),
            point: strength_of(POINT, Channel::Point),
            run: strength_of(RUN, Channel::Run),
            shift: strength_of(SHIFT, Channel::Shift),
            novelty: novelty_s,
        };
        // While a point tail warms up, its values are capped by the null.
        let u_learn = u.min(-2.0 * cfg.risk.ln());
        let history = cfg.history;
        let a = 1.0 / (self.seen + 1).min(history.max(1) as u64) as f64;
        self.z2 += a * ((z * z).min(Z2_CAP) - self.z2);
        self.tails[POINT].learn(u_learn, history, risk);
        if full {
            self.tails[RUN].learn(run_x, history, risk);
            self.tails[SHIFT].learn(shift_x, history, risk);
        }
        for (i, d) in distances.into_iter().enumerate() {
            if d.is_finite() {
                self.tails[NOVELTY + i].learn(d, history, risk);
            }
        }
        self.seen += 1;
        if self.seen.is_multiple_of(4096) {
            self.run.resum();
            self.shift.resum();
        }
        scored
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.run.values.capacity() + self.shift.values.capacity()) * std::mem::size_of::<f32>()
            + self.tails.iter().map(Tail::heap_bytes).sum::<usize>()
    }
}

/// The best-match distance d from the model's novelty output
/// `ln(1e-3 + d)`; NaN (no value) for the model's "no match" 0.
fn novelty_distance(n: f32) -> f64 {
    if n == 0.0 {
        return f64::NAN;
    }
    (f64::from(n).exp() - 1e-3).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::tail::LN_P_MIN;

    fn cfg() -> ScoreConfig {
        ScoreConfig {
            probation: 20,
            history: 500,
            risk: 1e-3,
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

    fn top(r: &ForecastScore) -> f64 {
        r.point.max(r.run).max(r.shift).max(r.novelty)
    }

    fn fires(r: &ForecastScore) -> bool {
        top(r) > 1.0
    }

    #[test]
    fn a_spike_in_calm_data_fires_the_point_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        let early = cal.score(50.0, &[], &c);
        assert!(
            early.point > 1.0,
            "the null speaks while warming up: {early:?}"
        );
        for i in 0..300 {
            let r = cal.score(normal(i), &[], &c);
            assert!(r.point.is_finite());
        }
        let r = cal.score(8.0, &[], &c);
        assert!(r.point > 2.0, "{r:?}");
        assert_eq!(r.raw_score, 8.0);
    }

    #[test]
    fn calm_data_raises_few_alerts() {
        let c = cfg();
        let mut cal = Calibration::new();
        let alerts = (0..20_000)
            .filter(|&i| fires(&cal.score(normal(i), &[], &c)))
            .count();
        // One family of three tests at risk 1e-3: 20 nominal in 20k points.
        assert!(alerts < 30, "{alerts} alerts in calm data");
    }

    #[test]
    fn the_family_of_three_is_corrected_for_its_tests() {
        // The same surprise scores lower when three channels test it than
        // when the point channel alone does.
        let all = cfg();
        let alone = ScoreConfig {
            channels: vec![Channel::Point],
            ..cfg()
        };
        let (mut a, mut b) = (Calibration::new(), Calibration::new());
        for i in 0..300 {
            a.score(normal(i), &[], &all);
            b.score(normal(i), &[], &alone);
        }
        let (ra, rb) = (a.score(5.0, &[], &all), b.score(5.0, &[], &alone));
        let shift = 3f64.log10() / -all.risk.log10();
        assert!((rb.point - ra.point - shift).abs() < 1e-9, "{ra:?} {rb:?}");
    }

    #[test]
    fn the_scale_correction_adapts_to_an_overconfident_forecaster() {
        let c = cfg();
        let mut cal = Calibration::new();
        // Surprises three times wider than the forecaster claims.
        let alerts = (0..5_000)
            .filter(|&i| fires(&cal.score(3.0 * normal(i), &[], &c)))
            .count();
        assert!(alerts < 20, "{alerts}");
        let r = cal.score(3.0 * 7.0, &[], &c);
        assert!(
            fires(&r),
            "a 7-sigma point in its own units still fires: {r:?}"
        );
    }

    #[test]
    fn a_sustained_moderate_surprise_fires_the_run_channel_not_the_point_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..500 {
            cal.score(normal(i), &[], &c);
        }
        // |z| = 2.6 alternating in sign: no single point reaches risk 1e-3
        // (p = 0.009), and the signs cancel in the shift channel.
        let mut fired = None;
        for j in 0..8 {
            let r = cal.score(if j % 2 == 0 { 2.6 } else { -2.6 }, &[], &c);
            assert!(r.point < 1.0);
            if fires(&r) && fired.is_none() {
                fired = Some((j, r));
            }
        }
        let (_, r) = fired.expect("the run channel fires");
        assert!(r.run > 1.0 && r.run >= r.shift, "{r:?}");
    }

    #[test]
    fn a_level_shift_fires_the_shift_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..3000 {
            cal.score(normal(i), &[], &c);
        }
        // +2 sigma on every point: p = 0.05 each, but 8 in a row is a shift.
        let r = (0..8)
            .map(|j| cal.score(2.0 + 0.1 * normal(j), &[], &c))
            .last();
        let r = r.unwrap();
        assert!(r.shift > 1.0 && r.point < 1.0, "{r:?}");
    }

    #[test]
    fn one_spike_does_not_fire_the_run_or_shift_channel() {
        let c = cfg();
        let mut cal = Calibration::new();
        for i in 0..500 {
            cal.score(normal(i), &[], &c);
        }
        let spike = cal.score(30.0, &[], &c);
        assert!(spike.point > 1.0);
        for i in 0..8 {
            let r = cal.score(normal(1000 + i), &[], &c);
            assert!(r.run < 1.0 && r.shift < 1.0, "{r:?}");
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
            !fires(&r),
            "a routine 5-sigma point is not anomalous here: {r:?}"
        );
        let r = cal.score(40.0, &[], &c);
        assert!(fires(&r), "far beyond the routine it is: {r:?}");
    }

    #[test]
    fn autocorrelated_surprises_do_not_keep_the_shift_channel_up() {
        let c = cfg();
        let mut cal = Calibration::new();
        // A seasonal miss: the forecast is off by +-1.5 sd for 50 points at a time.
        let mut alerts = 0;
        for i in 0..6_000 {
            let z = if (i / 50) % 2 == 0 { 1.5 } else { -1.5 } + 0.5 * normal(i);
            if fires(&cal.score(z, &[], &c)) {
                alerts += 1;
            }
        }
        // Nominal under the null: risk x 6000 = 6. Calibrated against the
        // null instead, the shift channel alone fires hundreds of times here.
        assert!(alerts < 12, "{alerts} alerts on a routine seasonal miss");
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
            assert_eq!(r.novelty, 0.0);
        }
        let nov = |d: f64| (1e-3 + d).ln() as f32;
        for i in 0..40 {
            cal.score(normal(200 + i), &[nov(1.0 + 0.2 * normal(i).abs())], &c);
        }
        let r = cal.score(normal(300), &[nov(1.4)], &c);
        assert!(r.novelty < 1.0, "a usual distance: {r:?}");
        let r = cal.score(normal(301), &[nov(30.0)], &c);
        assert!(r.novelty > 1.0, "a far one: {r:?}");
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
        assert!(fires(&r) && top(&r) <= max + 1e-9, "{r:?}");
        assert!(top(&r) > 0.9 * max, "{r:?}");
    }

    #[test]
    fn non_finite_surprise_is_maximal_not_nan() {
        let c = cfg();
        let mut cal = Calibration::new();
        let r = cal.score(f64::NAN, &[], &c);
        assert!(top(&r).is_finite() && top(&r) > 1.0, "{r:?}");
        let r = cal.score(f64::INFINITY, &[], &c);
        assert!(top(&r).is_finite() && top(&r) > 1.0, "{r:?}");
    }
}
