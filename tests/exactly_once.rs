//! Exactly-once delivery against a real broker, with the real binary
//! SIGKILLed: a crash inside an open transaction loses nothing and repeats
//! nothing, and the idle timers (flushed buckets, stale events) fire once
//! across a crash and restart. The output is read with
//! `isolation.level=read_committed`, as a consumer of exactly_once output
//! must.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;

/// One attnwatch process with its own config and log.
struct Instance {
    child: Child,
    http: String,
    log: PathBuf,
}

impl Instance {
    fn start(config: &str, dir: &std::path::Path, name: &str) -> Instance {
        let http = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config.replace("@HTTP@", &http)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_attnwatch"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Instance { child, http, log }
    }

    async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("attnwatch exited ({status}); log:\n{}", self.log_text());
            }
            let url = format!("http://{}/readyz", self.http);
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "attnwatch not ready within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config_text(names: &Names, txn_id: &str, commit: &str, flush: &str, stale: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
input_topic = "{input}"
output_topic = "{output}"
dead_letter_topic = "{dlq}"
delivery = "exactly_once"
transactional_id = "{txn_id}"
commit_interval = "{commit}"
transaction_timeout = "90s"
rebuild_messages = 100000

[kafka.options]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000

[window]
flush_after = "{flush}"
stale_after = "{stale}"

[model]
path = "{model}"
onnxruntime_library = "{ort}"

[server]
listen = "@HTTP@"

[shutdown]
grace = "30s"
"#,
        brokers = bootstrap(),
        group = names.group,
        input = names.input,
        output = names.output,
        dlq = names.dlq,
        model = model_path().display(),
        ort = ort_lib().display(),
    )
}

/// A reader of `topic` that sees only committed transactions.
fn committed_reader(topic: &str) -> StreamConsumer {
    reader_with(topic, "read_committed")
}

