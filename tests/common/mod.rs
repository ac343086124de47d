//! Shared helpers for integration tests: a real broker (address from
//! `KAFKA_BOOTSTRAP`, started by `scripts/kafka`), the real ONNX Runtime
//! library (`ORT_DYLIB_PATH`, from `scripts/setup`) and the committed model.
//! Topic and group names are random; every wait is a bounded poll.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use attnwatch::config::Config;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP")
        .expect("KAFKA_BOOTSTRAP is not set: run the tests through scripts/test (it starts Kafka)")
}

pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/attnwatch-encoder.onnx")
}

/// The library the service itself would load (`model::library`).
pub fn ort_lib() -> PathBuf {
    let c = Config::from_toml_and_env("", Vec::<(String, String)>::new()).unwrap();
    attnwatch::model::library::find(&c.model)
        .unwrap_or_else(|e| panic!("{e}\n(run the tests through scripts/test)"))
        .path
}

/// The committed model's contract (window, min_points, layers, heads).
pub fn contract() -> attnwatch::model::Contract {
    let mut c = Config::from_toml_and_env("", Vec::<(String, String)>::new()).unwrap();
    c.model.path = model_path();
    attnwatch::model::Engine::load(&c.model, &ort_lib())
        .unwrap()
        .contract()
        .clone()
}

/// A port on 127.0.0.1 that was free a moment ago (for a companion server
/// that takes its address on the command line).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::rng().random::<u64>())
}

/// Names of one test's topics and group.
pub struct Names {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let base = unique(test);
        Names {
            input: format!("{base}-in"),
            output: format!("{base}-out"),
            dlq: format!("{base}-dlq"),
            group: format!("{base}-group"),
        }
    }
}

pub async fn create_topics(names: &Names, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = [&names.input, &names.output, &names.dlq]
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }
}

/// A service config pointing at the test broker, topics and the committed model.
pub fn config(names: &Names) -> Config {
    let mut c = Config::from_toml_and_env("", Vec::<(String, String)>::new()).unwrap();
    c.kafka.brokers = bootstrap();
    c.kafka.input_topic = names.input.clone();
    c.kafka.output_topic = names.output.clone();
    c.kafka.dead_letter_topic = names.dlq.clone();
    c.kafka.group_id = names.group.clone();
    c.kafka.commit_interval = Duration::from_millis(500);
    c.model.path = model_path();
    c.model.onnxruntime_library = Some(ort_lib());
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.shutdown.grace = Duration::from_secs(30);
    c
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

pub async fn produce(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(
        FutureRecord::to(topic).key(key).payload(payload),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Got {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// The record's Kafka timestamp (create time: when the service produced it).
    pub ts_ms: Option<i64>,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// A consumer reading `topic` from the beginning.
pub fn reader(topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Read from `c` into `into` until `done(into)` or the deadline passes.
pub async fn read_until(
    c: &StreamConsumer,
    into: &mut Vec<Got>,
    deadline: Instant,
    done: impl Fn(&[Got]) -> bool,
) -> bool {
    while !done(into) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left.min(Duration::from_secs(1)), c.recv()).await {
            Err(_) => continue,
            Ok(Err(_)) => continue, // e.g. topic not yet known; retry until the deadline
            Ok(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                into.push(Got {
                    ts_ms: m.timestamp().to_millis(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }
    true
}

/// A synthetic series: a daily-like sine plus small noise, with a spike.
pub fn series(n: usize, spike_at: usize, seed: u64) -> Vec<(i64, f64)> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = 1_700_000_000_000i64;
    (0..n)
        .map(|i| {
            let base = 10.0 + 3.0 * (i as f64 * std::f64::consts::TAU / 48.0).sin();
            let noise: f64 = rng.random_range(-0.15..0.15);
            let v = if i == spike_at {
                base + 12.0
            } else {
                base + noise
            };
            (t0 + i as i64 * 60_000, v)
        })
        .collect()
}

pub fn sample(series: &str, ts: i64, v: f64) -> Vec<u8> {
    serde_json::json!({"series": series, "ts": ts, "value": v})
        .to_string()
        .into_bytes()
}

/// GET a path on the service's HTTP server.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, None).await
}

/// GET a path on the service's HTTP server, with `token` as the bearer
/// token if given.
pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The broker's SASL_SSL listener, as `scripts/kafka sasl-env` describes it
/// (exported by `scripts/test`): its address, the CA that signed its
/// certificate, a CA that did not, and a SCRAM-SHA-512 user.
pub struct Sasl {
    pub bootstrap: String,
    pub ca: PathBuf,
    pub untrusted_ca: PathBuf,
    pub username: String,
    pub password_file: PathBuf,
}

pub fn sasl() -> Sasl {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the tests through scripts/test \
                 (it exports what `scripts/kafka sasl-env` prints)"
            )
        })
    };
    Sasl {
        bootstrap: var("KAFKA_SASL_BOOTSTRAP"),
        ca: var("KAFKA_SASL_CA").into(),
        untrusted_ca: var("KAFKA_SASL_UNTRUSTED_CA").into(),
        username: var("KAFKA_SASL_USERNAME"),
        password_file: var("KAFKA_SASL_PASSWORD_FILE").into(),
    }
}
