//! Window stage: per-series regular-grid windows with bounded lateness and
//! bounded state.
//!
//! Pure: no I/O, no tokio; the processing-time clock is passed in. For each
//! series key ([`series`] has the rules):
//! - points go on a regular grid, with the interval configured or inferred
//!   from the first `infer_points` points (median delta);
//! - points within one interval are aggregated (`mean` or `last`);
//! - a bucket closes when the watermark (newest timestamp minus
//!   `allowed_lateness`) passes its end, and is emitted with its window; a
//!   point whose bucket has already closed is late and dropped;
//! - gaps up to `max_gap` intervals are filled (forward or linear); a longer
//!   gap resets the window;
//! - duplicate timestamps count once (the larger value wins);
//! - at most `max_series` series are kept (least recently used evicted) and
//!   series idle for `idle_ttl` are evicted.
//!
//! Model runs are scheduled here too, so that the schedule is a pure
//! function of the data: once a series has `min_points` grid values, a run
//! is due at every `stride`-th grid value (filled gap values included), and
//! the grid value it falls on carries the context (the window of W
//! positions ending there; missing older positions are `NaN`, the model
//! masks them). The run forecasts the next `horizon` values. Every real
//! grid value after a series' first run carries `step`: how many values
//! after its covering run it lies (1..=stride), which is the forecast step
//! it is scored against. The second run comes early by a stagger of
//! 0..stride values, a hash of the series key, so that series which start
//! together spread their runs over time. A reset after a long gap starts
//! the schedule over.
//!
//! State per series: measured at 371 bytes for a series holding one point,
//! key included (docs/BENCHMARKS.md), plus 4 bytes per further grid value
//! held (at most W) and the raw points of its open buckets.

mod ring;
mod series;
mod timers;

use std::collections::HashSet;

use lru::LruCache;
use serde::{Deserialize, Serialize};

pub use series::Series;
pub use series::{IDLE_FLUSHED, IDLE_STALE};
pub use timers::{mark_hash, IdleTimers, Mark, Swept, MARK_HASH_MASK};

/// Timestamp of a missing window position.
pub const MISSING_TS: i64 = i64::MIN;

/// Why a point was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Its bucket has already been closed (later than the allowed lateness).
    #[error("later than the allowed lateness")]
    Late,
    /// Its bucket already holds `max_points_per_bucket` points.
    #[error("bucket full")]
    BucketFull,
}

/// How points within one interval become one grid value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Mean of the points.
    Mean,
    /// The point with the latest timestamp.
    Last,
}

/// How short gaps are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Repeat the last value.
    Forward,
    /// Interpolate linearly to the next value.
    Linear,
}

/// Settings of the window stage (from config and the model contract).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Window length W (model contract).
    pub window: usize,
    /// Fewest grid values before windows are emitted (model contract).
    pub min_points: usize,
    /// Grid interval in ms; `None` infers it per series.
    pub interval_ms: Option<i64>,
    /// Points used to infer the interval.
    pub infer_points: usize,
    /// Aggregation within an interval.
    pub aggregation: Aggregation,
    /// Longest gap (in intervals) that is filled; longer ones reset.
    pub max_gap: usize,
    /// Gap filling.
    pub fill: Fill,
    /// Allowed lateness in ms.
    pub lateness_ms: i64,
    /// Most series kept.
    pub max_series: usize,
    /// Idle time (processing time, ms) after which a series is evicted.
    pub idle_ttl_ms: i64,
    /// Cap on raw points held in one open bucket.
    pub max_points_per_bucket: usize,
    /// A model run is due every `stride` grid values (1..=horizon).
    pub stride: usize,
}

impl Settings {
    /// Arrival-order-free defaults around a model's W and min_points
    /// (interval inferred from 8 points, mean, gaps up to 16 filled
    /// forward, no lateness, 1M series, 24 h TTL).
    pub fn for_model(window: usize, min_points: usize) -> Self {
        Settings {
            window: window.max(2),
            min_points: min_points.clamp(1, window.max(2)),
            interval_ms: None,
            infer_points: 8,
            aggregation: Aggregation::Mean,
            max_gap: 16,
            fill: Fill::Forward,
            lateness_ms: 0,
            max_series: 1_000_000,
            idle_ttl_ms: 24 * 3_600_000,
            max_points_per_bucket: 4096,
            stride: 1,
        }
    }
}

/// A window of W positions on the grid, oldest first; missing positions
/// (a series warming up) come first and are `NaN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Values, length W; `NaN` where missing.
    pub values: Vec<f32>,
    /// Grid timestamp (bucket start, epoch ms) of the last position.
    pub end_ts: i64,
    /// Grid interval (ms).
    pub interval: i64,
    /// Number of present positions (the last `present` ones).
    pub present: usize,
}

impl Window {
    /// Whether position `i` holds a value.
    pub fn present(&self, i: usize) -> bool {
        i < self.values.len() && i + self.present >= self.values.len()
    }

    /// Grid timestamp of position `i` (also for missing positions: where
    /// the grid would be).
    pub fn ts_at(&self, i: usize) -> i64 {
        let back = self.values.len().saturating_sub(1).saturating_sub(i) as i64;
        self.end_ts
            .saturating_sub(back.saturating_mul(self.interval))
    }

