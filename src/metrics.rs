//! Prometheus metrics: every name in one place, one registry per process
//! instance of the service.
//!
//! Names carry the `attnwatch_` prefix; counters end in `_total`, durations
//! are in seconds. No metric has a per-series label: topic, partition and
//! bounded reason codes only. Error events go through [`Metrics::error`],
//! which both logs and counts, so the two cannot drift apart; errors that
//! repeat at the pace of a retry loop go through [`Metrics::error_limited`],
//! which counts every one and logs at most one line per key per
//! [`ERROR_LOG_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::ingest::decode::Reason;
use crate::log_limit::LogLimit;
use crate::server::auth::Endpoint;

/// Kafka messages consumed from the input topic.
pub const RECORDS_CONSUMED: &str = "attnwatch_records_consumed_total";
/// Samples decoded from consumed messages.
pub const SAMPLES: &str = "attnwatch_samples_total";
/// Output messages acknowledged by the broker.
pub const RECORDS_PUBLISHED: &str = "attnwatch_records_published_total";
/// Records sent to the dead-letter topic, by reason.
pub const RECORDS_DEAD_LETTERED: &str = "attnwatch_records_dead_lettered_total";
/// Points dropped because their bucket had already been closed (too late).
pub const RECORDS_LATE: &str = "attnwatch_records_late_total";
/// Duplicate timestamps resolved (the larger value kept).
pub const RECORDS_DUPLICATE: &str = "attnwatch_records_duplicate_total";
/// Points read while rebuilding windows after an assignment (not scored).
pub const RECORDS_REPLAYED: &str = "attnwatch_records_replayed_total";
/// Points dropped because their bucket already held too many points.
pub const BUCKET_OVERFLOW: &str = "attnwatch_bucket_overflow_total";
/// Grid values filled into short gaps.
pub const GAPS_FILLED: &str = "attnwatch_gaps_filled_total";
/// Windows reset after a gap longer than `window.max_gap`.
pub const WINDOW_RESETS: &str = "attnwatch_window_resets_total";
/// Series evicted, by reason (`lru`, `idle` from the window stage;
/// `calibration_lru` from a scorer shard over `window.max_series`, `ui_lru`
/// from the web page's store over `ui.max_series`).
pub const SERIES_EVICTED: &str = "attnwatch_series_evicted_total";
/// Values scored against a forecast (published points, per feature).
pub const POINTS_SCORED: &str = "attnwatch_points_scored_total";
/// Model runs: contexts forecast (one per `model.stride` values of a series).
pub const MODEL_RUNS: &str = "attnwatch_model_runs_total";
/// Points flagged anomalous.
pub const ANOMALIES: &str = "attnwatch_anomalies_total";
/// Idle-timer marks that did not fit in a partition's offset metadata.
pub const TIMER_MARKS_DROPPED: &str = "attnwatch_timer_marks_dropped_total";
/// Alerts (incidents opened), by the channel that raised them.
pub const ALERTS: &str = "attnwatch_alerts_total";
/// Contexts per inference call.
pub const INFERENCE_BATCH_SIZE: &str = "attnwatch_inference_batch_size";
/// Duration of one inference call.
pub const INFERENCE_LATENCY: &str = "attnwatch_inference_latency_seconds";
/// From the input message's Kafka timestamp to the output's acknowledgement.
pub const END_TO_END_LATENCY: &str = "attnwatch_end_to_end_latency_seconds";
/// Consumer lag per input partition (from librdkafka statistics).
pub const CONSUMER_LAG: &str = "attnwatch_consumer_lag";
/// Series with window state.
pub const ACTIVE_SERIES: &str = "attnwatch_active_series";
/// Assigned input partitions.
pub const ASSIGNED_PARTITIONS: &str = "attnwatch_assigned_partitions";
/// Constant 1, labelled with the model and the execution provider in use.
pub const MODEL_INFO: &str = "attnwatch_model_info";
/// 1 when the service is ready (the same condition as `/readyz`), else 0.
pub const READY: &str = "attnwatch_ready";
/// 1 when the execution provider in use is not the one configured.
pub const MODEL_FALLBACK: &str = "attnwatch_model_fallback";
/// Busy time of each stage on its own threads, by `stage`: `ingest`
/// (decode, window, run schedule), `model` (inference calls), `score`
/// (forecast surprise, calibration, batching), `encode` (output JSON).
pub const STAGE_BUSY: &str = "attnwatch_stage_busy_seconds_total";
/// Hot reloads of the model, by `result`: `kept_calibration`,
/// `reset_calibration` (both swapped in), `refused` (breaks the running
/// contract), `failed` (could not be loaded); the old model keeps running
/// on the last two.
pub const MODEL_RELOADS: &str = "attnwatch_model_reloads_total";
/// Kafka transactions (exactly_once delivery), by result: `committed`,
/// `retried`, `aborted`, `fenced`, `fatal`.
pub const TRANSACTIONS: &str = "attnwatch_transactions_total";
/// Duration of one transaction commit (offsets sent and committed).
pub const TRANSACTION_SECONDS: &str = "attnwatch_transaction_commit_seconds";
/// Open buckets closed by `window.flush_after` of processing time without a
/// later point.
pub const BUCKETS_FLUSHED: &str = "attnwatch_buckets_flushed_idle_total";
/// Series that went silent for `window.stale_after` (one stale event each).
pub const SERIES_STALE: &str = "attnwatch_series_stale_total";
/// What the web page keeps, by `kind`: `series`, `points`, `anomalies`.
pub const UI_HELD: &str = "attnwatch_ui_held";
/// HTTP requests refused for want of the API token (401), by `endpoint`:
/// `page`, `api`, `metrics`, `health`. Not logged one by one.
pub const HTTP_UNAUTHORIZED: &str = "attnwatch_http_unauthorized_total";
/// Errors by kind (kafka, kafka_auth, kafka_tls, delivery, inference,
/// commit, ...).
pub const ERRORS: &str = "attnwatch_errors_total";

