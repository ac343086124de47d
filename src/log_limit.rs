//! A rate limit on repeated log lines: at most one line per key per
//! interval, the repeats in between counted and reported with the next
//! line that gets through.
//!
//! It exists for errors that repeat at the pace of a retry loop, such as a
//! Kafka client that fails to authenticate and reconnects several times a
//! second: the operator needs one clear line per interval, not a flood.
//! Counting every occurrence is the metrics' job ([`crate::metrics`]); this
//! module only decides which lines are written. It is pure: the clock is
//! passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; past this the memory is cleared (keys come from
/// small fixed sets, so this only bounds a bug).
const MAX_KEYS: usize = 1024;

/// Per-key state of a [`LogLimit`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the last line for this key was let through.
    last: Instant,
    /// Lines held back since then.
    suppressed: u64,
}

/// At most one line per key per `every`.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

impl LogLimit {
    /// A limit of one line per key per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimit {
            every,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The interval.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether a line for `key` may be written at `now`: `Some(n)` with the
    /// number of lines held back for `key` since the last one written, or
    /// `None` (the caller writes nothing; this one is counted).
    pub fn admit(&self, key: &str, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(key) {
            if now.saturating_duration_since(slot.last) < self.every {
                slot.suppressed += 1;
                return None;
            }
            let suppressed = slot.suppressed;
            *slot = Slot {
                last: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if slots.len() >= MAX_KEYS {
            slots.clear();
        }
        slots.insert(
            key.to_string(),
            Slot {
                last: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_repeats_counted() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(limit.admit("auth", at(0)), Some(0));
        // A retry loop at 3 per second: held back, counted.
        let held = (1..30)
            .filter(|i| limit.admit("auth", at(i * 333)).is_none())
            .count();
        assert_eq!(held, 29);
        // Another key is not held back by the first.
        assert_eq!(limit.admit("tls", at(5_000)), Some(0));
        // The interval is over: one line, carrying the count.
        assert_eq!(limit.admit("auth", at(10_000)), Some(29));
        assert_eq!(limit.admit("auth", at(10_001)), None);
        assert_eq!(limit.admit("auth", at(20_000)), Some(1));
        // A clock that steps back holds lines back rather than letting them
        // all through.
        assert_eq!(limit.admit("auth", at(19_000)), None);
    }

    #[test]
    fn lines_written_over_a_long_flood_are_bounded_by_the_interval() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let written = (0..6_000u64)
            .filter(|i| {
                limit
                    .admit("auth", t0 + Duration::from_millis(i * 10))
                    .is_some()
            })
            .count();
        // 60 s of errors every 10 ms: one line per 10 s.
        assert_eq!(written, 6);
    }

    #[test]
    fn the_memory_of_keys_is_bounded() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let now = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            assert_eq!(limit.admit(&format!("k{i}"), now), Some(0));
        }
        let slots = limit.slots.lock().unwrap().len();
        assert!(slots <= MAX_KEYS, "{slots}");
    }
}
