//! Model hot reload on the real broker: the model file is replaced under
//! the running service (a broken file, a model that breaks the running
//! contract, a new version, a version declared compatible) and SIGHUP is
//! sent. Bad models are refused with the old one running; good ones are
//! swapped in with calibrations reset or kept as declared; every point of
//! the series is published exactly once throughout, and each output names
//! the model that scored it.
//!
//! Its own test binary: SIGHUP goes to the whole process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use attnwatch::app::App;
use common::*;
use tokio_util::sync::CancellationToken;

/// Copy the committed model to `dst` with metadata entries replaced or
/// added (with the `onnx` package of the venv `scripts/setup` made).
fn variant(dst: &Path, meta: &[(&str, &str)]) {
    let venv = std::env::var_os("VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/attnwatch/venv"))
        })
        .unwrap();
    let script = "import onnx, sys\n\
        m = onnx.load(sys.argv[1])\n\
        props = {p.key: p for p in m.metadata_props}\n\
        for kv in sys.argv[3:]:\n\
        \x20   k, v = kv.split('=', 1)\n\
        \x20   if k in props: props[k].value = v\n\
        \x20   else:\n\
        \x20       e = m.metadata_props.add(); e.key = k; e.value = v\n\
        onnx.save(m, sys.argv[2])\n";
    let out = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(script)
        .arg(model_path())
        .arg(dst)
        .args(meta.iter().map(|(k, v)| format!("{k}={v}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replace `path` atomically with `from`'s bytes.
fn replace(path: &Path, from: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn metric(addr: std::net::SocketAddr, line_prefix: &str) -> Option<String> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .map(str::to_string)
}

async fn reloads(addr: std::net::SocketAddr, result: &str) -> u64 {
    metric(
        addr,
        &format!("attnwatch_model_reloads_total{{result=\"{result}\"}} "),
    )
    .await
    .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
    .unwrap_or(0)
}

/// Wait until `attnwatch_model_reloads_total{result}` reaches `n`.
async fn wait_reloads(addr: std::net::SocketAddr, result: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reloads(addr, result).await < n {
        assert!(Instant::now() < deadline, "no {result} reload #{n} in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn model_info(addr: std::net::SocketAddr) -> String {
    metric(addr, "attnwatch_model_info{").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_swap_good_models_refuse_bad_ones_and_lose_nothing() {
    let dir = std::env::temp_dir().join(unique("attnwatch-reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("model.onnx");
    std::fs::copy(model_path(), &live).unwrap();
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"not an onnx model").unwrap();
    let (min64, v101, v102) = (
        dir.join("min64.onnx"),
        dir.join("v101.onnx"),
        dir.join("v102.onnx"),
    );
    variant(
        &min64,
        &[
            ("attnwatch.min_points", "64"),
            ("attnwatch.model_version", "9.9.9"),
        ],
    );
    variant(&v101, &[("attnwatch.model_version", "1.0.1-reload")]);
    variant(
        &v102,
        &[
            ("attnwatch.model_version", "1.0.2-reload"),
            ("attnwatch.scores_compatible_with", "1.0.0, 1.0.1-reload"),
        ],
    );

    let names = Names::new("reload");
    create_topics(&names, 1).await;
    let mut cfg = config(&names);
    cfg.model.path = live.clone();
    cfg.model.reload_poll = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let app = App::start(cfg, shutdown.clone()).await.unwrap();
    let addr = app.http_addr();
    assert!(model_info(addr).await.contains("version=\"1.0.0\""));

    let c = contract();
    let n = c.window + 400;
    let points = series(n, c.window + 350, 5);
    let p = producer();
    let out = reader(&names.output);
    let mut got = Vec::new();
    let first_part = c.window + 100;
    for (ts, v) in &points[..first_part] {
        produce(&p, &names.input, "s", &sample("s", *ts, *v)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let want_first = first_part - c.min_points - 1;
    assert!(read_until(&out, &mut got, deadline, |g| g.len() >= want_first).await);

    // A broken file: load fails, the running model stays.
    replace(&live, &garbage);
    wait_reloads(addr, "failed", 1).await;
    assert!(model_info(addr).await.contains("version=\"1.0.0\""));
    // A model that would change min_points: refused.
    replace(&live, &min64);
    wait_reloads(addr, "refused", 1).await;
    assert!(model_info(addr).await.contains("version=\"1.0.0\""));
    // A new version, not declared compatible: swapped, calibrations reset.
    replace(&live, &v101);
    wait_reloads(addr, "reset_calibration", 1).await;
    assert!(model_info(addr).await.contains("version=\"1.0.1-reload\""));
    // Scoring continues between reloads.
    for (ts, v) in &points[first_part..first_part + 100] {
        produce(&p, &names.input, "s", &sample("s", *ts, *v)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(read_until(&out, &mut got, deadline, |g| g.len() >= want_first + 100).await);
    // Declared compatible with 1.0.1-reload: calibrations kept.
    replace(&live, &v102);
    wait_reloads(addr, "kept_calibration", 1).await;
    // SIGHUP reloads the same file: same version, calibrations kept.
    let hup = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_reloads(addr, "kept_calibration", 2).await;
    let info = model_info(addr).await;
    assert!(info.contains("version=\"1.0.2-reload\""), "{info}");
    assert_eq!(info.matches("attnwatch_model_info{").count(), 1);

    for (ts, v) in &points[first_part + 100..] {
        produce(&p, &names.input, "s", &sample("s", *ts, *v)).await;
    }
    // Every point after warm-up exactly once (the newest bucket stays open).
    let want = n - c.min_points - 1;
    let deadline = Instant::now() + Duration::from_secs(90);
    assert!(
        read_until(&out, &mut got, deadline, |g| g.len() >= want).await,
        "{} of {want}",
        got.len()
    );
    read_until(
        &out,
        &mut got,
        Instant::now() + Duration::from_secs(3),
        |g| g.len() > want,
    )
    .await;
    assert_eq!(got.len(), want, "duplicates or extra outputs");
    let by_ts: BTreeMap<i64, String> = got
        .iter()
        .map(|g| {
            let v = g.json();
            (
                v["ts"].as_i64().unwrap(),
                v["model"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(by_ts.len(), want, "every point once");
    let models: Vec<&String> = by_ts.values().collect();
    assert_eq!(models[0], "attnwatch-forecaster@1.0.0");
    assert_eq!(models[want - 1], "attnwatch-forecaster@1.0.2-reload");
    // Model ids change only forward in time (old, then 1.0.1, then 1.0.2).
    let order = |m: &str| {
        ["@1.0.0", "@1.0.1-reload", "@1.0.2-reload"]
            .iter()
            .position(|s| m.ends_with(s))
            .unwrap()
    };
    assert!(models.windows(2).all(|w| order(w[0]) <= order(w[1])));
    assert!(models.iter().any(|m| m.ends_with("@1.0.1-reload")));

    shutdown.cancel();
    app.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