/// [`Metrics::error_limited`] writes at most one line per key this often.
pub const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Handles to every metric of one service instance.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served at `/metrics`.
    pub registry: Registry,
    /// [`RECORDS_CONSUMED`].
    pub records_consumed: IntCounter,
    /// [`SAMPLES`].
    pub samples: IntCounter,
    /// [`RECORDS_PUBLISHED`].
    pub records_published: IntCounter,
    /// [`RECORDS_DEAD_LETTERED`], label `reason`.
    pub dead_lettered: IntCounterVec,
    /// [`RECORDS_LATE`].
    pub late: IntCounter,
    /// [`RECORDS_DUPLICATE`].
    pub duplicate: IntCounter,
    /// [`RECORDS_REPLAYED`].
    pub replayed: IntCounter,
    /// [`BUCKET_OVERFLOW`].
    pub bucket_overflow: IntCounter,
    /// [`GAPS_FILLED`].
    pub gaps_filled: IntCounter,
    /// [`WINDOW_RESETS`].
    pub window_resets: IntCounter,
    /// [`SERIES_EVICTED`], label `reason`.
    pub series_evicted: IntCounterVec,
    /// [`POINTS_SCORED`].
    pub points_scored: IntCounter,
    /// [`MODEL_RUNS`].
    pub model_runs: IntCounter,
    /// [`ANOMALIES`].
    pub anomalies: IntCounter,
    /// [`ALERTS`], by `channel`.
    pub alerts: IntCounterVec,
    /// [`TIMER_MARKS_DROPPED`].
    pub timer_marks_dropped: IntCounter,
    /// [`INFERENCE_BATCH_SIZE`].
    pub batch_size: Histogram,
    /// [`INFERENCE_LATENCY`].
    pub inference_latency: Histogram,
    /// [`END_TO_END_LATENCY`].
    pub end_to_end: HistogramVec,
    /// [`CONSUMER_LAG`], label `partition`.
    pub consumer_lag: IntGaugeVec,
    /// [`ACTIVE_SERIES`].
    pub active_series: IntGauge,
    /// [`ASSIGNED_PARTITIONS`].
    pub assigned_partitions: IntGauge,
    /// [`MODEL_INFO`].
    pub model_info: IntGaugeVec,
    /// [`ERRORS`], label `kind`.
    pub errors: IntCounterVec,
    /// [`STAGE_BUSY`], label `stage`.
    pub stage_busy: CounterVec,
    /// [`READY`].
    pub ready: IntGauge,
    /// [`MODEL_FALLBACK`].
    pub model_fallback: IntGauge,
    /// [`UI_HELD`], label `kind`.
    pub ui_held: IntGaugeVec,
    /// [`TRANSACTIONS`], label `result`.
    pub transactions: IntCounterVec,
    /// [`TRANSACTION_SECONDS`].
    pub transaction_seconds: Histogram,
    /// [`BUCKETS_FLUSHED`].
    pub buckets_flushed: IntCounter,
    /// [`SERIES_STALE`].
    pub series_stale: IntCounter,
    /// [`MODEL_RELOADS`], label `result`.
    pub model_reloads: IntCounterVec,
    /// [`HTTP_UNAUTHORIZED`], label `endpoint`.
    pub http_unauthorized: IntCounterVec,
    /// The rate limit of [`Metrics::error_limited`]'s log lines, shared by
    /// every client of this service instance.
    pub error_log: Arc<LogLimit>,
}

/// Stages timed under [`STAGE_BUSY`].
pub const STAGES: [&str; 4] = ["ingest", "model", "score", "encode"];

