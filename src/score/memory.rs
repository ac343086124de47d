//! Pattern memory: how new the series' current pattern is against its own
//! past, at time scales longer than the grid.
//!
//! Pure; per series and scale a few KiB and one query per block. For each
//! configured span (`score.memory_spans`, one day by default), the series
//! is downsampled into blocks of `f = max(1, round(span / (query ×
//! interval)))` grid values, aligned to the epoch, so that `query` block
//! means (16) cover about one span: a day fits in one query, whatever the
//! series' interval. When a block completes (its last grid value arrives):
//!
//! - the newest `query` block means are the **query**;
//! - every earlier run of `query` blocks that does not overlap it is a
//!   **key** (the memory holds the newest `memory_points / f` blocks, at
//!   most [`MAX_BLOCKS`]);
//! - the query attends to the keys by distance, in its hard form: the
//!   nearest key wins. The distance `d` is the root mean square difference
//!   of the block means over the width of the series' range, so it is
//!   scale-free and level-aware (a flat day at an unusual level is as new
//!   as an unusual shape);
//! - `d` is calibrated against this scale's own history of nearest
//!   distances on this series ([`Tail`]), like every other channel: the
//!   strength is `-log10(p K) / -log10 risk` with `K` the number of scales,
//!   and a strength of 1.0 or more means **a pattern never seen before**
//!   (nothing in the memory is as close as the series' patterns usually
//!   are to their past).
//!
//! The nearest key is the explanation: the time range of the past pattern
//! most like the current one ("like Tuesday 14:00"), or none when the
//! pattern is new. A grid gap leaves blocks partly or wholly empty: an
//! empty block repeats the one before it, and a gap longer than the query
//! clears the scale's memory (the patterns before it are not adjacent to
//! the ones after).

use super::tail::{strength, Tail};
pub use crate::flow::Match;

/// Most blocks a scale keeps.
pub const MAX_BLOCKS: usize = 512;
/// Nearest distances before the scale's tail answers (the channel is silent
/// until then: it has no null distribution).
const WARM: u64 = 16;

/// The newest `cap` block means, oldest first, contiguous: a vector that
/// holds at most `2 cap` and drops its older half at once (one copy per
/// `cap` pushes), so a query reads one slice and never allocates.
#[derive(Debug, Clone, Default)]
struct Blocks {
    buf: Vec<f32>,
    start: usize,
}

impl Blocks {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn back(&self) -> Option<f32> {
        self.buf.get(self.start..)?.last().copied()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    fn push(&mut self, x: f32, cap: usize) {
        if self.len() >= cap {
            self.start += 1;
        }
        if self.start >= cap {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.push(x);
    }

    fn as_slice(&self) -> &[f32] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// One scale's memory.
#[derive(Debug, Clone)]
struct Scale {
    span_ms: i64,
    /// Grid values per block (0 until the interval is known).
    f: i64,
    /// Block length in ms (`f * interval`).
    block_ms: i64,
    /// Blocks kept.
    cap: usize,
    /// Index (ts / block_ms) of the block being filled.
    block: i64,
    sum: f64,
    count: u32,
    /// Index of the newest completed block in `means`.
    newest: i64,
    means: Blocks,
    tail: Tail,
}

impl Scale {
    fn new(span_ms: i64) -> Self {
        Scale {
            span_ms,
            f: 0,
            block_ms: 0,
            cap: 0,
            block: i64::MIN,
            sum: 0.0,
            count: 0,
            newest: i64::MIN,
            means: Blocks::default(),
            tail: Tail::new(WARM, false),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.means.capacity() * std::mem::size_of::<f32>() + self.tail.heap_bytes()
    }

    /// Close the block being filled: push its mean, filling blocks that
    /// got no value since the newest with the newest mean.
    fn close(&mut self, query: usize) {
        if self.count == 0 {
            return;
        }
        let mean = (self.sum / f64::from(self.count)) as f32;
        if self.newest != i64::MIN && !self.means.is_empty() {
            let missing = self.block.saturating_sub(self.newest).saturating_sub(1);
            if missing > query as i64 {
                self.means.clear();
            } else if let Some(last) = self.means.back() {
                for _ in 0..missing {
                    self.push(last);
                }
            }
        }
        self.push(mean);
        self.newest = self.block;
        self.sum = 0.0;
        self.count = 0;
    }

    fn push(&mut self, mean: f32) {
        self.means.push(mean, self.cap.max(1));
    }

    /// The nearest non-overlapping key to the newest `query` means:
    /// (its end index in `means`, mean squared difference).
    fn nearest(&self, query: usize) -> Option<(usize, f64)> {
        let n = self.means.len();
        // Keys end at least `query` blocks before the query ends.
        if n < 3 * query {
            return None;
        }
        let m = self.means.as_slice();
        let q = &m[n - query..];
        let mut best = (0usize, f64::INFINITY);
        for end in (query - 1)..(n - query) {
            let k = &m[end + 1 - query..=end];
            let d: f32 = q.iter().zip(k).map(|(x, y)| (x - y) * (x - y)).sum();
            let d = f64::from(d) / query as f64;
            if d < best.1 {
                best = (end, d);
            }
        }
        best.1.is_finite().then_some(best)
    }
}

/// The pattern memory of one series: one [`Scale`] per span.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    scales: Vec<Scale>,
    /// The strongest scale's match at the newest completed block.
    last: Option<Match>,
}

/// What one value did to the memory.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemoryScore {
    /// Strongest scale's strength (0 unless a block completed here).
    pub strength: f64,
    /// The strongest scale's nearest past pattern at the newest completed
    /// block (this value's, when it completed one).
    pub nearest: Option<Match>,
}

/// The memory's settings.
#[derive(Debug, Clone, Copy)]
pub struct MemorySettings<'a> {
    /// Spans of the scales (ms).
    pub spans_ms: &'a [i64],
    /// Block means per query.
    pub query: usize,
    /// Grid values of history to keep per scale.
    pub points: usize,
    /// The score's risk.
    pub risk: f64,
    /// The calibration's memory (values).
    pub history: usize,
}

impl Memory {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.scales.iter().map(Scale::heap_bytes).sum::<usize>()
            + self.scales.capacity() * std::mem::size_of::<Scale>()
    }

