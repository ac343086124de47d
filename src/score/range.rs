//! Range channel: a value beyond the range this series has shown so far.
//!
//! Pure, O(1) time and 40 bytes per series. The range is the lowest and
//! highest value since the series' first one; every value widens it,
//! probation included. After `warm` values, a value beyond it by `e` (as a
//! fraction of the range's width) is a *break*, and its tail probability is
//!
//! `p = rate * exp(-e / m)`
//!
//! - `rate` is how often this series breaks its range without alerting,
//!   `(breaks + 1) / (values + 1)` since the warm-up: a series that keeps
//!   setting records (a trend) is less surprised by one more; a series that
//!   has stayed inside its range for `n` values breaks it with probability
//!   about `1/n`, as exchangeable values would.
//! - `m` is the mean relative excess of those ordinary breaks, with a prior
//!   of [`PRIOR_EXCESS`] weighted as [`PRIOR_WEIGHT`] breaks. The prior puts
//!   `p = 1e-4` (score 1.08 at the default risk, 2e-4) at a break by 5% of the
//!   range when every value breaks it (`rate` = 1): the tolerance of HTM's
//!   NAB detector (its "spatial anomaly"), which becomes a calibrated tail
//!   here: the fewer breaks a series makes, the smaller a break alerts.
//!
//! A break whose strength reaches 1.0 does not teach the channel: it widens
//! the range (so the same value is no break again), but its excess stays
//! out of `m` and `rate`, so that an anomaly does not lower the guard for
//! the next. A range of zero width (a constant series so far) has no scale
//! and no breaks, as in HTM.

/// The prior mean relative excess of a break: `ln(1e-4) = -0.05 / m`.
pub const PRIOR_EXCESS: f64 = 0.05 / 9.210_340_371_976_184;
/// The prior's weight, in breaks.
pub const PRIOR_WEIGHT: f64 = 4.0;

/// Range state of one series.
#[derive(Debug, Clone, Default)]
pub struct Range {
    lo: f32,
    hi: f32,
    /// Values seen.
    n: u64,
    /// Values seen after the warm-up.
    after: u64,
    /// Ordinary (non-alerting) breaks after the warm-up.
    breaks: u64,
    /// Sum of their relative excesses.
    excess: f64,
}

impl Range {
    /// The lowest and highest value so far, once there is one.
    pub fn bounds(&self) -> Option<(f32, f32)> {
        (self.n > 0).then_some((self.lo, self.hi))
    }

    /// The width of the range so far (0 before two distinct values).
    pub fn width(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            f64::from(self.hi) - f64::from(self.lo)
        }
    }

    /// Observe `x` (the series' next value) and return the strength of its
    /// break (`-log10 p / -log10 risk`; 0 inside the range, during the
    /// first `warm` values, or without a range), then widen the range.
    pub fn observe(&mut self, x: f32, warm: u64, risk: f64) -> f64 {
        if !x.is_finite() {
            return 0.0;
        }
        if self.n == 0 {
            self.lo = x;
            self.hi = x;
            self.n = 1;
            return 0.0;
        }
        let mut strength = 0.0;
        let width = self.width();
        if self.n >= warm && width > 0.0 {
            self.after += 1;
            let xf = f64::from(x);
            let e = (xf - f64::from(self.hi)).max(f64::from(self.lo) - xf) / width;
            if e > 0.0 {
                let b = self.breaks as f64;
                let rate = ((b + 1.0) / (self.after as f64 + 1.0)).min(1.0);
                let m = (self.excess + PRIOR_EXCESS * PRIOR_WEIGHT) / (b + PRIOR_WEIGHT);
                let ln_p = rate.ln() - e / m;
                strength = super::tail::strength(ln_p, 1, risk);
                if strength < 1.0 {
                    self.breaks += 1;
                    self.excess += e;
                }
            }
        }
        self.lo = self.lo.min(x);
        self.hi = self.hi.max(x);
        self.n += 1;
        strength
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RISK: f64 = 1e-4;

    fn noise(i: u64) -> f32 {
        // A deterministic value in [0, 1).
        let x = i
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    #[test]
    fn nothing_breaks_during_the_warm_up() {
        let mut r = Range::default();
        for i in 0..100 {
            assert_eq!(r.observe(i as f32 * 100.0, 128, RISK), 0.0);
        }
        assert_eq!(r.bounds(), Some((0.0, 9900.0)));
    }

    #[test]
    fn a_far_break_alerts_once_and_a_value_inside_never() {
        let mut r = Range::default();
        let mut max_inside: f64 = 0.0;
        for i in 0..2000 {
            max_inside = max_inside.max(r.observe(noise(i), 128, RISK));
        }
        assert!(max_inside < 1.0, "noise inside its range: {max_inside}");
        let s = r.observe(1.5, 128, RISK);
        assert!(s > 1.0, "50% beyond the range: {s}");
        assert_eq!(r.observe(1.5, 128, RISK), 0.0, "the range has widened");
    }

    #[test]
    fn a_series_that_sets_records_is_less_surprised_by_one_more() {
        // A trend: every value is a new record by a little.
        let mut trend = Range::default();
        for i in 0..1000 {
            trend.observe(i as f32 * (1.0 + 0.3 * noise(i)), 128, RISK);
        }
        let mut flat = Range::default();
        for i in 0..1000 {
            flat.observe(noise(i) * 999.0, 128, RISK);
        }
        // The same relative excess: 3% of each one's range.
        let t = trend.observe(trend.hi + 0.03 * trend.width() as f32, 128, RISK);
        let f = flat.observe(flat.hi + 0.03 * flat.width() as f32, 128, RISK);
        assert!(t < 1.0, "the trend's next record: {t}");
        assert!(f > t, "flat {f} against trend {t}");
    }

    #[test]
    fn a_constant_series_has_no_breaks() {
        let mut r = Range::default();
        for _ in 0..500 {
            assert_eq!(r.observe(3.0, 128, RISK), 0.0);
        }
        assert_eq!(r.observe(4.0, 128, RISK), 0.0, "no width, no scale");
        assert!(r.observe(9.0, 128, RISK) > 1.0, "now it has one");
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut r = Range::default();
        r.observe(1.0, 0, RISK);
        assert_eq!(r.observe(f32::NAN, 0, RISK), 0.0);
        assert_eq!(r.bounds(), Some((1.0, 1.0)));
    }
}
