//! Incidents to a real Alertmanager (Debian's `prometheus-alertmanager`,
//! installed by `scripts/setup`), through the real broker, the real ONNX
//! Runtime and the committed model. Two series of one host spike together
//! and a third, on another host, stays calm: Alertmanager receives one
//! incident for the host's spike, holding both series, with its labels, an
//! annotation that says why and a link to the page, and its webhook
//! receiver sees it fire and then resolve once the host has been quiet for
//! `alerting.gap`. (The pattern memory flags the host again later, as the
//! spike's day stays new; those later anomalies more than `gap` apart open
//! incidents of their own, by the rule, and are for the same host.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attnwatch::app::App;
use common::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Alertmanager, stopped on drop.
struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn binary() -> String {
    for name in ["prometheus-alertmanager", "alertmanager"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_string();
        }
    }
    panic!("Alertmanager is not installed: run scripts/setup (Debian's prometheus-alertmanager)");
}

/// Start Alertmanager with one webhook receiver at `hook`, sending
/// resolved notifications too, grouping by incident with short waits.
async fn start_alertmanager(hook: SocketAddr) -> Alertmanager {
    let dir = std::env::temp_dir().join(unique("attnwatch-am"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: hook\n  group_by: ['incident']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{hook}/hook\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let am = Alertmanager {
        child,
        addr,
        _dir: TempDir(dir),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = || async move {
        reqwest::get(format!("http://{addr}/-/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    while !ready().await {
        assert!(
            Instant::now() < deadline,
            "Alertmanager not ready at {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    am
}

/// A webhook receiver that keeps every notification.
async fn start_hook() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(v);
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

fn labelled(series: &str, host: &str, ts: i64, v: f64) -> Vec<u8> {
    serde_json::json!({"series": series, "ts": ts, "value": v, "labels": {"host": host}})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_is_one_incident_in_alertmanager_and_it_resolves() {
    let (hook, notifications) = start_hook().await;
    let am = start_alertmanager(hook).await;
    let names = Names::new("am");
    create_topics(&names, 1).await;
    let mut cfg = config(&names);
    cfg.alerting.alertmanager_url = format!("http://{}", am.addr);
    cfg.alerting.group_by = vec!["host".into()];
    cfg.alerting.gap = Duration::from_secs(20 * 60);
    cfg.alerting.page_url = "http://attnwatch.example:9898".into();
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();

    // Two series of web-1 spike at the same minute; web-2 stays calm. The
    // quiet minutes after the spike close its incident (gap 20 min).
    let n = contract().window + 300;
    let spike = n - 100;
    let p = producer();
    let (cpu, mem, calm) = (
        series(n, spike, 1),
        series(n, spike, 2),
        series(n, usize::MAX, 3),
    );
    let send = |range: std::ops::Range<usize>| {
        let (p, input) = (&p, &names.input);
        let (cpu, mem, calm) = (&cpu, &mem, &calm);
        async move {
            for i in range {
                let ts = cpu[i].0;
                produce(
                    p,
                    input,
                    "web-1/cpu",
                    &labelled("web-1/cpu", "web-1", ts, cpu[i].1),
                )
                .await;
                produce(
                    p,
                    input,
                    "web-1/mem",
                    &labelled("web-1/mem", "web-1", ts, mem[i].1),
                )
                .await;
                produce(
                    p,
                    input,
                    "web-2/cpu",
                    &labelled("web-2/cpu", "web-2", ts, calm[i].1),
                )
                .await;
            }
        }
    };
    let alerts_with = |status: &str| -> Vec<Value> {
        notifications
            .lock()
            .unwrap()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["status"] == status)
            .collect()
    };
    let first = format!("host=web-1@{}", cpu[spike].0);
    let of_first = |alerts: Vec<Value>| -> Vec<Value> {
        alerts
            .into_iter()
            .filter(|a| a["labels"]["incident"] == first.as_str())
            .collect()
    };
    // Up to just after the spike: the incident fires (Alertmanager's
    // webhook, after its group_wait). Then the rest, in which the host
    // goes quiet for longer than the gap: it resolves.
    send(0..spike + 3).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while of_first(alerts_with("firing")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{first} did not fire: {:?}",
            notifications.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(spike + 3..n).await;
    while of_first(alerts_with("resolved")).is_empty() {
        if Instant::now() > deadline {
            let (_, anomalies) = http_get(app.http_addr(), "/api/anomalies?limit=1000").await;
            let anomalies: Vec<Value> = serde_json::from_str(&anomalies).unwrap();
            let seen: Vec<(String, i64, String)> = anomalies
                .iter()
                .map(|a| {
                    (
                        a["series"].to_string(),
                        a["ts"].as_i64().unwrap(),
                        a["channel"].to_string(),
                    )
                })
                .collect();
            let got: Vec<(String, String)> = alerts_with("firing")
                .into_iter()
                .chain(alerts_with("resolved"))
                .map(|a| (a["status"].to_string(), a["labels"]["incident"].to_string()))
                .collect();
            panic!(
                "{first} not resolved; got (status, incident) {got:?}; anomalies (series, ts, channel) {seen:?}; last input ts {}",
                calm[n - 1].0
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let firing = alerts_with("firing");
    let resolved = alerts_with("resolved");
    assert!(!firing.is_empty(), "it fired before it resolved");
    for a in firing.iter().chain(&resolved) {
        assert_eq!(a["labels"]["alertname"], "AttnwatchAnomaly", "{a}");
        assert_eq!(
            a["labels"]["host"], "web-1",
            "one incident for web-1 only: {a}"
        );
        assert!(
            a["labels"]["incident"]
                .as_str()
                .unwrap()
                .starts_with("host=web-1@"),
            "{a}"
        );
    }
    assert!(!of_first(firing.clone()).is_empty(), "{first} fired");
    let resolved_first = of_first(resolved.clone());
    let last = resolved_first.last().unwrap();
    let series = last["annotations"]["series"].as_str().unwrap();
    assert!(
        series.contains("web-1/cpu") && series.contains("web-1/mem") && !series.contains("web-2"),
        "both series of the host joined it: {last}"
    );
    let description = last["annotations"]["description"].as_str().unwrap();
    for words in ["expected", "driven by the", "channel", "attention"] {
        assert!(description.contains(words), "{description}");
    }
    assert!(
        last["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with("http://attnwatch.example:9898/#incident=host%3Dweb-1%40"),
        "{last}"
    );

    // Alertmanager's own API no longer lists it as active.
    let (status, body) = http_get(am.addr, "/api/v2/alerts?active=true").await;
    assert_eq!(status, 200);
    let active: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        active
            .iter()
            .all(|a| a["labels"]["incident"] != first.as_str()),
        "resolved: {body}"
    );
    let (_, metrics) = http_get(app.http_addr(), "/metrics").await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
    };
    assert!(value("attnwatch_incidents_total{event=\"open\"}") >= 1.0);
    assert!(
        value("attnwatch_incidents_total{event=\"update\"}") >= 1.0,
        "the second series joined"
    );
    assert!(value("attnwatch_incidents_total{event=\"close\"}") >= 1.0);
    assert!(value("attnwatch_alertmanager_sent_total{kind=\"close\"}") >= 1.0);
    assert_eq!(
        value("attnwatch_alertmanager_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    assert_eq!(
        value("attnwatch_alertmanager_dropped_total{reason=\"gave_up\"}"),
        0.0
    );
    shutdown.cancel();
    app.wait().await.unwrap();
}

/// The same outage without Alertmanager, to the incidents topic: open,
/// update (the second series joins) and close records, keyed by the
/// incident, each with the series, the strongest point in words and the
/// page's link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incidents_topic_gets_open_update_and_close_records() {
    let names = Names::new("incidents");
    create_topics(&names, 1).await;
    let mut cfg = config(&names);
    let topic = format!("{}-incidents", names.input);
    let made = attnwatch::tools::topics::create(&cfg.kafka, std::slice::from_ref(&topic), 1, 1)
        .await
        .unwrap();
    assert!(made.contains(&(topic.clone(), true)), "{made:?}");
    cfg.alerting.incidents_topic = topic.clone();
    cfg.alerting.group_by = vec!["host".into()];
    cfg.alerting.gap = Duration::from_secs(20 * 60);
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();
    let page = format!("http://{}/#anomaly=", app.http_addr());

    let n = contract().window + 300;
    let spike = n - 100;
    let (cpu, mem) = (series(n, spike, 1), series(n, spike, 2));
    let p = producer();
    for i in 0..n {
        let ts = cpu[i].0;
        produce(
            &p,
            &names.input,
            "web-1/cpu",
            &labelled("web-1/cpu", "web-1", ts, cpu[i].1),
        )
        .await;
        produce(
            &p,
            &names.input,
            "web-1/mem",
            &labelled("web-1/mem", "web-1", ts, mem[i].1),
        )
        .await;
    }
    let first = format!("host=web-1@{}", cpu[spike].0);
    let mut got = Vec::new();
    let closed = |g: &[Got]| {
        g.iter()
            .any(|m| m.json()["event"] == "close" && m.json()["incident"] == first.as_str())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    assert!(
        read_until(&reader(&topic), &mut got, deadline, closed).await,
        "no close record for {first}: {:?}",
        got.iter().map(Got::json).collect::<Vec<_>>()
    );
    let records: Vec<Value> = got
        .iter()
        .filter(|m| m.key.as_deref() == Some(first.as_str()))
        .map(Got::json)
        .collect();
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["open", "update", "close"], "{records:?}");
    let close = &records[2];
    let series: Vec<&str> = close["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["series"].as_str().unwrap())
        .collect();
    assert_eq!(series, ["web-1/cpu", "web-1/mem"]);
    assert_eq!(close["group"]["host"], "web-1");
    assert!(
        close["strongest"]["why"]
            .as_str()
            .unwrap()
            .contains("expected"),
        "{close}"
    );
    // The record links to the incident's own address on the page, and to
    // its strongest anomaly's.
    let encoded = first.replace('=', "%3D").replace('@', "%40");
    assert_eq!(
        close["page"],
        format!("http://{}/#incident={encoded}", app.http_addr()).as_str(),
        "{close}"
    );
    assert!(
        close["strongest"]["page"]
            .as_str()
            .unwrap()
            .starts_with(&page),
        "{close}"
    );
    // The page lists the same incident, closed, with both series.
    let (status, body) = http_get(app.http_addr(), &format!("/api/incidents/{encoded}")).await;
    assert_eq!(status, 200, "{body}");
    let on_page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(on_page["state"], "closed", "{on_page}");
    assert_eq!(on_page["members"].as_array().unwrap().len(), 2, "{on_page}");
    shutdown.cancel();
    app.wait().await.unwrap();
}
