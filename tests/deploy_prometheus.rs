//! The shipped Prometheus config, alert rules and Grafana dashboard against
//! a live attnwatch: Debian's real Prometheus server scrapes the service
//! (the config adapted only in its target address), and every PromQL
//! expression of the dashboard and the alert rules is run through the HTTP
//! API. Each must parse and evaluate; the throughput panels must return data;
//! and every `attnwatch_` metric an expression names must be in the
//! service's own `/metrics` (a misspelled name evaluates to nothing in
//! Prometheus without an error: this is what catches it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attnwatch::app::App;
use common::*;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Kills the Prometheus child process when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every `expr` of the dashboard's panel targets.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/attnwatch.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// Every `expr:` of the alert rules (one line each in the shipped file).
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let l = line.trim_start();
        if let Some(n) = l.strip_prefix("- alert: ") {
            name = n.trim().to_string();
        } else if let Some(e) = l.strip_prefix("expr: ") {
            out.push((name.clone(), e.trim().to_string()));
        }
    }
    assert_eq!(
        out.len(),
        text.matches("- alert: ").count(),
        "one single-line expr per alert"
    );
    out
}

/// The `attnwatch_` metric names an expression uses.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("attnwatch_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Run an instant query; `None` while the server does not answer.
async fn try_query(base: &str, expr: &str) -> Option<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?;
    serde_json::from_str(&resp.text().await.ok()?).ok()
}

async fn query(base: &str, expr: &str) -> serde_json::Value {
    try_query(base, expr).await.expect("prometheus answers")
}

fn start_prometheus(dir: &Path, target: std::net::SocketAddr, port: u16) -> Server {
    let shipped = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(shipped.contains("attnwatch:9898"));
    std::fs::write(
        dir.join("prometheus.yml"),
        shipped.replace("attnwatch:9898", &target.to_string()),
    )
    .unwrap();
    std::fs::copy(
        repo().join("deploy/prometheus/alerts.yml"),
        dir.join("alerts.yml"),
    )
    .unwrap();
    let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(&bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} (scripts/setup installs Debian's prometheus): {e}")
        });
    Server(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_runs_against_a_live_service() {
    let names = Names::new("prom");
    create_topics(&names, 1).await;
    let shutdown = CancellationToken::new();
    let app = App::start(config(&names), shutdown.clone()).await.unwrap();

    // Keep data flowing (with some bad records) while Prometheus scrapes.
    let stop = CancellationToken::new();
    let feeder = {
        let (input, stop) = (names.input.clone(), stop.clone());
        tokio::spawn(async move {
            let p = producer();
            let points = series(5000, 700, 5);
            for (i, (ts, v)) in points.iter().enumerate() {
                if stop.is_cancelled() {
                    break;
                }
                produce(&p, &input, "svc", &sample("svc", *ts, *v)).await;
                if i % 50 == 0 {
                    produce(&p, &input, "svc", b"{broken").await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let dir = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let _server = start_prometheus(&dir, app.http_addr(), port);
    let base = format!("http://127.0.0.1:{port}");

    // Bounded waits: ready, then two scrapes with data so rate() has points.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut have_data = false;
    while Instant::now() < deadline {
        let v = try_query(
            &base,
            "count_over_time(attnwatch_records_published_total[1m]) >= 3",
        )
        .await;
        if v.is_some_and(|v| {
            v["status"] == "success" && !v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
        }) {
            have_data = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        have_data,
        "Prometheus never scraped attnwatch; its log:\n{log}"
    );

    // Every metric an expression names is one the service exposes (a
    // histogram through its _bucket, _sum and _count series).
    let (_, exposed) = http_get(app.http_addr(), "/metrics").await;
    let mut checked = 0;
    for (source, list) in [("dashboard", dashboard_exprs()), ("alert", alert_exprs())] {
        for (name, expr) in list {
            for metric in names_in(&expr) {
                let present = exposed.lines().any(|l| {
                    l.strip_prefix(metric.as_str())
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                });
                assert!(
                    present,
                    "{source} {name} names {metric}, which attnwatch's /metrics does not have: {expr}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "checked {checked} metric names");

    let mut ran = 0;
    for (source, list) in [("dashboard", dashboard_exprs()), ("alert", alert_exprs())] {
        for (name, expr) in list {
            let v = query(&base, &expr).await;
            assert_eq!(v["status"], "success", "{source} {name}: {expr}\n{v}");
            let result = v["data"]["result"].as_array().unwrap();
            let shown: Vec<String> = result
                .iter()
                .map(|r| format!("{}={}", r["metric"], r["value"][1].as_str().unwrap_or("?")))
                .collect();
            println!(
                "[{source}] {name}: {expr}\n    -> {} series: {}",
                result.len(),
                shown.join("; ")
            );
            if name.starts_with("Throughput") {
                assert!(
                    !result.is_empty(),
                    "throughput panel returned no data: {expr}"
                );
                let value: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
                assert!(value > 0.0, "throughput is zero: {expr}");
            }
            ran += 1;
        }
    }
    assert!(ran >= 20, "ran {ran} expressions");

    // The rules themselves load and evaluate without errors.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut healthy = false;
    while Instant::now() < deadline && !healthy {
        let resp = reqwest::get(format!("{base}/api/v1/rules"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        healthy = rules.len() == alert_exprs().len() && rules.iter().all(|r| r["health"] == "ok");
        if !healthy {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(healthy, "alert rules did not all evaluate with health ok");

    stop.cancel();
    feeder.await.unwrap();
    shutdown.cancel();
    app.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
