//! The units of work that flow between stages, and nothing else.
//!
//! ```text
//! ingest --Job--> model worker --Outgoing::Point(ScoredPoint)--> publish
//!    \------------Outgoing::DeadLetter / Ack----------------------/
//! ```
//!
//! Plain data: every stage imports this module and none of the stages
//! imports another stage's internals to talk to it. The publish stage owns
//! the output format; the model stage hands it scored points, not bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

pub mod forecast;
pub mod incident;
pub mod scored;

pub use forecast::{Explanation, Forecast};
pub use scored::{Channels, Match, Scored};

use crate::window::Window;

/// Identifies the input message an output belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Assignment generation of the partition when the message was read.
    pub generation: u64,
}

impl Token {
    /// The token of an output that no input message owes: a bucket closed
    /// by the idle flush, a stale event. Offsets do not wait for it; an
    /// exactly-once commit still waits for its acknowledgement.
    pub const UNTRACKED: Token = Token {
        partition: -1,
        offset: -1,
        generation: 0,
    };

    /// Whether this is [`Token::UNTRACKED`].
    pub fn untracked(&self) -> bool {
        self.partition < 0
    }
}

/// Labels of a sample, shared by the points it produces.
pub type Labels = Arc<BTreeMap<String, String>>;

/// What the model stage does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Score, and publish the point (one output is expected for it).
    Publish,
    /// A message re-read to rebuild state after an assignment: run and
    /// score to rebuild forecasts and calibration, publish nothing.
    Rebuild,
    /// The series' input partition was revoked: drop its score-stage
    /// state (forecast, calibration, range, memory, incidents), so that if
    /// it comes back its rebuild starts from nothing, as on a new owner.
    Forget,
}

/// One grid time of one series: its value(s), and per feature the forecast
/// step it is scored at and the context of a run due on it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Series id.
    pub series: Arc<str>,
    /// Grid timestamp (bucket start, epoch ms).
    pub ts: i64,
    /// `Some` for a `value` sample, `None` for `values`.
    pub value: Option<f32>,
    /// Labels, carried through.
    pub labels: Labels,
    /// One entry per feature that closed this grid time.
    pub features: Vec<FeatureJob>,
    /// The input message this point came from.
    pub token: Token,
    /// Kafka timestamp of the input message (epoch ms), for end-to-end latency.
    pub source_ts_ms: Option<i64>,
    /// Publish or rebuild.
    pub mode: Mode,
}

impl Job {
    /// Whether the model stage owes the publish stage one output (or one
    /// acknowledgement) for this job: it is published and has a real value
    /// to score.
    pub fn publishes(&self) -> bool {
        self.mode == Mode::Publish && self.features.iter().any(FeatureJob::scored)
    }
}

/// One feature of a job.
#[derive(Debug, Clone)]
pub struct FeatureJob {
    /// Feature name (`value` for single-value samples).
    pub feature: Arc<str>,
    /// Key of the (series, feature) pair in the window and score stages.
    pub key: Arc<str>,
    /// The grid value.
    pub value: f32,
    /// Forecast step it is scored at; `None` before the series' first run
    /// (the value then only teaches the score stage's range and memory).
    pub step: Option<u32>,
    /// A gap-filled value: never scored, present only to carry `run`.
    pub filled: bool,
    /// The context of a model run due on this value (run after scoring it).
    pub run: Option<Window>,
    /// The series' grid interval (ms).
    pub interval: i64,
}

impl FeatureJob {
    /// Whether this value is scored (a real value with a covering forecast).
    pub fn scored(&self) -> bool {
        !self.filled && self.step.is_some()
    }
}

/// The scored result of one feature.
#[derive(Debug, Clone)]
pub struct FeatureScore {
    /// Feature name.
    pub feature: Arc<str>,
    /// The grid value.
    pub value: f32,
    /// Calibrated score.
    pub scored: Scored,
    /// Forecast mean of the value.
    pub expected: f32,
    /// Forecast scale of the value.
    pub expected_std: f32,
    /// The attention behind the forecast.
    pub explanation: Arc<Explanation>,
}

/// A scored point: the job's metadata and its scored features.
#[derive(Debug, Clone)]
pub struct ScoredPoint {
    /// Series id.
    pub series: Arc<str>,
    /// Grid timestamp.
    pub ts: i64,
    /// `Some` for a `value` sample.
    pub value: Option<f32>,
    /// Labels.
    pub labels: Labels,
    /// One entry per scored feature (never empty).
    pub features: Vec<FeatureScore>,
    /// The input message it came from.
    pub token: Token,
    /// Kafka timestamp of that message.
    pub source_ts_ms: Option<i64>,
    /// `name@version` of the model that forecast it (it changes on a hot
    /// reload).
    pub model: Arc<str>,
}

impl ScoredPoint {
    /// The feature with the highest score.
    pub fn driver(&self) -> Option<&FeatureScore> {
        self.features
            .iter()
            .max_by(|a, b| a.scored.score.total_cmp(&b.scored.score))
    }

    /// Whether any feature is anomalous.
    pub fn anomaly(&self) -> bool {
        self.features.iter().any(|f| f.scored.anomaly)
    }

    /// Whether any feature's alert opened an incident at this point.
    pub fn alert(&self) -> bool {
        self.features.iter().any(|f| f.scored.alert)
    }

    /// The incident of the point: the strongest anomalous feature's.
    pub fn incident(&self) -> Option<i64> {
        self.features
            .iter()
            .filter(|f| f.scored.incident.is_some())
            .max_by(|a, b| a.scored.score.total_cmp(&b.scored.score))
            .and_then(|f| f.scored.incident)
    }
}

/// A rejected record: its original bytes and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The record's bytes (for an array, the bad element's).
    pub bytes: Vec<u8>,
    /// Kafka key of the input message, if any.
    pub key: Option<String>,
    /// Reason code (`attnwatch.reason` header).
    pub reason: &'static str,
    /// Human-readable detail (`attnwatch.error` header).
    pub detail: String,
    /// The input message it came from.
    pub token: Option<Token>,
}

/// Receives the acknowledgement of each output owed for an input message
/// (implemented by the ingest stage's offset store, called by the publish
/// stage once the broker has the output).
pub trait Acknowledge: Send + Sync {
    /// One output of the input message `token` was acknowledged.
    fn ack(&self, token: Token);

    /// An output could not be delivered. `true`: send it again after a
    /// backoff (at-least-once). `false`: give it up, because the delivery
    /// guarantee is already lost another way (exactly-once: the open
    /// transaction will abort and the service restarts from its offsets).
    fn retry_undelivered(&self) -> bool {
        true
    }
}

/// What the publish stage receives.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A scored point for the output topic.
    Point(ScoredPoint),
    /// A record for the dead-letter topic.
    DeadLetter(DeadLetter),
    /// An output that was owed but has nothing to send (a point whose
    /// series lost its forecast state): acknowledge it at once.
    Ack(Token),
    /// A series went silent for `window.stale_after`.
    Stale(StaleEvent),
}

/// A series that went silent (a `{"series", "ts", "event": "stale"}` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleEvent {
    /// Series id.
    pub series: Arc<str>,
    /// Its newest timestamp (epoch ms).
    pub ts: i64,
}
