//! `attnwatch floor`: Kafka's own floor, for `scripts/bench`. The same
//! input, the same librdkafka settings as the service (the input consumer's
//! [`crate::ingest::kafka::consumer_config`], the output producer's
//! [`crate::app::producer_config`]), the same decoder and the same output
//! encoder, and nothing between them: no window, no model, no score. Every
//! decoded sample becomes one output record of the service's format and
//! size (a fixed forecast and attention explanation stand in for the
//! model's), every rejected record a dead letter; an input offset is stored
//! once all of its outputs are acknowledged, as in the service
//! (at-least-once).
//!
//! It stops after `--max-messages` messages once every output is
//! acknowledged (or after `--idle-exit` without a message, or on Ctrl-C),
//! and prints a JSON summary: its CPU time (all threads) from just after
//! subscribing to just after the last acknowledgement, and per point. What
//! the service spends above this is its own work.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::flow::forecast::{Explanation, Shape};
use crate::flow::{DeadLetter, FeatureScore, ScoredPoint, Token};
use crate::ingest::decode::{self, FeatureSet, Values};
use crate::ingest::offsets::OffsetTracker;
use crate::publish::encode;
use crate::score::{Channels, Scored};

/// Arguments of `attnwatch floor`.
#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Config file (`[kafka]`, `[ingest]`, `[publish]`), with the same
    /// ATTNWATCH__SECTION__KEY overrides as `run`.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Stop once this many messages are consumed and all their outputs
    /// acknowledged (0: run until idle or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub max_messages: u64,
    /// Stop after this long without a message, once data has flowed.
    #[arg(long, default_value = "10s", value_parser = crate::cli::humantime_duration)]
    pub idle_exit: Duration,
    /// Also write the summary (JSON) to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

/// Acknowledgements from the producer's thread.
#[derive(Default)]
struct Acks {
    tracker: Mutex<OffsetTracker>,
    /// Offsets that became storable, per partition.
    storable: Mutex<Vec<(i32, i64)>>,
    acked: AtomicU64,
    failed: AtomicU64,
}

impl Acks {
    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<Token>) {
        if result.is_err() {
            // The floor measures cost; a failed delivery is counted and
            // fails the run instead of being retried.
            self.0.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.0.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(offset) = self.0.tracker().ack(*token) {
            self.0
                .storable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((token.partition, offset));
        }
    }
}

/// CPU seconds of this process (all threads), user and system.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage struct into the pointer it gets.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The explanation every output carries: uniform attention over a
/// 2,048-value context in 16-value tokens (the committed model's shape), so
/// that `attention.top` holds `publish.top_k` ranges, as the service's do.
fn stand_in_explanation() -> Arc<Explanation> {
    let shape = Shape {
        layers: 1,
        heads: 1,
        context: 2048,
        patch: 16,
    };
    let t = shape.context / shape.patch;
    let attention: Vec<f32> = (0..t).map(|i| (i + 1) as f32 / 8256.0).collect();
    Arc::new(Explanation::from_heads(
        &attention,
        shape,
        1_700_000_000_000,
        60_000,
        shape.context,
    ))
}

/// The output record of a sample: the service's fields, with numbers of the
/// service's length derived from the value (the floor computes no score).
fn point(sample: decode::Sample, token: Token, explanation: &Arc<Explanation>) -> ScoredPoint {
    let value = match &sample.values {
        Values::Single(v) => *v,
        Values::Multi(v) => v.first().map_or(0.0, |f| f.1),
    };
    let x = f64::from(value);
    let scored = Scored {
        score: (x * 0.731).abs() / 3.0,
        threshold: 1.0,
        anomaly: false,
        alert: false,
        incident: None,
        raw_score: (x * 1.37).abs() / 7.0,
        channels: Channels {
            point: x.abs() / 11.0,
            ..Channels::default()
        },
        nearest: None,
    };
    ScoredPoint {
        series: sample.series.into(),
        ts: sample.ts,
        value: Some(value),
        labels: Arc::new(sample.labels),
        features: vec![FeatureScore {
            feature: "value".into(),
            value,
            scored,
            expected: value * 0.987,
            expected_std: value.abs() / 9.0,
            explanation: explanation.clone(),
        }],
        token,
        source_ts_ms: None,
        model: "attnwatch-forecaster@1.0.0".into(),
    }
}

/// What a run did.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    messages: u64,
    points: u64,
    scored: u64,
    dead_letter: u64,
    output_bytes: u64,
    wall_s: f64,
    cpu_s: f64,
    scored_per_cpu_s: f64,
    cpu_us_per_point: f64,
    bytes_per_point: f64,
}

