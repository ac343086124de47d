//! The consume loop: read the input topic, plan each message (decode and
//! window), hand jobs to the inference threads and dead letters to the
//! publisher, fire the idle timers, and, in exactly_once mode, commit each
//! transaction at a clean cut.
//!
//! Its share of a rebalance runs between messages
//! ([`Shared::rebalance_in_loop`]): the series of revoked partitions are
//! dropped with their timers, and the timer marks a partition committed are
//! restored once its rebuild has reached the committed offset.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::kafka::{IngestConsumer, IngestError, OffsetStore, Shared};
use super::offsets::Token;
use super::stage::{shard_of, MessageMeta, Planner};
use super::transaction::{Transactions, TxnError};
use crate::flow::{Job, Outgoing};
use crate::metrics::Metrics;
use crate::window::IdleTimers;

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

/// A rebuild that gets no message for this long has read all there was
/// before its committed offset (the offsets just before it were transaction
/// markers, or compacted away).
const REPLAY_IDLE: Duration = Duration::from_secs(3);

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
                let mut rebuilt = shared.rebalance_in_loop(&mut planner, None);
                rebuilt.extend(finish_rebuilds(&consumer, &shared, &mut planner));
                if !send_jobs(&outputs, rebuilt).await {
                    return Ok(());
                }
                if !shared.rebalance_settled() {
                    continue; // revoked, not yet assigned: series may have moved
                }
                // The series of partitions still rebuilding wait.
                let hold = shared.rebuilding();
                let (jobs, stale) = planner.sweep_except(chrono::Utc::now().timestamp_millis(), settings.timers, &hold);
                shared.update_marks(&mut planner);
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
                if !super::client::report_consumer_error(&metrics, &e) {
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
        // Revocations first: a revoked partition's series go before any
        // message of a new assignment is placed.
        let dropped = shared.rebalance_in_loop(&mut planner, None);
        if !send_jobs(&outputs, dropped).await {
            return Ok(());
        }
        let Some(generation) = shared.tracker().generation(partition) else {
            continue; // not (or no longer) ours
        };
        let until = shared.replay_until_of(partition);
        let replay = until.is_some_and(|until| offset < until);
        if !replay {
            // The rebuild is done: the timers that had fired before it are
            // restored before a new point lands.
            shared.set_rebuilt(partition);
            let restored = shared.rebalance_in_loop(&mut planner, Some(partition));
            if !send_jobs(&outputs, restored).await {
                return Ok(());
            }
        }
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
            shared.replay_seen(partition);
            // Output for this message was published before the assignment:
            // rebuild windows, forecasts and calibration, publish nothing.
            let jobs = planner.replay(payload, meta, chrono::Utc::now().timestamp_millis());
            if let Some(t) = started {
                metrics.busy("ingest", 16.0 * t.elapsed().as_secs_f64());
            }
            metrics.replayed.inc();
            if !send_jobs(&outputs, jobs).await {
                return Ok(());
            }
            if until.is_some_and(|u| offset + 1 >= u) {
                // The last message before the committed offset: restore the
                // timers that had fired.
                shared.set_rebuilt(partition);
                let restored = shared.rebalance_in_loop(&mut planner, Some(partition));
                if !send_jobs(&outputs, restored).await {
                    return Ok(());
                }
            }
            shared.update_marks(&mut planner);
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
        shared.update_marks(&mut planner);
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
        if !send_jobs(&outputs, plan.jobs).await {
            return Ok(());
        }
    }
    tracing::info!("ingest stopped consuming");
    match shared.take_failure() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Finish the rebuilds that reached their committed offset without a last
/// message to show it (the offset before it was a transaction marker, or
/// compacted away, and the partition is silent): the consumer's position
/// says so. Returns the rebuild jobs of the marks restored.
fn finish_rebuilds(consumer: &IngestConsumer, shared: &Shared, planner: &mut Planner) -> Vec<Job> {
    let rebuilding = shared.rebuilding();
    if rebuilding.is_empty() {
        return Vec::new();
    }
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for elem in positions.elements() {
        let partition = elem.partition();
        if !rebuilding.contains(&partition) {
            continue;
        }
        let at = match elem.offset() {
            Offset::Offset(at) => Some(at),
            _ => None,
        };
        let reached = shared
            .replay_until_of(partition)
            .is_none_or(|u| at.is_some_and(|at| at >= u));
        if reached || shared.replay_idle(partition, REPLAY_IDLE) {
            shared.set_rebuilt(partition);
            jobs.extend(shared.rebalance_in_loop(planner, Some(partition)));
        }
    }
    jobs
}

/// Send jobs to their inference threads; false once those have stopped.
async fn send_jobs(outputs: &Outputs, jobs: Vec<Job>) -> bool {
    for job in jobs {
        let shard = shard_of(&job.series, outputs.jobs.len());
        if outputs.jobs[shard].send_async(job).await.is_err() {
            return false;
        }
    }
    true
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
