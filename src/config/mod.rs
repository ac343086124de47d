//! Configuration: one serde tree, read from a TOML file and overridden by
//! `ATTNWATCH__SECTION__KEY` environment variables.
//!
//! Owns parsing, defaults and cross-field validation. It does not open any
//! connection or file other than the config file itself; the model contract
//! (window length, features) is checked later, against the model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod alerting;
pub mod cli;
mod feedback;
mod ingest;
mod kafka;
mod model;
mod publish;
mod score;
mod server;
mod window;

pub use alerting::AlertingConfig;
pub use feedback::FeedbackConfig;
pub use ingest::IngestConfig;
pub use kafka::{Delivery, KafkaConfig, SecretSource, SECRET_PROPERTIES};
pub use model::{ModelConfig, Provider};
pub use publish::{AttentionDetail, PublishConfig};
pub use score::{Channel, ScoreConfig};
pub use server::{ServerConfig, ShutdownConfig, TokenSource, UiConfig};
pub use window::{Aggregation, Fill, WindowConfig};

/// Errors raised while loading or validating the configuration (fatal).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid config: {0}")]
    Parse(String),
    /// An environment override could not be applied.
    #[error("invalid environment override {var}: {reason}")]
    Env {
        /// The variable name.
        var: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Values are individually valid but break an invariant.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Prefix of environment variables that override config values.
pub const ENV_PREFIX: &str = "ATTNWATCH__";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection, topics and delivery.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Bounds on every input record.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Per-series grid, lateness and state bounds.
    #[serde(default)]
    pub window: WindowConfig,
    /// The ONNX model and its execution.
    #[serde(default)]
    pub model: ModelConfig,
    /// Per-series calibration and the anomaly threshold.
    #[serde(default)]
    pub score: ScoreConfig,
    /// What is published for each scored point.
    #[serde(default)]
    pub publish: PublishConfig,
    /// The HTTP server (metrics, health, the page) and its access control.
    #[serde(default)]
    pub server: ServerConfig,
    /// The web page and its JSON API.
    #[serde(default)]
    pub ui: UiConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Incidents across series, and Alertmanager.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Operator feedback on alerts.
    #[serde(default)]
    pub feedback: FeedbackConfig,
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // An empty table takes every field's named default.
                match toml::from_str::<$t>("") {
                    Ok(v) => v,
                    Err(e) => unreachable!("defaults of {} must deserialize: {e}", stringify!($t)),
                }
            }
        }
    )*};
}
default_from_serde!(
    WindowConfig,
    KafkaConfig,
    IngestConfig,
    ModelConfig,
    ScoreConfig,
    PublishConfig,
    ServerConfig,
    UiConfig,
    ShutdownConfig,
    AlertingConfig,
    FeedbackConfig
);

impl Config {
    /// Read `path`, apply the process environment's overrides, validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_and_env(&text, std::env::vars())
    }

    /// Parse TOML text, apply `ATTNWATCH__SECTION__KEY=value` overrides taken
    /// from `env`, then validate. `value` is read as a TOML value when it
    /// parses as one (numbers, booleans, quoted strings), else as a string.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for (var, raw) in env {
            let Some(path) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(|k| k.is_empty()) {
                return Err(ConfigError::Env {
                    var,
                    reason: "empty key segment".into(),
                });
            }
            set_path(&mut table, &keys, parse_env_value(&raw)).map_err(|reason| {
                ConfigError::Env {
                    var: var.clone(),
                    reason,
                }
            })?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Check invariants across fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        let mut problems = Vec::new();
        if k.brokers.trim().is_empty() {
            problems.push("kafka.brokers is empty".to_string());
        }
        let topics = [&k.input_topic, &k.output_topic, &k.dead_letter_topic];
        if topics.iter().any(|t| t.trim().is_empty()) {
            problems.push("kafka topics must not be empty".to_string());
        }
        if k.input_topic == k.output_topic || k.input_topic == k.dead_letter_topic {
            problems.push(
                "kafka.input_topic must differ from the output and dead-letter topics (a loop)"
                    .into(),
            );
        }
        let u = &self.ui;
        if u.enabled && (u.max_series == 0 || u.points_per_series == 0 || u.anomalies == 0) {
            problems.push(
                "ui.max_series, ui.points_per_series and ui.anomalies must be >= 1 (or ui.enabled = false)"
                    .into(),
            );
        }
        k.option_problems(&mut problems);
        if k.rebuild_messages < 0 {
            problems.push("kafka.rebuild_messages must be >= 0".into());
        }
        if k.commit_interval.is_zero() {
            problems.push("kafka.commit_interval must be > 0".into());
        }
        if k.delivery == Delivery::ExactlyOnce {
            if k.transaction_timeout < Duration::from_secs(1) {
                problems.push("kafka.transaction_timeout must be at least 1s".into());
            }
            if k.commit_interval >= k.transaction_timeout {
                problems.push(
                    "kafka.commit_interval must be shorter than kafka.transaction_timeout".into(),
                );
            }
            if k.transactional_id
                .as_ref()
                .is_some_and(|t| t.trim().is_empty())
            {
                problems.push("kafka.transactional_id must not be empty when set".into());
            }
        }
        self.ingest.problems(&mut problems);
        self.alerting.problems(&mut problems);
        self.server.problems(&mut problems);
        let w = &self.window;
        if w.interval.is_some_and(|d| d.as_millis() == 0) {
            problems.push("window.interval must be at least 1ms".into());
        }
        if w.infer_points < 2 {
            problems.push("window.infer_points must be >= 2".into());
        }
        if w.max_series == 0 {
            problems.push("window.max_series must be >= 1".into());
        }
        let m = &self.model;
        if m.sessions == 0 || m.sessions > 64 {
            problems.push("model.sessions must be in 1..=64".into());
        }
        if m.intra_threads == 0 {
            problems.push("model.intra_threads must be >= 1".into());
        }
        if m.stride == 0 {
            problems.push("model.stride must be >= 1 (and <= the model's horizon)".into());
        }
        if m.max_batch == 0 || m.max_batch > 65_536 {
            problems.push("model.max_batch must be in 1..=65536".into());
        }
        if m.queue_capacity == 0 {
            problems.push("model.queue_capacity must be >= 1".into());
        }
        let s = &self.score;
        if !(s.threshold.is_finite() && s.threshold > 0.0) {
            problems.push("score.threshold must be a positive number".into());
        }
        s.problems(&mut problems);
        let p = &self.publish;
        if p.attention == AttentionDetail::TopK && p.top_k == 0 {
            problems.push("publish.top_k must be >= 1 when publish.attention = \"top_k\"".into());
        }
        if p.max_in_flight == 0 {
            problems.push("publish.max_in_flight must be >= 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("no key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("{first} is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
