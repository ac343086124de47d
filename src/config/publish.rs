//! `[publish]`: what is published for each scored point.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much attention detail is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionDetail {
    /// No attention in the output.
    None,
    /// The `top_k` most-attended past timestamps (mean over layers and heads).
    TopK,
    /// The full attention row of the scored point, per layer, mean over heads.
    Row,
}

/// Output settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Attention detail: `none`, `top_k` or `row`.
    #[serde(default = "default_attention")]
    pub attention: AttentionDetail,
    /// k for `top_k`.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Most output messages awaiting broker acknowledgement at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Producer delivery timeout (librdkafka `message.timeout.ms`).
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
}

pub(super) fn default_attention() -> AttentionDetail {
    AttentionDetail::TopK
}
pub(super) fn default_top_k() -> usize {
    5
}
pub(super) fn default_max_in_flight() -> usize {
    10_000
}
pub(super) fn default_delivery_timeout() -> Duration {
    Duration::from_secs(120)
}
