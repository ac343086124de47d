//! `attnwatch loadgen`: a synthetic input load for benchmarks and soak tests.
//!
//! N series x M points, each series a daily-like sine with noise on its own
//! level, amplitude and phase, on a regular grid of `interval`. Points go
//! out time step by time step (every series at t, then at t + 1), keyed by
//! series, so each series is in order within its partition. A message holds
//! `per_message` consecutive points of one series (a JSON array when more
//! than one). A share of points carries an injected anomaly (a spike of 5-9
//! amplitudes), and a share of records is malformed in one of the ways the
//! decoder rejects, interleaved with good ones.
//!
//! `format` writes the points as other tools would (`ingest.format`):
//! Influx line protocol (a message of newline-separated lines), Telegraf's
//! JSON (a batch `{"metrics": [...]}` when more than one point), or
//! prometheus-kafka-adapter's JSON (one sample per message). The series
//! are then named `loadgen,series=s000001` and `loadgen{series="s000001"}`.
//!
//! Unpaced by default; with `rate`, points are offered at that steady rate
//! (for latency under a known load). The record timestamps are the grid
//! times; the Kafka message timestamp is the send time, which is what the
//! service's end-to-end latency is measured from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::ingest::decode::Format;

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Target topic (created with `partitions` if missing).
    pub topic: String,
    /// Partitions of the topic when it is created.
    pub partitions: i32,
    /// Number of series.
    pub series: usize,
    /// Points per series.
    pub points: usize,
    /// Grid interval (ms).
    pub interval_ms: i64,
    /// Timestamp of the first point (epoch ms).
    pub start_ms: i64,
    /// Points per message.
    pub per_message: usize,
    /// Share of points with an injected spike.
    pub anomaly_rate: f64,
    /// Share of records that are malformed.
    pub bad_rate: f64,
    /// Offered load in points per second (None: as fast as possible).
    pub rate: Option<f64>,
    /// Seed of the generator.
    pub seed: u64,
    /// How the points are written.
    pub format: Format,
}

/// What was produced.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadReport {
    /// Messages produced and acknowledged.
    pub messages: u64,
    /// Good points among them.
    pub points: u64,
    /// Malformed records among them.
    pub bad: u64,
    /// Points with an injected anomaly.
    pub anomalies: u64,
    /// Wall seconds from the first send to the last acknowledgement.
    pub seconds: f64,
}

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Some messages were not delivered.
    #[error("{0} messages were not delivered")]
    Undelivered(u64),
}

/// A small, fast, seedable generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal (sum of 12 uniforms minus 6).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// The ways a record is malformed, rotated through: one for each reason
/// the decoder gives at its default bounds without a feature list
/// (`unknown_feature` needs one, and `message_too_large` a message over
/// 1 MiB, more than a broker accepts by default). `S` stands for the
/// series id.
const BAD_TEMPLATES: [&str; 10] = [
    "{not json",
    r#"{"series":"S","ts":"not a time","value":1}"#,
    r#"{"series":"S","ts":1700000000000}"#,
    r#"{"series":"S","ts":1700000000000,"value":"x"}"#,
    r#"{"ts":1700000000000,"value":1}"#,
    r#"{"series":"S","ts":1700000000000,"value":1e300}"#,
    "42",
    r#"{"series":"S","value":1}"#,
    r#"{"series":"S","ts":-5,"value":1}"#,
    r#"{"series":"S","ts":1700000000000,"value":1,"extra":1}"#,
];

/// How many kinds of malformed record there are: the templates, then a
/// series id, a label count and a label value each one over its bound.
const BAD_KINDS: usize = BAD_TEMPLATES.len() + 3;

