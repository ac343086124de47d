//! The feedback topic: a compacted topic on the service's brokers, read
//! whole by every replica at startup (before it scores anything) and
//! followed afterwards, and written by `POST /api/feedback`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::{Record, SharedBook};
use crate::config::KafkaConfig;
use crate::ingest::client::{client_config, ClientError};

/// How long startup waits to read the feedback topic to its end.
const LOAD_DEADLINE: Duration = Duration::from_secs(30);

/// Errors of the feedback topic.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackKafkaError {
    /// The client settings could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The broker refused or could not be reached.
    #[error("feedback topic {topic}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What failed.
        source: KafkaError,
    },
    /// The thread that follows the topic could not start.
    #[error("cannot start the feedback thread: {0}")]
    Thread(std::io::Error),
    /// Its metrics could not be registered.
    #[error("feedback metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Feedback as the service runs it: the book the score stages read, the
/// writer the API uses (both made without touching the network), then
/// [`Service::load`] before consuming starts.
pub struct Service {
    /// The records in effect.
    pub book: Arc<SharedBook>,
    /// Writes to the topic.
    pub writer: Writer,
    metrics: FeedbackMetrics,
    topic: String,
}

impl Service {
    /// `None` when `feedback.topic` is unset.
    pub fn new(
        config: &crate::config::Config,
        registry: &Registry,
    ) -> Result<Option<Self>, FeedbackKafkaError> {
        if !config.feedback.enabled() {
            return Ok(None);
        }
        let topic = config.feedback.topic.trim().to_string();
        Ok(Some(Service {
            book: SharedBook::new(),
            writer: Writer::new(&config.kafka, &topic)?,
            metrics: FeedbackMetrics::register(registry)?,
            topic,
        }))
    }

    /// Read the topic whole, then follow it until `shutdown`.
    pub async fn load(
        &self,
        kafka: &KafkaConfig,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), FeedbackKafkaError> {
        let stop = Arc::new(AtomicBool::new(false));
        load_and_follow(
            kafka,
            &self.topic,
            self.book.clone(),
            self.metrics.clone(),
            stop.clone(),
        )
        .await?;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.store(true, Ordering::Relaxed);
        });
        Ok(())
    }
}

/// The feedback metrics.
#[derive(Clone)]
pub struct FeedbackMetrics {
    /// Records applied from the topic, by verdict (tombstones as `withdrawn`).
    pub applied: IntCounterVec,
    /// Records on the topic that could not be read (not a feedback record).
    pub invalid: IntCounter,
    /// Records not applied because the book was full.
    pub dropped: IntCounter,
    /// Records held.
    pub held: IntGauge,
    /// Series with a ceiling from feedback.
    pub series: IntGauge,
}

impl FeedbackMetrics {
    /// Create and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let applied = IntCounterVec::new(
            Opts::new(
                "attnwatch_feedback_total",
                "Feedback records applied from the feedback topic, by verdict (not_anomaly, missed, withdrawn)",
            ),
            &["verdict"],
        )?;
        for v in ["not_anomaly", "missed", "withdrawn"] {
            applied.with_label_values(&[v]);
        }
        let invalid = IntCounter::new(
            "attnwatch_feedback_invalid_total",
            "Records on the feedback topic that are not feedback records (skipped)",
        )?;
        let dropped = IntCounter::new(
            "attnwatch_feedback_dropped_total",
            "Feedback records not applied: the book holds its maximum",
        )?;
        let held = IntGauge::new("attnwatch_feedback_records", "Feedback records held")?;
        let series = IntGauge::new(
            "attnwatch_feedback_series",
            "Series whose calibration feedback changed (not_anomaly, or missed with its peak)",
        )?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(series.clone()))?;
        Ok(FeedbackMetrics {
            applied,
            invalid,
            dropped,
            held,
            series,
        })
    }
}

/// Create the feedback topic, compacted, if it does not exist. Returns
/// whether it was created.
pub async fn ensure_topic(
    cfg: &KafkaConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<bool, FeedbackKafkaError> {
    let fail = |source| FeedbackKafkaError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)?.create().map_err(fail)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&[new], &opts).await.map_err(fail)?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((_, code))) => Err(fail(KafkaError::AdminOp(code))),
    }
}