    /// Observe the grid value `x` at `ts` of a series on an `interval`
    /// (ms) grid; `width` is the width of the series' range (the distance
    /// unit). When it completes a block, query that scale's memory.
    pub fn observe(
        &mut self,
        ts: i64,
        x: f32,
        interval: i64,
        width: f64,
        s: &MemorySettings<'_>,
    ) -> MemoryScore {
        let query = s.query.max(2);
        if self.scales.len() != s.spans_ms.len() {
            self.scales = s.spans_ms.iter().map(|&span| Scale::new(span)).collect();
        }
        let mut out = MemoryScore::default();
        if interval <= 0 || !x.is_finite() {
            return out;
        }
        for scale in &mut self.scales {
            if scale.f == 0 {
                let per = scale.span_ms as f64 / (query as f64 * interval as f64);
                scale.f = (per.round() as i64).max(1);
                scale.block_ms = scale.f.saturating_mul(interval);
                scale.cap = (s.points / scale.f as usize).min(MAX_BLOCKS).max(3 * query);
            }
            let block = ts.div_euclid(scale.block_ms);
            if block != scale.block {
                if block < scale.block {
                    continue; // out of order: the grid never goes back
                }
                scale.close(query);
                scale.block = block;
            }
            scale.sum += f64::from(x);
            scale.count += 1;
            // The block completes with its last grid value.
            if ts.saturating_add(interval) < (block + 1).saturating_mul(scale.block_ms) {
                continue;
            }
            scale.close(query);
            let Some((end, d2)) = scale.nearest(query) else {
                continue;
            };
            if width <= 0.0 {
                continue;
            }
            let d = d2.sqrt() / width;
            let tests = s.spans_ms.len();
            let strength = scale
                .tail
                .ln_sf(d)
                .map_or(0.0, |l| strength(l, tests, s.risk));
            scale.tail.learn(d, s.history, s.risk);
            // This value is the newest block's last; the grid repeats every
            // block, so the key's last value lies whole blocks before it.
            let back = (scale.means.len() - 1 - end) as i64;
            let key_end = ts.saturating_sub(back.saturating_mul(scale.block_ms));
            let span = (query as i64).saturating_mul(scale.block_ms);
            let m = Match {
                start_ts: key_end.saturating_sub(span - interval),
                end_ts: key_end,
                distance: d as f32,
                span_ms: scale.span_ms,
                novel: strength >= 1.0,
            };
            if out.nearest.is_none() || strength > out.strength {
                out.strength = strength;
                out.nearest = Some(m);
            }
        }
        if out.nearest.is_some() {
            self.last = out.nearest;
        }
        out.nearest = self.last;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: i64 = 300_000; // 5 minutes
    const DAY: i64 = 86_400_000;

    fn settings(spans: &[i64]) -> MemorySettings<'_> {
        MemorySettings {
            spans_ms: spans,
            query: 16,
            points: 2048,
            risk: 1e-4,
            history: 2000,
        }
    }