    /// Grid timestamps of every position, [`MISSING_TS`] where missing.
    pub fn timestamps(&self) -> Vec<i64> {
        (0..self.values.len())
            .map(|i| {
                if self.present(i) {
                    self.ts_at(i)
                } else {
                    MISSING_TS
                }
            })
            .collect()
    }
}

/// One closed grid point.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// Bucket start (epoch ms).
    pub ts: i64,
    /// Aggregated value.
    pub value: f32,
    /// Grid values since the run whose forecast covers this one (1 for the
    /// value right after a run); `None` before the series' first run.
    pub step: Option<u32>,
    /// A value filled into a gap. It is emitted only when a run is due on
    /// it, and is never scored or published.
    pub filled: bool,
    /// The window ending here, when a model run is due on this value.
    pub window: Option<Window>,
    /// The series' grid interval (ms).
    pub interval: i64,
}

/// Cumulative counts of what the stage did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Points dropped as late.
    pub late: u64,
    /// Duplicate timestamps resolved.
    pub duplicates: u64,
    /// Points dropped because their bucket was full.
    pub overflow: u64,
    /// Grid values filled into gaps.
    pub gaps_filled: u64,
    /// Windows reset after a gap longer than `max_gap`.
    pub resets: u64,
    /// Series evicted to stay under `max_series`.
    pub evicted_lru: u64,
    /// Series evicted after `idle_ttl` without points.
    pub evicted_idle: u64,
    /// Series whose open buckets the idle flush closed.
    pub flushed_idle: u64,
    /// Series reported stale.
    pub stale: u64,
}

/// The window state of every series.
pub struct Windows {
    settings: Settings,
    series: LruCache<String, Series>,
    counters: Counters,
    /// Keys of the series whose idle timers have fired (flags set).
    marked: HashSet<String>,
    /// Partitions whose set of marked series changed since the last
    /// [`Windows::take_dirty`].
    dirty: HashSet<i32>,
}

impl std::fmt::Debug for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows")
            .field("series", &self.series.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Windows {
    /// An empty stage.
    pub fn new(settings: Settings) -> Self {
        Windows {
            settings,
            series: LruCache::unbounded(),
            counters: Counters::default(),
            marked: HashSet::new(),
            dirty: HashSet::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Cumulative counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Approximate heap bytes of all series state (keys, map, buffers).
    pub fn approx_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Series>() + std::mem::size_of::<String>() + 48;
        self.series
            .iter()
            .map(|(k, s)| entry + k.capacity() + s.heap_bytes())
            .sum()
    }

    /// Add a point of series `key` at processing time `now_ms`. Returns the
    /// grid points it closed (usually zero or one).
    pub fn push(
        &mut self,
        key: &str,
        ts: i64,
        value: f32,
        now_ms: i64,
    ) -> Result<Vec<Emitted>, Rejected> {
        self.push_from(key, ts, value, now_ms, -1)
    }

    /// [`Windows::push`] for a point read from input `partition`: the
    /// series belongs to that partition until a point of it comes from
    /// another (so that a revocation can drop it with its timers).
    pub fn push_from(
        &mut self,
        key: &str,
        ts: i64,
        value: f32,
        now_ms: i64,
        partition: i32,
    ) -> Result<Vec<Emitted>, Rejected> {
        self.expire(now_ms);
        let mut out = Vec::new();
        let s = &self.settings;
        if let Some(series) = self.series.get_mut(key) {
            series.last_seen_ms = now_ms;
            if series.idle != 0 {
                // The point re-arms the timers: the mark goes.
                self.marked.remove(key);
                self.dirty.insert(series.partition);
            }
            if series.partition != partition {
                self.dirty.insert(series.partition);
                series.partition = partition;
            }
            series.idle = 0;
            series.push(ts, value, s, &mut self.counters, &mut out)?;
            return Ok(out);
        }
        let max_series = s.max_series.max(1);
        while self.series.len() >= max_series {
            let Some((k, old)) = self.series.pop_lru() else {
                break;
            };
            self.unmark(&k, &old);
            self.counters.evicted_lru += 1;
        }
        let s = &self.settings;
        let mut series = Series::new(s, now_ms, key);
        series.partition = partition;
        let result = series.push(ts, value, s, &mut self.counters, &mut out);
        self.series.put(key.to_owned(), series);
        result.map(|()| out)
    }

    fn unmark(&mut self, key: &str, series: &Series) {
        if series.idle != 0 && self.marked.remove(key) {
            self.dirty.insert(series.partition);
        }
    }

    /// Evict series idle since before `now_ms - idle_ttl`.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.settings.idle_ttl_ms);
        while self
            .series
            .peek_lru()
            .is_some_and(|(_, s)| s.last_seen_ms < cutoff)
        {
            if let Some((k, old)) = self.series.pop_lru() {
                self.unmark(&k, &old);
            }
            self.counters.evicted_idle += 1;
        }
    }

    /// The grid interval of `key`, once known.
    pub fn interval(&self, key: &str) -> Option<i64> {
        self.series.peek(key).and_then(Series::interval)
    }

    /// Close every open bucket of `key` (end of a file).
    pub fn flush(&mut self, key: &str) -> Vec<Emitted> {
        let mut out = Vec::new();
        if let Some(series) = self.series.peek_mut(key) {
            series.flush(&self.settings, &mut self.counters, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests;