/// Apply one message of the topic to the book.
fn apply(book: &SharedBook, metrics: &FeedbackMetrics, key: Option<&[u8]>, value: Option<&[u8]>) {
    let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        metrics.invalid.inc();
        return;
    };
    let (record, label) = match value {
        None => (None, "withdrawn"),
        Some(bytes) => match Record::from_json(bytes) {
            Ok(r) => {
                let label = r.verdict.as_str();
                (Some(r), label)
            }
            Err(e) => {
                metrics.invalid.inc();
                tracing::warn!(key, error = %e, "feedback topic: skipping a record");
                return;
            }
        },
    };
    if book.apply(key, record) {
        metrics.applied.with_label_values(&[label]).inc();
    } else {
        metrics.dropped.inc();
    }
    let (held, series) = book.with(|b| (b.len(), b.series_with_ceilings()));
    metrics.held.set(held as i64);
    metrics.series.set(series as i64);
}

/// Read the whole topic into `book` (up to the end it had when this
/// started, or [`LOAD_DEADLINE`]), then keep following it on a thread
/// until `stop` is set. Creates the topic (compacted) if it is missing.
pub async fn load_and_follow(
    cfg: &KafkaConfig,
    topic: &str,
    book: Arc<SharedBook>,
    metrics: FeedbackMetrics,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, FeedbackKafkaError> {
    if ensure_topic(cfg, topic, 1, 1).await? {
        tracing::info!(topic, "created the feedback topic (compacted)");
    }
    let fail = |source| FeedbackKafkaError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let mut c = client_config(cfg)?;
    c.set("group.id", format!("{}-feedback", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = c.create().map_err(fail)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(fail)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(fail)?;
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(fail)?;
        ends.push((p, high));
    }
    consumer.assign(&tpl).map_err(fail)?;
    // Startup: read to the end the topic had, so that no value is scored
    // before the feedback given before this start applies.
    let deadline = Instant::now() + LOAD_DEADLINE;
    let mut next: std::collections::HashMap<i32, i64> =
        partitions.iter().map(|p| (*p, 0)).collect();
    let caught_up = |next: &std::collections::HashMap<i32, i64>| {
        ends.iter()
            .all(|(p, high)| next.get(p).copied().unwrap_or(0) >= *high)
    };
    while !caught_up(&next) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                apply(&book, &metrics, m.key(), m.payload());
                next.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "feedback topic: consume error"),
            None => {}
        }
    }
    if caught_up(&next) {
        let n = book.with(|b| b.len());
        tracing::info!(topic, records = n, "feedback loaded");
    } else {
        tracing::warn!(topic, "feedback topic not read to its end in {LOAD_DEADLINE:?}; going on, the rest applies as it arrives");
    }
    let handle = std::thread::Builder::new()
        .name("attnwatch-feedback".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(250)) {
                    Some(Ok(m)) => apply(&book, &metrics, m.key(), m.payload()),
                    Some(Err(e)) => tracing::warn!(error = %e, "feedback topic: consume error"),
                    None => {}
                }
            }
        })
        .map_err(FeedbackKafkaError::Thread)?;
    Ok(handle)
}

/// Writes feedback records (the API's side).
#[derive(Clone)]
pub struct Writer {
    producer: FutureProducer,
    topic: String,
}

impl Writer {
    /// A writer to `topic` with the service's client settings.
    pub fn new(cfg: &KafkaConfig, topic: &str) -> Result<Self, FeedbackKafkaError> {
        let mut c = client_config(cfg)?;
        c.set("enable.idempotence", "true").set("acks", "all");
        let producer = c.create().map_err(|source| FeedbackKafkaError::Kafka {
            topic: topic.to_string(),
            source,
        })?;
        Ok(Writer {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Produce `record` under its key and wait for the broker's ack.
    pub async fn send(&self, record: &Record) -> Result<(), KafkaError> {
        let key = record.key();
        let payload = serde_json::to_vec(record).unwrap_or_default();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
