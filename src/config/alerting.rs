//! `[alerting]`: incidents across series, and Alertmanager.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Alerting settings. Off unless `alertmanager_url` or `incidents_topic` is
/// set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Alertmanager's base address, e.g. `http://127.0.0.1:9093` (alerts go
    /// to `/api/v2/alerts`). Empty: no incidents, no alerts sent.
    #[serde(default)]
    pub alertmanager_url: String,
    /// A Kafka topic for the incidents' open, update and close records (on
    /// the same brokers, keyed by incident id). Empty: none.
    #[serde(default)]
    pub incidents_topic: String,
    /// Labels whose shared values join series' anomalies into one incident
    /// (e.g. `["host"]`). Empty: every series is its own group.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Anomalies of a group this far apart (data time) or closer join one
    /// incident; an incident closes when its group has been quiet longer.
    #[serde(default = "default_gap", with = "humantime_serde")]
    pub gap: Duration,
    /// The page's address as the on-call person reaches it, for the link in
    /// each alert (`generatorURL`). Empty: `http://<server.listen>`.
    #[serde(default)]
    pub page_url: String,
    /// Notices waiting for Alertmanager at most; beyond, they are dropped
    /// and counted (`attnwatch_alertmanager_dropped_total{reason="queue_full"}`).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per post (doubling backoff from 250 ms, at most 30 s apart)
    /// before it is dropped and counted (`reason="gave_up"`).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Every open incident is posted again this often, so that Alertmanager
    /// (which resolves an alert not heard of for its `resolve_timeout`,
    /// 5 min by default) keeps it firing.
    #[serde(default = "default_resend", with = "humantime_serde")]
    pub resend: Duration,
}

impl AlertingConfig {
    /// Whether alerting is on.
    pub fn enabled(&self) -> bool {
        !self.alertmanager_url.trim().is_empty() || !self.incidents_topic.trim().is_empty()
    }

    /// Invalid settings, described.
    pub(super) fn problems(&self, problems: &mut Vec<String>) {
        let url = self.alertmanager_url.trim();
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            problems.push(format!(
                "alerting.alertmanager_url must start with http:// or https:// (got {url:?})"
            ));
        }
        if self.queue == 0 {
            problems.push("alerting.queue must be >= 1".into());
        }
        if self.max_attempts == 0 {
            problems.push("alerting.max_attempts must be >= 1".into());
        }
        if self.resend.is_zero() || self.timeout.is_zero() {
            problems.push("alerting.resend and alerting.timeout must be > 0".into());
        }
    }
}

fn default_gap() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_queue() -> usize {
    1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_attempts() -> u32 {
    8
}
fn default_resend() -> Duration {
    Duration::from_secs(60)
}
