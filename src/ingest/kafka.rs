//! The Kafka side of ingest: the consumer, its rebalance handling, offset
//! storing, and the consume loop.
//!
//! On assignment each partition is rewound `kafka.rebuild_messages` messages
//! before its committed offset. Messages before the committed offset are
//! replayed into the windows with output suppressed, so a restart or
//! rebalance resumes scoring at once instead of warming up again, and
//! without publishing those points twice. On revocation the stored offsets
//! are committed and the partition's pending outputs are forgotten (the next
//! owner re-reads them: at-least-once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::offsets::{OffsetTracker, Token};
use super::stage::shard_of;
use super::stage::{MessageMeta, Planner};
use crate::config::KafkaConfig;
use crate::flow::{Acknowledge, Job, Outgoing};
use crate::metrics::Metrics;

/// Errors of the Kafka ingest side.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Creating the client or subscribing failed (fatal).
    #[error("kafka setup failed: {0}")]
    Setup(#[from] KafkaError),
}

const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared between the consumer's callbacks, the consume loop and the
/// publisher's acknowledgements.
pub struct Shared {
    topic: String,
    rebuild_messages: i64,
    tracker: Mutex<OffsetTracker>,
    /// Per partition: offsets below this are replayed with output suppressed.
    replay_until: Mutex<HashMap<i32, i64>>,
    metrics: Metrics,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replay_until(&self) -> MutexGuard<'_, HashMap<i32, i64>> {
        self.replay_until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Consumer context: rebalance handling and statistics.
pub struct IngestContext {
    shared: Arc<Shared>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        for (id, p) in &topic.partitions {
            if *id >= 0 && p.consumer_lag >= 0 {
                self.shared
                    .metrics
                    .consumer_lag
                    .with_label_values(&[&self.shared.topic, &id.to_string()])
                    .set(p.consumer_lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared
            .metrics
            .error("kafka", &format!("{error}: {reason}"));
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                self.shared
                    .metrics
                    .error("kafka", &format!("rebalance error {other:?}"));
                if let Err(e) = consumer.unassign() {
                    self.shared.metrics.error("kafka", &e);
                }
                self.shared.metrics.assigned_partitions.set(0);
            }
        }
    }
}

impl IngestContext {
    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let shared = &self.shared;
        let committed = consumer.committed_offsets(tpl.clone(), BROKER_CALL_TIMEOUT);
        if let Err(e) = &committed {
            shared
                .metrics
                .error("kafka", &format!("reading committed offsets: {e}"));
        }
        let mut assignment = TopicPartitionList::new();
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic(), elem.partition());
            let committed_offset = committed
                .as_ref()
                .ok()
                .and_then(|c| c.find_partition(topic, partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let start = match committed_offset {
                Some(c) => {
                    let low = consumer
                        .fetch_watermarks(topic, partition, BROKER_CALL_TIMEOUT)
                        .map(|(low, _)| low)
                        .unwrap_or(c);
                    shared.replay_until().insert(partition, c);
                    Offset::Offset((c - shared.rebuild_messages).max(low))
                }
                None => {
                    shared.replay_until().remove(&partition);
                    Offset::Beginning
                }
            };
            if let Err(e) = assignment.add_partition_offset(topic, partition, start) {
                shared.metrics.error("kafka", &e);
            }
            let generation = shared.tracker().assign(partition);
            tracing::info!(topic, partition, ?start, committed = ?committed_offset, generation, "partition assigned");
        }
        if let Err(e) = consumer.assign(&assignment) {
            shared.metrics.error("kafka", &format!("assign: {e}"));
        }
        shared
            .metrics
            .assigned_partitions
            .set(assignment.count() as i64);
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let shared = &self.shared;
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => shared.metrics.error("commit", &e),
        }
        for elem in tpl.elements() {
            shared.tracker().revoke(elem.partition());
            shared.replay_until().remove(&elem.partition());
            let _ = shared
                .metrics
                .consumer_lag
                .remove_label_values(&[&shared.topic, &elem.partition().to_string()]);
            tracing::info!(
                topic = elem.topic(),
                partition = elem.partition(),
                "partition revoked"
            );
        }
        if let Err(e) = consumer.unassign() {
            shared.metrics.error("kafka", &e);
        }
        shared.metrics.assigned_partitions.set(0);
    }
}

/// The consumer type used by attnwatch.
pub type IngestConsumer = StreamConsumer<IngestContext>;

/// librdkafka settings shared by consumer and producer.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

