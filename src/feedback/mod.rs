//! Operator feedback on alerts: "not an anomaly" on an anomalous point,
//! and "missed" on a time range the operator says was anomalous.
//!
//! Feedback is a record on a compacted Kafka topic (`feedback.topic`),
//! keyed by what it is about, so it survives restarts and every replica
//! reads all of it ([`kafka`]). The page posts it (`POST /api/feedback`,
//! behind the API's access rule), and this module's [`Book`] turns it into
//! what the score stage uses:
//!
//! - **Not an anomaly.** The record carries the strength of each channel
//!   at the marked point. For the channels that made it anomalous, the
//!   series gets a *ceiling* of [`MARGIN`] times that strength: from then
//!   on that channel's strength on that series is scaled by
//!   `threshold / ceiling`, so the same pattern (a value as strong as the
//!   marked one, or up to 10% stronger) no longer alerts there, a clearly
//!   stronger one still does, and no other series changes. Several marks
//!   on one series keep the highest ceiling per channel.
//! - **Missed.** The record carries the highest score the page saw inside
//!   the range and the channel that drove it (when the page still holds
//!   the range's points). The series gets a *floor* of that strength
//!   divided by [`MARGIN`] on that channel: from then on the channel's
//!   strength on that series is scaled up by `threshold / floor`, at most
//!   [`MAX_BOOST`] times, so the same pattern alerts there and no other
//!   series changes. A range whose peak is too weak for that (below
//!   `threshold x MARGIN / MAX_BOOST`) is scaled by [`MAX_BOOST`] only:
//!   scaling a channel further would make every ordinary value of the
//!   series alert. Where a channel has both, "not an anomaly" wins.
//!
//! A null value (a tombstone) under a record's key withdraws it.
//!
//! Pure, apart from [`SharedBook`]'s lock: the Kafka side is [`kafka`].

pub mod kafka;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::flow::Channels;

/// How much stronger than a marked point the same channel must be on that
/// series to alert again.
pub const MARGIN: f64 = 1.1;

/// Most a "missed" range scales a channel up on its series. A channel's
/// strength s has tail probability `risk^s`, so a boost of b makes an
/// ordinary value alert with probability `risk^(1/b)`: 1.5 keeps that at
/// 0.2% of values at the default risk (1e-4).
pub const MAX_BOOST: f64 = 1.5;

/// Most feedback records held (the topic is compacted; beyond this the
/// oldest records are not applied, and `attnwatch_feedback_dropped_total`
/// counts them).
pub const MAX_RECORDS: usize = 100_000;

/// What the operator says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The marked anomalous point is normal for its series.
    NotAnomaly,
    /// The series was anomalous over a time range and nothing alerted.
    Missed,
}

impl Verdict {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NotAnomaly => "not_anomaly",
            Verdict::Missed => "missed",
        }
    }
}

/// One feedback record, as it is on the topic (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What the operator says.
    pub verdict: Verdict,
    /// The series.
    pub series: String,
    /// The feature (`value` for single-value series).
    pub feature: String,
    /// `not_anomaly`: the marked point's timestamp. `missed`: the range's start.
    pub start_ts: i64,
    /// `not_anomaly`: the same as `start_ts`. `missed`: the range's end.
    pub end_ts: i64,
    /// `not_anomaly`: each channel's strength at the marked point, by
    /// name. `missed`: the highest score inside the range under the
    /// channel that drove it (empty when the page no longer held the
    /// range's points: the record is kept but teaches nothing).
    #[serde(default)]
    pub channels: HashMap<String, f64>,
    /// When it was given (epoch ms).
    pub at_ms: i64,
    /// An optional note from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a feedback record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    /// The record is not valid JSON of the expected shape.
    #[error("not a feedback record: {0}")]
    Invalid(String),
    /// The range is empty or reversed.
    #[error("the range ends ({end}) before it starts ({start})")]
    Range {
        /// Start.
        start: i64,
        /// End.
        end: i64,
    },
    /// A `not_anomaly` record without channel strengths, or with a name
    /// that is not a channel.
    #[error("not_anomaly needs the point's channel strengths (unknown or missing: {0})")]
    Channels(String),
    /// A field too long or empty.
    #[error("{0}")]
    Field(String),
}

