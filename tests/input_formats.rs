//! The other tools' input formats through a real broker, the real ONNX
//! Runtime and the committed model: samples written as Telegraf (line
//! protocol and JSON) and prometheus-kafka-adapter write them, with their
//! bad variants in between. Every good point is scored under the series
//! name and labels the README gives; every bad record is dead-lettered with
//! its own bytes and reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use attnwatch::app::App;
use attnwatch::ingest::decode::Format;
use common::*;
use tokio_util::sync::CancellationToken;

/// One message of each good kind per time step, and the bad records sent
/// every `BAD_EVERY` steps, in rotation.
const BAD_EVERY: usize = 10;

struct Case {
    format: Format,
    /// The messages of step `i` at `ts` (ms) with value `v`.
    good: fn(usize, i64, f64) -> Vec<String>,
    /// The series the good messages name, with their labels.
    series: Vec<(&'static str, Vec<(&'static str, &'static str)>)>,
    /// Bad records (reason, bytes): each its own message.
    bad: Vec<(&'static str, &'static str)>,
}

async fn run(case: Case) {
    let names = Names::new(case.format.name());
    create_topics(&names, 1).await;
    let mut cfg = config(&names);
    cfg.ingest.format = case.format;
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();

    let first = contract().min_points;
    let n = first + 40;
    let points = series(n, usize::MAX, 5);
    let p = producer();
    let mut bad_sent = Vec::new();
    for (i, (ts, v)) in points.iter().enumerate() {
        for m in (case.good)(i, *ts, *v) {
            produce(&p, &names.input, "k", m.as_bytes()).await;
        }
        if i % BAD_EVERY == 3 {
            let (reason, bytes) = case.bad[bad_sent.len() % case.bad.len()];
            produce(&p, &names.input, "k", bytes.as_bytes()).await;
            bad_sent.push((reason, bytes));
        }
    }
    // Every bad kind was sent at least once.
    assert!(bad_sent.len() >= case.bad.len(), "raise n");

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut dead = Vec::new();
    assert!(
        read_until(&reader(&names.dlq), &mut dead, deadline, |g| g.len()
            >= bad_sent.len())
        .await,
        "{:?}: {} of {} dead letters",
        case.format,
        dead.len(),
        bad_sent.len()
    );
    for (got, (reason, bytes)) in dead.iter().zip(&bad_sent) {
        assert_eq!(
            got.headers.get("attnwatch.reason").map(String::as_str),
            Some(*reason),
            "{bytes}: {}",
            got.headers["attnwatch.error"]
        );
        assert_eq!(String::from_utf8_lossy(&got.payload).trim(), bytes.trim());
    }

    // Every grid point of every series from the min_points-th on, but the
    // newest (its bucket stays open).
    let per_series = n - first - 1;
    let expected = per_series * case.series.len();
    let mut scored = Vec::new();
    assert!(
        read_until(&reader(&names.output), &mut scored, deadline, |g| g.len()
            >= expected)
        .await,
        "{:?}: {} of {expected} outputs",
        case.format,
        scored.len()
    );
    let mut by_series: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for g in &scored {
        let v = g.json();
        let name = v["series"].as_str().unwrap().to_owned();
        let (_, labels) = case
            .series
            .iter()
            .find(|(s, _)| *s == name)
            .unwrap_or_else(|| panic!("unexpected series {name}"));
        for (k, want) in labels {
            assert_eq!(v["labels"][k].as_str(), Some(*want), "{name}: {v}");
        }
        assert!(v["score"].as_f64().unwrap().is_finite());
        by_series
            .entry(name)
            .or_default()
            .insert(v["ts"].as_i64().unwrap());
    }
    assert_eq!(by_series.len(), case.series.len());
    for (name, ts) in &by_series {
        let want: BTreeSet<i64> = points[first..n - 1].iter().map(|(t, _)| *t).collect();
        assert_eq!(ts, &want, "{name}: every good point once");
    }
    shutdown.cancel();
    app.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegraf_line_protocol_is_scored_and_bad_lines_are_dead_lettered() {
    run(Case {
        format: Format::Influx,
        // Telegraf batches metrics into one message, a line each.
        good: |_, ts, v| {
            let ns = ts * 1_000_000;
            vec![format!(
                "cpu,host=web-1,cpu=cpu-total usage_idle={:.3},usage_user={:.3} {ns}\n\
                 mem,host=web-1 used_percent={:.3},available={}i {ns}\n",
                100.0 - v,
                v,
                v * 4.0,
                (v * 1000.0) as i64
            )]
        },
        series: vec![
            (
                "cpu,cpu=cpu-total,host=web-1",
                vec![("host", "web-1"), ("cpu", "cpu-total")],
            ),
            ("mem,host=web-1", vec![("host", "web-1")]),
        ],
        bad: vec![
            (
                "invalid_line_protocol",
                "cpu,host=web-1 usage_idle= 1700000000000000000",
            ),
            ("missing_timestamp", "cpu,host=web-1 usage_idle=1"),
            (
                "missing_value",
                "system,host=web-1 uptime_format=\"1 day\" 1700000000000000000",
            ),
            (
                "non_finite_value",
                "cpu,host=web-2 usage_idle=1e39 1700000000000000000",
            ),
            (
                "invalid_line_protocol",
                "cpu,host=web-1 usage_idle=1 17000000000000000000000",
            ),
        ],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegraf_json_is_scored_and_bad_metrics_are_dead_lettered() {
    run(Case {
        format: Format::TelegrafJson,
        // One metric per message, and a batch every other step.
        good: |i, ts, v| {
            let cpu = format!(
                r#"{{"fields":{{"usage_idle":{:.3},"usage_user":{v:.3}}},"name":"cpu","tags":{{"cpu":"cpu-total","host":"web-1"}},"timestamp":{}}}"#,
                100.0 - v,
                ts / 1000
            );
            let disk = format!(
                r#"{{"fields":{{"used_percent":{:.3},"fstype_hint":"ext4"}},"name":"disk","tags":{{"host":"web-1","path":"/"}},"timestamp":{}}}"#,
                v * 5.0,
                ts / 1000
            );
            if i % 2 == 0 {
                vec![cpu, disk]
            } else {
                vec![format!(r#"{{"metrics":[{cpu},{disk}]}}"#)]
            }
        },
        series: vec![
            (
                "cpu,cpu=cpu-total,host=web-1",
                vec![("host", "web-1"), ("cpu", "cpu-total")],
            ),
            ("disk,host=web-1,path=/", vec![("path", "/")]),
        ],
        bad: vec![
            ("invalid_json", r#"{"fields":{"usage_idle":1},"name":"cpu""#),
            ("missing_timestamp", r#"{"fields":{"usage_idle":1},"name":"cpu","tags":{"host":"web-1"}}"#),
            ("missing_series", r#"{"fields":{"usage_idle":1},"tags":{"host":"web-1"},"timestamp":1700000000}"#),
            ("missing_value", r#"{"fields":{"state":"ok"},"name":"svc","tags":{},"timestamp":1700000000}"#),
            ("wrong_type", r#"{"fields":{"usage_idle":1},"name":"cpu","tags":{"host":7},"timestamp":1700000000}"#),
        ],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_adapter_json_is_scored_and_bad_samples_are_dead_lettered() {
    run(Case {
        format: Format::PrometheusJson,
        good: |_, ts, v| {
            let time = chrono::DateTime::from_timestamp_millis(ts)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            vec![
                format!(
                    r#"{{"timestamp":"{time}","value":"{v}","name":"node_load1","labels":{{"__name__":"node_load1","instance":"web-1:9100","job":"node"}}}}"#
                ),
                format!(
                    r#"{{"timestamp":"{time}","value":"{}","name":"http_requests_total","labels":{{"__name__":"http_requests_total","code":"200","job":"api"}}}}"#,
                    (v * 100.0).round()
                ),
            ]
        },
        series: vec![
            (
                r#"node_load1{instance="web-1:9100",job="node"}"#,
                vec![("instance", "web-1:9100"), ("job", "node")],
            ),
            (
                r#"http_requests_total{code="200",job="api"}"#,
                vec![("code", "200")],
            ),
        ],
        bad: vec![
            ("non_finite_value", r#"{"timestamp":"2023-11-14T22:13:20Z","value":"NaN","name":"up","labels":{"__name__":"up","job":"node"}}"#),
            ("non_finite_value", r#"{"timestamp":"2023-11-14T22:13:20Z","value":"+Inf","name":"le","labels":{"__name__":"le"}}"#),
            ("wrong_type", r#"{"timestamp":"2023-11-14T22:13:20Z","value":"fast","name":"up","labels":{"__name__":"up"}}"#),
            ("bad_timestamp", r#"{"timestamp":"yesterday","value":"1","name":"up","labels":{"__name__":"up"}}"#),
            ("missing_series", r#"{"timestamp":"2023-11-14T22:13:20Z","value":"1","labels":{"job":"node"}}"#),
        ],
    })
    .await;
}
