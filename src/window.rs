//! Window stage: one ring buffer of the last W points per series key.
//!
//! Pure: no I/O, no clock, no tokio. Points are taken in arrival order; a
//! point whose timestamp is not newer than the last one accepted for its
//! series is dropped (and the caller counts it). Once a series has
//! `min_points` points, every accepted point yields a window of W positions
//! ending with that point; while fewer than W points exist, the older
//! positions are missing: `NaN` values and [`MISSING_TS`] timestamps (the
//! model masks them).
//!
//! Regular-grid resampling, bounded lateness and eviction belong to a later
//! stage of the design and are not done here.

use std::collections::HashMap;

/// Why a point was not placed in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Its timestamp is older than the newest accepted point of the series.
    #[error("older than the last point of its series")]
    Late,
    /// Its timestamp equals the newest accepted point of the series (the first one wins).
    #[error("duplicate timestamp")]
    Duplicate,
}

/// Timestamp of a missing window position.
pub const MISSING_TS: i64 = i64::MIN;

/// A window of W positions, oldest first; missing positions come first.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Values, length W; `NaN` where missing.
    pub values: Vec<f32>,
    /// Timestamps (epoch ms), length W; [`MISSING_TS`] where missing.
    pub ts: Vec<i64>,
}

impl Window {
    /// Whether position `i` holds a point.
    pub fn present(&self, i: usize) -> bool {
        self.ts.get(i).is_some_and(|t| *t != MISSING_TS)
    }
}

/// The last W points of one series.
#[derive(Debug, Clone)]
struct Ring {
    values: Vec<f32>,
    ts: Vec<i64>,
    /// Index where the next point goes.
    head: usize,
    len: usize,
}

impl Ring {
    fn new(w: usize) -> Self {
        Ring {
            values: vec![0.0; w],
            ts: vec![0; w],
            head: 0,
            len: 0,
        }
    }

    fn last_ts(&self) -> Option<i64> {
        (self.len > 0).then(|| self.ts[(self.head + self.values.len() - 1) % self.values.len()])
    }

    fn push(&mut self, ts: i64, value: f32) {
        let w = self.values.len();
        self.values[self.head] = value;
        self.ts[self.head] = ts;
        self.head = (self.head + 1) % w;
        self.len = (self.len + 1).min(w);
    }

    fn snapshot(&self) -> Window {
        let w = self.values.len();
        let mut values = Vec::with_capacity(w);
        let mut ts = Vec::with_capacity(w);
        if self.len < w {
            // Not yet wrapped: the points are at 0..len, the rest is missing.
            values.resize(w - self.len, f32::NAN);
            ts.resize(w - self.len, MISSING_TS);
            values.extend_from_slice(&self.values[..self.len]);
            ts.extend_from_slice(&self.ts[..self.len]);
        } else {
            let (vb, va) = self.values.split_at(self.head);
            let (tb, ta) = self.ts.split_at(self.head);
            values.extend_from_slice(va);
            values.extend_from_slice(vb);
            ts.extend_from_slice(ta);
            ts.extend_from_slice(tb);
        }
        Window { values, ts }
    }
}

/// Ring buffers for all series, keyed by series key.
#[derive(Debug)]
pub struct Windows {
    w: usize,
    min_points: usize,
    rings: HashMap<String, Ring>,
}

impl Windows {
    /// Windows of length `w` that are yielded once a series has
    /// `min_points` points (both from the model contract; `min_points` is
    /// clamped to `2..=w`).
    pub fn new(w: usize, min_points: usize) -> Self {
        let w = w.max(2);
        Windows {
            w,
            min_points: min_points.clamp(2, w),
            rings: HashMap::new(),
        }
    }

    /// Window length.
    pub fn len(&self) -> usize {
        self.w
    }

    /// Always false: a window has at least two points.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.rings.len()
    }

    /// Add a point. Returns the window ending at it once the series has
    /// `min_points` points, `Ok(None)` while it is still warming up.
    pub fn push(&mut self, key: &str, ts: i64, value: f32) -> Result<Option<Window>, Rejected> {
        let w = self.w;
        let ring = match self.rings.get_mut(key) {
            Some(r) => r,
            None => self
                .rings
                .entry(key.to_owned())
                .or_insert_with(|| Ring::new(w)),
        };
        if let Some(last) = ring.last_ts() {
            if ts < last {
                return Err(Rejected::Late);
            }
            if ts == last {
                return Err(Rejected::Duplicate);
            }
        }
        ring.push(ts, value);
        Ok((ring.len >= self.min_points).then(|| ring.snapshot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_yields_every_point() {
        let mut w = Windows::new(3, 3);
        assert_eq!(w.push("a", 1, 1.0), Ok(None));
        assert_eq!(w.push("a", 2, 2.0), Ok(None));
        let win = w.push("a", 3, 3.0).unwrap().unwrap();
        assert_eq!(win.values, vec![1.0, 2.0, 3.0]);
        assert_eq!(win.ts, vec![1, 2, 3]);
        let win = w.push("a", 5, 4.0).unwrap().unwrap();
        assert_eq!(win.values, vec![2.0, 3.0, 4.0]);
        assert_eq!(win.ts, vec![2, 3, 5]);
        let win = w.push("a", 6, 5.0).unwrap().unwrap();
        assert_eq!(win.values, vec![3.0, 4.0, 5.0]);
    }

    #[test]
    fn late_and_duplicate_points_are_rejected_without_changing_state() {
        let mut w = Windows::new(2, 2);
        w.push("a", 10, 1.0).unwrap();
        assert_eq!(w.push("a", 9, 7.0), Err(Rejected::Late));
        assert_eq!(w.push("a", 10, 7.0), Err(Rejected::Duplicate));
        let win = w.push("a", 11, 2.0).unwrap().unwrap();
        assert_eq!(win.values, vec![1.0, 2.0]);
    }

    #[test]
    fn series_are_independent() {
        let mut w = Windows::new(2, 2);
        w.push("a", 1, 1.0).unwrap();
        w.push("b", 100, 9.0).unwrap();
        assert_eq!(w.push("a", 2, 2.0).unwrap().unwrap().values, vec![1.0, 2.0]);
        assert_eq!(w.push("b", 50, 1.0), Err(Rejected::Late));
        assert_eq!(w.series(), 2);
    }

    #[test]
    fn partial_windows_are_padded_with_missing_positions() {
        let mut w = Windows::new(4, 2);
        assert_eq!(w.push("a", 10, 1.0), Ok(None));
        let win = w.push("a", 20, 2.0).unwrap().unwrap();
        assert!(win.values[0].is_nan() && win.values[1].is_nan());
        assert_eq!(&win.values[2..], &[1.0, 2.0]);
        assert_eq!(win.ts, vec![MISSING_TS, MISSING_TS, 10, 20]);
        assert!(!win.present(1) && win.present(2));
        let win = w.push("a", 30, 3.0).unwrap().unwrap();
        assert_eq!(win.ts, vec![MISSING_TS, 10, 20, 30]);
        w.push("a", 40, 4.0).unwrap();
        let win = w.push("a", 50, 5.0).unwrap().unwrap();
        assert_eq!(win.values, vec![2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn ring_wraps_many_times() {
        let mut w = Windows::new(4, 4);
        for i in 0..1000i64 {
            let out = w.push("s", i, i as f32).unwrap();
            if i >= 3 {
                let win = out.unwrap();
                let want: Vec<f32> = (i - 3..=i).map(|v| v as f32).collect();
                assert_eq!(win.values, want);
                assert_eq!(win.ts, (i - 3..=i).collect::<Vec<_>>());
            }
        }
    }
}
