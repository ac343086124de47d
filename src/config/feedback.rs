//! `[feedback]`: operator feedback on alerts (`crate::feedback`).

use serde::{Deserialize, Serialize};

/// Feedback settings. Off unless `topic` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// A compacted Kafka topic (on the service's brokers) for the
    /// operators' "not an anomaly" and "missed" marks; created compacted at
    /// startup if missing, read whole before scoring starts, and followed.
    /// Every replica reads all of it. Empty: no feedback (the page's
    /// buttons and `POST /api/feedback` answer that it is off).
    #[serde(default)]
    pub topic: String,
}

impl FeedbackConfig {
    /// Whether feedback is on.
    pub fn enabled(&self) -> bool {
        !self.topic.trim().is_empty()
    }
}
