//! What the score stage says of one value: its score, the strength of each
//! channel behind it, whether it alerts, and the past pattern it is like.
//!
//! Plain data; the score stage fills it, the publish stage, the page and
//! `eval` read it.

/// The score of one value of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Normalised score: above `threshold` means anomalous.
    pub score: f64,
    /// The normalised threshold (from config).
    pub threshold: f64,
    /// `score > threshold`, past probation.
    pub anomaly: bool,
    /// This point opened an incident: the first anomalous point after the
    /// series was quiet for `score.incident_quiet` points.
    pub alert: bool,
    /// The incident an anomalous point belongs to: the timestamp of the
    /// alert that opened it.
    pub incident: Option<i64>,
    /// The forecast surprise `|z|`, before calibration.
    pub raw_score: f64,
    /// Normalised strength of each channel; `score` is the largest.
    pub channels: Channels,
    /// The nearest past pattern in the series' memory to its newest
    /// pattern (as of the newest completed memory block).
    pub nearest: Option<Match>,
}

impl Scored {
    /// The score mapped monotonically to [0, 1) (0.5 at the threshold), as
    /// NAB expects: `s / (s + threshold)`.
    pub fn unit(&self) -> f64 {
        self.score / (self.score + self.threshold)
    }
}

/// Normalised strength of each channel (same units as `score`: 1.0 is a
/// tail event of probability `score.risk` on this series).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Channels {
    /// One surprising value against its forecast.
    pub point: f64,
    /// Sustained surprise over the last `run_points` values.
    pub run: f64,
    /// A consistent shift of the last `run_points` values.
    pub shift: f64,
    /// The model's novelty of the newest patch against the context (on the
    /// first value after each run; 0 otherwise).
    pub novelty: f64,
    /// A value beyond the range the series has shown.
    pub range: f64,
    /// The pattern memory: the newest span-long pattern against the
    /// series' past ones (on the values that complete a block; 0 otherwise).
    pub memory: f64,
}

impl Channels {
    /// Channel names, in the order of [`Channels::values`].
    pub const NAMES: [&'static str; 6] = ["point", "run", "shift", "novelty", "range", "memory"];

    /// The strengths, in the order of [`Channels::NAMES`].
    pub fn values(&self) -> [f64; 6] {
        [
            self.point,
            self.run,
            self.shift,
            self.novelty,
            self.range,
            self.memory,
        ]
    }

    /// The largest strength.
    pub fn max(&self) -> f64 {
        self.values().into_iter().fold(0.0, f64::max)
    }

    /// The name of the strongest channel (the first of equals).
    pub fn strongest(&self) -> &'static str {
        let v = self.values();
        let mut best = 0;
        for i in 1..v.len() {
            if v[i] > v[best] {
                best = i;
            }
        }
        Self::NAMES[best]
    }
}

/// The nearest past pattern of the series' current one, from its pattern
/// memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// Grid timestamp of the past pattern's first value.
    pub start_ts: i64,
    /// Grid timestamp of its last value.
    pub end_ts: i64,
    /// Its distance to the current pattern (RMS difference over the width
    /// of the series' range).
    pub distance: f32,
    /// The span of the memory scale (ms).
    pub span_ms: i64,
    /// The current pattern is new: its distance is at or beyond `score.risk`
    /// on this scale's own history, so this match is not really like it.
    pub novel: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_channel_is_named() {
        let c = Channels {
            run: 0.5,
            range: 3.0,
            memory: 3.0,
            ..Channels::default()
        };
        assert_eq!(c.strongest(), "range");
        assert_eq!(c.max(), 3.0);
        assert_eq!(Channels::default().strongest(), "point");
    }
}
