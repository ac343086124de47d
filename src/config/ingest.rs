//! `[ingest]`: bounds on every input record. A record over a bound goes to
//! the dead-letter topic with its reason code, like any other bad record.

use serde::{Deserialize, Serialize};

use crate::ingest::decode::Limits;

/// Input bounds. Lengths are bytes of UTF-8; a value exactly at its bound
/// is accepted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest Kafka message payload (one object or an array of them),
    /// checked before the message is parsed. Larger: `message_too_large`,
    /// the whole message dead-lettered.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest series id. Longer: `series_too_long`.
    #[serde(default = "default_max_series_bytes")]
    pub max_series_bytes: usize,
    /// Most labels on one record. More: `too_many_labels` (0: a record with
    /// any label is rejected).
    #[serde(default = "default_max_labels")]
    pub max_labels: usize,
    /// Longest label key, and longest label value. Longer: `label_too_long`.
    #[serde(default = "default_max_label_bytes")]
    pub max_label_bytes: usize,
}

/// The most `max_message_bytes` may be: librdkafka's own ceiling on a
/// message (`message.max.bytes`).
pub const MAX_MESSAGE_BYTES_CEILING: usize = 1_000_000_000;

impl IngestConfig {
    /// The decoder's bounds.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_series_bytes: self.max_series_bytes,
            max_labels: self.max_labels,
            max_label_bytes: self.max_label_bytes,
        }
    }

    /// Invalid settings, described.
    pub(super) fn problems(&self, problems: &mut Vec<String>) {
        if !(1..=MAX_MESSAGE_BYTES_CEILING).contains(&self.max_message_bytes) {
            problems.push(format!(
                "ingest.max_message_bytes must be in 1..={MAX_MESSAGE_BYTES_CEILING}"
            ));
        }
        if self.max_series_bytes == 0 {
            problems.push("ingest.max_series_bytes must be >= 1".into());
        }
        if self.max_label_bytes == 0 {
            problems.push("ingest.max_label_bytes must be >= 1".into());
        }
    }
}

pub(super) fn default_max_message_bytes() -> usize {
    Limits::DEFAULT.max_message_bytes
}
pub(super) fn default_max_series_bytes() -> usize {
    Limits::DEFAULT.max_series_bytes
}
pub(super) fn default_max_labels() -> usize {
    Limits::DEFAULT.max_labels
}
pub(super) fn default_max_label_bytes() -> usize {
    Limits::DEFAULT.max_label_bytes
}