/// Longest series, feature or note accepted.
const MAX_FIELD_BYTES: usize = 1024;

impl Record {
    /// The record's key on the topic: what it is about. A later record with
    /// the same key replaces it (compaction keeps the newest).
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}@{}..{}",
            self.verdict.as_str(),
            self.series,
            self.feature,
            self.start_ts,
            self.end_ts
        )
    }

    /// The series key in the score stage (series, or series and feature).
    pub fn score_key(&self) -> String {
        if self.feature == "value" {
            self.series.clone()
        } else {
            format!("{}\u{1f}{}", self.series, self.feature)
        }
    }

    /// Check a record (from the API or the topic).
    pub fn validate(&self) -> Result<(), FeedbackError> {
        if self.series.is_empty() || self.feature.is_empty() {
            return Err(FeedbackError::Field(
                "series and feature must not be empty".into(),
            ));
        }
        let long = [&self.series, &self.feature]
            .into_iter()
            .chain(self.note.as_ref())
            .any(|s| s.len() > MAX_FIELD_BYTES);
        if long {
            return Err(FeedbackError::Field(format!(
                "series, feature and note are at most {MAX_FIELD_BYTES} bytes"
            )));
        }
        if self.end_ts < self.start_ts {
            return Err(FeedbackError::Range {
                start: self.start_ts,
                end: self.end_ts,
            });
        }
        let unknown: Vec<&str> = self
            .channels
            .keys()
            .filter(|k| !Channels::NAMES.contains(&k.as_str()))
            .map(String::as_str)
            .collect();
        let missing = self.verdict == Verdict::NotAnomaly && self.channels.is_empty();
        if missing || !unknown.is_empty() {
            return Err(FeedbackError::Channels(unknown.join(", ")));
        }
        if self.channels.values().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(FeedbackError::Channels(
                "a non-finite or negative strength".into(),
            ));
        }
        Ok(())
    }

    /// Parse and check a record's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Record, FeedbackError> {
        let r: Record =
            serde_json::from_slice(bytes).map_err(|e| FeedbackError::Invalid(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// The ceilings (`not_anomaly`) or floors (`missed`) this record sets,
    /// per channel (0: none).
    fn adjust(&self) -> Adjust {
        let mut a = Adjust::default();
        for (i, name) in Channels::NAMES.iter().enumerate() {
            let x = self.channels.get(*name).copied().unwrap_or(0.0);
            match self.verdict {
                Verdict::NotAnomaly => a.ceiling[i] = x * MARGIN,
                Verdict::Missed => a.floor[i] = x / MARGIN,
            }
        }
        a
    }
}

/// What a series' feedback does to its channels: `ceiling` (from "not an
/// anomaly") scales a channel down, `floor` (from "missed") scales it up;
/// 0 where none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Adjust {
    /// Per channel: strengths up to this no longer pass the threshold.
    pub ceiling: [f64; 6],
    /// Per channel: strengths from this pass the threshold.
    pub floor: [f64; 6],
}

impl Adjust {
    fn is_empty(&self) -> bool {
        self.ceiling.iter().chain(&self.floor).all(|x| *x <= 0.0)
    }
}

/// Every feedback record held, and the ceilings per series key they make.
#[derive(Debug, Default, Clone)]
pub struct Book {
    records: HashMap<String, Record>,
    /// The keys of each series key's records.
    by_series: HashMap<String, HashSet<String>>,
    ceilings: HashMap<Arc<str>, Adjust>,
    /// Most records held (0: [`MAX_RECORDS`]).
    max: usize,
}

