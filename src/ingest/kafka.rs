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
//!
//! With `kafka.delivery = "exactly_once"` offsets are never stored or
//! auto-committed: every `commit_interval`, and on revocation, the loop
//! waits for every output owed to be acknowledged and commits the input
//! positions in the producer's transaction ([`super::transaction`]).
//!
//! Every second the idle timers of the window stage fire
//! (`window.flush_after`, `window.stale_after`); their outputs are owed by
//! no input message ([`Token::UNTRACKED`]) and are counted apart so that a
//! transaction still waits for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{self, ClientError};
use super::offsets::{OffsetTracker, Token};
use super::stage::shard_of;
use super::stage::{MessageMeta, Planner};
use super::transaction::{Transactions, TxnError};
use crate::config::{Delivery, KafkaConfig};
use crate::flow::{Acknowledge, Job, Outgoing};
use crate::metrics::Metrics;
use crate::window::IdleTimers;

/// Errors of the Kafka ingest side.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Creating the client or subscribing failed (fatal).
    #[error("kafka setup failed: {0}")]
    Setup(#[from] KafkaError),
    /// The client settings could not be built: a secret could not be read (fatal).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An exactly-once transaction failed; the service stops so that its
    /// restart rebuilds state from the committed offsets.
    #[error(transparent)]
    Transaction(#[from] TxnError),
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
    delivery: Delivery,
    /// Outputs in flight that no input message owes ([`Token::UNTRACKED`]).
    untracked: AtomicI64,
    /// The transactions (exactly_once), for the revocation callback.
    txn: OnceLock<Weak<Transactions>>,
    /// The first transaction failure, raised by the consume loop.
    failed: Mutex<Option<TxnError>>,
    /// Set (for good) with the first failure: the consume loop checks it
    /// per message without taking the lock.
    failing: AtomicBool,
}

impl Shared {
    /// Whether every output owed so far has been acknowledged.
    fn drained(&self) -> bool {
        self.tracker().in_flight() == 0 && self.untracked.load(Ordering::Acquire) <= 0
    }

    /// Block until [`Shared::drained`] or `deadline`.
    fn wait_drained(&self, deadline: Instant) -> bool {
        loop {
            if self.drained() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn fail(&self, e: TxnError) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if !self.failing.swap(true, Ordering::AcqRel) {
            *f = Some(e);
        }
    }

    /// The failure to raise, once (the service stops on it).
    fn take_failure(&self) -> Option<TxnError> {
        if !self.has_failed() {
            return None;
        }
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn has_failed(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    fn transaction_timeout(&self) -> Duration {
        self.txn
            .get()
            .and_then(Weak::upgrade)
            .map_or(Duration::from_secs(30), |t| t.timeout())
    }

    /// Commit the open transaction with the positions of every message read
    /// so far, if every output they owe is acknowledged; abort it otherwise
    /// (its outputs are discarded, and the next owner redoes them).
    fn commit_drained(
        &self,
        txn: &Transactions,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        if !self.drained() {
            return txn.abort(&format!(
                "outputs still in flight after {:?}",
                txn.timeout()
            ));
        }
        let positions = self.tracker().positions();
        if positions.is_empty() {
            return txn.commit(&self.topic, &[], None);
        }
        let Some(group) = group else {
            return txn.abort("the consumer has no group metadata");
        };
        txn.commit(&self.topic, &positions, Some(&group))
    }

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
        client::report_error(&self.shared.metrics, "consumer", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        client::report_log(&self.shared.metrics, level, fac, message);
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
        let committed = self.committed(consumer, tpl);
        if let Err(e) = &committed {
            shared
                .metrics
                .error("kafka", &format!("reading committed offsets: {e}"));
            if shared.delivery == Delivery::ExactlyOnce {
                // Reading from the start would publish everything again.
                shared.fail(TxnError::Fatal(format!(
                    "reading the committed offsets of an assignment: {e}"
                )));
                return;
            }
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

    /// The committed offsets of `tpl`. In exactly_once mode a pending
    /// transaction of a dead owner makes them unstable until the broker
    /// aborts it (`kafka.transaction_timeout`): wait for that, up to twice
    /// the timeout, rather than guess.
    fn committed(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Result<TopicPartitionList, KafkaError> {
        let shared = &self.shared;
        let deadline = Instant::now() + 2 * shared.transaction_timeout();
        loop {
            let result = consumer.committed_offsets(tpl.clone(), BROKER_CALL_TIMEOUT);
            let unstable = match &result {
                Ok(c) => c.elements().iter().any(|e| e.error().is_err()),
                Err(_) => true,
            };
            if !unstable || shared.delivery != Delivery::ExactlyOnce {
                return result;
            }
            if Instant::now() >= deadline {
                // A partition without a stable offset would be read from the
                // start: exactly_once must not guess.
                return result.and_then(|c| {
                    c.elements()
                        .iter()
                        .find_map(|e| e.error().err())
                        .map_or(Ok(c.clone()), Err)
                });
            }
            tracing::info!("committed offsets not stable yet (an open transaction); waiting");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let shared = &self.shared;
        match shared.delivery {
            Delivery::AtLeastOnce => match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => shared.metrics.error("commit", &e),
            },
            Delivery::ExactlyOnce => {
                // Commit what was read from these partitions while they are
                // still ours; the next owner starts right after it.
                let txn = shared.txn.get().and_then(Weak::upgrade);
                if let Some(txn) = txn.filter(|_| !shared.has_failed()) {
                    let committed = tokio::task::block_in_place(|| {
                        shared.wait_drained(Instant::now() + txn.timeout());
                        shared.commit_drained(&txn, consumer.group_metadata())
                    });
                    if let Err(e) = committed {
                        shared.fail(e);
                    }
                }
            }
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
        delivery: cfg.delivery,
        untracked: AtomicI64::new(0),
        txn: OnceLock::new(),
        failed: Mutex::new(None),
        failing: AtomicBool::new(false),
    });
    let exactly_once = cfg.delivery == Delivery::ExactlyOnce;
    let mut c = client::client_config(cfg)?;
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", (!exactly_once).to_string())
        .set(
            "isolation.level",
            if exactly_once {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
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

    /// Hand the transactions to the revocation callback (exactly_once).
    pub fn set_transactions(&self, txn: &Arc<Transactions>) {
        let _ = self.shared.txn.set(Arc::downgrade(txn));
    }

    fn store(&self, partition: i32, offset: i64) {
        if self.shared.delivery == Delivery::ExactlyOnce {
            return; // offsets go in the transaction
        }
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
    fn retry_undelivered(&self) -> bool {
        if self.shared.delivery == Delivery::ExactlyOnce {
            // librdkafka fails the open transaction with the message: stop
            // now rather than when the commit times out.
            self.shared.fail(TxnError::Aborted(
                "an output could not be delivered within the transaction".into(),
            ));
            return false;
        }
        true
    }

    fn ack(&self, token: Token) {
        if token.untracked() {
            self.shared.untracked.fetch_sub(1, Ordering::AcqRel);
            return;
        }
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

/// Timers and delivery of the consume loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The transactions (exactly_once delivery), else `None`.
    pub transactions: Option<Arc<Transactions>>,
    /// How often a transaction is committed.
    pub commit_interval: Duration,
    /// The window stage's idle flush and stale timers.
    pub timers: IdleTimers,
}

/// How often the idle timers are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Consume until `shutdown` is cancelled. Returning drops the job senders,
/// which lets the inference threads drain and stop. An error is a failed
/// exactly-once transaction: the service must stop, and its restart
/// rebuilds state from the committed offsets.
pub async fn run(
    consumer: Arc<IngestConsumer>,
    store: Arc<OffsetStore>,
    mut planner: Planner,
    outputs: Outputs,
    shutdown: CancellationToken,
    metrics: Metrics,
    settings: LoopSettings,
) -> Result<(), IngestError> {
    let shared = store.shared.clone();
    let mut backoff = Duration::from_millis(100);
    let mut commit_tick = tokio::time::interval(settings.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweeping = settings.timers != IdleTimers::default();
    let txn = settings.transactions.clone();
    loop {
        if let Some(e) = shared.take_failure() {
            return Err(e.into());
        }
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = consumer.recv() => msg,
            _ = commit_tick.tick(), if txn.is_some() => {
                if let Some(txn) = &txn {
                    commit_now(&consumer, &shared, txn).await?;
                }
                continue;
            }
            _ = sweep_tick.tick(), if sweeping => {
                let (jobs, stale) = planner.sweep(chrono::Utc::now().timestamp_millis(), settings.timers);
                let owed = jobs.iter().filter(|j| j.publishes()).count() + stale.len();
                shared.untracked.fetch_add(owed as i64, Ordering::AcqRel);
                for event in stale {
                    if outputs.publish.send(Outgoing::Stale(event)).await.is_err() {
                        return Ok(());
                    }
                }
                for job in jobs {
                    let shard = shard_of(&job.series, outputs.jobs.len());
                    if outputs.jobs[shard].send_async(job).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(m) => {
                backoff = Duration::from_millis(100);
                m
            }
            Err(e) => {
                // Broker unreachable and similar: librdkafka reconnects at
                // its own pace and the context has reported it; others: back off.
                if !client::report_consumer_error(&metrics, &e) {
                    continue;
                }
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
                    return Ok(());
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
                return Ok(());
            }
        }
        for job in plan.jobs {
            let shard = shard_of(&job.series, outputs.jobs.len());
            if outputs.jobs[shard].send_async(job).await.is_err() {
                return Ok(());
            }
        }
    }
    tracing::info!("ingest stopped consuming");
    match shared.take_failure() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Exactly-once commit from the consume loop: stop reading, wait for every
/// output owed to be acknowledged, commit the positions in the transaction.
async fn commit_now(
    consumer: &IngestConsumer,
    shared: &Shared,
    txn: &Transactions,
) -> Result<(), IngestError> {
    let deadline = Instant::now() + txn.timeout();
    while !shared.drained() && Instant::now() < deadline {
        if let Some(e) = shared.take_failure() {
            return Err(e.into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(e) = shared.take_failure() {
        return Err(e.into());
    }
    let group = consumer.group_metadata();
    tokio::task::block_in_place(|| shared.commit_drained(txn, group))?;
    Ok(())
}

/// The final commit of a shutdown, after the pipeline has drained: stored
/// offsets (at_least_once), or the open transaction (exactly_once; aborted
/// instead when outputs are still in flight, a drain cut short by the
/// grace period).
pub fn finish(
    consumer: &IngestConsumer,
    store: &OffsetStore,
    transactions: Option<&Transactions>,
    metrics: &Metrics,
) -> Result<(), TxnError> {
    match transactions {
        None => {
            commit(consumer, metrics);
            Ok(())
        }
        Some(txn) => {
            let shared = &store.shared;
            if let Some(e) = shared.take_failure() {
                return Err(e);
            }
            shared.commit_drained(txn, consumer.group_metadata())
        }
    }
}

/// Commit the stored offsets now (shutdown).
pub fn commit(consumer: &IngestConsumer, metrics: &Metrics) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => metrics.error("commit", &e),
    }
}
