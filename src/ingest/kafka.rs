//! The Kafka side of ingest: the consumer, its rebalance handling and
//! offset storing (the consume loop itself is [`super::consume`]).
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
//! transaction still waits for them. Since no offset records that they
//! fired, each transaction also commits, in the offsets' metadata, the
//! marks of the series whose timers had fired ([`super::marks`]); a new
//! owner restores them after its rebuild, so that a restart or rebalance
//! fires nothing twice. A revoked partition's series are dropped from the
//! window stage with their timers, so the old owner fires nothing for
//! series another instance now owns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use super::client::{self, ClientError};
use super::offsets::{OffsetTracker, Token};
use super::stage::Planner;
use super::transaction::{Transactions, TxnError};
use crate::config::{Delivery, KafkaConfig};
use crate::flow::{Acknowledge, Job};
use crate::metrics::Metrics;

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

/// A partition revoked from this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revoked {
    partition: i32,
    /// Its state was whole (rebuilt, nothing in flight) when revoked: if the
    /// same rebalance assigns it back, it resumes at its committed offset
    /// with that state.
    keepable: bool,
    /// The revocation it came from.
    rebalance: u64,
}

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
    pub(super) untracked: AtomicI64,
    /// The transactions (exactly_once), for the revocation callback.
    txn: OnceLock<Weak<Transactions>>,
    /// The first transaction failure, raised by the consume loop.
    failed: Mutex<Option<TxnError>>,
    /// Set (for good) with the first failure: the consume loop checks it
    /// per message without taking the lock.
    failing: AtomicBool,
    /// The timer marks each assigned partition commits with its offset
    /// (exactly_once; [`super::marks`]): kept up to date by the consume
    /// loop, carried over from the committed metadata on assignment.
    marks: Mutex<HashMap<i32, String>>,
    /// Committed marks read on assignment, for the consume loop to restore
    /// once the partition's rebuild is done.
    restore: Mutex<HashMap<i32, HashMap<u64, u8>>>,
    /// Partitions revoked since the consume loop last looked: it drops
    /// their series' state (and timers), unless the rebalance that revoked
    /// one assigns it back (see [`Revoked`]).
    revoked: Mutex<Vec<Revoked>>,
    /// Revocations so far (each tags its [`Revoked`] entries).
    rebalances: AtomicU64,
    /// The committed offset of each assigned partition at its assignment:
    /// a partition not read since still commits its marks at it.
    assigned_at: Mutex<HashMap<i32, i64>>,
    /// When each rebuilding partition last had a message replayed (or was
    /// assigned).
    replay_seen: Mutex<HashMap<i32, Instant>>,
    /// Whether `restore` or `revoked` holds anything (checked per message
    /// without a lock).
    pending: AtomicBool,
    /// Whether an assignment followed the last revocation.
    settled: AtomicBool,
}

impl Shared {
    /// Whether every output owed so far has been acknowledged.
    pub(super) fn drained(&self) -> bool {
        self.tracker().in_flight() == 0 && self.untracked.load(Ordering::Acquire) <= 0
    }

    /// Block until [`Shared::drained`] or `deadline`.
    pub(super) fn wait_drained(&self, deadline: Instant) -> bool {
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

    pub(super) fn fail(&self, e: TxnError) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if !self.failing.swap(true, Ordering::AcqRel) {
            *f = Some(e);
        }
    }

