//! Publish stage: encoding (see [`encode`]) and the Kafka producer task.
//!
//! The producer task takes encoded messages from a bounded channel and keeps
//! at most `max_in_flight` of them awaiting broker acknowledgement. Each
//! acknowledgement is reported to an [`Acknowledge`] (the ingest stage's
//! offset store), which is what lets input offsets move forward. A message
//! whose delivery fails is retried with backoff, never dropped: dropping it
//! would either lose the output or stall its input offset for good.
//!
//! The task ends when its input channel is closed and every in-flight
//! message has been acknowledged, which is how shutdown flushes output.

pub mod encode;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;

use crate::ingest::offsets::Token;
use crate::metrics::Metrics;
use encode::{Dest, OutMessage};

/// Receives the acknowledgement of each delivered output.
pub trait Acknowledge: Send + Sync {
    /// One output of the input message `token` was acknowledged.
    fn ack(&self, token: Token);
}

/// Topics and limits of the producer task.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// Output topic.
    pub output_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Most messages awaiting acknowledgement.
    pub max_in_flight: usize,
}

const RETRY_BACKOFF_START: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Run the producer task until `rx` is closed and everything is delivered.
pub async fn run(
    producer: FutureProducer,
    mut rx: mpsc::Receiver<OutMessage>,
    settings: PublishSettings,
    acker: Arc<dyn Acknowledge>,
    metrics: Metrics,
) {
    let output: Arc<str> = settings.output_topic.as_str().into();
    let dlq: Arc<str> = settings.dead_letter_topic.as_str().into();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            Some((msg, attempt, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let (msg, attempt, result): (OutMessage, u32, Result<(), KafkaError>) = (msg, attempt, result);
                match result {
                    Ok(()) => delivered(&msg, &output, acker.as_ref(), &metrics),
                    Err(e) => {
                        metrics.error("delivery", &e);
                        let backoff = RETRY_BACKOFF_START
                            .saturating_mul(1u32 << attempt.min(16))
                            .min(RETRY_BACKOFF_MAX);
                        in_flight.push(deliver(producer.clone(), topic_of(&msg, &output, &dlq), msg, attempt + 1, Some(backoff)));
                    }
                }
            }
            next = rx.recv(), if open && in_flight.len() < settings.max_in_flight => match next {
                Some(msg) => in_flight.push(deliver(producer.clone(), topic_of(&msg, &output, &dlq), msg, 0, None)),
                None => open = false,
            },
        }
    }
}

fn topic_of(msg: &OutMessage, output: &Arc<str>, dlq: &Arc<str>) -> Arc<str> {
    match msg.dest {
        Dest::Output => output.clone(),
        Dest::DeadLetter => dlq.clone(),
    }
}

fn delivered(msg: &OutMessage, output: &str, acker: &dyn Acknowledge, metrics: &Metrics) {
    if msg.dest == Dest::Output {
        metrics.records_published.inc();
        if let Some(src) = msg.source_ts_ms {
            let now = chrono::Utc::now().timestamp_millis();
            let secs = (now - src).max(0) as f64 / 1000.0;
            metrics
                .end_to_end
                .with_label_values(&[output])
                .observe(secs);
        }
    }
    if let Some(token) = msg.token {
        acker.ack(token);
    }
}

async fn deliver(
    producer: FutureProducer,
    topic: Arc<str>,
    msg: OutMessage,
    attempt: u32,
    delay: Option<Duration>,
) -> (OutMessage, u32, Result<(), KafkaError>) {
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
    for (key, value) in &msg.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
        .payload(msg.payload.as_slice())
        .headers(headers);
    if let Some(key) = msg.key.as_deref() {
        record = record.key(key);
    }
    let result = producer
        .send(record, Timeout::Never)
        .await
        .map(|_| ())
        .map_err(|(e, _)| e);
    (msg, attempt, result)
}