/// Malformed record number `kind` (modulo [`BAD_KINDS`]) of `series`.
fn bad_record(kind: usize, series: &str) -> String {
    let limits = crate::ingest::decode::Limits::DEFAULT;
    let with_labels = |labels: String| {
        format!(r#"{{"series":"{series}","ts":1700000000000,"value":1,"labels":{{{labels}}}}}"#)
    };
    match kind % BAD_KINDS {
        k if k < BAD_TEMPLATES.len() => BAD_TEMPLATES[k].replace('S', series),
        10 => {
            let long = format!("{series}/{}", "x".repeat(limits.max_series_bytes));
            format!(r#"{{"series":"{long}","ts":1700000000000,"value":1}}"#)
        }
        11 => with_labels(
            (0..=limits.max_labels)
                .map(|i| format!(r#""k{i}":"v""#))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => with_labels(format!(
            r#""k":"{}""#,
            "v".repeat(limits.max_label_bytes + 1)
        )),
    }
}

/// One series' shape.
struct Shape {
    name: String,
    level: f64,
    amp: f64,
    period: f64,
    phase: f64,
}

/// The JSON of point `t` of a series, and whether it is an injected anomaly.
fn point(s: &Shape, t: usize, spec: &LoadSpec, rng: &mut Rng) -> (String, bool) {
    let ts = spec.start_ms + t as i64 * spec.interval_ms;
    let mut v = s.level
        + s.amp * (std::f64::consts::TAU * t as f64 / s.period + s.phase).sin()
        + 0.1 * s.amp * rng.normal();
    let anomaly = rng.uniform() < spec.anomaly_rate;
    if anomaly {
        let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        v += sign * (5.0 + 4.0 * rng.uniform()) * s.amp;
    }
    (render(spec.format, &s.name, ts, v), anomaly)
}

/// One point of `series` in `format`.
fn render(format: Format, series: &str, ts: i64, v: f64) -> String {
    match format {
        Format::Attnwatch => format!(r#"{{"series":"{series}","ts":{ts},"value":{v:.6}}}"#),
        Format::Influx => format!("loadgen,series={series} value={v:.6} {}", ts * 1_000_000),
        Format::TelegrafJson => format!(
            r#"{{"fields":{{"value":{v:.6}}},"name":"loadgen","tags":{{"series":"{series}"}},"timestamp":{}}}"#,
            ts / 1000
        ),
        Format::PrometheusJson => {
            let time = chrono::DateTime::from_timestamp_millis(ts)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            format!(
                r#"{{"timestamp":"{time}","value":"{v}","name":"loadgen","labels":{{"__name__":"loadgen","series":"{series}"}}}}"#
            )
        }
    }
}

/// A malformed record of a foreign format (its own reason rotates less:
/// one bad variant per format).
fn bad_foreign(format: Format, series: &str) -> String {
    match format {
        Format::Influx => format!("loadgen,series={series} value= 1700000000000000000"),
        Format::TelegrafJson => {
            format!(
                r#"{{"fields":{{}},"name":"loadgen","tags":{{"series":"{series}"}},"timestamp":1700000000}}"#
            )
        }
        Format::PrometheusJson | Format::Attnwatch => format!(
            r#"{{"timestamp":"2023-11-14T22:13:20Z","value":"NaN","name":"loadgen","labels":{{"series":"{series}"}}}}"#
        ),
    }
}

/// The message of several records in `format`.
fn batch(format: Format, records: &[String]) -> String {
    match format {
        Format::Influx => records.join("\n"),
        Format::TelegrafJson => format!(r#"{{"metrics":[{}]}}"#, records.join(",")),
        Format::Attnwatch | Format::PrometheusJson => format!("[{}]", records.join(",")),
    }
}

struct Counting {
    failed: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Create the topic if needed, then produce the load. `progress` is called
/// with the messages sent so far about once a second.
pub async fn run(spec: &LoadSpec, mut progress: impl FnMut(u64)) -> Result<LoadReport, LoadError> {
    create_topic(spec).await?;
    let failed = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", &spec.brokers)
        .set("linger.ms", if spec.rate.is_some() { "0" } else { "20" })
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4")
        .set("acks", "all")
        .create_with_context(Counting {
            failed: failed.clone(),
            acked: acked.clone(),
        })?;
    let mut rng = Rng::new(spec.seed);
    let shapes: Vec<Shape> = (0..spec.series)
        .map(|i| Shape {
            name: format!("s{i:06}"),
            level: 20.0 * rng.uniform() - 10.0,
            amp: 0.5 + 4.5 * rng.uniform(),
            period: 20.0 + 280.0 * rng.uniform(),
            phase: std::f64::consts::TAU * rng.uniform(),
        })
        .collect();
    let k = spec.per_message.max(1);
    let mut report = LoadReport::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut bad_kind = 0usize;
    let mut offered = 0u64;
    for t0 in (0..spec.points).step_by(k) {
        for s in &shapes {
            let mut records = Vec::with_capacity(k);
            for t in t0..(t0 + k).min(spec.points) {
                if rng.uniform() < spec.bad_rate {
                    records.push(match spec.format {
                        Format::Attnwatch => bad_record(bad_kind, &s.name),
                        f => bad_foreign(f, &s.name),
                    });
                    bad_kind += 1;
                    report.bad += 1;
                }
                let (json, anomaly) = point(s, t, spec, &mut rng);
                records.push(json);
                report.points += 1;
                report.anomalies += u64::from(anomaly);
            }
            let payload = if records.len() == 1 {
                records.swap_remove(0)
            } else if spec.format != Format::Attnwatch {
                batch(spec.format, &records)
            } else if records.iter().any(|r| r.starts_with("{not")) {
                // An invalid record inside an array would spoil the array:
                // send it on its own.
                let (bad, good): (Vec<String>, Vec<String>) =
                    records.into_iter().partition(|r| r.starts_with("{not"));
                for b in bad {
                    send(&producer, &spec.topic, &s.name, b.as_bytes())?;
                    report.messages += 1;
                }
                format!("[{}]", good.join(","))
            } else {
                format!("[{}]", records.join(","))
            };
            send(&producer, &spec.topic, &s.name, payload.as_bytes())?;
            report.messages += 1;
            offered += (t0 + k).min(spec.points).saturating_sub(t0) as u64;
            if let Some(rate) = spec.rate {
                let due = Duration::from_secs_f64(offered as f64 / rate.max(1e-9));
                let elapsed = started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                progress(report.messages);
                last_progress = Instant::now();
            }
        }
    }
    let producer = tokio::task::spawn_blocking(move || {
        let flushed = producer.flush(Duration::from_secs(120));
        (producer, flushed)
    })
    .await
    .map_err(|_| LoadError::Undelivered(u64::MAX))?;
    producer.1?;
    report.seconds = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(LoadError::Undelivered(failed));
    }
    Ok(report)
}

fn send(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

async fn create_topic(spec: &LoadSpec) -> Result<(), KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &spec.brokers)
        .create()?;
    let topic = NewTopic::new(&spec.topic, spec.partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics([&topic], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// `attnwatch loadgen`.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// Target topic (created with --partitions if missing).
    #[arg(long)]
    topic: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Number of series.
    #[arg(long, default_value_t = 100)]
    series: usize,
    /// Points per series.
    #[arg(long, default_value_t = 1000)]
    points: usize,
    /// Grid interval of the points.
    #[arg(long, default_value = "1m", value_parser = crate::cli::humantime_duration)]
    interval: Duration,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// Points per message (more than 1: a JSON array).
    #[arg(long, default_value_t = 1)]
    per_message: usize,
    /// Share of points with an injected spike anomaly.
    #[arg(long, default_value_t = 0.001)]
    anomaly_rate: f64,
    /// Share of records that are malformed.
    #[arg(long, default_value_t = 0.0)]
    bad_rate: f64,
    /// Offered load in points per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Timestamp of the first point (epoch ms; default: now minus the series' span).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How the points are written: attnwatch, influx, telegraf_json or
    /// prometheus_json (one point per message; the service's
    /// `ingest.format` must match).
    #[arg(long, default_value = "attnwatch", value_parser = parse_format)]
    format: Format,
}

fn parse_format(s: &str) -> Result<Format, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
        format!("unknown format {s:?}: attnwatch, influx, telegraf_json or prometheus_json")
    })
}

/// Run `attnwatch loadgen`.
pub fn exec(a: LoadgenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.anomaly_rate) && (0.0..=1.0).contains(&a.bad_rate),
        "--anomaly-rate and --bad-rate must be in [0, 1]"
    );
    anyhow::ensure!(
        a.series > 0 && a.points > 0,
        "--series and --points must be positive"
    );
    anyhow::ensure!(
        a.format != Format::PrometheusJson || a.per_message <= 1,
        "--format prometheus_json writes one sample per message, as the adapter does: --per-message must be 1"
    );
    let interval_ms = i64::try_from(a.interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let start_ms = a
        .start_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis() - interval_ms * a.points as i64);
    let spec = LoadSpec {
        brokers: a.brokers,
        topic: a.topic,
        partitions: a.partitions,
        series: a.series,
        points: a.points,
        interval_ms,
        start_ms,
        per_message: a.per_message,
        anomaly_rate: a.anomaly_rate,
        bad_rate: a.bad_rate,
        rate: a.rate,
        seed: a.seed,
        format: a.format,
    };
    let total = (a.series * a.points).div_ceil(a.per_message.max(1));
    let r = crate::cli::runtime()?.block_on(run(&spec, |sent| {
        eprintln!("loadgen: {sent} of about {total} messages sent");
    }))?;
    println!(
        "produced {} messages ({} points, {} bad records, {} injected anomalies) to {} in {:.2} s: {:.0} points/s",
        r.messages,
        r.points,
        r.bad,
        r.anomalies,
        spec.topic,
        r.seconds,
        r.points as f64 / r.seconds.max(1e-9)
    );
    Ok(())
}
