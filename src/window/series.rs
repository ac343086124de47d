//! The grid state of one series: interval, open buckets, watermark, gaps.
//!
//! A point lands in bucket `floor((ts - phase) / interval)`; the phase is 0
//! for a configured interval and the first point's phase for an inferred one. A bucket closes when the
//! series' watermark (its newest timestamp minus the allowed lateness) passes
//! the bucket's end; closing aggregates the bucket into one grid value, fills
//! a short gap before it (or resets the window after a long one), and emits
//! the grid point with its window. A point whose bucket has already closed is
//! late and dropped. Within a bucket each timestamp counts once: a duplicate
//! keeps the larger value, so the result does not depend on arrival order.

use std::collections::BTreeMap;

use super::ring::Ring;
use super::{Aggregation, Counters, Emitted, Fill, Rejected, Settings, Window};

/// Raw points of one open bucket, sorted by timestamp, one per timestamp.
#[derive(Debug, Clone, Default)]
struct Bucket {
    points: Vec<(i64, f32)>,
}

enum Inserted {
    New,
    Duplicate,
    Full,
}

impl Bucket {
    fn insert(&mut self, ts: i64, v: f32, cap: usize) -> Inserted {
        match self.points.binary_search_by_key(&ts, |p| p.0) {
            Ok(i) => {
                if v.total_cmp(&self.points[i].1).is_gt() {
                    self.points[i].1 = v;
                }
                Inserted::Duplicate
            }
            Err(_) if self.points.len() >= cap => Inserted::Full,
            Err(i) => {
                self.points.insert(i, (ts, v));
                Inserted::New
            }
        }
    }

    fn value(&self, agg: Aggregation) -> f32 {
        match agg {
            Aggregation::Mean => {
                let sum: f64 = self.points.iter().map(|p| f64::from(p.1)).sum();
                (sum / self.points.len().max(1) as f64) as f32
            }
            Aggregation::Last => self.points.last().map_or(f32::NAN, |p| p.1),
        }
    }
}

/// The run stagger of a series: a stable hash of its key (FNV-1a) modulo
/// the stride.
pub(crate) fn stagger(key: &str, stride: usize) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % stride.max(1) as u64) as u32
}

/// Per-series state.
#[derive(Debug, Clone)]
pub struct Series {
    interval: Option<i64>,
    /// Grid offset: 0 for a configured interval (epoch-aligned buckets), the
    /// first point's phase for an inferred one (regular data keeps its
    /// timestamps).
    phase: i64,
    /// Points seen before the interval is known (distinct timestamps).
    pending: Vec<(i64, f32)>,
    open: BTreeMap<i64, Bucket>,
    max_ts: Option<i64>,
    last_closed: Option<i64>,
    ring: Ring,
    /// Grid values since the last run; `None` before the first run (since
    /// the last reset).
    since_run: Option<u32>,
    /// Values until the next run is due (after the first run).
    until_run: u32,
    /// Values the first run's successor comes early by (0..stride), from a
    /// hash of the series key: series that start together do not run
    /// together forever after, so the model's load has no bursts.
    stagger: u32,
    /// Processing time of the last push (for idle eviction).
    pub last_seen_ms: i64,
    /// Idle timers that fired since the last push ([`IDLE_FLUSHED`],
    /// [`IDLE_STALE`]); a push clears them.
    pub idle: u8,
    /// The input partition its newest point came from (`-1`: none, as in
    /// `eval` and `score`).
    pub partition: i32,
}

/// [`Series::idle`]: the open buckets were closed by the idle flush.
pub const IDLE_FLUSHED: u8 = 1;
/// [`Series::idle`]: the series was reported stale.
pub const IDLE_STALE: u8 = 2;

impl Series {
    /// A new series; `key` sets its run stagger.
    pub fn new(s: &Settings, now_ms: i64, key: &str) -> Self {
        Series {
            interval: s.interval_ms,
            phase: 0,
            pending: Vec::new(),
            open: BTreeMap::new(),
            max_ts: None,
            last_closed: None,
            ring: Ring::new(s.window),
            since_run: None,
            until_run: 0,
            stagger: stagger(key, s.stride),
            last_seen_ms: now_ms,
            idle: 0,
            partition: -1,
        }
    }

    /// The newest timestamp seen.
    pub fn newest_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// The grid interval, once known.
    pub fn interval(&self) -> Option<i64> {
        self.interval
    }

    /// Heap bytes held by this series' state.
    pub fn heap_bytes(&self) -> usize {
        let bucket = std::mem::size_of::<(i64, f32)>();
        self.ring.heap_bytes()
            + self.pending.capacity() * bucket
            + self
                .open
                .values()
                .map(|b| b.points.capacity() * bucket + 64)
                .sum::<usize>()
    }

    /// Add a point; closed grid points are appended to `out`.
    pub fn push(
        &mut self,
        ts: i64,
        v: f32,
        s: &Settings,
        c: &mut Counters,
        out: &mut Vec<Emitted>,
    ) -> Result<(), Rejected> {
        let Some(interval) = self.interval else {
            match self.pending.binary_search_by_key(&ts, |p| p.0) {
                Ok(i) => {
                    c.duplicates += 1;
                    if v.total_cmp(&self.pending[i].1).is_gt() {
                        self.pending[i].1 = v;
                    }
                }
                Err(i) => self.pending.insert(i, (ts, v)),
            }
            if self.pending.len() >= s.infer_points.max(2) {
                self.start_grid(s, c, out);
            }
            return Ok(());
        };
        self.place(ts, v, interval, s, c, out)
    }

