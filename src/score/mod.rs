//! Score stage: each point against the forecast that covers it, then the
//! series' own calibration.
//!
//! Pure: no I/O. The scorer keeps, per series key, the newest forecast (set
//! by the model stage after each run) and the calibration state
//! ([`calibration`] has the statistics). A point `step` values after its
//! covering run is scored by its forecast surprise
//! `z = (x - mean[step]) / std[step]`, which the calibration turns into a
//! score that means the same on every series. State is bounded: at most
//! `max_series` series, the least recently used dropped beyond that.

pub mod calibration;

use std::sync::Arc;

use lru::LruCache;

pub use calibration::{Calibration, Channels, Scored};

use crate::config::ScoreConfig;
use crate::model::forecast::{Explanation, Forecast};

/// The scored result of one value of one series.
#[derive(Debug, Clone)]
pub struct PointScore {
    /// Calibrated score.
    pub scored: Scored,
    /// The forecast mean of the value.
    pub expected: f32,
    /// The forecast scale of the value.
    pub expected_std: f32,
    /// The attention behind the forecast.
    pub explanation: Arc<Explanation>,
}

/// Forecast and calibration of one series.
#[derive(Debug, Clone, Default)]
pub struct SeriesScore {
    forecast: Option<Forecast>,
    calibration: Calibration,
}

impl SeriesScore {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.forecast.as_ref().map_or(0, Forecast::heap_bytes) + self.calibration.heap_bytes()
    }
}

/// Forecasts and calibration for many series.
#[derive(Debug)]
pub struct Scorer {
    cfg: ScoreConfig,
    max_series: usize,
    series: LruCache<Arc<str>, SeriesScore>,
    evicted: u64,
}

impl Scorer {
    /// A scorer with the given settings, holding at most `max_series`
    /// series (`window.max_series` in the service).
    pub fn new(cfg: ScoreConfig, max_series: usize) -> Self {
        Scorer {
            cfg,
            max_series: max_series.max(1),
            series: LruCache::unbounded(),
            evicted: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ScoreConfig {
        &self.cfg
    }

    fn entry(&mut self, key: &Arc<str>) -> &mut SeriesScore {
        if !self.series.contains(key) {
            while self.series.len() >= self.max_series {
                if self.series.pop_lru().is_none() {
                    break;
                }
                self.evicted += 1;
            }
        }
        self.series
            .get_or_insert_mut(key.clone(), SeriesScore::default)
    }

    /// Replace the forecast of series `key` (after a model run).
    pub fn set_forecast(&mut self, key: &Arc<str>, forecast: Forecast) {
        self.entry(key).forecast = Some(forecast);
    }

    /// Start every series' calibration afresh, keeping the forecasts (a
    /// hot-reloaded model whose scores are not comparable with the old
    /// one's). Returns the series reset.
    pub fn reset_calibrations(&mut self) -> usize {
        for (_, s) in self.series.iter_mut() {
            s.calibration = Calibration::new();
        }
        self.series.len()
    }

    /// Forget the forecast of series `key` (its run failed): its values are
    /// unscored until the next run.
    pub fn drop_forecast(&mut self, key: &str) {
        if let Some(s) = self.series.peek_mut(key) {
            s.forecast = None;
        }
    }

    /// Score `value` of series `key`, `step` values after its covering run.
    /// `None` when the series has no forecast covering it (its state was
    /// dropped for `max_series`, or the model has not run for it yet).
    pub fn score(&mut self, key: &str, value: f32, step: u32) -> Option<PointScore> {
        let cfg = &self.cfg;
        let state = self.series.get_mut(key)?;
        let forecast = state.forecast.as_ref()?;
        let (mean, std) = forecast.at(step)?;
        let z = (f64::from(value) - f64::from(mean)) / f64::from(std);
        let explanation = forecast.explanation.clone();
        // A run's novelty is news once: on the first value after it.
        let novelty: &[f32] = if step == 1 { &forecast.novelty } else { &[] };
        let scored = state.calibration.score(z, novelty, cfg);
        Some(PointScore {
            scored,
            expected: mean,
            expected_std: std,
            explanation,
        })
    }

    /// Series dropped for `max_series` since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Approximate heap bytes of all series state (keys, map, buffers).
    pub fn approx_bytes(&self) -> usize {
        let entry = std::mem::size_of::<SeriesScore>() + std::mem::size_of::<Arc<str>>() + 48;
        self.series
            .iter()
            .map(|(k, s)| entry + k.len() + 16 + s.heap_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::forecast::Shape;

    fn forecast(mean: f32, std: f32) -> Forecast {
        let shape = Shape {
            layers: 1,
            heads: 1,
            context: 4,
            patch: 2,
        };
        Forecast {
            mean: vec![mean; 3].into(),
            std: vec![std; 3].into(),
            explanation: Arc::new(Explanation::from_heads(&[0.5, 0.5], shape, 0, 1, 4)),
            novelty: Box::new([]),
        }
    }

    #[test]
    fn points_are_scored_against_their_forecast_step() {
        let mut s = Scorer::new(ScoreConfig::default(), 10);
        let key: Arc<str> = "a".into();
        assert!(s.score("a", 1.0, 1).is_none(), "no forecast yet");
        s.set_forecast(&key, forecast(10.0, 2.0));
        let p = s.score("a", 16.0, 2).unwrap();
        assert_eq!((p.expected, p.expected_std), (10.0, 2.0));
        assert!((p.scored.raw_score - 3.0).abs() < 1e-12);
        assert!(s.score("a", 16.0, 4).is_none(), "beyond the horizon");
    }

    #[test]
    fn series_beyond_max_series_evict_the_least_recent() {
        let mut s = Scorer::new(ScoreConfig::default(), 2);
        for k in ["a", "b", "a", "c"] {
            let key: Arc<str> = k.into();
            s.set_forecast(&key, forecast(0.0, 1.0));
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.take_evicted(), 1);
        assert!(s.score("b", 0.0, 1).is_none(), "b was least recently used");
        assert!(s.score("a", 0.0, 1).is_some());
    }
}
