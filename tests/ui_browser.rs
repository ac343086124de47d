//! The web page in a real headless Chromium (Debian's `chromium`, installed
//! by `scripts/setup`), against a live attnwatch fed through the real
//! broker, with an API token: the JSON API answers only with the token, the
//! page asks for it (a wrong one is refused), then lists the anomalies, a
//! mouse click on one draws its explanation (the heatmap's pixels are
//! checked), the token also works from the address (`/#token=...`), and
//! the series filter works. Without a token the page is served directly.
//! Every anomaly's own address (`/#anomaly=ID`) draws it. A labelled NAB
//! series is caught inside its window, that alert's address explains it,
//! and its "Not an anomaly" button records the operator's feedback. The
//! screenshots are kept under `target/ui-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use attnwatch::app::App;
use browser::{click, type_into, Browser};
use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_anomalies_and_a_click_draws_the_explanation() {
    let names = Names::new("ui");
    create_topics(&names, 1).await;
    let shutdown = CancellationToken::new();
    // The API token, from a file, as a mounted Secret would give it.
    let token = unique("ui-t0ken");
    let token_file = std::env::temp_dir().join(unique("attnwatch-ui-token"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut cfg = config(&names);
    cfg.server.token_file = Some(token_file.clone());
    let keep = cfg.ui.points_per_series;
    let app = App::start(cfg, shutdown.clone()).await.unwrap();
    std::fs::remove_file(&token_file).unwrap();
    let addr = app.http_addr();
    let http_get = |addr, path: &str| {
        let (path, token) = (path.to_string(), token.clone());
        async move { http_get_with(addr, &path, Some(&token)).await }
    };
    // Without the token (or with another one): 401, the page and the API.
    for path in ["/", "/api/anomalies", "/api/series"] {
        for wrong in [None, Some("ui-t0ken")] {
            let (status, body) = http_get_with(addr, path, wrong).await;
            assert_eq!(status, 401, "{path}: {body}");
            assert!(!body.contains(&token));
        }
    }
    // /metrics and the health endpoints stay open (the defaults).
    for path in ["/metrics", "/healthz"] {
        assert_eq!(common::http_get(addr, path).await.0, 200, "{path}");
    }

    // Two series with a spike each, through Kafka.
    let n = contract().window + 300;
    let p = producer();
    for (name, seed) in [("web-01/cpu", 1), ("db-7/latency", 2)] {
        for (ts, v) in series(n, n - 60, seed) {
            produce(&p, &names.input, name, &sample(name, ts, v)).await;
        }
    }

    // The API: both series' anomalies arrive (deadline-bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    let list = loop {
        let (status, body) = http_get(addr, "/api/anomalies").await;
        assert_eq!(status, 200, "{body}");
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        let has = |s: &str| list.iter().any(|a| a["series"] == s);
        if has("web-01/cpu") && has("db-7/latency") {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "anomalies of both series not listed in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<u64> = list.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    let times: Vec<i64> = list.iter().map(|a| a["ts"].as_i64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest point time first: {times:?}"
    );
    let (_, only_db) = http_get(addr, "/api/anomalies?series=db-7").await;
    let only_db: Vec<Value> = serde_json::from_str(&only_db).unwrap();
    assert!(!only_db.is_empty() && only_db.iter().all(|a| a["series"] == "db-7/latency"));
    let (status, detail) = http_get(addr, &format!("/api/anomalies/{}", ids[0])).await;
    assert_eq!(status, 200);
    let detail: Value = serde_json::from_str(&detail).unwrap();
    let tokens = detail["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), contract().tokens(), "a full context");
    assert!(!detail["top"].as_array().unwrap().is_empty());
    assert!(!detail["context_values"].as_array().unwrap().is_empty());
    let (status, s) = http_get(addr, "/api/series/web-01%2Fcpu").await;
    assert_eq!(status, 200, "{s}");
    let s: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        s["points"].as_array().unwrap().len(),
        keep,
        "ui.points_per_series"
    );
    assert_eq!(http_get(addr, "/api/series/nope").await.0, 404);
    assert_eq!(http_get(addr, "/api/anomalies/999999").await.0, 404);
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("attnwatch_http_unauthorized_total{endpoint=\"page\"} 2"),
        "{metrics}"
    );
    let held = |kind: &str| -> i64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("attnwatch_ui_held{{kind=\"{kind}\"}} ")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(held("series"), 2);
    assert_eq!(held("points"), 2 * keep as i64);
    assert!(held("anomalies") >= 2);

    // The page, in the browser.
    let url = format!("http://{addr}/");
    let shots = tokio::task::spawn_blocking(move || browse(&url, &token))
        .await
        .unwrap();
    for s in &shots {
        assert!(std::fs::metadata(s).unwrap().len() > 10_000, "{s:?}");
    }

    shutdown.cancel();
    app.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_page_is_served_directly_and_new_anomalies_are_pushed() {
    let names = Names::new("ui-open");
    create_topics(&names, 1).await;
    let shutdown = CancellationToken::new();
    let app = App::start(config(&names), shutdown.clone()).await.unwrap();
    let addr = app.http_addr();
    for path in ["/", "/api/anomalies", "/metrics"] {
        assert_eq!(http_get(addr, path).await.0, 200, "{path}");
    }
    // The event stream, opened as a client would, before any anomaly exists.
    let mut events = reqwest::get(format!("http://{addr}/api/events"))
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let url = format!("http://{addr}/");
    let b = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch();
        b.call("Page.enable", json!({}));
        b.call("Page.navigate", json!({ "url": url }));
        // The page's first API read succeeded (the list is empty), and its
        // event stream is open.
        let status = b.wait_for(
            "document.getElementById('status')?.textContent || ''",
            |v| v.as_str().is_some_and(|s| s.contains("updated")),
        );
        assert!(status.as_str().unwrap().contains("updated"));
        let unlock = b.eval("document.getElementById('unlock') === null");
        assert_eq!(unlock, json!(true), "no token asked for");
        b.wait_for("document.body.dataset.live || ''", |v| v == &json!("1"));
        b
    })
    .await
    .unwrap();

    // Now an anomaly happens: it is pushed to the stream and to the page.
    let name = "push/web-01";
    let n = contract().window + 300;
    let p = producer();
    for (ts, v) in series(n, n - 60, 5) {
        produce(&p, &names.input, name, &sample(name, ts, v)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut text = String::new();
    while !(text.contains("event: anomaly") && text.contains(name)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no anomaly event in time: {text:?}");
        if let Ok(chunk) = tokio::time::timeout(left, events.chunk()).await {
            let chunk = chunk.unwrap().expect("the stream ended early");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:").filter(|d| d.contains(name)))
        .unwrap();
    let a: Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(a["series"], name, "{a}");
    assert!(
        a["score"].as_f64().unwrap() > a["threshold"].as_f64().unwrap(),
        "{a}"
    );
    let b = tokio::task::spawn_blocking(move || {
        let mut b = b;
        let pushed = b.wait_for("document.body.dataset.pushed || '0'", |v| {
            v.as_str().is_some_and(|s| s != "0")
        });
        assert_ne!(pushed, json!("0"));
        b.wait_for("document.getElementById('list').textContent", |v| {
            v.as_str().is_some_and(|s| s.contains("push/web-01"))
        });
        b
    })
    .await
    .unwrap();
    // Shutdown ends the open streams (the browser's and this one).
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), app.wait())
        .await
        .expect("the service stops with event streams open")
        .unwrap();
    drop((b, events));
}

/// A labelled NAB series replayed through Kafka: the service alerts inside
/// the labelled anomaly window, and that alert's own address draws its
/// explanation (the screenshot the demo's page shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_nab_anomaly_is_caught_and_its_address_explains_it() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/nab-dev");
    let file = attnwatch::eval::load_corpus(&dir, &["art_daily_jumpsup".into()])
        .unwrap()
        .remove(0);
    let (first, last) = file.labels.windows[0];
    let (start, end) = (file.ts[first], file.ts[last]);
    let names = Names::new("ui-nab");
    create_topics(&names, 1).await;
    let mut cfg = config(&names);
    cfg.feedback.topic = unique("ui-feedback");
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();
    let addr = app.http_addr();
    let p = producer();
    let series = "art_daily_jumpsup";
    for (ts, v) in file.ts.iter().zip(&file.values) {
        produce(&p, &names.input, series, &sample(series, *ts, *v)).await;
    }
    // The first alert (an anomalous point that opened an incident) inside
    // the labelled window, deadline-bounded.
    let deadline = Instant::now() + Duration::from_secs(120);
    let caught = loop {
        let (_, body) = http_get(addr, "/api/anomalies?limit=1000").await;
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        let inside = list
            .into_iter()
            .filter(|a| {
                a["alert"] == json!(true) && (start..=end).contains(&a["ts"].as_i64().unwrap())
            })
            .min_by_key(|a| a["ts"].as_i64().unwrap());
        if let Some(a) = inside {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no alert inside the labelled window: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let id = caught["id"].as_u64().unwrap().to_string();
    let url = format!("http://{addr}/#anomaly={id}");
    // The incident the alert opened is listed, and has an address of its own.
    let (_, body) = http_get(addr, "/api/incidents").await;
    let incidents: Vec<Value> = serde_json::from_str(&body).unwrap();
    let incident = incidents
        .iter()
        .find(|i| i["opened_ts"] == caught["ts"])
        .unwrap_or_else(|| panic!("no incident opened at {}: {body}", caught["ts"]))
        .clone();
    let incident_id = incident["id"].as_str().unwrap().to_string();
    assert_eq!(incident["members"][0]["series"], series, "{incident}");
    let encoded = incident_id
        .replace('=', "%3D")
        .replace('@', "%40")
        .replace('/', "%2F");
    let incident_url = format!("http://{addr}/#incident={encoded}");
    let shot = tokio::task::spawn_blocking(move || {
        // The incident's address lists it first, describes it and draws
        // its strongest anomaly.
        let mut b = Browser::open(&incident_url);
        b.wait_for(
            "(document.body && document.body.dataset.incident) || ''",
            |v| v == &json!(incident_id),
        );
        let row = b.eval("document.querySelector('#incidents tr.selected').dataset.id");
        assert_eq!(
            row,
            json!(incident_id),
            "the incident is listed and selected"
        );
        let detail = b.eval("document.getElementById('incident-detail').textContent");
        let detail = detail.as_str().unwrap();
        assert!(
            detail.contains("Incident") && detail.contains("art_daily_jumpsup"),
            "{detail}"
        );
        assert!(detail.contains("expected"), "{detail}");
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        b.screenshot(&dir.join("5-nab-incident.png"));
        drop(b);
        let mut b = Browser::open(&url);
        b.wait_for(
            "(document.body && document.body.dataset.drawn) || ''",
            |v| v == &json!(id),
        );
        let summary = b.eval("document.getElementById('expl-summary').textContent");
        let summary = summary.as_str().unwrap();
        assert!(
            summary.contains("This point opened its incident"),
            "{summary}"
        );
        assert!(summary.contains("expected"), "{summary}");
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let shot = b.screenshot(&dir.join("4-nab-caught.png"));
        // The operator says it is not an anomaly (a real click).
        click(&mut b, "#not-anomaly");
        b.wait_for(
            "document.getElementById('feedback-status').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.starts_with("Marked not an anomaly"))
            },
        );
        shot
    })
    .await
    .unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "{shot:?}");
    let (status, body) = http_get(addr, "/api/feedback").await;
    assert_eq!(status, 200, "{body}");
    let marks: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(marks.len(), 1, "{body}");
    assert_eq!(marks[0]["verdict"], "not_anomaly");
    assert_eq!(marks[0]["series"], series);
    assert_eq!(marks[0]["start_ts"], caught["ts"]);
    shutdown.cancel();
    app.wait().await.unwrap();
}

/// Drive the page: it asks for the token (a wrong one is refused), then
/// lists the anomalies; click the first anomaly, check the heatmap; open it
/// again with the token in the address; filter by series. Returns the
/// screenshots taken.
fn browse(url: &str, token: &str) -> Vec<PathBuf> {
    let mut b = Browser::open(url);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let mut shots = Vec::new();

    // Without a token the page asks for one; a wrong one is refused.
    b.wait_for("document.getElementById('unlock') !== null", |v| {
        v.as_bool() == Some(true)
    });
    type_into(&mut b, "token", "not-the-token");
    click(&mut b, "#open");
    b.wait_for("document.getElementById('unlock-error').textContent", |v| {
        v.as_str().is_some_and(|s| s.contains("not accepted"))
    });
    b.screenshot(&dir.join("0-token-refused.png"));
    type_into(&mut b, "token", token);
    click(&mut b, "#open");

    let rows = b.wait_for("document.querySelectorAll('#list tr').length", |v| {
        v.as_u64().unwrap_or(0) >= 2
    });
    shots.push(b.screenshot(&dir.join("1-anomaly-list.png")));
    let kept = b.eval("sessionStorage.getItem('attnwatch.token')");
    assert_eq!(
        kept.as_str(),
        Some(token),
        "kept in the tab's sessionStorage"
    );

    // A fresh load with the token in the address only (the fragment never
    // reaches the server): the page opens, and the token leaves the address.
    b.eval("sessionStorage.clear(), true");
    b.call("Page.navigate", json!({ "url": "about:blank" }));
    b.wait_for("location.href", |v| v == "about:blank");
    b.call(
        "Page.navigate",
        json!({ "url": format!("{url}#token={token}") }),
    );
    b.wait_for("document.querySelectorAll('#list tr').length", |v| {
        v.as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(
        b.eval("location.hash"),
        json!(""),
        "the token left the address"
    );

    // A real mouse click in the middle of the first row.
    let rect = click(&mut b, "#list tr");
    let drawn = b.wait_for("document.body.dataset.drawn || ''", |v| {
        v.as_str().is_some_and(|s| !s.is_empty())
    });
    assert_eq!(drawn, rect["id"], "the clicked anomaly is the one drawn");
    assert_eq!(
        b.eval("location.hash").as_str().unwrap(),
        format!("#anomaly={}", rect["id"].as_str().unwrap()),
        "the selection has an address of its own"
    );
    // The heatmap has a cell per context token and coloured pixels.
    let cells = b.eval("Number(document.getElementById('heatmap').dataset.cells || 0)");
    assert!(cells.as_u64().unwrap() >= 64, "heatmap cells: {cells}");
    let coloured = b.eval(
        "(() => { const c = document.getElementById('heatmap'); \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
         for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i + 1] < 200)) n++; return n; })()",
    );
    assert!(
        coloured.as_u64().unwrap() > 100,
        "heatmap shows no attention: {coloured} coloured pixels"
    );
    let words = b.eval("document.querySelectorAll('#words li').length");
    assert!(words.as_u64().unwrap() >= 1, "top-attended ranges in words");
    let text = b.eval("document.getElementById('words').textContent");
    assert!(
        text.as_str().unwrap().contains("% of the attention on"),
        "{text}"
    );
    shots.push(b.screenshot(&dir.join("2-explanation.png")));

    // The address of another anomaly, opened afresh, draws that one.
    let last = b.eval("Array.from(document.querySelectorAll('#list tr')).pop().dataset.id");
    let last = last.as_str().unwrap().to_string();
    assert_ne!(json!(last), rect["id"]);
    b.call("Page.navigate", json!({ "url": "about:blank" }));
    b.wait_for("location.href", |v| v == "about:blank");
    b.call(
        "Page.navigate",
        json!({ "url": format!("{url}#anomaly={last}") }),
    );
    b.wait_for(
        "(document.body && document.body.dataset.drawn) || ''",
        |v| v == &json!(last),
    );

    // The filter.
    b.call(
        "Runtime.evaluate",
        json!({"expression": "document.getElementById('filter').focus()"}),
    );
    b.call("Input.insertText", json!({"text": "web-01"}));
    b.wait_for(
        "Array.from(document.querySelectorAll('#list tr')).every(r => r.textContent.includes('web-01')) \
         && document.querySelectorAll('#list tr').length > 0",
        |v| v.as_bool() == Some(true),
    );
    let after = b.eval("document.querySelectorAll('#list tr').length");
    assert!(
        after.as_u64().unwrap() < rows.as_u64().unwrap(),
        "{after} of {rows}"
    );
    shots.push(b.screenshot(&dir.join("3-filtered.png")));
    shots
}
