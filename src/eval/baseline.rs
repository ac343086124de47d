//! The yardstick: a rolling z-score (NAB's "windowed Gaussian") expressed
//! as a forecaster, so that it goes through the same window stage, run
//! schedule and calibration as the model.
//!
//! Its "forecast" of the next value is the mean and standard deviation of
//! the `W` values before it (present ones only; the scale floored like the
//! model's normalisation). Run on every value (stride 1, horizon 1), the
//! surprise of a value is exactly its z-score against the preceding `W`.

use crate::model::{Contract, Forecaster, Inference, ModelError};

/// Rolling mean and standard deviation of the last `window` values.
#[derive(Debug, Clone)]
pub struct RollingZ {
    contract: Contract,
}

impl RollingZ {
    /// A baseline over `window` values, scoring from `min_points` values.
    pub fn new(window: usize, min_points: usize) -> Self {
        RollingZ {
            contract: Contract {
                name: "baseline-zscore".into(),
                version: format!("w{window}"),
                window,
                patch: 1,
                horizon: 1,
                min_points: min_points.clamp(2, window.max(2)),
                features: vec!["value".into()],
                layers: 0,
                heads: 0,
                score: "z-score of the value against the mean and std of the window before it"
                    .into(),
                flops_per_run: 0,
                novelty: 0,
                scores_compatible_with: Vec::new(),
            },
        }
    }
}

/// Mean and floored standard deviation of the present values of `w`.
pub fn mean_std(w: &[f32]) -> (f64, f64) {
    let (mut n, mut sum) = (0usize, 0.0f64);
    for x in w.iter().filter(|x| !x.is_nan()) {
        n += 1;
        sum += f64::from(*x);
    }
    let mean = sum / n.max(1) as f64;
    let var = w
        .iter()
        .filter(|x| !x.is_nan())
        .map(|x| (f64::from(*x) - mean).powi(2))
        .sum::<f64>()
        / n.max(1) as f64;
    let floor = 1e-3 * mean.abs() + 1e-6;
    (mean, (var + floor * floor).sqrt())
}

impl Forecaster for RollingZ {
    fn contract(&self) -> &Contract {
        &self.contract
    }

    fn forecast(&mut self, input: &[f32], batch: usize) -> Result<Inference, ModelError> {
        let w = self.contract.window;
        if input.len() != batch * w {
            return Err(ModelError::Run(format!(
                "input holds {} values, expected {batch} x {w}",
                input.len()
            )));
        }
        let mut out = Inference::default();
        for ctx in input.chunks(w) {
            let (m, s) = mean_std(ctx);
            out.mean.push(m as f32);
            out.std.push(s as f32);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_is_the_windows_mean_and_std() {
        let mut b = RollingZ::new(4, 2);
        let out = b
            .forecast(&[f32::NAN, 1.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0], 2)
            .unwrap();
        assert!((out.mean[0] - 2.0).abs() < 1e-6);
        assert!((out.std[0] - (2.0f32 / 3.0).sqrt()).abs() < 1e-3);
        assert_eq!(out.mean[1], 5.0);
        assert!(out.std[1] > 0.0 && out.std[1] < 0.01, "floored, not zero");
        assert!(out.attention.is_empty());
    }
}
