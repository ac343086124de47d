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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml_and_env("", env(&[])).unwrap();
        assert_eq!(c.kafka.input_topic, "attnwatch-input");
        assert_eq!(c.model.provider, Provider::Cpu);
        assert_eq!(c.model.max_delay, Duration::from_millis(5));
        assert_eq!(c.publish.attention, AttentionDetail::TopK);
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_toml_and_env(
            "[kafka]\nbrokers = \"a:1\"\n[model]\nmax_batch = 8\n",
            env(&[
                ("ATTNWATCH__KAFKA__BROKERS", "b:2"),
                ("ATTNWATCH__MODEL__MAX_BATCH", "32"),
                ("ATTNWATCH__MODEL__MAX_DELAY", "20ms"),
                ("ATTNWATCH__PUBLISH__ATTENTION", "row"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.model.max_batch, 32);
        assert_eq!(c.model.max_delay, Duration::from_millis(20));
        assert_eq!(c.publish.attention, AttentionDetail::Row);
    }

    #[test]
    fn kafka_options_take_numbers_and_booleans_as_text() {
        let c = Config::from_toml_and_env(
            "[kafka.options]\n\"linger.ms\" = 1\n\"enable.ssl.certificate.verification\" = false\n",
            env(&[("ATTNWATCH__KAFKA__OPTIONS__FETCH.MAX.BYTES", "1048576")]),
        )
        .unwrap();
        assert_eq!(c.kafka.options["linger.ms"], "1");
        assert_eq!(
            c.kafka.options["enable.ssl.certificate.verification"],
            "false"
        );
        assert_eq!(c.kafka.options["fetch.max.bytes"], "1048576");
    }

    #[test]
    fn secret_options_name_a_file_or_a_variable_and_secrets_stay_out_of_options() {
        let c = Config::from_toml_and_env(
            "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"ssl.ca.location\" = \"/ca.pem\"\n\
             [kafka.secret_options]\n\"sasl.password\" = { file = \"/run/secrets/pw\" }\n",
            env(&[(
                "ATTNWATCH__KAFKA__SECRET_OPTIONS__SSL.KEY.PASSWORD__ENV",
                "KEY_PW",
            )]),
        )
        .unwrap();
        assert_eq!(c.kafka.options["ssl.ca.location"], "/ca.pem");
        assert_eq!(
            c.kafka.secret_options["sasl.password"],
            SecretSource::File("/run/secrets/pw".into())
        );
        assert_eq!(
            c.kafka.secret_options["ssl.key.password"],
            SecretSource::Env("KEY_PW".into())
        );
        // The printed config (check-config) names the sources only.
        let printed = toml::to_string_pretty(&c).unwrap();
        assert!(
            printed.contains("/run/secrets/pw") && printed.contains("KEY_PW"),
            "{printed}"
        );

        // A secret written into the config (or into an override of
        // kafka.options) is refused, pointing at secret_options.
        for (text, vars) in [
            ("[kafka.options]\n\"sasl.password\" = \"hunter2\"\n", vec![]),
            (
                "",
                vec![("ATTNWATCH__KAFKA__OPTIONS__SASL.PASSWORD", "hunter2")],
            ),
        ] {
            let e = Config::from_toml_and_env(text, env(&vars))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("kafka.options.\"sasl.password\" is a secret")
                    && e.contains("[kafka.secret_options]")
                    && !e.contains("hunter2"),
                "{e}"
            );
        }
        for (text, want) in [
            // Both a file and a variable, an unknown source, a bare string.
            (
                "\"sasl.password\" = { file = \"/a\", env = \"B\" }",
                "exactly one of",
            ),
            (
                "\"sasl.password\" = { path = \"/a\" }",
                "unknown field `path`",
            ),
            ("\"sasl.password\" = \"hunter2\"", "found a string"),
            ("\"sasl.password\" = { env = \"\" }", "not a usable"),
        ] {
            let e =
                Config::from_toml_and_env(&format!("[kafka.secret_options]\n{text}\n"), env(&[]))
                    .unwrap_err()
                    .to_string();
            assert!(
                e.contains(want) && e.contains("sasl.password") && !e.contains("hunter2"),
                "{text}: {e}"
            );
        }
        let e = Config::from_toml_and_env(
            "[kafka.options]\n\"sasl.username\" = \"a\"\n[kafka.secret_options]\n\"sasl.username\" = { env = \"U\" }\n",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("set it in one place"), "{e}");
    }

    #[test]
    fn delivery_and_idle_timers() {
        let c = Config::from_toml_and_env("", env(&[])).unwrap();
        assert_eq!(c.kafka.delivery, Delivery::AtLeastOnce);
        let t = c.window.timers();
        assert_eq!(t.flush_after_ms, Some(120_000));
        assert_eq!(t.stale_after_ms, Some(600_000));
        let c = Config::from_toml_and_env(
            "[kafka]\ndelivery = \"exactly_once\"\ncommit_interval = \"1s\"\n[window]\nflush_after = \"0s\"\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.kafka.delivery, Delivery::ExactlyOnce);
        assert_eq!(c.window.timers().flush_after_ms, None);
        // A commit interval as long as the transaction timeout could never commit in time.
        let e = Config::from_toml_and_env(
            "[kafka]\ndelivery = \"exactly_once\"\ncommit_interval = \"30s\"\n",
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("transaction_timeout"), "{e}");
        let e = Config::from_toml_and_env("[kafka]\ndelivery = \"twice\"\n", env(&[])).unwrap_err();
        assert!(e.to_string().contains("delivery"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = Config::from_toml_and_env("[kafka]\nbrokerz = \"a\"\n", env(&[])).unwrap_err();
        assert!(e.to_string().contains("brokerz"), "{e}");
        let e = Config::from_toml_and_env("", env(&[("ATTNWATCH__MODEL__NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn cross_field_validation() {
        let e = Config::from_toml_and_env(
            "[kafka]\ninput_topic = \"x\"\noutput_topic = \"x\"\n[model]\nmax_batch = 0\n",
            env(&[]),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("loop") && msg.contains("max_batch"), "{msg}");
    }

    #[test]
    fn input_limits_have_sane_defaults_and_are_validated() {
        let c = Config::from_toml_and_env("", env(&[])).unwrap();
        let l = c.ingest.limits();
        assert_eq!(l, crate::ingest::decode::Limits::DEFAULT);
        assert_eq!(
            (
                l.max_message_bytes,
                l.max_series_bytes,
                l.max_labels,
                l.max_label_bytes
            ),
            (1_048_576, 256, 32, 256)
        );
        let c = Config::from_toml_and_env(
            "[ingest]\nmax_series_bytes = 64\nmax_labels = 0\n",
            env(&[("ATTNWATCH__INGEST__MAX_MESSAGE_BYTES", "4096")]),
        )
        .unwrap();
        assert_eq!(c.ingest.max_series_bytes, 64);
        assert_eq!(c.ingest.max_labels, 0);
        assert_eq!(c.ingest.max_message_bytes, 4096);
        let e = Config::from_toml_and_env(
            "[ingest]\nmax_message_bytes = 0\nmax_series_bytes = 0\nmax_label_bytes = 0\n",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        for key in ["max_message_bytes", "max_series_bytes", "max_label_bytes"] {
            assert!(e.contains(key), "{e}");
        }
        let e = Config::from_toml_and_env("[ingest]\nmax_lables = 3\n", env(&[])).unwrap_err();
        assert!(e.to_string().contains("max_lables"), "{e}");
    }

    #[test]
    fn the_token_is_named_never_written_and_its_settings_are_validated() {
        let c = Config::from_toml_and_env("", env(&[])).unwrap();
        assert_eq!(c.server.token_source(), None);
        assert!(!c.server.protect_metrics && !c.server.protect_health);
        let c = Config::from_toml_and_env(
            "[server]\ntoken_file = \"/run/secrets/attnwatch-token\"\nprotect_metrics = true\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(
            c.server.token_source(),
            Some(TokenSource::File("/run/secrets/attnwatch-token".into()))
        );
        let c = Config::from_toml_and_env(
            "",
            env(&[
                ("ATTNWATCH__SERVER__TOKEN_ENV", "\"ATTNWATCH_API_TOKEN\""),
                ("ATTNWATCH__SERVER__PROTECT_HEALTH", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.server.token_source(),
            Some(TokenSource::Env("ATTNWATCH_API_TOKEN".into()))
        );
        assert!(c.server.protect_health);
        // The token itself has no key.
        let e = Config::from_toml_and_env("[server]\ntoken = \"s3cret\"\n", env(&[])).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        for (toml, want) in [
            (
                "token_file = \"/a\"\ntoken_env = \"B\"",
                "at most one of server.token_file and server.token_env",
            ),
            ("token_file = \"\"", "server.token_file must not be empty"),
            ("token_env = \"\"", "server.token_env must be"),
            ("token_env = \"A=B\"", "server.token_env must be"),
            (
                "token_env = \"ATTNWATCH__X\"",
                "must not start with ATTNWATCH__",
            ),
            (
                "protect_metrics = true",
                "server.protect_metrics needs a token",
            ),
            (
                "protect_health = true",
                "server.protect_health needs a token",
            ),
        ] {
            let e = Config::from_toml_and_env(&format!("[server]\n{toml}\n"), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config/attnwatch.example.toml");
        Config::from_toml_and_env(text, env(&[])).unwrap();
    }
}