impl Book {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty book that holds at most `max` records.
    pub fn bounded(max: usize) -> Self {
        Book {
            max,
            ..Self::default()
        }
    }

    /// Apply a record under `key`, or withdraw the one there (`None`, a
    /// tombstone). Returns false when the book is full and the record was
    /// not applied.
    pub fn apply(&mut self, key: &str, record: Option<Record>) -> bool {
        let max = if self.max == 0 { MAX_RECORDS } else { self.max };
        if record.is_some() && self.records.len() >= max && !self.records.contains_key(key) {
            return false;
        }
        if let Some(old) = self.records.remove(key) {
            let score_key = old.score_key();
            if let Some(keys) = self.by_series.get_mut(&score_key) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_series.remove(&score_key);
                }
            }
            self.recompute(&score_key);
        }
        if let Some(r) = record {
            let score_key = r.score_key();
            self.records.insert(key.to_string(), r);
            self.by_series
                .entry(score_key.clone())
                .or_default()
                .insert(key.to_string());
            self.recompute(&score_key);
        }
        true
    }

    /// The adjustments of one series key, from its records only: the
    /// highest ceiling and the lowest floor per channel.
    fn recompute(&mut self, score_key: &str) {
        let mut c = Adjust::default();
        let keys = self.by_series.get(score_key).into_iter().flatten();
        for r in keys.filter_map(|k| self.records.get(k)) {
            let a = r.adjust();
            for (acc, x) in c.ceiling.iter_mut().zip(a.ceiling) {
                *acc = acc.max(x);
            }
            for (acc, x) in c.floor.iter_mut().zip(a.floor) {
                if x > 0.0 && (*acc <= 0.0 || x < *acc) {
                    *acc = x;
                }
            }
        }
        if c.is_empty() {
            self.ceilings.remove(score_key);
        } else {
            self.ceilings.insert(score_key.into(), c);
        }
    }

    /// The record under `key`.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.records.get(key)
    }

    /// The adjustments of a series key, if any record set one.
    pub fn ceilings(&self, score_key: &str) -> Option<&Adjust> {
        self.ceilings.get(score_key)
    }

    /// The records, newest first (by when they were given).
    pub fn records(&self) -> Vec<&Record> {
        let mut v: Vec<&Record> = self.records.values().collect();
        v.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then_with(|| a.key().cmp(&b.key())));
        v
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Series keys with a ceiling or a floor.
    pub fn series_with_ceilings(&self) -> usize {
        self.ceilings.len()
    }
}

/// Scale each channel of a scored value by its series' feedback: a channel
/// with a ceiling above `threshold` is scaled by `threshold / ceiling`, so
/// that a strength up to the ceiling no longer passes the threshold;
/// otherwise a channel with a floor below `threshold` is scaled by
/// `threshold / floor` (at most [`MAX_BOOST`]), so that a strength from the
/// floor passes it.
pub fn apply_ceilings(channels: &mut Channels, adjust: &Adjust, threshold: f64) {
    let scale = |x: &mut f64, i: usize| {
        let (c, f) = (adjust.ceiling[i], adjust.floor[i]);
        if threshold <= 0.0 {
            return;
        }
        if c > threshold {
            *x *= threshold / c;
        } else if f > 0.0 && f < threshold {
            *x *= (threshold / f).min(MAX_BOOST);
        }
    };
    scale(&mut channels.point, 0);
    scale(&mut channels.run, 1);
    scale(&mut channels.shift, 2);
    scale(&mut channels.novelty, 3);
    scale(&mut channels.range, 4);
    scale(&mut channels.memory, 5);
}

/// The book shared by the feedback reader (writes) and the score stages
/// of every inference thread (read): each keeps a copy of the ceilings and
/// refreshes it when [`SharedBook::version`] moves.
#[derive(Debug, Default)]
pub struct SharedBook {
    book: RwLock<Book>,
    version: AtomicU64,
}

