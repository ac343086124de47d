//! The window stage's processing-time idle timers, and what a rebalance
//! does to them.
//!
//! [`Windows::sweep`] closes the open buckets of series silent for
//! `flush_after` and reports series silent for `stale_after`, once per
//! silence. A series whose timers have fired is *marked*; the marks of a
//! partition travel with its committed offsets (exactly_once) so that a
//! restart or a new owner restores them ([`Windows::restore`]) instead of
//! firing them again, and a revoked partition's series are dropped with
//! their timers ([`Windows::drop_partition`]).

use std::collections::HashMap;

use super::series::{IDLE_FLUSHED, IDLE_STALE};
use super::{Emitted, Windows};

/// Processing-time timers of [`Windows::sweep`] (ms; `None`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdleTimers {
    /// Close the open buckets of a series silent this long, or one
    /// interval if that is longer.
    pub flush_after_ms: Option<i64>,
    /// Report a series silent this long, or three intervals if that is
    /// longer, once.
    pub stale_after_ms: Option<i64>,
}

/// What [`Windows::sweep`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Swept {
    /// Grid points closed by the idle flush, per series key.
    pub flushed: Vec<(String, Vec<Emitted>)>,
    /// Series keys that went stale, with their newest timestamp.
    pub stale: Vec<(String, i64)>,
}

/// The hash a timer mark names a series key by (46 bits of FNV-1a; the
/// top 2 bits of a mark hold the flags).
pub fn mark_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & MARK_HASH_MASK
}

/// The bits of a mark that hold the key's hash.
pub const MARK_HASH_MASK: u64 = (1 << 46) - 1;

/// One series whose idle timers have fired: its key's [`mark_hash`], its
/// flags ([`IDLE_FLUSHED`], [`IDLE_STALE`]) and when it was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// [`mark_hash`] of the series key.
    pub hash: u64,
    /// Which timers fired.
    pub flags: u8,
    /// Processing time of its newest point.
    pub last_seen_ms: i64,
}

impl Windows {
    /// Drop every series of input `partition` (it was revoked: another
    /// instance owns it now), with its open buckets and timers. Returns the
    /// keys dropped.
    pub fn drop_partition(&mut self, partition: i32) -> Vec<String> {
        let keys: Vec<String> = self
            .series
            .iter()
            .filter(|(_, s)| s.partition == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(old) = self.series.pop(k) {
                self.unmark(k, &old);
            }
        }
        self.dirty.remove(&partition);
        keys
    }

