//! Idle flush and stale series against a real broker: a series that stops
//! reporting gets its last point scored after `window.flush_after`, and one
//! `{"series","ts","event":"stale"}` record after `window.stale_after`; its
//! next point re-arms both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use attnwatch::app::App;
use common::*;
use tokio_util::sync::CancellationToken;

const SECOND: i64 = 1_000;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_series_gets_its_last_point_scored_then_one_stale_event() {
    let names = Names::new("idle");
    create_topics(&names, 1).await;
    let mut cfg = config(&names);
    // Data on a 1-second grid, so that one interval of silence is 1 s too.
    cfg.window.flush_after = Duration::from_secs(1);
    cfg.window.stale_after = Duration::from_secs(3);
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();

    let first = contract().min_points;
    let n = first + 40;
    let t0 = 1_700_000_000_000i64;
    let p = producer();
    let value = |i: usize| 10.0 + (i as f64 * 0.3).sin();
    for i in 0..n {
        let ts = t0 + i as i64 * SECOND;
        produce(&p, &names.input, "idle-1", &sample("idle-1", ts, value(i))).await;
    }
    let last_ts = t0 + (n as i64 - 1) * SECOND;

    // Every point from the min_points-th on, the last one included (closed
    // by the idle flush, not by a later point), then the stale event.
    let out = reader(&names.output);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stale = |g: &[Got]| g.iter().any(|m| m.json()["event"] == "stale");
    assert!(
        read_until(&out, &mut got, deadline, stale).await,
        "no stale event; got {} records",
        got.len()
    );
    let points: Vec<serde_json::Value> = got
        .iter()
        .map(Got::json)
        .filter(|v| v.get("event").is_none())
        .collect();
    assert_eq!(
        points.len(),
        n - first,
        "one output per point after warm-up"
    );
    let newest = points.iter().map(|v| v["ts"].as_i64().unwrap()).max();
    assert_eq!(newest, Some(last_ts), "the last point was scored");
    let stale_events: Vec<serde_json::Value> = got
        .iter()
        .map(Got::json)
        .filter(|v| v.get("event").is_some())
        .collect();
    assert_eq!(stale_events.len(), 1);
    assert_eq!(
        stale_events[0],
        serde_json::json!({"series": "idle-1", "ts": last_ts, "event": "stale"})
    );
    assert_eq!(
        got.last().unwrap().key.as_deref(),
        Some("idle-1"),
        "keyed by series"
    );
    // At least the last bucket was flushed (a stall of the producer over
    // 1 s mid-stream would flush one more, which changes no output).
    let (_, m) = http_get(app.http_addr(), "/metrics").await;
    let flushed = metric(&m, "attnwatch_buckets_flushed_idle_total");
    assert!(flushed >= 1.0, "{flushed}");
    assert_eq!(metric(&m, "attnwatch_series_stale_total"), 1.0);

    // The series comes back: its next point is scored (flushed again) and
    // a second silence gives a second stale event; nothing else repeats.
    let back_ts = last_ts + SECOND;
    produce(
        &p,
        &names.input,
        "idle-1",
        &sample("idle-1", back_ts, value(n)),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let two_stale = |g: &[Got]| g.iter().filter(|m| m.json()["event"] == "stale").count() >= 2;
    assert!(read_until(&out, &mut got, deadline, two_stale).await);
    let points: Vec<i64> = got
        .iter()
        .map(Got::json)
        .filter(|v| v.get("event").is_none())
        .map(|v| v["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(points.len(), n - first + 1);
    assert_eq!(points.last(), Some(&back_ts));
    let (_, m) = http_get(app.http_addr(), "/metrics").await;
    assert!(metric(&m, "attnwatch_buckets_flushed_idle_total") >= flushed + 1.0);
    assert_eq!(metric(&m, "attnwatch_series_stale_total"), 2.0);

    shutdown.cancel();
    app.wait().await.unwrap();
}
