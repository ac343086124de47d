//! `[server]`, `[ui]` and `[shutdown]`: HTTP, the web page and graceful
//! shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz`. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

/// The web page at `/` and its JSON API: bounds of what it keeps.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Serve the page and `/api/*` (false: neither, and nothing is kept).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Series whose recent points are kept (least recently updated dropped).
    #[serde(default = "default_ui_series")]
    pub max_series: usize,
    /// Recent scored points kept per series (and copied into each anomaly
    /// as the context it is drawn with).
    #[serde(default = "default_ui_points")]
    pub points_per_series: usize,
    /// Recent anomalies kept (oldest dropped).
    #[serde(default = "default_ui_anomalies")]
    pub anomalies: usize,
}

/// Shutdown settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Upper bound for the whole drain: stop consuming, drain inference,
    /// flush the producer, commit offsets.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
}

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9898))
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_ui_series() -> usize {
    256
}
pub(super) fn default_ui_points() -> usize {
    2048
}
pub(super) fn default_ui_anomalies() -> usize {
    500
}

pub(super) fn default_grace() -> Duration {
    Duration::from_secs(30)
}
