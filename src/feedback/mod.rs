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
/// 0.34% of values at the default risk (2e-4).
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
mod tests;
