//! Configuration: one serde tree, read from a TOML file and overridden by
//! `ATTNWATCH__SECTION__KEY` environment variables.
//!
//! Owns parsing, defaults and cross-field validation. It does not open any
//! connection or file other than the config file itself; the model contract
//! (window length, features) is checked later, against the model.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::window::{Aggregation, Fill};

/// Errors raised while loading or validating the configuration (fatal).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
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
    /// The HTTP server for metrics and health.
    #[serde(default)]
    pub server: ServerConfig,
    /// The web page and its JSON API.
    #[serde(default)]
    pub ui: UiConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

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
    /// (for example `"security.protocol" = "SSL"`, or `"linger.ms" = 1`;
    /// numbers and booleans are passed on as text).
    #[serde(default, deserialize_with = "scalars_as_strings")]
    pub options: BTreeMap<String, String>,
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

/// Window stage settings (see the README's "Time semantics").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Grid interval. Unset: inferred per series from its first
    /// `infer_points` points (median delta).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Points used to infer the interval when it is not set.
    #[serde(default = "default_infer_points")]
    pub infer_points: usize,
    /// Aggregation of the points within one interval: `mean` or `last`.
    #[serde(default = "default_aggregation")]
    pub aggregation: Aggregation,
    /// Longest gap, in intervals, that is filled; a longer gap resets the window.
    #[serde(default = "default_max_gap")]
    pub max_gap: usize,
    /// Gap filling: `forward` or `linear`.
    #[serde(default = "default_fill")]
    pub fill: Fill,
    /// How late a point may arrive (behind the newest point of its series)
    /// and still land in its bucket. Buckets are scored once it has passed.
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Most series kept; the least recently used is evicted beyond it.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// A series without points for this long (processing time) is evicted.
    #[serde(default = "default_idle_ttl", with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// Idle flush: after this much processing time without a later point
    /// (or one interval of the series, if that is longer), the open bucket
    /// is closed and scored instead of waiting for the next point. `0s`: off.
    #[serde(default = "default_flush_after", with = "humantime_serde")]
    pub flush_after: Duration,
    /// A series silent this long (processing time; or three of its
    /// intervals, if that is longer) gets one `{"series", "ts", "event":
    /// "stale"}` record on the output topic and is counted in
    /// `attnwatch_series_stale_total`. `0s`: off.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
}

impl WindowConfig {
    /// The idle flush and stale timers (zero durations are off).
    pub fn timers(&self) -> crate::window::IdleTimers {
        let ms =
            |d: Duration| (!d.is_zero()).then(|| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        crate::window::IdleTimers {
            flush_after_ms: ms(self.flush_after),
            stale_after_ms: ms(self.stale_after),
        }
    }

    /// Window-stage settings for a model with context `w` and `min_points`,
    /// run every `stride` values.
    pub fn settings(&self, w: usize, min_points: usize, stride: usize) -> crate::window::Settings {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        crate::window::Settings {
            interval_ms: self.interval.map(ms),
            infer_points: self.infer_points,
            aggregation: self.aggregation,
            max_gap: self.max_gap,
            fill: self.fill,
            lateness_ms: ms(self.allowed_lateness),
            max_series: self.max_series,
            idle_ttl_ms: ms(self.idle_ttl),
            stride: stride.max(1),
            ..crate::window::Settings::for_model(w, min_points)
        }
    }
}

/// Execution provider requested for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// NVIDIA CUDA (needs the `cuda` build feature and the onnxruntime-gpu library).
    Cuda,
}

impl Provider {
    /// Lowercase name, as used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

/// Model settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the `.onnx` file.
    #[serde(default = "default_model_path")]
    pub path: PathBuf,
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, then the
    /// library `scripts/setup` installs, then beside the binary, then the
    /// system library path (`model::library`).
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// Execution provider: `cpu` or `cuda`.
    #[serde(default = "default_provider")]
    pub provider: Provider,
    /// When `cuda` is requested but cannot be used, fall back to CPU (logged
    /// and visible in `attnwatch_model_info`) instead of failing at startup.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// Number of inference threads, each with its own session. Series are
    /// sharded across them by hash, which keeps each series in order.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session.
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
    /// Run the model once per `stride` grid values of a series (1 up to the
    /// model's horizon H). Each run forecasts the next H values; every
    /// value is scored at once against the newest forecast that covers it.
    /// Smaller strides cost more (one run per `stride` points) and score
    /// against fresher forecasts (docs/BENCHMARKS.md has the trade-off).
    #[serde(default = "default_stride")]
    pub stride: usize,
    /// Largest number of contexts in one inference call (runs of many
    /// series are batched together).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest wait for a batch to fill once its first window arrived.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// Capacity of each inference thread's input queue (points).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// How often `path` is checked for a new model file (size or mtime
    /// changed) to hot-reload; "0s": only on SIGHUP.
    #[serde(default = "default_reload_poll", with = "humantime_serde")]
    pub reload_poll: Duration,
}

