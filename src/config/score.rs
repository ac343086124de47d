//! `[score]`: calibration, channels, the pattern memory and incidents.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Calibration settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Normalised score above which a point is anomalous.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Forecasts each value is judged against: 2 scores it against the
    /// newest forecast and the one before it (which still covers it when
    /// `model.stride` is below the model's horizon) and keeps the smaller
    /// surprise, so a value is surprising only if both forecasts missed
    /// it; 1 uses the newest only.
    #[serde(default = "default_forecasts")]
    pub forecasts: u32,
    /// Scored points per series before any alert (probation); also the
    /// values the range channel watches before it speaks.
    #[serde(default = "default_probation")]
    pub probation: usize,
    /// Memory of the calibration, in points: its running means are plain
    /// means over the first `history` points and exponential means with
    /// this span after.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Tail probability, per point, channel and series, of a strength of
    /// 1.0: the chance that an ordinary value alerts (lower = fewer alerts).
    /// The default, 2e-4, was chosen on the NAB dev files (models/README.md).
    #[serde(default = "default_risk")]
    pub risk: f64,
    /// Scored points without an anomaly after which a series' open
    /// incident closes; the next anomalous point then alerts again.
    #[serde(default = "default_incident_quiet")]
    pub incident_quiet: u32,
    /// Points in the run and shift channels (sustained surprise, level
    /// shifts).
    #[serde(default = "default_run_points")]
    pub run_points: usize,
    /// The channels that can raise the score: `point` (one surprising
    /// value), `run` (sustained surprise over `run_points`), `shift` (a
    /// consistent shift over `run_points`), `novelty`
    /// (the model's: the newest patch unlike anything in the context),
    /// `range` (a value beyond the range the series has shown), `memory`
    /// (the newest span-long pattern unlike the series' past ones).
    #[serde(default = "default_channels")]
    pub channels: Vec<Channel>,
    /// The pattern memory's scales: each span is covered by one query of
    /// `memory_query` block means (a day at 5-minute data: blocks of 18
    /// values).
    #[serde(default = "default_memory_spans", with = "durations")]
    pub memory_spans: Vec<Duration>,
    /// Block means per memory query.
    #[serde(default = "default_memory_query")]
    pub memory_query: usize,
    /// Grid values of history each memory scale keeps (at most 512 blocks;
    /// at 2,048, the model's context, a rebuild after a restart restores
    /// it whole).
    #[serde(default = "default_memory_points")]
    pub memory_points: usize,
}

/// A calibration channel (see the `score` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// One surprising value.
    Point,
    /// Sustained surprise over the last `run_points` values.
    Run,
    /// A consistent shift of the last `run_points` values.
    Shift,
    /// The model's novelty of the newest pattern against the series' own
    /// context (models with a `novelty` output; on the first value after
    /// each run).
    Novelty,
    /// A value beyond the range the series has shown so far.
    Range,
    /// The newest span-long pattern against the series' pattern memory.
    Memory,
}

impl ScoreConfig {
    /// Problems with these settings, for `Config::validate`.
    pub(super) fn problems(&self, out: &mut Vec<String>) {
        if !(1..=2).contains(&self.forecasts) {
            out.push("score.forecasts must be 1 or 2".into());
        }
        if self.history < 64 {
            out.push("score.history must be >= 64".into());
        }
        if !(self.risk > 0.0 && self.risk < 0.5) {
            out.push("score.risk must be in (0, 0.5)".into());
        }
        if self.run_points == 0 || self.run_points > 1024 {
            out.push("score.run_points must be in 1..=1024".into());
        }
        if self.channels.is_empty() {
            out.push("score.channels must name at least one channel".into());
        }
        if self.incident_quiet == 0 {
            out.push("score.incident_quiet must be >= 1".into());
        }
        if !(2..=128).contains(&self.memory_query) {
            out.push("score.memory_query must be in 2..=128".into());
        }
        if self.memory_spans.iter().any(|d| d.is_zero()) {
            out.push("score.memory_spans must be > 0".into());
        }
        if self.memory_spans.len() > 8 {
            out.push("score.memory_spans holds at most 8 spans".into());
        }
    }
}

pub(super) fn default_threshold() -> f64 {
    1.0
}
pub(super) fn default_forecasts() -> u32 {
    2
}
pub(super) fn default_probation() -> usize {
    128
}
pub(super) fn default_history() -> usize {
    2000
}
pub(super) fn default_risk() -> f64 {
    2e-4
}
pub(super) fn default_incident_quiet() -> u32 {
    12
}
pub(super) fn default_run_points() -> usize {
    12
}
pub(super) fn default_channels() -> Vec<Channel> {
    vec![
        Channel::Point,
        Channel::Run,
        Channel::Shift,
        Channel::Novelty,
        Channel::Range,
        Channel::Memory,
    ]
}
pub(super) fn default_memory_spans() -> Vec<Duration> {
    vec![Duration::from_secs(86_400)]
}
pub(super) fn default_memory_query() -> usize {
    16
}
pub(super) fn default_memory_points() -> usize {
    2048
}

/// A list of durations as humantime strings (`["1d", "7d"]`).
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| humantime_serde::re::humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(d)?;
        Ok(v.into_iter()
            .map(humantime_serde::Serde::into_inner)
            .collect())
    }
}
