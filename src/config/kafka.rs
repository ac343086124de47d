//! `[kafka]`: brokers, topics, the delivery guarantee and librdkafka
//! properties, plain (`[kafka.options]`) or secret
//! (`[kafka.secret_options]`: read from a file or an environment variable
//! at startup by [`crate::ingest::client`], never written here).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Kafka settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group id. Instances with the same group share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topic with input samples (JSON, keyed by series id).
    #[serde(default = "default_input_topic")]
    pub input_topic: String,
    /// Topic that receives one JSON score per scored point.
    #[serde(default = "default_output_topic")]
    pub output_topic: String,
    /// Topic that receives rejected records, original bytes plus a reason header.
    #[serde(default = "default_dlq_topic")]
    pub dead_letter_topic: String,
    /// Delivery guarantee: `at_least_once` (offsets committed after the
    /// outputs are acknowledged; a crash or rebalance can repeat outputs) or
    /// `exactly_once` (outputs, dead letters and input offsets in one Kafka
    /// transaction per `commit_interval`; read the output with
    /// `isolation.level=read_committed`). See the README's "Delivery".
    #[serde(default)]
    pub delivery: Delivery,
    /// Transactional id of this instance (exactly_once only). It must be
    /// unique among running instances and the same across restarts of one
    /// instance, so that a restart fences and aborts its predecessor's open
    /// transaction at once. Unset: `attnwatch-<group_id>-<host name>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Transaction timeout (exactly_once only): the broker aborts a
    /// transaction left open this long by a dead instance, and the outputs
    /// of its partitions wait that long for readers. Also bounds how long a
    /// commit waits for outputs in flight.
    #[serde(default = "default_transaction_timeout", with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// How often stored offsets are committed (they are also committed on
    /// shutdown). In exactly_once mode, how often the transaction is
    /// committed, which is also how long outputs wait before readers see them.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On partition assignment, how many messages before the committed offset
    /// are re-read with output suppressed to rebuild window state. Set it to at
    /// least the window length times the number of series per partition.
    #[serde(default = "default_rebuild_messages")]
    pub rebuild_messages: i64,
    /// Extra librdkafka properties, applied to both consumer and producer
    /// (for example `"security.protocol" = "SASL_SSL"`,
    /// `"ssl.ca.location" = "/etc/kafka-ca/ca.crt"` or `"linger.ms" = 1`;
    /// numbers and booleans are passed on as text). Properties whose value
    /// is a secret ([`SECRET_PROPERTIES`]) are refused here: give them in
    /// `secret_options`.
    #[serde(default, deserialize_with = "scalars_as_strings")]
    pub options: BTreeMap<String, String>,
    /// librdkafka properties whose values are read at startup from a file
    /// or an environment variable, so that no secret is written into the
    /// config: `"sasl.password" = { file = "/run/secrets/kafka-password" }`
    /// or `"sasl.password" = { env = "KAFKA_SASL_PASSWORD" }`. Applied after
    /// `options`, to every Kafka client of the service. A file that cannot
    /// be read, an unset variable or an empty value stops startup with an
    /// error naming the property and the source; the values are never
    /// logged, and `check-config` shows only where they come from.
    #[serde(default)]
    pub secret_options: BTreeMap<String, SecretSource>,
}

/// Where the value of a `[kafka.secret_options]` property comes from:
/// `{ file = "/path" }` or `{ env = "VAR" }`. Trailing line breaks of the
/// value are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// A file, read whole at startup (a Kubernetes Secret mounted as a
    /// volume, say).
    File(PathBuf),
    /// An environment variable of the service's process (a Kubernetes
    /// Secret exposed with `secretKeyRef`, say).
    Env(String),
}

/// The TOML table a [`SecretSource`] is written as.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSourceTable {
    /// [`SecretSource::File`].
    file: Option<PathBuf>,
    /// [`SecretSource::Env`].
    env: Option<String>,
}

impl<'de> Deserialize<'de> for SecretSource {
    /// By hand, so that no error can echo a value: a secret written here
    /// by mistake (`"sasl.password" = "..."`) is refused by its type only.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = toml::Value::deserialize(d)?;
        let toml::Value::Table(table) = value else {
            return Err(D::Error::custom(format!(
                "expected {{ file = \"/path\" }} or {{ env = \"VAR\" }}, found a {} \
                 (the value itself must not be written into the config)",
                value.type_str()
            )));
        };
        let t: SecretSourceTable = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| D::Error::custom(e.message()))?;
        match (t.file, t.env) {
            (Some(path), None) => Ok(SecretSource::File(path)),
            (None, Some(var)) => Ok(SecretSource::Env(var)),
            _ => Err(D::Error::custom(
                "give exactly one of `file` or `env`, as { file = \"/path\" } or { env = \"VAR\" }",
            )),
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// librdkafka properties whose value is a secret: refused in
/// `[kafka.options]`, accepted in `[kafka.secret_options]`.
pub const SECRET_PROPERTIES: [&str; 7] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

impl KafkaConfig {
    /// Problems with `options` and `secret_options` (for
    /// [`super::Config::validate`]).
    pub(super) fn option_problems(&self, problems: &mut Vec<String>) {
        for key in self.options.keys() {
            if SECRET_PROPERTIES.contains(&key.to_ascii_lowercase().as_str()) {
                problems.push(format!(
                    "kafka.options.\"{key}\" is a secret and must not be written into the config: \
                     take it from a file or an environment variable with \
                     [kafka.secret_options] \"{key}\" = {{ file = \"/path\" }} (or {{ env = \"VAR\" }})"
                ));
            }
        }
        for (key, source) in &self.secret_options {
            if key.trim().is_empty() {
                problems.push("kafka.secret_options: empty property name".into());
            }
            if self.options.contains_key(key) {
                problems.push(format!(
                    "kafka.options.\"{key}\" is also in kafka.secret_options: set it in one place"
                ));
            }
            let bad_source = match source {
                SecretSource::File(path) => path.as_os_str().is_empty(),
                SecretSource::Env(var) => {
                    var.is_empty()
                        || var.contains(['=', '\0'])
                        || var.chars().any(char::is_whitespace)
                }
            };
            if bad_source {
                problems.push(format!(
                    "kafka.secret_options.\"{key}\": {source:?} is not a usable file path or variable name"
                ));
            }
        }
    }
}

/// The delivery guarantee of the service (`kafka.delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Offsets are committed after every output of the messages before them
    /// is acknowledged: nothing is lost, some outputs may repeat.
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets commit in one Kafka transaction.
    ExactlyOnce,
}

impl Delivery {
    /// Name, as in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::ExactlyOnce => "exactly_once",
        }
    }
}

/// A table of scalars (strings, numbers, booleans), each as its text.
pub(super) fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "kafka.options.{k}: expected a string, number or boolean, found {}",
                        other.type_str()
                    )))
                }
            };
            Ok((k, text))
        })
        .collect()
}

pub(super) fn default_brokers() -> String {
    "127.0.0.1:19092".into()
}
pub(super) fn default_group() -> String {
    "attnwatch".into()
}
pub(super) fn default_input_topic() -> String {
    "attnwatch-input".into()
}
pub(super) fn default_output_topic() -> String {
    "attnwatch-scores".into()
}
pub(super) fn default_dlq_topic() -> String {
    "attnwatch-dead-letter".into()
}
pub(super) fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}

pub(super) fn default_transaction_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_rebuild_messages() -> i64 {
    1024
}