fn reader_with(topic: &str, isolation: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Scored points by (series, ts) -> copies, and stale events by series ->
/// copies.
type Counts = (BTreeMap<(String, i64), usize>, BTreeMap<String, usize>);

fn counts(got: &[Got]) -> Counts {
    let (mut points, mut stale) = (BTreeMap::new(), BTreeMap::new());
    for g in got {
        let v = g.json();
        let series = v["series"].as_str().unwrap().to_string();
        if v["event"] == "stale" {
            *stale.entry(series).or_insert(0) += 1;
        } else {
            *points
                .entry((series, v["ts"].as_i64().unwrap()))
                .or_insert(0) += 1;
        }
    }
    (points, stale)
}

/// Produce `series` series x `n` points on a 1-second grid.
async fn feed(names: &Names, series: usize, n: usize) -> Vec<String> {
    let p = producer();
    let t0 = 1_700_000_000_000i64;
    let ids: Vec<String> = (0..series).map(|s| format!("eo-{s}")).collect();
    for i in 0..n {
        for (s, id) in ids.iter().enumerate() {
            let v = 10.0 + (i as f64 * 0.3 + s as f64).sin();
            produce(&p, &names.input, id, &sample(id, t0 + i as i64 * 1000, v)).await;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_an_open_transaction_loses_nothing_and_repeats_nothing() {
    let names = Names::new("eo-crash");
    create_topics(&names, 2).await;
    let dir = std::env::temp_dir().join(unique("eo-crash"));
    std::fs::create_dir_all(&dir).unwrap();
    let txn_id = unique("eo-txn");
    // A long commit interval: the outputs wait in an open transaction.
    let mut first = Instance::start(
        &config_text(&names, &txn_id, "60s", "0s", "0s"),
        &dir,
        "first",
    );
    first.wait_ready(Duration::from_secs(120)).await;
    let (series, n) = (4, 80);
    let ids = feed(&names, series, n).await;
    // Without the timers the newest bucket of each series stays open.
    let expected = series * (n - contract().min_points - 1);

    // The outputs reach the broker inside the open transaction: a
    // read_uncommitted reader sees them, a read_committed one does not.
    let uncommitted = reader_with(&names.output, "read_uncommitted");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    assert!(
        read_until(&uncommitted, &mut seen, deadline, |g| g.len() >= expected).await,
        "{} of {expected} outputs written; log:\n{}",
        seen.len(),
        first.log_text()
    );
    let committed = committed_reader(&names.output);
    let mut early = Vec::new();
    read_until(
        &committed,
        &mut early,
        Instant::now() + Duration::from_secs(3),
        |g| !g.is_empty(),
    )
    .await;
    assert!(
        early.is_empty(),
        "nothing is committed yet: the crash is mid-transaction"
    );
    first.kill();

    // The restart (same transactional id) fences the dead instance, whose
    // open transaction is aborted, and redoes its work from the committed
    // offsets: every point once.
    let mut second = Instance::start(
        &config_text(&names, &txn_id, "1s", "0s", "0s"),
        &dir,
        "second",
    );
    second.wait_ready(Duration::from_secs(120)).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    assert!(
        read_until(&committed, &mut got, deadline, |g| g.len() >= expected).await,
        "{} of {expected} committed; log:\n{}",
        got.len(),
        second.log_text()
    );
    // Nothing more arrives.
    read_until(
        &committed,
        &mut got,
        Instant::now() + Duration::from_secs(5),
        |g| g.len() > expected,
    )
    .await;
    let (points, stale) = counts(&got);
    assert_eq!(points.len(), expected, "every point, none lost");
    let dups: Vec<_> = points.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "repeated points: {dups:?}");
    assert!(stale.is_empty());
    for id in &ids {
        assert_eq!(
            points.keys().filter(|(s, _)| s == id).count(),
            n - contract().min_points - 1
        );
    }
    second.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_points_and_stale_events_fire_once_across_a_crash() {
    let names = Names::new("eo-timers");
    create_topics(&names, 2).await;
    let dir = std::env::temp_dir().join(unique("eo-timers"));
    std::fs::create_dir_all(&dir).unwrap();
    let txn_id = unique("eo-txn");
    let config = config_text(&names, &txn_id, "1s", "2s", "5s");
    let mut first = Instance::start(&config, &dir, "first");
    first.wait_ready(Duration::from_secs(120)).await;
    let (series, n) = (6, 60);
    let ids = feed(&names, series, n).await;
    // Every point from the min_points-th on, the last one closed by the
    // idle flush; then one stale event per series.
    let per_series = n - contract().min_points;
    let expected = series * per_series;

    let committed = committed_reader(&names.output);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let all_stale = |g: &[Got]| counts(g).1.len() >= series;
    assert!(
        read_until(&committed, &mut got, deadline, all_stale).await,
        "stale events committed: {:?}; log:\n{}",
        counts(&got).1,
        first.log_text()
    );
    // The timers fired and their transaction committed: crash now.
    first.kill();
    let mut second = Instance::start(&config, &dir, "second");
    second.wait_ready(Duration::from_secs(120)).await;
    // Past both timers again: a restart that forgot they had fired would
    // flush and report every series a second time by now.
    read_until(
        &committed,
        &mut got,
        Instant::now() + Duration::from_secs(12),
        |_| false,
    )
    .await;
    let (points, stale) = counts(&got);
    let dups: Vec<_> = points.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "repeated points: {dups:?}");
    assert_eq!(
        points.len(),
        expected,
        "every point once, the flushed last ones included"
    );
    for id in &ids {
        assert_eq!(
            stale.get(id),
            Some(&1),
            "one stale event for {id}: {stale:?}"
        );
        let last = points
            .keys()
            .filter(|(s, _)| s == id)
            .map(|(_, t)| *t)
            .max();
        assert_eq!(last, Some(1_700_000_000_000 + (n as i64 - 1) * 1000));
    }
    let log = second.log_text();
    assert!(
        log.contains("restored the idle timers' marks"),
        "the restart restored the marks; log:\n{log}"
    );
    second.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
