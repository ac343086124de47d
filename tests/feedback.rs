//! Operator feedback through the real broker, the real ONNX Runtime and the
//! committed model: two series carry the same values, a spike included, and
//! both alert on it. "Not an anomaly" is posted for one of them through the
//! API. A restarted service (a new consumer group, so the same input is
//! replayed from the start) reads the compacted feedback topic before it
//! scores anything: the marked series no longer alerts on the same spike,
//! and the other series still does. Before the restart, the same spike is
//! fed again on both series: live, the marked one stays quiet and the
//! other alerts. A third series, without a spike, gets
//! "missed" on a calm stretch: after the restart the strongest channel at
//! that stretch's peak is scaled up on that series only, so the peak scores
//! `min(threshold x 1.1, 1.5 x peak)` (the same pattern alerts again when
//! the peak was within a factor 1.5 of the threshold).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use attnwatch::app::App;
use common::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

async fn post(addr: std::net::SocketAddr, path: &str, body: Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The outputs of `series` at `ts` in `got`.
fn at(got: &[Got], series: &str, ts: i64) -> Option<Value> {
    got.iter()
        .map(Got::json)
        .find(|j| j["series"] == series && j["ts"] == ts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_an_anomaly_stops_the_same_spike_alerting_on_that_series_only_after_a_restart() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    let names = Names::new("feedback");
    create_topics(&names, 1).await;
    let feedback_topic = unique("feedback-marks");
    // Past the first model run and the score's probation, well short of a
    // full context: the debug build scores a few hundred points a second.
    let spike = contract().min_points + 300;
    let n = spike + 30;
    let values = series(n, spike, 11);
    let calm = series(n, usize::MAX, 12);
    let spike_ts = values[spike].0;
    let (from_ts, to_ts) = (values[spike - 150].0, values[spike - 10].0);
    let p = producer();
    for (i, (ts, v)) in values.iter().enumerate() {
        for s in ["fb-marked", "fb-other"] {
            produce(&p, &names.input, s, &sample(s, *ts, *v)).await;
        }
        produce(
            &p,
            &names.input,
            "fb-missed",
            &sample("fb-missed", *ts, calm[i].1),
        )
        .await;
    }

    // First run: both series alert on the spike; one is marked.
    let mut cfg = config(&names);
    cfg.feedback.topic = feedback_topic.clone();
    let shutdown = CancellationToken::new();
    let app = App::start(cfg.clone(), shutdown.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut out = Vec::new();
    let both =
        |g: &[Got]| at(g, "fb-marked", spike_ts).is_some() && at(g, "fb-other", spike_ts).is_some();
    let got = read_until(&reader(&names.output), &mut out, deadline, both).await;
    let tail: Vec<(String, i64)> = out
        .iter()
        .rev()
        .take(4)
        .map(|g| {
            (
                g.json()["series"].to_string(),
                g.json()["ts"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        got,
        "no outputs at the spike {spike_ts}: {} outputs, the last {tail:?}",
        out.len()
    );
    for s in ["fb-marked", "fb-other"] {
        let j = at(&out, s, spike_ts).unwrap();
        assert_eq!(
            j["alert"], true,
            "{s} alerts on the spike before feedback: {j}"
        );
    }
    let (status, body) = http_get(
        app.http_addr(),
        "/api/anomalies?series=fb-marked&limit=1000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    let id = list
        .iter()
        .find(|a| a["ts"] == spike_ts)
        .unwrap_or_else(|| panic!("the spike is not on the page: {body}"))["id"]
        .as_u64()
        .unwrap();

    // Bad requests are refused with a reason, and nothing is recorded.
    let (status, body) = post(
        app.http_addr(),
        "/api/feedback",
        serde_json::json!({"verdict": "not_anomaly"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        app.http_addr(),
        "/api/feedback",
        serde_json::json!({"verdict": "missed", "series": "fb-other", "start_ts": 10, "end_ts": 5}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("before it starts"), "{body}");

    let (status, body) = post(
        app.http_addr(),
        "/api/feedback",
        serde_json::json!({"verdict": "not_anomaly", "anomaly": id, "note": "a deploy"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // "Missed" on a calm stretch of the third series: the record carries
    // the stretch's highest score and its channel, as the page holds them.
    let (status, body) = http_get(app.http_addr(), "/api/series/fb-missed").await;
    assert_eq!(status, 200, "{body}");
    let points: Value = serde_json::from_str(&body).unwrap();
    let (peak_ts, peak) = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| (from_ts..=to_ts).contains(&p["ts"].as_i64().unwrap()))
        .map(|p| (p["ts"].as_i64().unwrap(), p["score"].as_f64().unwrap()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("the stretch's points on the page");
    assert!(peak > 0.0 && peak <= 1.0, "a calm stretch: peak {peak}");
    let (status, body) = post(
        app.http_addr(),
        "/api/feedback",
        serde_json::json!({"verdict": "missed", "series": "fb-missed", "start_ts": from_ts, "end_ts": to_ts}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let taught = answer["record"]["channels"].as_object().unwrap();
    assert_eq!(taught.len(), 1, "{answer}");
    assert_eq!(
        taught.values().next().unwrap().as_f64(),
        Some(peak),
        "{answer}"
    );
    let (_, listed) = http_get(app.http_addr(), "/api/feedback").await;
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mark = listed
        .iter()
        .find(|r| r["verdict"] == "not_anomaly")
        .unwrap();
    assert_eq!(mark["series"], "fb-marked");
    assert_eq!(mark["start_ts"], spike_ts);
    let (_, metrics) = http_get(app.http_addr(), "/metrics").await;
    assert!(metrics.contains("attnwatch_feedback_series 2"), "{metrics}");

    // Live, without a restart: the same spike again, later (where the
    // daily curve is higher, so it also breaks the range both series have
    // learned), on both series.
    let spike2 = (n + 20).next_multiple_of(48) + 12;
    let n2 = spike2 + 20;
    let mut more = series(n2, spike, 11);
    more[spike2].1 = 22.0 + 3.0 * (spike2 as f64 * std::f64::consts::TAU / 48.0).sin();
    let calm_more = series(n2, usize::MAX, 12);
    let spike2_ts = more[spike2].0;
    for i in n..n2 {
        let (ts, v) = more[i];
        for s in ["fb-marked", "fb-other"] {
            produce(&p, &names.input, s, &sample(s, ts, v)).await;
        }
        produce(
            &p,
            &names.input,
            "fb-missed",
            &sample("fb-missed", ts, calm_more[i].1),
        )
        .await;
    }
    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let both2 = |g: &[Got]| {
        at(g, "fb-marked", spike2_ts).is_some() && at(g, "fb-other", spike2_ts).is_some()
    };
    assert!(
        read_until(&reader(&names.output), &mut live, deadline, both2).await,
        "no outputs at the second spike {spike2_ts}"
    );
    let other2 = at(&live, "fb-other", spike2_ts).unwrap();
    let marked2 = at(&live, "fb-marked", spike2_ts).unwrap();
    assert_eq!(
        other2["alert"], true,
        "the other series alerts again: {other2}"
    );
    assert_eq!(
        marked2["anomaly"], false,
        "the marked series is quiet on the same spike, live: {marked2}"
    );
    shutdown.cancel();
    app.wait().await.unwrap();

    // Restart, replaying the same input into a fresh output topic.
    let replay = Names::new("feedback-replay");
    cfg.kafka.group_id = replay.group.clone();
    cfg.kafka.output_topic = replay.output.clone();
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    assert!(
        read_until(&reader(&replay.output), &mut again, deadline, both).await,
        "no replayed outputs at the spike"
    );
    let taught = |g: &[Got]| at(g, "fb-missed", peak_ts).is_some();
    assert!(
        read_until(&reader(&replay.output), &mut again, deadline, taught).await,
        "no replayed output at the missed stretch's peak"
    );
    let boosted = at(&again, "fb-missed", peak_ts).unwrap();
    let want = (1.1f64).min(1.5 * peak);
    let got = boosted["score"].as_f64().unwrap();
    eprintln!("missed: the stretch's peak {peak} at {peak_ts} scores {got} after the restart");
    assert!(
        (got - want).abs() < 1e-6 * want,
        "the missed stretch's peak {peak} now scores {want}: {boosted}"
    );
    assert_eq!(boosted["anomaly"], want > 1.0, "{boosted}");
    let marked = at(&again, "fb-marked", spike_ts).unwrap();
    let other = at(&again, "fb-other", spike_ts).unwrap();
    assert_eq!(
        other["alert"], true,
        "the other series still alerts: {other}"
    );
    assert_eq!(
        marked["alert"], false,
        "the marked series no longer alerts: {marked}"
    );
    assert_eq!(marked["anomaly"], false, "{marked}");
    assert!(
        marked["score"].as_f64().unwrap() <= marked["threshold"].as_f64().unwrap(),
        "{marked}"
    );
    // Everything before the mark's point scores as before on both series.
    let before = |s: &str, g: &[Got]| -> Vec<f64> {
        let mut v: Vec<(i64, f64)> = g
            .iter()
            .map(Got::json)
            .filter(|j| j["series"] == s && j["ts"].as_i64().unwrap() < spike_ts)
            .map(|j| (j["ts"].as_i64().unwrap(), j["score"].as_f64().unwrap()))
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|x| x.1).collect()
    };
    shutdown.cancel();
    app.wait().await.unwrap();
    let (first, second) = (before("fb-other", &out), before("fb-other", &again));
    let k = first.len().min(second.len());
    assert!(k > 50, "{k} points compared");
    assert_eq!(first[..k], second[..k], "the other series is unaffected");
}