/// Run the pass-through until it has done what `args` asks.
pub fn exec(args: FloorArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let acks = Arc::new(Acks::default());
    let consumer: BaseConsumer = crate::ingest::kafka::consumer_config(&config.kafka)?
        .create()
        .context("creating the consumer")?;
    let producer: ThreadedProducer<AckContext> = crate::app::producer_config(&config)?
        .create_with_context(AckContext(acks.clone()))
        .context("creating the producer")?;
    consumer.subscribe(&[&config.kafka.input_topic])?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc_like(move || stop.store(true, Ordering::Relaxed));
    }
    let (format, unit) = (config.ingest.format, config.ingest.timestamp_unit());
    let limits = config.ingest.limits();
    let features = FeatureSet(None);
    let explanation = stand_in_explanation();
    let (out_topic, dlq_topic) = (&config.kafka.output_topic, &config.kafka.dead_letter_topic);
    let mut s = Summary::default();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut last_data: Option<Instant> = None;
    let mut generations: HashMap<i32, u64> = HashMap::new();
    let mut stored: HashMap<i32, i64> = HashMap::new();
    let mut buf = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        store(&consumer, &acks, &config.kafka.input_topic, &mut stored)?;
        let done = args.max_messages > 0 && s.messages >= args.max_messages;
        if done {
            if acks.tracker().in_flight() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let msg = match consumer.poll(Duration::from_millis(100)) {
            None => {
                if last_data.is_some_and(|t| t.elapsed() >= args.idle_exit) {
                    break;
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "floor: consume error");
                continue;
            }
            Some(Ok(m)) => m,
        };
        last_data = Some(Instant::now());
        s.messages += 1;
        let partition = msg.partition();
        let generation = *generations
            .entry(partition)
            .or_insert_with(|| acks.tracker().assign(partition));
        let token = Token {
            partition,
            offset: msg.offset(),
            generation,
        };
        let key = msg.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let items = decode::decode_as(
            format,
            unit,
            msg.payload().unwrap_or_default(),
            &features,
            &limits,
        );
        if let Some(o) = acks.tracker().register(token, items.len() as u32) {
            acks.storable
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((partition, o));
        }
        for item in items {
            s.points += 1;
            let out = match item {
                Ok(sample) => {
                    s.scored += 1;
                    let p = point(sample, token, &explanation);
                    buf.clear();
                    encode::score_record(&p, &config.publish, &mut buf)?;
                    s.output_bytes += buf.len() as u64;
                    (
                        out_topic,
                        p.series.to_string(),
                        std::mem::take(&mut buf),
                        None,
                    )
                }
                Err(e) => {
                    s.dead_letter += 1;
                    let m = encode::dead_letter(DeadLetter {
                        bytes: e.bytes,
                        key: key.clone(),
                        reason: e.reason.code(),
                        detail: e.reason.to_string(),
                        token: Some(token),
                    });
                    let mut h = OwnedHeaders::new();
                    for (k, v) in &m.headers {
                        h = h.insert(Header {
                            key: k,
                            value: Some(v.as_bytes()),
                        });
                    }
                    (
                        dlq_topic,
                        key.clone().unwrap_or_default(),
                        m.payload,
                        Some(h),
                    )
                }
            };
            send(&producer, out, token)?;
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the producer")?;
    store(&consumer, &acks, &config.kafka.input_topic, &mut stored)?;
    s.wall_s = t0.elapsed().as_secs_f64();
    s.cpu_s = cpu_seconds() - cpu0;
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "floor: final commit failed");
    }
    let failed = acks.failed.load(Ordering::Relaxed);
    if s.scored > 0 {
        s.scored_per_cpu_s = (s.scored as f64 / s.cpu_s * 10.0).round() / 10.0;
        s.cpu_us_per_point = (1e8 * s.cpu_s / s.scored as f64).round() / 100.0;
        s.bytes_per_point = (10.0 * s.output_bytes as f64 / s.scored as f64).round() / 10.0;
    }
    let text = serde_json::to_string(&s)?;
    println!("{text}");
    if let Some(p) = &args.summary_json {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    anyhow::ensure!(failed == 0, "{failed} outputs were not delivered");
    Ok(())
}

/// Produce one output, waiting while the producer's queue is full.
fn send(
    producer: &ThreadedProducer<AckContext>,
    (topic, key, payload, headers): (&String, String, Vec<u8>, Option<OwnedHeaders>),
    token: Token,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::with_opaque_to(topic, Box::new(token))
        .key(&key)
        .payload(&payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e).context("producing an output"),
        }
    }
}

/// Store the offsets that became storable (each the next offset to read,
/// as the service stores them). The consume loop and the producer's thread
/// both add to the list, so an older offset can come after a newer one:
/// only a partition's highest is stored, and never one below what was.
fn store(
    consumer: &BaseConsumer,
    acks: &Acks,
    topic: &str,
    stored: &mut HashMap<i32, i64>,
) -> anyhow::Result<()> {
    let ready = std::mem::take(&mut *acks.storable.lock().unwrap_or_else(PoisonError::into_inner));
    let mut newest: HashMap<i32, i64> = HashMap::new();
    for (partition, offset) in ready {
        let at = newest.entry(partition).or_insert(offset);
        *at = (*at).max(offset);
    }
    // One entry per partition: a list holding a partition twice would
    // store its second entry's offset over the first.
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in newest {
        let at = stored.entry(partition).or_insert(-1);
        if offset > *at {
            *at = offset;
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.store_offsets(&tpl).context("storing offsets")
}

/// Call `f` on SIGINT or SIGTERM (a thread waits for either).
fn ctrlc_like(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        f();
    });
}
