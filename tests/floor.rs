//! `attnwatch floor` (scripts/bench's Kafka floor) on the real broker: every
//! good sample becomes one output in the service's format, every bad record
//! a dead letter with its reason, and the input offsets are committed once
//! the outputs are acknowledged.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

#[tokio::test(flavor = "multi_thread")]
async fn the_floor_passes_every_record_through_in_the_service_format() {
    let names = Names::new("floor");
    create_topics(&names, 2).await;
    let p = producer();
    let (good, bad) = (300usize, 2usize);
    for i in 0..good {
        let series = format!("s{}", i % 3);
        let payload = sample(
            &series,
            1_700_000_000_000 + i as i64 * 60_000,
            i as f64 * 0.5,
        );
        produce(&p, &names.input, &series, &payload).await;
    }
    produce(&p, &names.input, "s0", b"{not json").await;
    produce(
        &p,
        &names.input,
        "s1",
        br#"{"series":"s1","ts":1,"value":"x"}"#,
    )
    .await;

    let dir = std::env::temp_dir().join(unique("floor"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("floor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\ninput_topic = \"{}\"\noutput_topic = \"{}\"\n\
             dead_letter_topic = \"{}\"\ngroup_id = \"{}\"\ncommit_interval = \"500ms\"\n",
            bootstrap(),
            names.input,
            names.output,
            names.dlq,
            names.group
        ),
    )
    .unwrap();
    let summary = dir.join("summary.json");
    let status = Command::new(env!("CARGO_BIN_EXE_attnwatch"))
        .args(["floor", "--config"])
        .arg(&cfg)
        .args([
            "--max-messages",
            &(good + bad).to_string(),
            "--idle-exit",
            "60s",
        ])
        .arg("--summary-json")
        .arg(&summary)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "attnwatch floor failed: {status}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["messages"], (good + bad) as u64, "{s}");
    assert_eq!(s["scored"], good as u64, "{s}");
    assert_eq!(s["dead_letter"], bad as u64, "{s}");
    assert!(s["cpu_s"].as_f64().unwrap() > 0.0, "{s}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    assert!(
        read_until(&reader(&names.output), &mut out, deadline, |g| g.len()
            >= good)
        .await,
        "{} of {good} outputs",
        out.len()
    );
    let mut values: Vec<f64> = out
        .iter()
        .map(|g| {
            let j = g.json();
            assert_eq!(j["series"].as_str(), g.key.as_deref(), "keyed by series");
            for field in [
                "score",
                "threshold",
                "raw_score",
                "expected",
                "expected_std",
            ] {
                assert!(j[field].is_number(), "{field} in {j}");
            }
            assert_eq!(j["attention"]["top"].as_array().unwrap().len(), 5, "{j}");
            j["value"].as_f64().unwrap()
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (0..good).map(|i| i as f64 * 0.5).collect();
    assert_eq!(values, expected, "every value passed through once");

    let mut dead = Vec::new();
    assert!(read_until(&reader(&names.dlq), &mut dead, deadline, |g| g.len() >= bad).await);
    let mut reasons: Vec<&str> = dead
        .iter()
        .map(|g| g.headers["attnwatch.reason"].as_str())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_json", "wrong_type"]);

    // Committed offsets: every input message is behind the group, in
    // each partition that holds any.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &names.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&names.input, 0);
    tpl.add_partition(&names.input, 1);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for e in committed.elements() {
        let (_, high) = c
            .fetch_watermarks(&names.input, e.partition(), Duration::from_secs(10))
            .unwrap();
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0, // nothing committed: right only for an empty partition
        };
        assert_eq!(
            at,
            high,
            "partition {} committed up to its end",
            e.partition()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
