//! `[server]`, `[ui]` and `[shutdown]`: HTTP, its access control, the web
//! page and graceful shutdown.
//!
//! The API token itself is never part of the config: `[server]` names the
//! file or the environment variable that holds it, and the HTTP server
//! ([`crate::server::auth`]) reads it at startup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ENV_PREFIX;

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz`, the web page
    /// `/` and its JSON API `/api/*`. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A file holding the bearer token that `/` and `/api/*` then require
    /// (`Authorization: Bearer <token>`), read once at startup; surrounding
    /// whitespace (a trailing newline) is ignored. For example a mounted
    /// Kubernetes Secret. Unset, like `token_env`: no token, everything is
    /// open. At most one of `token_file` and `token_env`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The name of an environment variable holding the bearer token (read
    /// once at startup), for example `"ATTNWATCH_API_TOKEN"`. It must not
    /// start with `ATTNWATCH__`, the prefix of config overrides.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Require the token on `/metrics` too (Prometheus must then send it:
    /// `authorization.credentials_file` in its scrape config). Needs a token.
    #[serde(default)]
    pub protect_metrics: bool,
    /// Require the token on `/healthz` and `/readyz` too (the probes must
    /// then send it). Needs a token.
    #[serde(default)]
    pub protect_health: bool,
}

/// Where the API token comes from (`server.token_file` or `server.token_env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Read from this file.
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "file {}", path.display()),
            TokenSource::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

impl ServerConfig {
    /// Where the API token is read from; `None`: no token, all open.
    pub fn token_source(&self) -> Option<TokenSource> {
        match (&self.token_file, &self.token_env) {
            (Some(path), _) => Some(TokenSource::File(path.clone())),
            (None, Some(var)) => Some(TokenSource::Env(var.clone())),
            (None, None) => None,
        }
    }

    /// Invalid settings, described.
    pub(super) fn problems(&self, problems: &mut Vec<String>) {
        if self.token_file.is_some() && self.token_env.is_some() {
            problems.push("set at most one of server.token_file and server.token_env".into());
        }
        if self
            .token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            problems.push("server.token_file must not be empty when set".into());
        }
        if let Some(var) = &self.token_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                problems.push("server.token_env must be an environment variable's name".into());
            } else if var.starts_with(ENV_PREFIX) {
                problems.push(format!(
                    "server.token_env must not start with {ENV_PREFIX}: such variables are config overrides"
                ));
            }
        }
        if self.token_source().is_none() {
            for (set, key) in [
                (self.protect_metrics, "protect_metrics"),
                (self.protect_health, "protect_health"),
            ] {
                if set {
                    problems.push(format!(
                        "server.{key} needs a token: set server.token_file or server.token_env"
                    ));
                }
            }
        }
    }
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
