//! Exactly-once delivery: one Kafka transaction per commit interval holds
//! the outputs (scored points, dead letters, stale events) and the input
//! offsets they came from.
//!
//! The consume loop commits only at a clean cut: it stops reading, waits
//! until every output owed for the messages it has read is acknowledged
//! (written to the transaction), then sends the input positions to the
//! transaction with the consumer's group metadata and commits. A message's
//! outputs are therefore never split between two transactions, and a
//! restart resumes exactly after the last committed message.
//!
//! Failures:
//! - a retriable error (a broker restarting, a timeout) is retried until
//!   `kafka.transaction_timeout`;
//! - an abortable error aborts the transaction: its outputs are discarded
//!   and its offsets not committed. The windows and calibration have moved
//!   past them, so the service then stops with an error and its restart
//!   rebuilds state from the committed offsets (no loss, no duplicate);
//! - a fatal error (this instance fenced by a newer one with the same
//!   transactional id, a zombie) stops the service the same way.
//!
//! Each outcome is counted in `attnwatch_transactions_total{result}`.

use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::publish::OutputProducer;
use std::sync::Arc;

/// Why a transaction did not commit (the service stops on any of them).
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Aborted: its outputs were discarded and its offsets not committed.
    #[error("transaction aborted (outputs discarded, offsets not committed): {0}")]
    Aborted(String),
    /// The producer can no longer be used (fenced by a newer instance with
    /// the same transactional id, or another fatal error).
    #[error("transactional producer failed: {0}")]
    Fatal(String),
    /// The service was asked to stop before transactions could start (the
    /// broker was unreachable or refused the client until then).
    #[error("stopped before transactions were initialised")]
    Stopped,
}

/// The transactional side of the output producer.
pub struct Transactions {
    producer: Arc<OutputProducer>,
    timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("timeout", &self.timeout)
            .finish()
    }
}

enum Kind {
    Retry,
    Abort,
    Fatal,
}

fn kind(e: &KafkaError) -> Kind {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Kind::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Kind::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => Kind::Retry,
        _ => Kind::Abort,
    }
}

fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    )
}

impl Transactions {
    /// Initialise transactions on `producer` (fencing and aborting the open
    /// transaction of an earlier instance with the same transactional id),
    /// and begin the first one. While the broker cannot be reached, or
    /// refuses the client (a wrong password, an untrusted certificate), the
    /// attempt times out and is retried until `stop` is cancelled: the
    /// service stays up and not ready, counting each failure and logging at
    /// most one line per 10 s. A fatal error stops it.
    pub fn start(
        producer: Arc<OutputProducer>,
        timeout: Duration,
        metrics: Metrics,
        stop: &CancellationToken,
    ) -> Result<Self, TxnError> {
        // Short attempts, so that a shutdown is noticed within seconds.
        let attempt = timeout.min(Duration::from_secs(10));
        loop {
            match producer.init_transactions(attempt) {
                Ok(()) => break,
                // librdkafka marks a timed-out attempt retriable only at
                // first; anything not fatal is retried here.
                Err(e) if !matches!(kind(&e), Kind::Fatal) && !stop.is_cancelled() => {
                    metrics.error_limited(
                        "transaction",
                        "init_transactions",
                        &format!("initialising transactions: {e}; retrying (check the brokers, and the Kafka credentials and certificates)"),
                    );
                }
                Err(_) if stop.is_cancelled() => return Err(TxnError::Stopped),
                Err(e) => return Err(TxnError::Fatal(format!("init_transactions: {e}"))),
            }
        }
        producer
            .begin_transaction()
            .map_err(|e| TxnError::Fatal(format!("begin_transaction: {e}")))?;
        Ok(Transactions {
            producer,
            timeout,
            metrics,
        })
    }

    /// How long a commit may wait, for outputs in flight and for the broker.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Commit the open transaction with the input `positions` (partition,
    /// next offset to read) of `topic` and the consumer's `group` metadata
    /// (needed when there are positions), then begin the next one. Every
    /// output owed for the messages before those positions must already be
    /// acknowledged. Blocks up to the transaction timeout.
    pub fn commit(
        &self,
        topic: &str,
        positions: &[(i32, i64, Option<String>)],
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut tpl = TopicPartitionList::new();
        for (partition, offset, metadata) in positions {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                return self.abort(&format!("offsets: {e}"));
            }
            if let (Some(m), Some(mut elem)) = (metadata, tpl.find_partition(topic, *partition)) {
                elem.set_metadata(m.as_str());
            }
        }
        if tpl.count() > 0 {
            let Some(group) = group else {
                return self.abort("input positions without the consumer's group metadata");
            };
            loop {
                match self.producer.send_offsets_to_transaction(
                    &tpl,
                    group,
                    self.remaining(deadline),
                ) {
                    Ok(()) => break,
                    Err(e) => match kind(&e) {
                        Kind::Retry if Instant::now() < deadline => self.retried(&e),
                        Kind::Fatal => return self.fatal(&e),
                        _ => return self.abort(&format!("send_offsets_to_transaction: {e}")),
                    },
                }
            }
        }
        loop {
            match self.producer.commit_transaction(self.remaining(deadline)) {
                Ok(()) => break,
                Err(e) => match kind(&e) {
                    Kind::Retry if Instant::now() < deadline => self.retried(&e),
                    Kind::Fatal => return self.fatal(&e),
                    _ => return self.abort(&format!("commit_transaction: {e}")),
                },
            }
        }
        self.metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        self.metrics
            .transaction_seconds
            .observe(started.elapsed().as_secs_f64());
        self.producer
            .begin_transaction()
            .map_err(|e| TxnError::Fatal(format!("begin_transaction: {e}")))
    }

    /// Abort the open transaction: its outputs are discarded.
    pub fn abort(&self, why: &str) -> Result<(), TxnError> {
        tracing::error!(reason = why, "aborting the transaction");
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        if let Err(e) = self.producer.abort_transaction(self.timeout) {
            self.metrics.error("transaction", &e);
            return Err(TxnError::Fatal(format!(
                "abort after \"{why}\" failed: {e}"
            )));
        }
        Err(TxnError::Aborted(why.to_string()))
    }

    /// Abort the open transaction if there is one, without waiting long:
    /// the service is stopping after a failure.
    pub fn abort_quietly(&self) {
        match self.producer.abort_transaction(Duration::from_secs(5)) {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!("open transaction aborted on the way out");
            }
            Err(e) => tracing::debug!(error = %e, "no transaction to abort on the way out"),
        }
    }

    fn fatal(&self, e: &KafkaError) -> Result<(), TxnError> {
        let result = if fenced(e) { "fenced" } else { "fatal" };
        self.metrics.transactions.with_label_values(&[result]).inc();
        tracing::error!(error = %e, result, "transactional producer unusable");
        Err(TxnError::Fatal(e.to_string()))
    }

    fn retried(&self, e: &KafkaError) {
        self.metrics
            .transactions
            .with_label_values(&["retried"])
            .inc();
        self.metrics.error("transaction", e);
        std::thread::sleep(Duration::from_millis(100));
    }

    fn remaining(&self, deadline: Instant) -> Duration {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100))
    }
}
