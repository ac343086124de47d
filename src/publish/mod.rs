//! Publish stage: encoding (see [`encode`]) and the Kafka producer task.
//!
//! The producer task takes [`Outgoing`] items (scored points, dead letters,
//! acknowledgements owed without a message) from a bounded channel, in
//! batches, encodes them into one reused buffer (off the inference
//! threads), and hands them to librdkafka, which copies the bytes. At most
//! `max_in_flight` messages await broker acknowledgement at once.
//!
//! Acknowledgements arrive on librdkafka's polling thread through the
//! producer context's delivery callback ([`DeliveryContext`]): each one is
//! counted and reported to an [`Acknowledge`] (the ingest stage's offset
//! store), which is what lets input offsets move forward. A message whose
//! delivery fails is retried with backoff, never dropped: dropping it would
//! either lose the output or stall its input offset for good.
//!
//! The task ends when its input channel is closed and every in-flight
//! message has been acknowledged, which is how shutdown flushes output.

pub mod encode;
pub mod json;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::alerting::Alerting;
use crate::config::PublishConfig;
use crate::flow::{Acknowledge, Outgoing, Token};
use crate::ingest::client;
use crate::metrics::Metrics;
use crate::recent::SharedRecent;
use encode::Dest;

/// Topics and limits of the producer task.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// Output topic.
    pub output_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Most messages awaiting acknowledgement.
    pub max_in_flight: usize,
    /// Output detail.
    pub publish: PublishConfig,
    /// The web page's store, fed with every scored point (None: no page).
    pub recent: Option<SharedRecent>,
    /// Incidents across series and Alertmanager (None: off), fed with
    /// every scored point after the page.
    pub alerting: Option<Alerting>,
}

const RETRY_BACKOFF_START: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Items taken from the channel per wake-up.
const BATCH: usize = 512;

/// What the delivery callback needs to know about one message.
#[derive(Debug)]
pub struct Pending {
    dest: Dest,
    token: Option<Token>,
    source_ts_ms: Option<i64>,
    attempt: u32,
}

/// A failed delivery, to be sent again after a backoff.
#[derive(Debug)]
struct Retry {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    pending: Box<Pending>,
}