    /// Partitions whose marks changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<i32> {
        self.dirty.drain().collect()
    }

    /// The marks of the series of `partition` whose timers have fired,
    /// most recently seen first.
    pub fn marks(&self, partition: i32) -> Vec<Mark> {
        let mut out: Vec<Mark> = self
            .marked
            .iter()
            .filter_map(|k| {
                let s = self.series.peek(k)?;
                (s.partition == partition && s.idle != 0).then(|| Mark {
                    hash: mark_hash(k),
                    flags: s.idle,
                    last_seen_ms: s.last_seen_ms,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.last_seen_ms
                .cmp(&a.last_seen_ms)
                .then(a.hash.cmp(&b.hash))
        });
        out
    }

    /// Restore the timers that had fired on the series of `partition`
    /// before a restart or rebalance, as the committed marks name them
    /// (hash -> flags): set their flags, and close the open buckets of
    /// those the idle flush had closed. Returns the grid points closed
    /// (already published before: the caller rebuilds from them, publishes
    /// nothing).
    pub fn restore(
        &mut self,
        partition: i32,
        marks: &HashMap<u64, u8>,
    ) -> Vec<(String, Vec<Emitted>)> {
        let mut out = Vec::new();
        if marks.is_empty() {
            return out;
        }
        let Windows {
            settings,
            series,
            counters,
            marked,
            dirty,
        } = self;
        // The partition's marks are recomputed from its state now, even if
        // none matched (the marked series were not rebuilt): carried over
        // unchanged, they would name series that come back as new ones.
        dirty.insert(partition);
        for (key, s) in series.iter_mut() {
            if s.partition != partition {
                continue;
            }
            let Some(&flags) = marks.get(&mark_hash(key)) else {
                continue;
            };
            let flags = flags & (IDLE_FLUSHED | IDLE_STALE);
            if flags == 0 {
                continue;
            }
            if flags & IDLE_FLUSHED != 0 && s.idle & IDLE_FLUSHED == 0 {
                let mut closed = Vec::new();
                s.flush(settings, counters, &mut closed);
                if !closed.is_empty() {
                    out.push((key.clone(), closed));
                }
            }
            s.idle |= flags;
            marked.insert(key.clone());
            dirty.insert(partition);
        }
        out
    }

    /// Fire the processing-time idle timers at `now_ms`: close the open
    /// buckets of series silent for `flush_after` (at least one interval),
    /// and report series silent for `stale_after` (at least three
    /// intervals). Each fires once per silence; the next point of the
    /// series re-arms both. Series whose interval is not yet known are
    /// warming up and are left alone by the flush. Cost: one step per
    /// series silent longer than the shorter timer (series are kept in
    /// recency order, so the scan stops at the first recent one).
    pub fn sweep(&mut self, now_ms: i64, timers: IdleTimers) -> Swept {
        self.sweep_except(now_ms, timers, &[])
    }

    /// [`Windows::sweep`], leaving alone the series of the partitions in
    /// `hold` (whose rebuild is not done: their timers wait for it).
    pub fn sweep_except(&mut self, now_ms: i64, timers: IdleTimers, hold: &[i32]) -> Swept {
        let mut swept = Swept::default();
        let Some(earliest) = [timers.flush_after_ms, timers.stale_after_ms]
            .into_iter()
            .flatten()
            .min()
        else {
            return swept;
        };
        let Windows {
            settings,
            series,
            counters,
            marked,
            dirty,
        } = self;
        for (key, s) in series.iter_mut().rev() {
            let silent = now_ms.saturating_sub(s.last_seen_ms);
            if silent < earliest {
                break; // every later series was seen more recently
            }
            if hold.contains(&s.partition) {
                continue;
            }
            let interval = s.interval();
            if let (Some(after), Some(iv)) = (timers.flush_after_ms, interval) {
                if s.idle & IDLE_FLUSHED == 0 && silent >= after.max(iv) {
                    s.idle |= IDLE_FLUSHED;
                    marked.insert(key.clone());
                    dirty.insert(s.partition);
                    let mut out = Vec::new();
                    s.flush(settings, counters, &mut out);
                    if !out.is_empty() {
                        counters.flushed_idle += 1;
                        swept.flushed.push((key.clone(), out));
                    }
                }
            }
            if let Some(after) = timers.stale_after_ms {
                let need = after.max(interval.map_or(0, |iv| iv.saturating_mul(3)));
                if s.idle & IDLE_STALE == 0 && silent >= need {
                    if let Some(ts) = s.newest_ts() {
                        s.idle |= IDLE_STALE;
                        marked.insert(key.clone());
                        dirty.insert(s.partition);
                        counters.stale += 1;
                        swept.stale.push((key.clone(), ts));
                    }
                }
            }
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::*;

    const MIN: i64 = 60_000;
    const TIMERS: IdleTimers = IdleTimers {
        flush_after_ms: Some(2 * MIN),
        stale_after_ms: Some(5 * MIN),
    };

    fn settings() -> Settings {
        Settings {
            interval_ms: Some(MIN),
            ..Settings::for_model(8, 8)
        }
    }

    /// Series `key` on `partition`: points at minutes 0..n, pushed at the
    /// processing time of their own timestamp.
    fn feed(win: &mut Windows, key: &str, partition: i32, n: i64) {
        for m in 0..n {
            win.push_from(key, m * MIN, m as f32, m * MIN, partition)
                .unwrap();
        }
    }

    #[test]
    fn fired_timers_are_marked_per_partition_and_a_new_point_clears_the_mark() {
        let mut win = Windows::new(settings());
        feed(&mut win, "a", 0, 5);
        feed(&mut win, "b", 1, 5);
        assert!(win.marks(0).is_empty());
        let swept = win.sweep(4 * MIN + 2 * MIN, TIMERS);
        assert_eq!(swept.flushed.len(), 2);
        let mut dirty = win.take_dirty();
        dirty.sort_unstable();
        assert_eq!(dirty, vec![0, 1]);
        let m = win.marks(0);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].hash, m[0].flags), (mark_hash("a"), IDLE_FLUSHED));
        win.sweep(4 * MIN + 5 * MIN, TIMERS);
        assert_eq!(win.marks(1)[0].flags, IDLE_FLUSHED | IDLE_STALE);
        // A new point of "a" re-arms it: its mark goes, its partition is dirty.
        win.take_dirty();
        win.push_from("a", 20 * MIN, 1.0, 20 * MIN, 0).unwrap();
        assert!(win.marks(0).is_empty());
        assert_eq!(win.take_dirty(), vec![0]);
    }

    #[test]
    fn a_revoked_partition_drops_its_series_and_their_timers_never_fire() {
        let mut win = Windows::new(settings());
        feed(&mut win, "a", 0, 5);
        feed(&mut win, "b", 1, 5);
        assert_eq!(win.drop_partition(0), vec!["a".to_string()]);
        assert_eq!(win.series(), 1);
        let swept = win.sweep(60 * MIN, TIMERS);
        assert_eq!(swept.flushed.len(), 1);
        assert_eq!(swept.flushed[0].0, "b");
        assert_eq!(swept.stale, vec![("b".to_string(), 4 * MIN)]);
    }

    #[test]
    fn restored_marks_close_the_rebuilt_buckets_and_nothing_fires_twice() {
        // Before the restart: the flush and the stale event fire.
        let mut live = Windows::new(settings());
        feed(&mut live, "a", 3, 5);
        let fired = live.sweep(4 * MIN + 5 * MIN, TIMERS);
        assert_eq!((fired.flushed.len(), fired.stale.len()), (1, 1));
        let marks: HashMap<u64, u8> = live
            .marks(3)
            .into_iter()
            .map(|m| (m.hash, m.flags))
            .collect();
        // The restart rebuilds the series from the same points (its clock
        // is the rebuild's), then restores the marks.
        let mut rebuilt = Windows::new(settings());
        for m in 0..5 {
            rebuilt
                .push_from("a", m * MIN, m as f32, 100 * MIN, 3)
                .unwrap();
        }
        let closed = rebuilt.restore(3, &marks);
        assert_eq!(closed.len(), 1, "the flushed bucket is closed again");
        assert_eq!(closed[0].1[0].ts, 4 * MIN);
        let again = rebuilt.sweep(1000 * MIN, TIMERS);
        assert_eq!(again, Swept::default(), "nothing fires twice");
        // Marks for another partition, or unknown series, change nothing.
        let mut other = Windows::new(settings());
        feed(&mut other, "a", 4, 5);
        assert!(other.restore(3, &marks).is_empty());
        assert_eq!(other.sweep(1000 * MIN, TIMERS).stale.len(), 1);
    }
}
