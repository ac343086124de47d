//! Score stage: each value of a series against the forecast that covers
//! it, the range and the patterns the series has shown, then the series'
//! own calibration, its alerts and its incidents.
//!
//! Pure: no I/O. Per series key the scorer keeps:
//! - the newest forecast (set by the model stage after each run) and the
//!   forecast channels' calibration ([`calibration`]: point, run, shift,
//!   the model's novelty);
//! - the range ([`range`]): a value beyond what the series has shown;
//! - the pattern memory ([`memory`]): the newest day-long (by default)
//!   pattern against the series' past ones;
//! - the alert state ([`incident`]).
//!
//! Every channel's strength is `-log10 p / -log10 risk` with `p` from its
//! own tail on this series ([`tail`]), so one threshold serves every
//! channel and every series; the score is the strongest channel. A value
//! is anomalous above the threshold after `probation` scored values; the
//! first anomalous value of a quiet series is an alert and opens an
//! incident. Values that are not scored (before the series' first run)
//! still teach the range and the memory ([`Scorer::observe`]). State is
//! bounded: at most `max_series` series, the least recently used dropped
//! beyond that.

pub mod calibration;
pub mod incident;
pub mod memory;
pub mod range;
pub mod tail;

use std::collections::HashMap;
use std::sync::Arc;

use lru::LruCache;

pub use calibration::{Calibration, ForecastScore};
pub use incident::Incidents;
pub use memory::{Memory, MemoryScore, MemorySettings};
pub use range::Range;

use crate::config::{Channel, ScoreConfig};
use crate::feedback::{Adjust, SharedBook};
use crate::flow::forecast::{Explanation, Forecast};
pub use crate::flow::{Channels, Match, Scored};

/// The forecast surprise of `x`: `(x - mean) / std`.
fn surprise(x: f32, mean: f32, std: f32) -> f64 {
    (f64::from(x) - f64::from(mean)) / f64::from(std)
}

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

/// Forecast, calibration, range, memory and alert state of one series.
#[derive(Debug, Clone, Default)]
pub struct SeriesScore {
    forecast: Option<Forecast>,
    /// The forecast the newest one replaced (it still covers the values
    /// after the newest run, up to its horizon).
    previous: Option<Forecast>,
    calibration: Calibration,
    range: Range,
    memory: Memory,
    incidents: Incidents,
}

impl SeriesScore {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.forecast.as_ref().map_or(0, Forecast::heap_bytes)
            + self.previous.as_ref().map_or(0, Forecast::heap_bytes)
            + self.calibration.heap_bytes()
            + self.memory.heap_bytes()
    }

    /// Teach the range and the memory one value; their strengths.
    fn learn_value(&mut self, v: &Value<'_>, p: &Params<'_>) -> (f64, MemoryScore) {
        let range = self.range.observe(v.value, p.warm, p.cfg.risk);
        let memory = if p.memory_on {
            let width = self.range.width();
            self.memory
                .observe(v.ts, v.value, v.interval, width, &p.memory)
        } else {
            MemoryScore::default()
        };
        (range, memory)
    }
}

/// One grid value of one series, as the scorer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    /// Series key (series, or series and feature).
    pub key: &'a Arc<str>,
    /// Grid timestamp.
    pub ts: i64,
    /// The grid value.
    pub value: f32,
    /// The series' grid interval (ms).
    pub interval: i64,
}

/// Settings derived once from the config.
struct Params<'a> {
    cfg: &'a ScoreConfig,
    memory: MemorySettings<'a>,
    memory_on: bool,
    warm: u64,
}

fn params<'a>(cfg: &'a ScoreConfig, spans_ms: &'a [i64]) -> Params<'a> {
    Params {
        cfg,
        memory: MemorySettings {
            spans_ms,
            query: cfg.memory_query,
            points: cfg.memory_points,
            risk: cfg.risk,
            history: cfg.history,
        },
        memory_on: cfg.channels.contains(&Channel::Memory),
        warm: cfg.probation as u64,
    }
}

/// Forecasts and calibration for many series.
#[derive(Debug)]
pub struct Scorer {
    cfg: ScoreConfig,
    spans_ms: Vec<i64>,
    max_series: usize,
    series: LruCache<Arc<str>, SeriesScore>,
    evicted: u64,
    feedback: Option<Feedback>,
}

/// The operators' feedback as this scorer sees it: a copy of the shared
/// book's ceilings, refreshed when the book changes.
#[derive(Debug)]
struct Feedback {
    book: Arc<SharedBook>,
    version: u64,
    ceilings: HashMap<Arc<str>, Adjust>,
}

impl Feedback {
    fn ceilings(&mut self, key: &str) -> Option<&Adjust> {
        let v = self.book.version();
        if v != self.version {
            self.ceilings = self.book.ceilings();
            self.version = v;
        }
        self.ceilings.get(key)
    }
}

impl Scorer {
    /// A scorer with the given settings, holding at most `max_series`
    /// series (`window.max_series` in the service).
    pub fn new(cfg: ScoreConfig, max_series: usize) -> Self {
        let spans_ms = cfg
            .memory_spans
            .iter()
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .collect();
        Scorer {
            cfg,
            spans_ms,
            max_series: max_series.max(1),
            series: LruCache::unbounded(),
            evicted: 0,
            feedback: None,
        }
    }