impl SharedBook {
    /// An empty shared book.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Apply a record (see [`Book::apply`]).
    pub fn apply(&self, key: &str, record: Option<Record>) -> bool {
        let applied = self
            .book
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(key, record);
        self.version.fetch_add(1, Ordering::Release);
        applied
    }

    /// Changes so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A copy of the adjustments per series key.
    pub fn ceilings(&self) -> HashMap<Arc<str>, Adjust> {
        self.book
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ceilings
            .clone()
    }

    /// Read the book.
    pub fn with<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        f(&self.book.read().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_anomaly(series: &str, ts: i64, point: f64, range: f64) -> Record {
        Record {
            verdict: Verdict::NotAnomaly,
            series: series.into(),
            feature: "value".into(),
            start_ts: ts,
            end_ts: ts,
            channels: [("point".to_string(), point), ("range".to_string(), range)]
                .into_iter()
                .collect(),
            at_ms: ts,
            note: None,
        }
    }

    #[test]
    fn a_mark_sets_ceilings_on_its_series_only() {
        let mut b = Book::new();
        let r = not_anomaly("a", 10, 3.0, 0.5);
        assert!(b.apply(&r.key(), Some(r.clone())));
        let c = b.ceilings("a").unwrap();
        assert!((c.ceiling[0] - 3.3).abs() < 1e-9 && (c.ceiling[4] - 0.55).abs() < 1e-9);
        assert!(b.ceilings("b").is_none());
        // The same strength no longer passes the threshold; 20% more does.
        let mut same = Channels {
            point: 3.0,
            range: 0.5,
            ..Channels::default()
        };
        apply_ceilings(&mut same, c, 1.0);
        assert!(same.max() <= 1.0, "{same:?}");
        let mut stronger = Channels {
            point: 3.6,
            ..Channels::default()
        };
        apply_ceilings(&mut stronger, c, 1.0);
        assert!(stronger.max() > 1.0, "{stronger:?}");
        // A channel below the threshold at the mark is left as it is.
        let mut range = Channels {
            range: 2.0,
            ..Channels::default()
        };
        apply_ceilings(&mut range, c, 1.0);
        assert_eq!(range.range, 2.0);
    }

    #[test]
    fn marks_keep_the_highest_ceiling_and_a_tombstone_withdraws_one() {
        let mut b = Book::new();
        let (low, high) = (
            not_anomaly("a", 10, 2.0, 0.0),
            not_anomaly("a", 20, 5.0, 0.0),
        );
        b.apply(&low.key(), Some(low.clone()));
        b.apply(&high.key(), Some(high.clone()));
        assert!((b.ceilings("a").unwrap().ceiling[0] - 5.5).abs() < 1e-9);
        b.apply(&high.key(), None);
        assert!((b.ceilings("a").unwrap().ceiling[0] - 2.2).abs() < 1e-9);
        b.apply(&low.key(), None);
        assert!(b.ceilings("a").is_none() && b.is_empty());
    }

    #[test]
    fn a_full_book_refuses_more_but_takes_replacements() {
        let mut b = Book::bounded(1_000);
        for i in 0..1_000 {
            let r = not_anomaly(&format!("s{}", i % 50), i, 2.0, 0.0);
            assert!(b.apply(&r.key(), Some(r)));
        }
        assert_eq!((b.len(), b.series_with_ceilings()), (1_000, 50));
        let one_more = not_anomaly("s0", -1, 9.0, 0.0);
        assert!(!b.apply(&one_more.key(), Some(one_more)), "full");
        // Replacing a held record is not a new one.
        let again = not_anomaly("s0", 0, 3.0, 0.0);
        assert!(b.apply(&again.key(), Some(again)));
        assert!((b.ceilings("s0").unwrap().ceiling[0] - 3.3).abs() < 1e-9);
    }

    fn missed(series: &str, channels: &[(&str, f64)]) -> Record {
        Record {
            verdict: Verdict::Missed,
            series: series.into(),
            feature: "value".into(),
            start_ts: 100,
            end_ts: 200,
            channels: channels.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            at_ms: 5,
            note: Some("disk filled".into()),
        }
    }

    #[test]
    fn missed_without_the_ranges_points_is_kept_and_teaches_nothing() {
        let mut b = Book::new();
        let r = missed("a", &[]);
        r.validate().unwrap();
        b.apply(&r.key(), Some(r));
        assert_eq!(b.len(), 1);
        assert!(b.ceilings("a").is_none());
    }

    #[test]
    fn missed_makes_the_same_strength_pass_on_its_series_only() {
        let mut b = Book::new();
        let r = missed("a", &[("point", 0.88)]);
        r.validate().unwrap();
        b.apply(&r.key(), Some(r));
        let adj = *b.ceilings("a").unwrap();
        assert!((adj.floor[0] - 0.8).abs() < 1e-9, "{adj:?}");
        assert!(b.ceilings("b").is_none());
        // The range's peak now passes the threshold; 20% less does not, and
        // other channels are as they were.
        let mut same = Channels {
            point: 0.88,
            range: 0.5,
            ..Channels::default()
        };
        apply_ceilings(&mut same, &adj, 1.0);
        assert!(same.point > 1.0 && same.range == 0.5, "{same:?}");
        let mut weaker = Channels {
            point: 0.7,
            ..Channels::default()
        };
        apply_ceilings(&mut weaker, &adj, 1.0);
        assert!(weaker.max() <= 1.0, "{weaker:?}");
        // A weak peak is scaled by MAX_BOOST at most.
        let r = missed("c", &[("memory", 0.2)]);
        b.apply(&r.key(), Some(r));
        let mut weak = Channels {
            memory: 0.2,
            ..Channels::default()
        };
        apply_ceilings(&mut weak, b.ceilings("c").unwrap(), 1.0);
        assert!((weak.memory - 0.2 * MAX_BOOST).abs() < 1e-9, "{weak:?}");
        // "Not an anomaly" on the same channel wins over "missed".
        let n = not_anomaly("a", 10, 3.0, 0.0);
        b.apply(&n.key(), Some(n));
        let mut both = Channels {
            point: 3.0,
            ..Channels::default()
        };
        apply_ceilings(&mut both, b.ceilings("a").unwrap(), 1.0);
        assert!(both.point <= 1.0, "{both:?}");
        // Bad strengths are refused for missed too.
        assert!(missed("a", &[("nope", 1.0)]).validate().is_err());
        assert!(missed("a", &[("point", f64::NAN)]).validate().is_err());
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let mut r = not_anomaly("a", 10, 3.0, 0.0);
        r.channels.insert("pointy".into(), 1.0);
        assert!(matches!(r.validate(), Err(FeedbackError::Channels(s)) if s == "pointy"));
        let mut r = not_anomaly("a", 10, 3.0, 0.0);
        r.channels.clear();
        assert!(r.validate().is_err(), "not_anomaly without strengths");
        let mut r = not_anomaly("a", 10, 3.0, 0.0);
        r.end_ts = 5;
        assert_eq!(
            r.validate(),
            Err(FeedbackError::Range { start: 10, end: 5 })
        );
        assert!(matches!(
            Record::from_json(b"{\"verdict\":\"maybe\"}"),
            Err(FeedbackError::Invalid(_))
        ));
        let ok = not_anomaly("a", 10, 3.0, 0.0);
        let json = serde_json::to_vec(&ok).unwrap();
        assert_eq!(Record::from_json(&json).unwrap(), ok);
    }

    #[test]
    fn a_feature_has_its_own_score_key() {
        let mut r = not_anomaly("pump", 1, 2.0, 0.0);
        assert_eq!(r.score_key(), "pump");
        r.feature = "flow".into();
        assert_eq!(r.score_key(), "pump\u{1f}flow");
    }
}