/// Create the consumer and subscribe to the input topic.
pub fn consumer(
    cfg: &KafkaConfig,
    metrics: Metrics,
) -> Result<(Arc<IngestConsumer>, Arc<Shared>), IngestError> {
    let shared = Arc::new(Shared {
        topic: cfg.input_topic.clone(),
        rebuild_messages: cfg.rebuild_messages,
        tracker: Mutex::new(OffsetTracker::new()),
        replay_until: Mutex::new(HashMap::new()),
        metrics,
    });
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            cfg.commit_interval.as_millis().to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "5000");
    let consumer: IngestConsumer = c.create_with_context(IngestContext {
        shared: shared.clone(),
    })?;
    consumer.subscribe(&[&cfg.input_topic])?;
    Ok((Arc::new(consumer), shared))
}

/// Stores offsets as outputs are acknowledged.
pub struct OffsetStore {
    consumer: Arc<IngestConsumer>,
    shared: Arc<Shared>,
}

impl OffsetStore {
    /// An offset store over `consumer`.
    pub fn new(consumer: Arc<IngestConsumer>, shared: Arc<Shared>) -> Self {
        OffsetStore { consumer, shared }
    }

    fn store(&self, partition: i32, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        let stored = tpl
            .add_partition_offset(&self.shared.topic, partition, Offset::Offset(offset))
            .and_then(|()| self.consumer.store_offsets(&tpl));
        if let Err(e) = stored {
            // Happens when the partition was revoked meanwhile; the new owner re-reads.
            self.shared.metrics.error("offset_store", &e);
        }
    }

    fn register(&self, token: Token, outputs: u32) {
        let advanced = self.shared.tracker().register(token, outputs);
        if let Some(offset) = advanced {
            self.store(token.partition, offset);
        }
    }
}

impl Acknowledge for OffsetStore {
    fn ack(&self, token: Token) {
        let advanced = self.shared.tracker().ack(token);
        if let Some(offset) = advanced {
            self.store(token.partition, offset);
        }
    }
}

/// Where the consume loop sends its work.
pub struct Outputs {
    /// One job queue per inference thread.
    pub jobs: Vec<flume::Sender<Job>>,
    /// Dead letters go straight to the publisher.
    pub publish: mpsc::Sender<Outgoing>,
}

/// Consume until `shutdown` is cancelled. Returning drops the job senders,
/// which lets the inference threads drain and stop.
pub async fn run(
    consumer: Arc<IngestConsumer>,
    store: Arc<OffsetStore>,
    mut planner: Planner,
    outputs: Outputs,
    shutdown: CancellationToken,
    metrics: Metrics,
) {
    let shared = store.shared.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => {
                backoff = Duration::from_millis(100);
                m
            }
            Err(e) => {
                // Broker unreachable and similar: librdkafka reconnects; back off.
                metrics.error("kafka", &e);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        metrics.records_consumed.inc();
        let (partition, offset) = (msg.partition(), msg.offset());
        let Some(generation) = shared.tracker().generation(partition) else {
            continue; // not (or no longer) ours
        };
        let replay = shared
            .replay_until()
            .get(&partition)
            .is_some_and(|until| offset < *until);
        let token = Token {
            partition,
            offset,
            generation,
        };
        let meta = MessageMeta {
            token,
            kafka_ts_ms: msg.timestamp().to_millis(),
        };
        let payload = msg.payload().unwrap_or_default();
        // The ingest stage's busy time is sampled (1 message in 16, scaled
        // up): reading the clock twice per message costs more than it tells.
        let sampled = offset % 16 == 0;
        let started = sampled.then(std::time::Instant::now);
        if replay {
            // Output for this message was published before the assignment:
            // rebuild windows, forecasts and calibration, publish nothing.
            let jobs = planner.replay(payload, meta, chrono::Utc::now().timestamp_millis());
            if let Some(t) = started {
                metrics.busy("ingest", 16.0 * t.elapsed().as_secs_f64());
            }
            metrics.replayed.inc();
            for job in jobs {
                let shard = shard_of(&job.series, outputs.jobs.len());
                if outputs.jobs[shard].send_async(job).await.is_err() {
                    return;
                }
            }
            continue;
        }
        let plan = planner.plan(
            payload,
            msg.key(),
            meta,
            chrono::Utc::now().timestamp_millis(),
        );
        if let Some(t) = started {
            metrics.busy("ingest", 16.0 * t.elapsed().as_secs_f64());
        }
        store.register(token, plan.outputs());
        for dl in plan.dead_letters {
            if outputs
                .publish
                .send(Outgoing::DeadLetter(dl))
                .await
                .is_err()
            {
                return;
            }
        }
        for job in plan.jobs {
            let shard = shard_of(&job.series, outputs.jobs.len());
            if outputs.jobs[shard].send_async(job).await.is_err() {
                return;
            }
        }
    }
    tracing::info!("ingest stopped consuming");
}

/// Commit the stored offsets now (shutdown).
pub fn commit(consumer: &IngestConsumer, metrics: &Metrics) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => metrics.error("commit", &e),
    }
}
