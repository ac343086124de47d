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
//! - **Missed.** Kept, listed and counted, and shown on the page; it does
//!   not change the calibration yet (what would, a lower tail for the
//!   channels of that range, is not built).
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
    /// name. Empty for `missed`.
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
        if self.verdict == Verdict::NotAnomaly {
            let unknown: Vec<&str> = self
                .channels
                .keys()
                .filter(|k| !Channels::NAMES.contains(&k.as_str()))
                .map(String::as_str)
                .collect();
            if self.channels.is_empty() || !unknown.is_empty() {
                return Err(FeedbackError::Channels(unknown.join(", ")));
            }
            if self.channels.values().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(FeedbackError::Channels(
                    "a non-finite or negative strength".into(),
                ));
            }
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

    /// The ceilings this record sets, per channel (0: none).
    fn ceilings(&self) -> [f64; 6] {
        let mut c = [0.0; 6];
        if self.verdict == Verdict::NotAnomaly {
            for (i, name) in Channels::NAMES.iter().enumerate() {
                c[i] = self.channels.get(*name).copied().unwrap_or(0.0) * MARGIN;
            }
        }
        c
    }
}

/// Every feedback record held, and the ceilings per series key they make.
#[derive(Debug, Default, Clone)]
pub struct Book {
    records: HashMap<String, Record>,
    /// The keys of each series key's records.
    by_series: HashMap<String, HashSet<String>>,
    ceilings: HashMap<Arc<str>, [f64; 6]>,
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

    /// The ceilings of one series key, from its records only.
    fn recompute(&mut self, score_key: &str) {
        let mut c = [0.0f64; 6];
        let keys = self.by_series.get(score_key).into_iter().flatten();
        for r in keys.filter_map(|k| self.records.get(k)) {
            for (acc, x) in c.iter_mut().zip(r.ceilings()) {
                *acc = acc.max(x);
            }
        }
        if c.iter().any(|x| *x > 0.0) {
            self.ceilings.insert(score_key.into(), c);
        } else {
            self.ceilings.remove(score_key);
        }
    }

    /// The record under `key`.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.records.get(key)
    }

    /// The ceilings of a series key, if any record set one.
    pub fn ceilings(&self, score_key: &str) -> Option<&[f64; 6]> {
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

    /// Series keys with a ceiling.
    pub fn series_with_ceilings(&self) -> usize {
        self.ceilings.len()
    }
}

/// Scale each channel of a scored value by its series' ceilings: a channel
/// with a ceiling above `threshold` is scaled by `threshold / ceiling`, so
/// that a strength up to the ceiling no longer passes the threshold.
pub fn apply_ceilings(channels: &mut Channels, ceilings: &[f64; 6], threshold: f64) {
    let scale = |x: &mut f64, c: f64| {
        if c > threshold && threshold > 0.0 {
            *x *= threshold / c;
        }
    };
    scale(&mut channels.point, ceilings[0]);
    scale(&mut channels.run, ceilings[1]);
    scale(&mut channels.shift, ceilings[2]);
    scale(&mut channels.novelty, ceilings[3]);
    scale(&mut channels.range, ceilings[4]);
    scale(&mut channels.memory, ceilings[5]);
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

    /// A copy of the ceilings per series key.
    pub fn ceilings(&self) -> HashMap<Arc<str>, [f64; 6]> {
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
        assert!((c[0] - 3.3).abs() < 1e-9 && (c[4] - 0.55).abs() < 1e-9);
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
        assert!((b.ceilings("a").unwrap()[0] - 5.5).abs() < 1e-9);
        b.apply(&high.key(), None);
        assert!((b.ceilings("a").unwrap()[0] - 2.2).abs() < 1e-9);
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
        assert!((b.ceilings("s0").unwrap()[0] - 3.3).abs() < 1e-9);
    }

    #[test]
    fn missed_is_kept_without_ceilings() {
        let mut b = Book::new();
        let r = Record {
            verdict: Verdict::Missed,
            series: "a".into(),
            feature: "value".into(),
            start_ts: 100,
            end_ts: 200,
            channels: HashMap::new(),
            at_ms: 5,
            note: Some("disk filled".into()),
        };
        r.validate().unwrap();
        b.apply(&r.key(), Some(r));
        assert_eq!(b.len(), 1);
        assert!(b.ceilings("a").is_none());
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