/// Calibration settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Normalised score above which a point is anomalous.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Scored points per series before any alert (probation).
    #[serde(default = "default_probation")]
    pub probation: usize,
    /// Memory of the calibration, in points: its running means are plain
    /// means over the first `history` points and exponential means with
    /// this span after.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Tail probability, per point and series, of a score of 1.0: the
    /// chance that a normal point alerts (lower = fewer alerts).
    #[serde(default = "default_risk")]
    pub risk: f64,
    /// Points after an alert during which the series raises no new alert
    /// (one level shift fires once).
    #[serde(default = "default_cooldown")]
    pub cooldown: usize,
    /// Points in the run and shift channels (sustained surprise, level
    /// shifts).
    #[serde(default = "default_run_points")]
    pub run_points: usize,
    /// The calibration channels that can raise the score: `point` (one
    /// surprising value), `run` (sustained surprise over `run_points`),
    /// `shift` (a consistent shift over `run_points`), `novelty` (a pattern
    /// unlike anything in the series' context).
    #[serde(default = "default_channels")]
    pub channels: Vec<Channel>,
}

/// A calibration channel (see the `score` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// One surprising value.
    Point,
    /// Sustained surprise over the last `run_points` values.
    Run,
    /// A consistent shift of the last `run_points` values.
    Shift,
    /// The model's novelty of the newest pattern against the series' own
    /// context (models with a `novelty` output; on the first value after
    /// each run).
    Novelty,
}

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

/// A table of scalars (strings, numbers, booleans), each as its text.
fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(
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

fn default_infer_points() -> usize {
    8
}
fn default_aggregation() -> Aggregation {
    Aggregation::Mean
}
fn default_max_gap() -> usize {
    16
}
fn default_fill() -> Fill {
    Fill::Forward
}
fn default_max_series() -> usize {
    1_000_000
}
fn default_idle_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_brokers() -> String {
    "127.0.0.1:19092".into()
}
fn default_group() -> String {
    "attnwatch".into()
}
fn default_input_topic() -> String {
    "attnwatch-input".into()
}
fn default_output_topic() -> String {
    "attnwatch-scores".into()
}
fn default_dlq_topic() -> String {
    "attnwatch-dead-letter".into()
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_flush_after() -> Duration {
    Duration::from_secs(120)
}
fn default_stale_after() -> Duration {
    Duration::from_secs(600)
}
fn default_transaction_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_rebuild_messages() -> i64 {
    1024
}
fn default_model_path() -> PathBuf {
    "models/attnwatch-encoder.onnx".into()
}
fn default_provider() -> Provider {
    Provider::Cpu
}
fn default_sessions() -> usize {
    1
}
fn default_intra_threads() -> usize {
    1
}
fn default_stride() -> usize {
    32
}
fn default_max_batch() -> usize {
    64
}
fn default_max_delay() -> Duration {
    Duration::from_millis(5)
}
fn default_queue_capacity() -> usize {
    4096
}
fn default_threshold() -> f64 {
    1.0
}
fn default_probation() -> usize {
    128
}
fn default_history() -> usize {
    2000
}
fn default_risk() -> f64 {
    1e-4
}
fn default_cooldown() -> usize {
    64
}
fn default_run_points() -> usize {
    12
}
fn default_channels() -> Vec<Channel> {
    vec![
        Channel::Point,
        Channel::Run,
        Channel::Shift,
        Channel::Novelty,
    ]
}
fn default_attention() -> AttentionDetail {
    AttentionDetail::TopK
}
fn default_top_k() -> usize {
    5
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9898))
}
fn default_true() -> bool {
    true
}
fn default_ui_series() -> usize {
    256
}
fn default_ui_points() -> usize {
    2048
}
fn default_ui_anomalies() -> usize {
    500
}
fn default_reload_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
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
    ModelConfig,
    ScoreConfig,
    PublishConfig,
    ServerConfig,
    UiConfig,
    ShutdownConfig
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
        if s.history < 64 {
            problems.push("score.history must be >= 64".into());
        }
        if !(s.risk > 0.0 && s.risk < 0.5) {
            problems.push("score.risk must be in (0, 0.5)".into());
        }
        if s.run_points == 0 || s.run_points > 1024 {
            problems.push("score.run_points must be in 1..=1024".into());
        }
        if s.channels.is_empty() {
            problems.push("score.channels must name at least one channel".into());
        }
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
    fn example_config_is_valid() {
        let text = include_str!("../config/attnwatch.example.toml");
        Config::from_toml_and_env(text, env(&[])).unwrap();
    }
}