    /// A daily square wave (high 09:00-21:00) with small deterministic noise.
    fn daily(i: i64) -> f32 {
        let minute = (i * 5) % 1440;
        let base = if (540..1260).contains(&minute) {
            80.0
        } else {
            20.0
        };
        base + ((i * 7919) % 13) as f32 * 0.2
    }

    #[test]
    fn a_day_that_misses_its_jump_is_a_new_pattern_and_names_no_match() {
        let spans = [DAY];
        let s = settings(&spans);
        let mut m = Memory::default();
        let mut best_normal: f64 = 0.0;
        let mut anomaly: Option<MemoryScore> = None;
        for i in 0..(12 * 288) {
            let day = i / 288;
            // Day 10 has no jump.
            let x = if day == 10 { 20.0 } else { daily(i) };
            let r = m.observe(i * IV, x, IV, 62.4, &s);
            if day < 10 && i >= 5 * 288 {
                best_normal = best_normal.max(r.strength);
            }
            if day == 10 && r.strength >= 1.0 && anomaly.is_none() {
                anomaly = Some(r);
            }
        }
        assert!(best_normal < 1.0, "ordinary days: {best_normal}");
        let a = anomaly.expect("the missing jump is new");
        assert!(a.nearest.is_some_and(|n| n.novel), "{a:?}");
    }

    #[test]
    fn an_ordinary_day_is_like_the_same_time_a_day_before() {
        let spans = [DAY];
        let s = settings(&spans);
        let mut m = Memory::default();
        let mut last = None;
        for i in 0..(6 * 288) {
            let r = m.observe(i * IV, daily(i), IV, 62.4, &s);
            if r.nearest.is_some() {
                last = Some((i * IV, r));
            }
        }
        let (ts, r) = last.expect("the memory answered");
        let n = r.nearest.expect("a match");
        assert!(!n.novel && r.strength < 1.0, "{r:?}");
        // 18 values per block, 16 blocks: the query spans 24 hours; its
        // nearest key ends a whole number of days before it.
        assert_eq!((ts + IV - (n.end_ts + IV)) % DAY, 0, "{n:?} at {ts}");
        assert_eq!(n.end_ts - n.start_ts, DAY - IV);
    }

    #[test]
    fn blocks_follow_the_interval_and_a_long_gap_clears_the_memory() {
        let spans = [DAY];
        let s = settings(&spans);
        let mut m = Memory::default();
        for i in 0..(4 * 288) {
            m.observe(i * IV, daily(i), IV, 62.4, &s);
        }
        assert_eq!(m.scales[0].f, 18);
        assert_eq!(m.scales[0].cap, 113);
        assert_eq!(m.scales[0].means.len(), 64);
        // Two days of silence, then data again: the old blocks are gone.
        let t0 = 6 * 288;
        for i in t0..t0 + 18 {
            m.observe(i * IV, daily(i), IV, 62.4, &s);
        }
        assert_eq!(m.scales[0].means.len(), 1);
        // An hourly series: a day is 24 values, blocks of 2 (round(1.5)).
        let mut h = Memory::default();
        h.observe(0, 1.0, 3_600_000, 1.0, &s);
        assert_eq!(h.scales[0].f, 2);
    }

    #[test]
    fn blocks_keep_the_newest_in_order_without_growing() {
        let mut b = Blocks::default();
        for i in 0..1000usize {
            b.push(i as f32, 7);
            let want: Vec<f32> = ((i + 1).saturating_sub(7)..=i).map(|x| x as f32).collect();
            assert_eq!(b.as_slice(), want.as_slice());
        }
        assert!(b.capacity() <= 16, "{}", b.capacity());
        b.clear();
        assert!(b.is_empty() && b.back().is_none());
    }

    #[test]
    fn a_short_gap_repeats_the_last_block() {
        let spans = [DAY];
        let s = settings(&spans);
        let mut m = Memory::default();
        for i in 0..(2 * 288) {
            m.observe(i * IV, daily(i), IV, 62.4, &s);
        }
        let before = m.scales[0].means.len();
        // Skip 3 blocks (54 values).
        let t = 2 * 288 + 54;
        for i in t..t + 18 {
            m.observe(i * IV, daily(i), IV, 62.4, &s);
        }
        assert_eq!(m.scales[0].means.len(), before + 4);
    }
}