    /// Infer the interval from the pending points (median positive delta)
    /// and place them on the grid.
    fn start_grid(&mut self, s: &Settings, c: &mut Counters, out: &mut Vec<Emitted>) {
        let mut deltas: Vec<i64> = self
            .pending
            .windows(2)
            .map(|w| w[1].0.saturating_sub(w[0].0))
            .filter(|d| *d > 0)
            .collect();
        if deltas.is_empty() {
            return;
        }
        let mid = deltas.len() / 2;
        let (_, median, _) = deltas.select_nth_unstable(mid);
        let interval = (*median).max(1);
        self.interval = Some(interval);
        self.phase = self.pending.first().map_or(0, |p| p.0.rem_euclid(interval));
        for (ts, v) in std::mem::take(&mut self.pending) {
            // Pending points are distinct and sorted: none is late.
            let _ = self.place(ts, v, interval, s, c, out);
        }
    }

    fn place(
        &mut self,
        ts: i64,
        v: f32,
        interval: i64,
        s: &Settings,
        c: &mut Counters,
        out: &mut Vec<Emitted>,
    ) -> Result<(), Rejected> {
        let idx = ts.saturating_sub(self.phase).div_euclid(interval);
        if self.last_closed.is_some_and(|lc| idx <= lc) {
            c.late += 1;
            return Err(Rejected::Late);
        }
        match self
            .open
            .entry(idx)
            .or_default()
            .insert(ts, v, s.max_points_per_bucket)
        {
            Inserted::New => {}
            Inserted::Duplicate => c.duplicates += 1,
            Inserted::Full => {
                c.overflow += 1;
                return Err(Rejected::BucketFull);
            }
        }
        let max_ts = self.max_ts.map_or(ts, |m| m.max(ts));
        self.max_ts = Some(max_ts);
        let watermark = max_ts.saturating_sub(s.lateness_ms);
        while let Some((&first, _)) = self.open.first_key_value() {
            let end = first
                .saturating_add(1)
                .saturating_mul(interval)
                .saturating_add(self.phase);
            if end > watermark {
                break;
            }
            self.close(first, interval, s, c, out);
        }
        Ok(())
    }

    fn close(
        &mut self,
        idx: i64,
        interval: i64,
        s: &Settings,
        c: &mut Counters,
        out: &mut Vec<Emitted>,
    ) {
        let Some(bucket) = self.open.remove(&idx) else {
            return;
        };
        let value = bucket.value(s.aggregation);
        if let Some(prev) = self.last_closed {
            let gap = i128::from(idx) - i128::from(prev) - 1;
            if gap > 0 && gap <= s.max_gap as i128 {
                let before = self.ring.last().unwrap_or(value);
                let n = gap as usize;
                for k in 1..=n {
                    let filled = match s.fill {
                        Fill::Forward => before,
                        Fill::Linear => before + (value - before) * k as f32 / (n + 1) as f32,
                    };
                    let at = idx - (n + 1 - k) as i64;
                    self.advance(at, filled, true, interval, s, out);
                }
                c.gaps_filled += n as u64;
            } else if gap > 0 {
                self.ring.clear();
                self.since_run = None;
                self.until_run = 0;
                c.resets += 1;
            }
        }
        self.last_closed = Some(idx);
        self.advance(idx, value, false, interval, s, out);
    }

    /// Push one grid value (real or filled) and schedule a run on it when
    /// one is due; emit it if it is real or carries a run.
    fn advance(
        &mut self,
        idx: i64,
        value: f32,
        filled: bool,
        interval: i64,
        s: &Settings,
        out: &mut Vec<Emitted>,
    ) {
        let step = self.since_run.map(|k| k.saturating_add(1));
        self.ring.push(value);
        self.until_run = self.until_run.saturating_sub(1);
        let due = self.ring.len() >= s.min_points && (step.is_none() || self.until_run == 0);
        if due {
            let stride = s.stride.max(1) as u32;
            // The run after the first comes `stagger` values early; every
            // later run comes `stride` values after the one before.
            self.until_run = if step.is_none() {
                stride - self.stagger % stride
            } else {
                stride
            };
        }
        self.since_run = if due { Some(0) } else { step };
        if filled && !due {
            return;
        }
        let ts = idx.saturating_mul(interval).saturating_add(self.phase);
        out.push(Emitted {
            ts,
            value,
            step,
            filled,
            interval,
            window: due.then(|| Window {
                values: self.ring.padded(),
                end_ts: ts,
                interval,
                present: self.ring.len(),
            }),
        });
    }

    /// Close every open bucket (end of a file). A series that never saw
    /// enough points to infer its interval starts its grid now if it can.
    pub fn flush(&mut self, s: &Settings, c: &mut Counters, out: &mut Vec<Emitted>) {
        if self.interval.is_none() && self.pending.len() >= 2 {
            self.start_grid(s, c, out);
        }
        if let Some(interval) = self.interval {
            let open: Vec<i64> = self.open.keys().copied().collect();
            for idx in open {
                self.close(idx, interval, s, c, out);
            }
        }
    }
}
