//! The file path (`attnwatch score`) against the live Kafka path on a real
//! NAB dev file: the same points get the same scores. Plus the plot file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use attnwatch::app::App;
use attnwatch::backtest::{self, Columns, ScoreFile};
use attnwatch::config::Config;
use attnwatch::model::Engine;
use attnwatch::tools::replay;
use common::*;
use tokio_util::sync::CancellationToken;

fn nab_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/nab-dev/data/realTraffic/speed_7578.csv")
}

fn base_config() -> Config {
    let mut c = Config::from_toml_and_env("", Vec::<(String, String)>::new()).unwrap();
    c.model.path = model_path();
    c.model.onnxruntime_library = Some(ort_lib());
    // One window per inference call on both paths: the same calls, so the
    // same floats. (With batches of 2 the paths group windows differently
    // and ONNX Runtime's results differ in the last f32 bits, up to 1.7e-6
    // on a small raw score.)
    c.model.max_batch = 1;
    c
}

fn score_file(plot: Option<PathBuf>) -> (PathBuf, attnwatch::backtest::Summary) {
    let c = base_config();
    let mut engine = Engine::load(&c.model, &ort_lib()).unwrap();
    let out = std::env::temp_dir().join(format!("{}.parquet", unique("scored")));
    let opts = ScoreFile {
        input: nab_file(),
        output: out.clone(),
        columns: Columns {
            series: None,
            ts: "timestamp".into(),
            value: "value".into(),
        },
        plot,
    };
    let summary = backtest::run(&c, &mut engine, &opts).unwrap();
    (out, summary)
}

/// (alert, incident) by ts from the written output file.
fn file_alerts(path: &std::path::Path) -> BTreeMap<i64, (bool, Option<i64>)> {
    let df = backtest::files::read_table(path).unwrap();
    let ts = df.column("ts").unwrap().i64().unwrap().clone();
    let alert = df.column("alert").unwrap().bool().unwrap().clone();
    let incident = df.column("incident").unwrap().i64().unwrap().clone();
    (0..df.height())
        .map(|i| (ts.get(i).unwrap(), (alert.get(i).unwrap(), incident.get(i))))
        .collect()
}

/// (score, raw_score, value) by ts from the written output file.
fn file_scores(path: &std::path::Path) -> BTreeMap<i64, (f64, f64, f64)> {
    let df = backtest::files::read_table(path).unwrap();
    let col = |n: &str| df.column(n).unwrap().clone();
    let ts = col("ts");
    let ts = ts.i64().unwrap();
    let (score, raw, value) = (col("score"), col("raw_score"), col("value"));
    let (score, raw, value) = (
        score.f64().unwrap(),
        raw.f64().unwrap(),
        value.f64().unwrap(),
    );
    (0..df.height())
        .map(|i| {
            (
                ts.get(i).unwrap(),
                (
                    score.get(i).unwrap(),
                    raw.get(i).unwrap(),
                    value.get(i).unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_file_paths_give_the_same_scores_on_a_nab_file() {
    let (out, summary) = tokio::task::spawn_blocking(|| score_file(None))
        .await
        .unwrap();
    let from_file = file_scores(&out);
    let alerts_file = file_alerts(&out);
    assert_eq!(from_file.len(), summary.scored);
    std::fs::remove_file(&out).unwrap();
    // speed_7578's dips below its range open incidents; an alert's incident
    // is its own timestamp, and anomalous points after it carry it.
    let opened: Vec<i64> = alerts_file
        .iter()
        .filter(|(_, (a, _))| *a)
        .map(|(ts, _)| *ts)
        .collect();
    assert!(opened.len() >= 3, "{opened:?}");
    for ts in &opened {
        assert_eq!(alerts_file[ts].1, Some(*ts));
    }

    let names = Names::new("equal");
    create_topics(&names, 1).await;
    let shutdown = CancellationToken::new();
    let mut cfg = config(&names);
    cfg.window = base_config().window;
    cfg.model.max_batch = base_config().model.max_batch;
    let app = App::start(cfg, shutdown.clone()).await.unwrap();
    let rows = replay::read_csv(&nab_file(), "timestamp", "value").unwrap();
    replay::replay(
        &bootstrap(),
        &names.input,
        "speed_7578",
        &rows,
        replay::Pace::AsFastAsPossible,
        None,
    )
    .await
    .unwrap();
    // Live, the newest bucket stays open: one point fewer than the file path.
    let expected = from_file.len() - 1;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    assert!(
        read_until(&reader(&names.output), &mut got, deadline, |g| g.len()
            >= expected)
        .await,
        "{} of {expected}",
        got.len()
    );
    shutdown.cancel();
    app.wait().await.unwrap();

    let mut worst = 0f64;
    for g in &got {
        let v = g.json();
        let ts = v["ts"].as_i64().unwrap();
        // The same alerts and incidents on both paths.
        let (alert, incident) = alerts_file[&ts];
        assert_eq!(v["alert"].as_bool(), Some(alert), "alert at {ts}");
        assert_eq!(v["incident"].as_i64(), incident, "incident at {ts}");
        let (score, raw, value) = from_file[&ts];
        for (a, b) in [
            (score, v["score"].as_f64().unwrap()),
            (raw, v["raw_score"].as_f64().unwrap()),
            (value, v["value"].as_f64().unwrap()),
        ] {
            // Relative to the value's size: the two paths batch windows
            // differently, and a raw score near 300 carries f32 rounding of
            // a few 1e-6 in absolute terms.
            worst = worst.max((a - b).abs() / a.abs().max(1.0));
        }
    }
    println!(
        "{} points compared; max |file - kafka| / max(1, |file|) = {worst:e}",
        got.len()
    );
    assert!(
        worst <= 1e-6,
        "file and Kafka paths differ by {worst} (relative)"
    );
    let last_file_ts = *from_file.keys().last().unwrap();
    assert!(
        got.iter()
            .all(|g| g.json()["ts"].as_i64().unwrap() != last_file_ts),
        "the open bucket is not published live"
    );
}

#[test]
fn score_writes_a_png_of_the_expected_size() {
    let png = std::env::temp_dir().join(format!("{}.png", unique("plot")));
    let (out, summary) = score_file(Some(png.clone()));
    assert!(summary.scored > 500, "{summary:?}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), attnwatch::backtest::plot::SIZE);
    assert!(bytes.len() > 20_000, "a real picture, not an empty canvas");
    std::fs::remove_file(&png).unwrap();
    std::fs::remove_file(&out).unwrap();
}
