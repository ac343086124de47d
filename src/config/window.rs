//! `[window]`: the grid, lateness, gaps and the per-series state bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::window::{Aggregation, Fill};

/// Window stage settings (see the README's "Time semantics").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Grid interval. Unset: inferred per series from its first
    /// `infer_points` points (median delta).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Points used to infer the interval when it is not set.
    #[serde(default = "default_infer_points")]
    pub infer_points: usize,
    /// Aggregation of the points within one interval: `mean` or `last`.
    #[serde(default = "default_aggregation")]
    pub aggregation: Aggregation,
    /// Longest gap, in intervals, that is filled; a longer gap resets the window.
    #[serde(default = "default_max_gap")]
    pub max_gap: usize,
    /// Gap filling: `forward` or `linear`.
    #[serde(default = "default_fill")]
    pub fill: Fill,
    /// How late a point may arrive (behind the newest point of its series)
    /// and still land in its bucket. Buckets are scored once it has passed.
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Most series kept; the least recently used is evicted beyond it.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// A series without points for this long (processing time) is evicted.
    #[serde(default = "default_idle_ttl", with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// Idle flush: after this much processing time without a later point
    /// (or one interval of the series, if that is longer), the open bucket
    /// is closed and scored instead of waiting for the next point. `0s`: off.
    #[serde(default = "default_flush_after", with = "humantime_serde")]
    pub flush_after: Duration,
    /// A series silent this long (processing time; or three of its
    /// intervals, if that is longer) gets one `{"series", "ts", "event":
    /// "stale"}` record on the output topic and is counted in
    /// `attnwatch_series_stale_total`. `0s`: off.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
}

impl WindowConfig {
    /// The idle flush and stale timers (zero durations are off).
    pub fn timers(&self) -> crate::window::IdleTimers {
        let ms =
            |d: Duration| (!d.is_zero()).then(|| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        crate::window::IdleTimers {
            flush_after_ms: ms(self.flush_after),
            stale_after_ms: ms(self.stale_after),
        }
    }

    /// Window-stage settings for a model with context `w` and `min_points`,
    /// run every `stride` values.
    pub fn settings(&self, w: usize, min_points: usize, stride: usize) -> crate::window::Settings {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        crate::window::Settings {
            interval_ms: self.interval.map(ms),
            infer_points: self.infer_points,
            aggregation: self.aggregation,
            max_gap: self.max_gap,
            fill: self.fill,
            lateness_ms: ms(self.allowed_lateness),
            max_series: self.max_series,
            idle_ttl_ms: ms(self.idle_ttl),
            stride: stride.max(1),
            ..crate::window::Settings::for_model(w, min_points)
        }
    }
}

pub(super) fn default_infer_points() -> usize {
    8
}
pub(super) fn default_aggregation() -> Aggregation {
    Aggregation::Mean
}
pub(super) fn default_max_gap() -> usize {
    16
}
pub(super) fn default_fill() -> Fill {
    Fill::Forward
}
pub(super) fn default_max_series() -> usize {
    1_000_000
}
pub(super) fn default_idle_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

pub(super) fn default_flush_after() -> Duration {
    Duration::from_secs(120)
}
pub(super) fn default_stale_after() -> Duration {
    Duration::from_secs(600)
}
