//! The statistics every calibration channel shares: a streaming tail model
//! of one statistic, a fixed-size ring with its running sum, and normal and
//! gamma tail probabilities computed in logs.
//!
//! Pure and O(1) per value. A [`Tail`] keeps a running mean and variance of
//! its statistic (the bulk); beyond `mean + 2 sd`, the exceedance rate is a
//! running mean and the excesses are fitted with a generalised Pareto
//! distribution (method of moments over the most recent peaks, kept with
//! running sums). `ln_sf(x)` is then `ln P(X >= x)` on this series' own
//! history, which [`to_strength`] turns into `-log10 p`.

/// Peaks kept per tail fit.
const PEAKS: usize = 128;
/// Fewest peaks for a GPD fit (fewer: an exponential tail with the bulk's sd).
const MIN_PEAKS: usize = 8;
/// Values before the exceedances count (a bulk of fewer is noise).
const WARM: u64 = 16;

/// The newest values of a fixed-size window with their running sum.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ring {
    pub(crate) values: Vec<f32>,
    next: usize,
    pub(crate) sum: f64,
}

impl Ring {
    /// Push `x`; returns the value it replaced, if the window was full.
    pub(crate) fn push(&mut self, cap: usize, x: f32) -> Option<f32> {
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

    pub(crate) fn full(&self, cap: usize) -> bool {
        cap > 0 && self.values.len() >= cap
    }

    /// Recompute the sum from the values (bounds float drift).
    pub(crate) fn resum(&mut self) {
        self.sum = self.values.iter().map(|x| f64::from(*x)).sum();
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Tail {
    /// Values before `ln_sf` answers.
    warm: u64,
    /// A normal tail only (for a log-scale statistic with few values).
    normal: bool,
    pub(crate) n: u64,
    pub(crate) mean: f64,
    var: f64,
    /// Running mean of 1[x > mean + 2 sd].
    exceed: f64,
    /// Recent excesses over mean + 2 sd.
    peaks: Ring,
    peaks_sq: f64,
}

impl Tail {
    pub(crate) fn new(warm: u64, normal: bool) -> Self {
        Tail {
            warm,
            normal,
            n: 0,
            mean: 0.0,
            var: 0.0,
            exceed: 0.0,
            peaks: Ring::default(),
            peaks_sq: 0.0,
        }
    }

    pub(crate) fn sd(&self) -> f64 {
        self.var.max(1e-12).sqrt()
    }

    /// `ln P(X >= x)` under this channel's history (`None` while warming up).
    pub(crate) fn ln_sf(&self, x: f64) -> Option<f64> {
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
    pub(crate) fn quantile(&self, ln_p: f64) -> Option<f64> {
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

    /// Learn `x` with a running mean over the first `history` values and an
    /// exponential one after; a value beyond the strength that scores 2.0
    /// (p = risk²) enters capped there, so that one huge event cannot mask
    /// the next.
    pub(crate) fn learn(&mut self, x: f64, history: usize, risk: f64) {
        let cap_ln_p = 2.0 * risk.ln();
        let x = match self.ln_sf(x) {
            Some(l) if l < cap_ln_p => self.quantile(cap_ln_p).unwrap_or(x).min(x),
            _ => x,
        };
        let alpha = 1.0 / (self.n + 1).min(history.max(1) as u64) as f64;
        self.update(x, alpha);
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.peaks.values.capacity() * std::mem::size_of::<f32>()
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
pub const LN_P_MIN: f64 = -744.44;

/// The strength of a tail probability `p` (given as `ln p`) of one of
/// `tests` tests a channel made on a value: `-log10(p tests) / -log10(risk)`
/// (at least 0, at most 323.3 / -log10 risk, always finite). 1.0 is a tail
/// event of probability `risk` for the channel as a whole (Bonferroni over
/// its tests).
pub fn strength(ln_p: f64, tests: usize, risk: f64) -> f64 {
    let tests = tests.max(1) as f64;
    (to_strength(ln_p) - tests.log10()).max(0.0) / -risk.log10()
}

/// `-log10 p` from `ln p`, at most 323.3 (so a score is at most 323.3
/// divided by `-log10 risk`, and always finite).
pub fn to_strength(ln_p: f64) -> f64 {
    (-ln_p.max(LN_P_MIN) / std::f64::consts::LN_10).max(0.0)
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
    fn upper_normal_tail_is_right() {
        assert!((ln_upper_normal(1.645).exp() - 0.05).abs() < 1e-3);
        assert!((ln_upper_normal(-1.645).exp() - 0.95).abs() < 1e-3);
        assert!((ln_upper_normal(0.0).exp() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn a_tail_learns_its_own_spread_and_caps_what_it_learns() {
        let mut t = Tail::new(16, false);
        assert!(t.ln_sf(1.0).is_none(), "warming up");
        for i in 0..2000 {
            t.learn(f64::from(i % 10), 500, 1e-4);
        }
        let usual = t.ln_sf(9.0).unwrap();
        let far = t.ln_sf(60.0).unwrap();
        assert!(usual > (1e-2f64).ln(), "a usual value: {usual}");
        assert!(far < (1e-4f64).ln(), "a far one: {far}");
        // A huge value enters capped at the p = risk² quantile.
        let before = t.mean;
        t.learn(1e12, 500, 1e-4);
        assert!((t.mean - before).abs() < 1.0, "{} -> {}", before, t.mean);
    }
}
