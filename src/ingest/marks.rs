//! Timer marks: which series' idle timers had fired, carried in the
//! metadata of the input offsets that an exactly-once transaction commits.
//!
//! Pure. A flushed bucket or a stale event is owed by no input message, so
//! the committed offsets alone cannot tell a restarted (or new) owner of a
//! partition that the timers of its silent series had already fired: its
//! rebuild would fire them again, and the transaction would commit the same
//! flushed point or stale event twice. So every transaction commits, with
//! each partition's offset, the marks of that partition's series whose
//! timers have fired ([`crate::window::Mark`]: 46 bits of the key's hash
//! and the 2 flag bits), and the rebuild restores them. The marks travel
//! with the outputs they describe: both commit in one transaction, or
//! neither does.
//!
//! Encoding: `aw1:` and 12 hex digits per mark (the flags in the top two
//! bits of a 48-bit word), most recently seen series first, at most
//! [`BUDGET`] bytes (Kafka's default `offset.metadata.max.bytes` is 4,096).
//! A partition with more silent series than fit keeps the most recently
//! seen ones (those a rebuild is most likely to hold) and counts the rest:
//! a series whose mark was dropped may see its timers fire again after a
//! restart.

use std::collections::HashMap;

use crate::window::{Mark, MARK_HASH_MASK};

/// Metadata bytes per partition that the marks may use.
pub const BUDGET: usize = 4000;
/// The format's prefix.
const PREFIX: &str = "aw1:";
/// Hex digits per mark.
const WIDTH: usize = 12;

/// Encode `marks` (most important first) into offset metadata; returns the
/// text and how many marks did not fit.
pub fn encode(marks: &[Mark]) -> (String, usize) {
    let fit = (BUDGET - PREFIX.len()) / WIDTH;
    let mut out = String::with_capacity(PREFIX.len() + WIDTH * marks.len().min(fit));
    out.push_str(PREFIX);
    for m in marks.iter().take(fit) {
        let word = (m.hash & MARK_HASH_MASK) | (u64::from(m.flags & 3) << 46);
        out.push_str(&format!("{word:012x}"));
    }
    (out, marks.len().saturating_sub(fit))
}

/// Decode offset metadata into hash -> flags. Metadata this service did not
/// write (empty, another format) holds no marks.
pub fn decode(metadata: &str) -> HashMap<u64, u8> {
    let Some(hex) = metadata.strip_prefix(PREFIX) else {
        return HashMap::new();
    };
    hex.as_bytes()
        .chunks_exact(WIDTH)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .filter_map(|c| u64::from_str_radix(c, 16).ok())
        .map(|w| (w & MARK_HASH_MASK, ((w >> 46) & 3) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{mark_hash, IDLE_FLUSHED, IDLE_STALE};

    fn mark(key: &str, flags: u8, last_seen_ms: i64) -> Mark {
        Mark {
            hash: mark_hash(key),
            flags,
            last_seen_ms,
        }
    }

    #[test]
    fn marks_round_trip() {
        let marks = [
            mark("a", IDLE_FLUSHED, 3),
            mark("b", IDLE_FLUSHED | IDLE_STALE, 2),
            mark("c\u{1f}temp", IDLE_STALE, 1),
        ];
        let (text, dropped) = encode(&marks);
        assert_eq!(dropped, 0);
        assert_eq!(text.len(), 4 + 3 * 12);
        let back = decode(&text);
        assert_eq!(back.len(), 3);
        assert_eq!(back[&mark_hash("a")], IDLE_FLUSHED);
        assert_eq!(back[&mark_hash("b")], IDLE_FLUSHED | IDLE_STALE);
        assert_eq!(back[&mark_hash("c\u{1f}temp")], IDLE_STALE);
    }

    #[test]
    fn foreign_or_empty_metadata_holds_no_marks() {
        assert!(decode("").is_empty());
        assert!(decode("something else").is_empty());
        assert!(decode("aw1:zz").is_empty());
        assert!(encode(&[]).0 == "aw1:" && decode("aw1:").is_empty());
    }

    #[test]
    fn too_many_marks_keep_the_first_within_budget() {
        let marks: Vec<Mark> = (0..1000)
            .map(|i| mark(&format!("s{i}"), IDLE_FLUSHED, 1000 - i))
            .collect();
        let (text, dropped) = encode(&marks);
        assert!(text.len() <= BUDGET, "{}", text.len());
        assert_eq!(dropped, 1000 - 333);
        let back = decode(&text);
        assert!(back.contains_key(&mark_hash("s0")));
        assert!(!back.contains_key(&mark_hash("s999")));
    }
}