/// Results counted under [`MODEL_RELOADS`].
pub const RELOAD_RESULTS: [&str; 4] =
    ["kept_calibration", "reset_calibration", "refused", "failed"];

/// Error kinds counted under [`ERRORS`]: `kafka_auth` is a Kafka client
/// failing to authenticate (SASL), `kafka_tls` one failing its TLS
/// handshake (an untrusted broker certificate, say), `kafka` any other
/// Kafka client error.
pub const ERROR_KINDS: [&str; 9] = [
    "kafka",
    "kafka_auth",
    "kafka_tls",
    "transaction",
    "delivery",
    "inference",
    "commit",
    "offset_store",
    "encode",
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let latency_buckets = prometheus::exponential_buckets(0.0001, 2.0, 18)?;
        let e2e_buckets = prometheus::exponential_buckets(0.001, 2.0, 18)?;
        let end_to_end = HistogramVec::new(
            HistogramOpts::new(
                END_TO_END_LATENCY,
                "Input message timestamp to output acknowledgement.",
            )
            .buckets(e2e_buckets),
            &["topic"],
        )?;
        registry.register(Box::new(end_to_end.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                CONSUMER_LAG,
                "Consumer lag in messages per input partition.",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let model_info = IntGaugeVec::new(
            Opts::new(
                MODEL_INFO,
                "The loaded model; provider is the execution provider actually in use.",
            ),
            &[
                "model",
                "version",
                "window",
                "provider",
                "requested_provider",
            ],
        )?;
        registry.register(Box::new(model_info.clone()))?;
        let ui_held = IntGaugeVec::new(
            Opts::new(
                UI_HELD,
                "What the web page keeps: series, points (over all series), anomalies.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(ui_held.clone()))?;
        let m = Metrics {
            records_consumed: counter(
                RECORDS_CONSUMED,
                "Kafka messages consumed from the input topic.",
            )?,
            samples: counter(SAMPLES, "Samples decoded from consumed messages.")?,
            records_published: counter(
                RECORDS_PUBLISHED,
                "Output messages acknowledged by the broker.",
            )?,
            dead_lettered: counter_vec(
                RECORDS_DEAD_LETTERED,
                "Records sent to the dead-letter topic.",
                "reason",
            )?,
            late: counter(
                RECORDS_LATE,
                "Points dropped: older than the last point of their series.",
            )?,
            duplicate: counter(
                RECORDS_DUPLICATE,
                "Points dropped: same timestamp as the last point of their series.",
            )?,
            replayed: counter(
                RECORDS_REPLAYED,
                "Messages re-read to rebuild windows after an assignment.",
            )?,
            bucket_overflow: counter(BUCKET_OVERFLOW, "Points dropped: their bucket was full.")?,
            gaps_filled: counter(GAPS_FILLED, "Grid values filled into short gaps.")?,
            window_resets: counter(
                WINDOW_RESETS,
                "Windows reset after a gap longer than window.max_gap.",
            )?,
            series_evicted: counter_vec(
                SERIES_EVICTED,
                "Series evicted, by reason (lru, idle, calibration_lru, ui_lru).",
                "reason",
            )?,
            points_scored: counter(
                POINTS_SCORED,
                "Values scored against a forecast (per feature, rebuilds included).",
            )?,
            model_runs: counter(MODEL_RUNS, "Model runs (contexts forecast).")?,
            anomalies: counter(ANOMALIES, "Points flagged anomalous.")?,
            timer_marks_dropped: counter(
                TIMER_MARKS_DROPPED,
                "Idle-timer marks of silent series that did not fit in a partition's committed offset metadata (exactly_once): those series' timers may fire again after a restart.",
            )?,
            alerts: counter_vec(
                ALERTS,
                "Alerts: anomalous points that opened an incident, by the strongest channel.",
                "channel",
            )?,
            batch_size: histogram(
                INFERENCE_BATCH_SIZE,
                "Contexts per inference call.",
                prometheus::exponential_buckets(1.0, 2.0, 12)?,
            )?,
            inference_latency: histogram(
                INFERENCE_LATENCY,
                "Duration of one inference call.",
                latency_buckets,
            )?,
            end_to_end,
            consumer_lag,
            active_series: gauge(ACTIVE_SERIES, "Series with window state.")?,
            assigned_partitions: gauge(
                ASSIGNED_PARTITIONS,
                "Input partitions assigned to this instance.",
            )?,
            model_info,
            errors: counter_vec(ERRORS, "Errors by kind.", "kind")?,
            stage_busy: {
                let c = CounterVec::new(
                    Opts::new(STAGE_BUSY, "Busy seconds of each stage."),
                    &["stage"],
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            ready: gauge(
                READY,
                "1 when ready (model warm, partitions assigned, not draining).",
            )?,
            model_fallback: gauge(
                MODEL_FALLBACK,
                "1 when the execution provider in use is not the configured one.",
            )?,
            ui_held,
            transactions: counter_vec(
                TRANSACTIONS,
                "Kafka transactions (exactly_once): committed, retried, aborted, fenced, fatal.",
                "result",
            )?,
            transaction_seconds: histogram(
                TRANSACTION_SECONDS,
                "Duration of one transaction commit.",
                prometheus::exponential_buckets(0.001, 2.0, 16)?,
            )?,
            buckets_flushed: counter(
                BUCKETS_FLUSHED,
                "Open buckets closed after window.flush_after without a later point.",
            )?,
            series_stale: counter(
                SERIES_STALE,
                "Series silent for window.stale_after (one stale event each).",
            )?,
            model_reloads: counter_vec(
                MODEL_RELOADS,
                "Model hot reloads: kept_calibration, reset_calibration, refused, failed.",
                "result",
            )?,
            http_unauthorized: counter_vec(
                HTTP_UNAUTHORIZED,
                "HTTP requests refused (401) for want of the API token, by endpoint.",
                "endpoint",
            )?,
            registry,
            error_log: Arc::new(LogLimit::new(ERROR_LOG_EVERY)),
        };
        for reason in Reason::ALL_CODES.iter().chain(&["no_forecast"]) {
            m.dead_lettered.with_label_values(&[reason]);
        }
        for reason in ["lru", "idle", "calibration_lru", "ui_lru"] {
            m.series_evicted.with_label_values(&[reason]);
        }
        for result in ["committed", "retried", "aborted", "fenced", "fatal"] {
            m.transactions.with_label_values(&[result]);
        }
        for result in RELOAD_RESULTS {
            m.model_reloads.with_label_values(&[result]);
        }
        for kind in ["series", "points", "anomalies"] {
            m.ui_held.with_label_values(&[kind]);
        }
        for endpoint in Endpoint::ALL {
            m.http_unauthorized.with_label_values(&[endpoint.as_str()]);
        }
        for kind in ERROR_KINDS {
            m.errors.with_label_values(&[kind]);
        }
        for stage in STAGES {
            m.stage_busy.with_label_values(&[stage]);
        }
        for channel in crate::flow::Channels::NAMES {
            m.alerts.with_label_values(&[channel]);
        }
        Ok(m)
    }

    /// Add `seconds` of busy time to `stage` (one of [`STAGES`]).
    pub fn busy(&self, stage: &'static str, seconds: f64) {
        self.stage_busy.with_label_values(&[stage]).inc_by(seconds);
    }

    /// Log an error event and count it under `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&self, kind: &'static str, message: &dyn std::fmt::Display) {
        tracing::warn!(kind, error = %message, "error event");
        self.errors.with_label_values(&[kind]).inc();
    }

    /// Count an error event under `kind` (one of [`ERROR_KINDS`]) and log
    /// it, unless a line with the same `key` was logged less than
    /// [`ERROR_LOG_EVERY`] ago; the line then written says how many were
    /// held back. For errors that repeat with every retry (a client that
    /// cannot authenticate reconnects several times a second).
    pub fn error_limited(&self, kind: &'static str, key: &str, message: &dyn std::fmt::Display) {
        self.errors.with_label_values(&[kind]).inc();
        if let Some(suppressed) = self.error_log.admit(key, Instant::now()) {
            tracing::warn!(
                kind,
                error = %message,
                suppressed,
                "error event (repeats logged at most every {}s, all counted in {ERRORS})",
                ERROR_LOG_EVERY.as_secs()
            );
        }
    }

    /// Render the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding metrics failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_prefix_and_no_series_label() {
        let m = Metrics::new().unwrap();
        m.records_consumed.inc();
        m.batch_size.observe(3.0);
        m.inference_latency.observe(0.001);
        m.end_to_end.with_label_values(&["in"]).observe(0.01);
        m.consumer_lag.with_label_values(&["in", "0"]).set(5);
        m.model_info
            .with_label_values(&["attnwatch-encoder", "0.1.0", "64", "cpu", "cpu"])
            .set(1);
        let text = m.render();
        for name in [
            RECORDS_CONSUMED,
            RECORDS_PUBLISHED,
            RECORDS_DEAD_LETTERED,
            RECORDS_LATE,
            POINTS_SCORED,
            MODEL_RUNS,
            ANOMALIES,
            INFERENCE_BATCH_SIZE,
            INFERENCE_LATENCY,
            END_TO_END_LATENCY,
            CONSUMER_LAG,
            ACTIVE_SERIES,
            MODEL_INFO,
            HTTP_UNAUTHORIZED,
            ERRORS,
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("attnwatch_"), "{line}");
            assert!(!line.contains("series="), "{line}");
        }
    }
}