    /// The failure to raise, once (the service stops on it).
    pub(super) fn take_failure(&self) -> Option<TxnError> {
        if !self.has_failed() {
            return None;
        }
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) fn has_failed(&self) -> bool {
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
    pub(super) fn commit_drained(
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
        let mut positions: Vec<(i32, i64, Option<String>)> = self
            .tracker()
            .positions()
            .into_iter()
            .map(|(p, o)| (p, o, None))
            .collect();
        {
            // Every assigned partition commits its marks with its position;
            // one not read since its assignment commits its committed offset
            // again, so that its marks still travel.
            let marks = self.marks();
            let assigned_at = self.assigned_at();
            for (p, _, m) in &mut positions {
                *m = marks.get(p).cloned();
            }
            for (p, text) in marks.iter() {
                if positions.iter().all(|x| x.0 != *p) {
                    if let Some(&c) = assigned_at.get(p) {
                        positions.push((*p, c, Some(text.clone())));
                    }
                }
            }
        }
        if positions.is_empty() {
            return txn.commit(&self.topic, &[], None);
        }
        let Some(group) = group else {
            return txn.abort("the consumer has no group metadata");
        };
        txn.commit(&self.topic, &positions, Some(&group))
    }

    pub(super) fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replay_until(&self) -> MutexGuard<'_, HashMap<i32, i64>> {
        self.replay_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The offset below which `partition`'s messages are replayed (its
    /// committed offset at assignment), if any.
    pub fn replay_until_of(&self, partition: i32) -> Option<i64> {
        self.replay_until().get(&partition).copied()
    }

    fn marks(&self) -> MutexGuard<'_, HashMap<i32, String>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn restore(&self) -> MutexGuard<'_, HashMap<i32, HashMap<u64, u8>>> {
        self.restore.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn revoked(&self) -> MutexGuard<'_, Vec<Revoked>> {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assigned_at(&self) -> MutexGuard<'_, HashMap<i32, i64>> {
        self.assigned_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no rebalance is half-way (revoked, not yet assigned): a
    /// sweep meanwhile would fire timers on series this instance may no
    /// longer own.
    pub fn rebalance_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// A message of `partition` was replayed now.
    pub fn replay_seen(&self, partition: i32) {
        self.replay_seen_at().insert(partition, Instant::now());
    }

    /// Whether `partition`'s rebuild has had no message for `idle`.
    pub fn replay_idle(&self, partition: i32, idle: Duration) -> bool {
        self.replay_seen_at()
            .get(&partition)
            .is_none_or(|t| t.elapsed() >= idle)
    }

    fn replay_seen_at(&self) -> MutexGuard<'_, HashMap<i32, Instant>> {
        self.replay_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Partitions whose rebuild is not done yet.
    pub fn rebuilding(&self) -> Vec<i32> {
        self.tracker().rebuilding()
    }

    /// Record that `partition`'s rebuild is done.
    pub fn set_rebuilt(&self, partition: i32) {
        self.tracker().set_rebuilt(partition);
    }

    /// The consume loop's share of a rebalance, done between messages
    /// (the callbacks cannot reach its window stage): drop the series of
    /// revoked partitions with their timers, and restore the committed
    /// timer marks of `rebuilt`, a partition whose rebuild has reached its
    /// committed offset. Returns the rebuild jobs of the buckets the
    /// restored marks close again.
    pub fn rebalance_in_loop(&self, planner: &mut Planner, rebuilt: Option<i32>) -> Vec<Job> {
        if !self.pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut jobs = Vec::new();
        // Until the assignment that follows a revocation, a partition it
        // revoked may come back to this instance with its state; an entry
        // of an earlier, settled rebalance can go.
        let settled = self.settled.load(Ordering::Acquire);
        let current = self.rebalances.load(Ordering::Acquire);
        let revoked: Vec<i32> = {
            let mut all = self.revoked();
            let (gone, wait): (Vec<Revoked>, Vec<Revoked>) = all
                .drain(..)
                .partition(|r| settled || r.rebalance < current);
            *all = wait;
            gone.into_iter().map(|r| r.partition).collect()
        };
        for p in revoked {
            let forget = planner.drop_partition(p);
            tracing::info!(
                partition = p,
                series = forget.len(),
                "dropped the state of a revoked partition's series"
            );
            jobs.extend(forget);
        }
        if let Some(partition) = rebuilt {
            self.set_rebuilt(partition);
            let marks = self.restore().remove(&partition);
            if let Some(marks) = marks {
                let restored = planner.restore_marks(partition, &marks);
                let closed = restored.len();
                jobs.extend(restored);
                tracing::info!(
                    partition,
                    marks = marks.len(),
                    closed,
                    "restored the idle timers' marks after the rebuild"
                );
            }
        }
        let idle = self.restore().is_empty() && self.revoked().is_empty();
        if idle {
            self.pending.store(false, Ordering::Release);
        }
        jobs
    }

    /// Keep the marks to commit up to date with the window stage (after
    /// each message or sweep that changed them).
    pub fn update_marks(&self, planner: &mut Planner) {
        if self.delivery != Delivery::ExactlyOnce {
            return;
        }
        for (partition, marks) in planner.take_changed_marks() {
            if self.tracker().generation(partition).is_none() {
                continue; // no longer ours
            }
            if self.restore().contains_key(&partition) {
                continue; // the committed marks stand until they are restored
            }
            let (text, dropped) = super::marks::encode(&marks);
            if dropped > 0 {
                self.metrics.timer_marks_dropped.inc_by(dropped as u64);
            }
            self.marks().insert(partition, text);
        }
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
            // A partition revoked from this instance and assigned back to it
            // in the same rebalance keeps its state: it resumes at its
            // committed offset, with nothing to rebuild.
            let current = shared.rebalances.load(Ordering::Acquire);
            let kept = committed_offset.is_some() && {
                let mut revoked = shared.revoked();
                let at = revoked
                    .iter()
                    .position(|r| r.partition == partition && r.keepable && r.rebalance == current);
                at.map(|i| revoked.remove(i)).is_some()
            };
            if let Some(c) = committed_offset {
                shared.assigned_at().insert(partition, c);
            }
            if shared.delivery == Delivery::ExactlyOnce {
                let metadata = committed
                    .as_ref()
                    .ok()
                    .and_then(|c| c.find_partition(topic, partition))
                    .map(|e| e.metadata().to_string())
                    .unwrap_or_default();
                let marks = super::marks::decode(&metadata);
                if committed_offset.is_some() && !marks.is_empty() {
                    // Carried over until the rebuild restores them (a kept
                    // partition's state still has them).
                    shared.marks().insert(partition, metadata);
                    if !kept {
                        shared.restore().insert(partition, marks);
                        shared.pending.store(true, Ordering::Release);
                    }
                }
            }
            shared.replay_seen(partition);
            let mut nothing_to_rebuild = kept;
            let start = match committed_offset {
                Some(c) if kept => {
                    shared.replay_until().remove(&partition);
                    Offset::Offset(c)
                }
                Some(c) => {
                    let low = consumer
                        .fetch_watermarks(topic, partition, BROKER_CALL_TIMEOUT)
                        .map(|(low, _)| low)
                        .unwrap_or(c);
                    let from = (c - shared.rebuild_messages).max(low);
                    if from >= c {
                        // No message to rebuild from: no series has state here,
                        // so no mark can be restored or carried.
                        nothing_to_rebuild = true;
                        shared.restore().remove(&partition);
                        shared.marks().remove(&partition);
                    }
                    shared.replay_until().insert(partition, c);
                    Offset::Offset(from)
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
            if nothing_to_rebuild || committed_offset.is_none() {
                // Nothing to rebuild: the state is whole (kept), or the
                // partition is read from its start.
                shared.set_rebuilt(partition);
            }
            tracing::info!(topic, partition, ?start, committed = ?committed_offset, generation, kept, "partition assigned");
        }
        // The rebalance is settled: the loop may drop what stays revoked.
        shared.settled.store(true, Ordering::Release);
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
        let rebalance = shared.rebalances.fetch_add(1, Ordering::AcqRel) + 1;
        for elem in tpl.elements() {
            let partition = elem.partition();
            let keepable = {
                let tracker = shared.tracker();
                tracker.is_rebuilt(partition) && tracker.pending_for(partition) == 0
            };
            {
                let mut revoked = shared.revoked();
                revoked.retain(|r| r.partition != partition);
                revoked.push(Revoked {
                    partition,
                    keepable,
                    rebalance,
                });
            }
            shared.assigned_at().remove(&partition);
            shared.tracker().revoke(elem.partition());
            shared.replay_until().remove(&elem.partition());
            shared.marks().remove(&elem.partition());
            shared.restore().remove(&elem.partition());
            shared.settled.store(false, Ordering::Release);
            shared.pending.store(true, Ordering::Release);
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
        marks: Mutex::new(HashMap::new()),
        restore: Mutex::new(HashMap::new()),
        revoked: Mutex::new(Vec::new()),
        rebalances: AtomicU64::new(0),
        assigned_at: Mutex::new(HashMap::new()),
        replay_seen: Mutex::new(HashMap::new()),
        pending: AtomicBool::new(false),
        settled: AtomicBool::new(true),
    });
    let c = consumer_config(cfg)?;
    let consumer: IngestConsumer = c.create_with_context(IngestContext {
        shared: shared.clone(),
    })?;
    consumer.subscribe(&[&cfg.input_topic])?;
    Ok((Arc::new(consumer), shared))
}

/// librdkafka settings of the input consumer: offsets stored only once
/// every output of a message is acknowledged (`enable.auto.offset.store`
/// off), auto-committed every `commit_interval` (at_least_once) or
/// committed in the producer's transaction (exactly_once, which also reads
/// committed data only), range assignment. `attnwatch floor` uses the same.
pub fn consumer_config(cfg: &KafkaConfig) -> Result<rdkafka::ClientConfig, ClientError> {
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
    Ok(c)
}

/// Stores offsets as outputs are acknowledged.
pub struct OffsetStore {
    consumer: Arc<IngestConsumer>,
    pub(super) shared: Arc<Shared>,
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

    pub(super) fn register(&self, token: Token, outputs: u32) {
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