/// The producer's context: delivery reports, on librdkafka's thread.
pub struct DeliveryContext {
    acker: Arc<dyn Acknowledge>,
    metrics: Metrics,
    /// `attnwatch_end_to_end_latency_seconds{topic=<output>}`, resolved
    /// once (not per delivered record).
    end_to_end: prometheus::Histogram,
    in_flight: Arc<AtomicUsize>,
    retry: flume::Sender<Retry>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        client::report_error(&self.metrics, "producer", &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        client::report_log(&self.metrics, level, fac, message);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        match result {
            Ok(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                if pending.dest == Dest::Output {
                    self.metrics.records_published.inc();
                    if let Some(src) = pending.source_ts_ms {
                        let now = chrono::Utc::now().timestamp_millis();
                        self.end_to_end.observe((now - src).max(0) as f64 / 1000.0);
                    }
                }
                if let Some(token) = pending.token {
                    self.acker.ack(token);
                }
            }
            Err((e, msg)) => {
                self.metrics.error("delivery", e);
                if !self.acker.retry_undelivered() {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                // Still in flight: it goes out again after a backoff.
                let headers = owned_headers(msg.headers());
                let retry = Retry {
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    headers,
                    pending,
                };
                if self.retry.send(retry).is_err() {
                    // The publisher is gone (a shutdown past its grace):
                    // the input offset is not stored, so it is re-read.
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}

/// A message's headers as owned pairs (to send it again).
fn owned_headers<H: Headers>(headers: Option<&H>) -> Vec<(String, Vec<u8>)> {
    headers
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// The output producer.
pub type OutputProducer = ThreadedProducer<DeliveryContext>;

/// The producer with its delivery context, and the task's end of the retry
/// queue and in-flight count.
pub struct Publisher {
    /// The producer (flushed by the shutdown sequence).
    pub producer: Arc<OutputProducer>,
    retry: flume::Receiver<Retry>,
    in_flight: Arc<AtomicUsize>,
}

impl Publisher {
    /// Create the producer from `config` (librdkafka settings) with a
    /// delivery context that reports to `acker` and `metrics`.
    pub fn new(
        config: &rdkafka::ClientConfig,
        output_topic: &str,
        acker: Arc<dyn Acknowledge>,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let (tx, rx) = flume::unbounded();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let end_to_end = metrics.end_to_end.with_label_values(&[output_topic]);
        let producer: OutputProducer = config.create_with_context(DeliveryContext {
            acker,
            metrics,
            end_to_end,
            in_flight: in_flight.clone(),
            retry: tx,
        })?;
        Ok(Publisher {
            producer: Arc::new(producer),
            retry: rx,
            in_flight,
        })
    }
}

/// Run the producer task until `rx` is closed and everything is delivered.
pub async fn run(
    publisher: Publisher,
    mut rx: mpsc::Receiver<Outgoing>,
    mut settings: PublishSettings,
    acker: Arc<dyn Acknowledge>,
    metrics: Metrics,
) {
    let Publisher {
        producer,
        retry,
        in_flight,
    } = publisher;
    let mut alerting = settings.alerting.take();
    let mut buf = Vec::with_capacity(1024);
    let mut items = Vec::with_capacity(BATCH);
    let mut open = true;
    loop {
        let room = settings
            .max_in_flight
            .saturating_sub(in_flight.load(Ordering::Acquire));
        tokio::select! {
            biased;
            r = retry.recv_async() => {
                let Ok(r) = r else { break };
                let backoff = RETRY_BACKOFF_START
                    .saturating_mul(1u32 << r.pending.attempt.min(16))
                    .min(RETRY_BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
                resend(&producer, &settings, r).await;
            }
            n = rx.recv_many(&mut items, room.clamp(1, BATCH)), if open && room > 0 => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let started = std::time::Instant::now();
                let page_ids = match &settings.recent {
                    Some(recent) => remember(recent, &items, &metrics),
                    None => Vec::new(),
                };
                if let Some(alerting) = alerting.as_mut() {
                    for (i, item) in items.iter().enumerate() {
                        if let Outgoing::Point(p) = item {
                            alerting.observe(p, page_ids.get(i).copied().flatten());
                        }
                    }
                }
                for item in items.drain(..) {
                    publish(&producer, &settings, &mut buf, item, acker.as_ref(), &metrics, &in_flight).await;
                }
                metrics.busy("encode", started.elapsed().as_secs_f64());
            }
            () = tokio::time::sleep(Duration::from_millis(2)), if !open || room == 0 => {
                if !open && in_flight.load(Ordering::Acquire) == 0 && retry.is_empty() {
                    break;
                }
            }
        }
    }
}

/// Give the web page's store the scored points of a batch (one lock per
/// batch), and update its metrics. Returns, per item, the page's id of the
/// anomaly it was kept as.
fn remember(recent: &SharedRecent, items: &[Outgoing], metrics: &Metrics) -> Vec<Option<u64>> {
    let Ok(mut r) = recent.lock() else {
        return Vec::new(); // poisoned by a panic elsewhere: the page stops updating
    };
    let before = r.held().series_evicted;
    let ids = items
        .iter()
        .map(|item| match item {
            Outgoing::Point(p) => r.record(p),
            _ => None,
        })
        .collect();
    let held = r.held();
    drop(r);
    metrics
        .series_evicted
        .with_label_values(&["ui_lru"])
        .inc_by(held.series_evicted - before);
    for (kind, n) in [
        ("series", held.series),
        ("points", held.points),
        ("anomalies", held.anomalies),
    ] {
        metrics.ui_held.with_label_values(&[kind]).set(n as i64);
    }
    ids
}

/// Encode one item and hand it to the producer (or acknowledge it at once).
async fn publish(
    producer: &OutputProducer,
    settings: &PublishSettings,
    buf: &mut Vec<u8>,
    item: Outgoing,
    acker: &dyn Acknowledge,
    metrics: &Metrics,
    in_flight: &AtomicUsize,
) {
    match item {
        Outgoing::Point(p) => {
            buf.clear();
            if let Err(e) = encode::score_record(&p, &settings.publish, buf) {
                // Counted, and acknowledged so its input offset is not held forever.
                metrics.error("encode", &e);
                acker.ack(p.token);
                return;
            }
            let pending = Box::new(Pending {
                dest: Dest::Output,
                token: Some(p.token),
                source_ts_ms: p.source_ts_ms,
                attempt: 0,
            });
            in_flight.fetch_add(1, Ordering::AcqRel);
            let record = BaseRecord::with_opaque_to(&settings.output_topic, pending)
                .key(p.series.as_bytes())
                .payload(buf.as_slice());
            send(producer, record).await;
        }
        Outgoing::DeadLetter(d) => {
            let msg = encode::dead_letter(d);
            let pending = Box::new(Pending {
                dest: Dest::DeadLetter,
                token: msg.token,
                source_ts_ms: None,
                attempt: 0,
            });
            in_flight.fetch_add(1, Ordering::AcqRel);
            let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
            for (key, value) in &msg.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = BaseRecord::with_opaque_to(&settings.dead_letter_topic, pending)
                .payload(msg.payload.as_slice())
                .headers(headers);
            if let Some(key) = msg.key.as_deref() {
                record = record.key(key.as_bytes());
            }
            send(producer, record).await;
        }
        Outgoing::Ack(token) => acker.ack(token),
        Outgoing::Stale(event) => {
            buf.clear();
            encode::stale_record(&event, buf);
            let pending = Box::new(Pending {
                dest: Dest::Output,
                token: Some(Token::UNTRACKED),
                source_ts_ms: None,
                attempt: 0,
            });
            in_flight.fetch_add(1, Ordering::AcqRel);
            let record = BaseRecord::with_opaque_to(&settings.output_topic, pending)
                .key(event.series.as_bytes())
                .payload(buf.as_slice());
            send(producer, record).await;
        }
    }
}

/// Send a failed message again (it is still counted in flight).
async fn resend(producer: &OutputProducer, settings: &PublishSettings, mut r: Retry) {
    r.pending.attempt += 1;
    let topic = match r.pending.dest {
        Dest::Output => &settings.output_topic,
        Dest::DeadLetter => &settings.dead_letter_topic,
    };
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (key, value) in &r.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_slice()),
        });
    }
    let mut record = BaseRecord::with_opaque_to(topic, r.pending)
        .payload(r.payload.as_slice())
        .headers(headers);
    if let Some(key) = r.key.as_deref() {
        record = record.key(key);
    }
    send(producer, record).await;
}

/// Hand a record to librdkafka, waiting while its queue is full.
async fn send(producer: &OutputProducer, mut record: BaseRecord<'_, [u8], [u8], Box<Pending>>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, r)) => {
                // Not retryable by waiting (a message too large, say): the
                // delivery callback will not run for it. Report it the way a
                // failed delivery is reported, so it is retried with backoff.
                let context = producer.context();
                context.metrics.error("delivery", &e);
                if !context.acker.retry_undelivered() {
                    context.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                let headers = owned_headers(r.headers.as_ref());
                let retry = Retry {
                    key: r.key.map(<[u8]>::to_vec),
                    payload: r.payload.map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                    pending: r.delivery_opaque,
                };
                if context.retry.send(retry).is_err() {
                    context.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                return;
            }
        }
    }
}