    /// Apply the operators' feedback from `book` (feedback ceilings: a
    /// channel marked "not an anomaly" on a series is scaled down there).
    pub fn with_feedback(mut self, book: Arc<SharedBook>) -> Self {
        self.feedback = Some(Feedback {
            book,
            version: u64::MAX,
            ceilings: HashMap::new(),
        });
        self
    }

    /// The settings.
    pub fn config(&self) -> &ScoreConfig {
        &self.cfg
    }

    /// The state of `key`, created (and the least recent series evicted
    /// beyond `max_series`) when absent.
    fn entry<'s>(
        series: &'s mut LruCache<Arc<str>, SeriesScore>,
        max_series: usize,
        evicted: &mut u64,
        key: &Arc<str>,
    ) -> &'s mut SeriesScore {
        if !series.contains(key) {
            while series.len() >= max_series {
                if series.pop_lru().is_none() {
                    break;
                }
                *evicted += 1;
            }
        }
        series.get_or_insert_mut(key.clone(), SeriesScore::default)
    }

    /// Replace the forecast of series `key` (after a model run).
    pub fn set_forecast(&mut self, key: &Arc<str>, forecast: Forecast) {
        let s = Self::entry(&mut self.series, self.max_series, &mut self.evicted, key);
        s.previous = if self.cfg.forecasts > 1 {
            s.forecast.replace(forecast)
        } else {
            s.forecast = Some(forecast);
            None
        };
    }

    /// Start every series' forecast calibration afresh, keeping the
    /// forecasts, ranges, memories and incidents (a hot-reloaded model
    /// whose scores are not comparable with the old one's; the range and
    /// the memory do not depend on the model). Returns the series reset.
    pub fn reset_calibrations(&mut self) -> usize {
        for (_, s) in self.series.iter_mut() {
            s.calibration = Calibration::new();
        }
        self.series.len()
    }

    /// Forget everything about series `key` (its partition was revoked).
    pub fn forget(&mut self, key: &str) {
        self.series.pop(key);
    }

    /// Forget the forecast of series `key` (its run failed): its values are
    /// unscored until the next run.
    pub fn drop_forecast(&mut self, key: &str) {
        if let Some(s) = self.series.peek_mut(key) {
            s.forecast = None;
            s.previous = None;
        }
    }

    /// A value that is not scored (before the series' first run): it
    /// teaches the range and the memory.
    pub fn observe(&mut self, v: Value<'_>) {
        let Scorer {
            cfg,
            spans_ms,
            max_series,
            series,
            evicted,
            ..
        } = self;
        let p = params(cfg, spans_ms);
        let state = Self::entry(series, *max_series, evicted, v.key);
        state.learn_value(&v, &p);
    }

    /// Score value `v`, `step` values after its covering run. `None` when
    /// the series has no forecast covering it (its state was dropped for
    /// `max_series`, or its run failed); the value still teaches the range
    /// and the memory.
    pub fn score(&mut self, v: Value<'_>, step: u32) -> Option<PointScore> {
        let covered = self
            .series
            .get(v.key)
            .and_then(|s| s.forecast.as_ref())
            .is_some_and(|f| f.at(step).is_some());
        if !covered {
            self.observe(v);
            return None;
        }
        let p = params(&self.cfg, &self.spans_ms);
        let state = self.series.peek_mut(v.key)?;
        let forecast = state.forecast.as_ref()?;
        let (mut mean, mut std) = forecast.at(step)?;
        let mut z = surprise(v.value, mean, std);
        let mut explanation = &forecast.explanation;
        // A run's novelty is news once: on the first value after it.
        let novelty: &[f32] = if step == 1 { &forecast.novelty } else { &[] };
        // The second opinion: the forecast before the newest, where it
        // still covers the value. The value is as surprising as the less
        // surprised of the two (and is explained by that one).
        if let Some((m, s, e)) = state.previous.as_ref().and_then(|f| f.covering(v.ts)) {
            let z2 = surprise(v.value, m, s);
            if z2.abs() < z.abs() {
                (mean, std, z, explanation) = (m, s, z2, e);
            }
        }
        let explanation = explanation.clone();
        let cfg = p.cfg;
        let eligible = state.calibration.seen() >= cfg.probation as u64;
        let f = state.calibration.score(z, novelty, cfg);
        let (range, memory) = state.learn_value(&v, &p);
        let on = |c: Channel| cfg.channels.contains(&c);
        let mut channels = Channels {
            point: f.point,
            run: f.run,
            shift: f.shift,
            novelty: f.novelty,
            range: if on(Channel::Range) { range } else { 0.0 },
            memory: memory.strength,
        };
        if let Some(c) = self.feedback.as_mut().and_then(|fb| fb.ceilings(v.key)) {
            crate::feedback::apply_ceilings(&mut channels, c, cfg.threshold);
        }
        let score = channels.max();
        let anomaly = eligible && score > cfg.threshold;
        let step = state.incidents.step(anomaly, v.ts, cfg.incident_quiet);
        Some(PointScore {
            scored: Scored {
                score,
                threshold: cfg.threshold,
                anomaly,
                alert: step.alert,
                incident: step.incident,
                raw_score: f.raw_score,
                channels,
                nearest: memory.nearest,
            },
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
mod tests;
