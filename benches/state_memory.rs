//! `cargo bench --bench state_memory`: resident memory per *warm* series,
//! measured through the service's own stages with the committed model.
//!
//! Two cohorts of N series (`ATTNWATCH_BENCH_SERIES`, default 1,000 each)
//! receive `ATTNWATCH_BENCH_POINTS` points each (default 6,000: more than
//! the context of 2,048 values and enough for every calibration tail to
//! hold its full ring of peaks), time step by time step, through the
//! planner (window stage and run schedule) and `worker::process_batch`
//! (forecasts, calibration), one cohort after the other. The process's RSS
//! (VmRSS) is read after each cohort; the growth from the first to the
//! second, over N, is the cost of one more warm series (its window, open
//! bucket, newest forecast with attention, calibration, keys and map
//! entries), with the fixed costs (model, ONNX Runtime's arenas, the
//! allocator's pools) already paid by the first cohort. The stages' own
//! estimates are printed beside it.
//!
//! Needs ONNX Runtime where `model::library` finds it (scripts/setup installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use attnwatch::config::Config;
use attnwatch::flow::Token;
use attnwatch::ingest::decode::{FeatureSet, Sample, Values};
use attnwatch::ingest::stage::{MessageMeta, Planner};
use attnwatch::metrics::Metrics;
use attnwatch::model::reload::load_engines;
use attnwatch::model::worker;
use attnwatch::score::Scorer;

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_usize("ATTNWATCH_BENCH_SERIES", 1000);
    let points = env_usize("ATTNWATCH_BENCH_POINTS", 6000);
    let mut c = Config::from_toml_and_env("", std::env::vars()).unwrap();
    c.model.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/attnwatch-encoder.onnx");
    let lib = attnwatch::model::library::find(&c.model)
        .unwrap_or_else(|e| panic!("{e}"))
        .path;
    let mut engine = load_engines(&c.model, &lib).unwrap().remove(0);
    let contract = engine.contract().clone();
    let mut planner = Planner::new(
        c.window
            .settings(contract.window, contract.min_points, c.model.stride),
        FeatureSet(None),
        Metrics::new().unwrap(),
    );
    let mut scorer = Scorer::new(c.score.clone(), c.window.max_series);
    let meta = MessageMeta {
        token: Token {
            partition: 0,
            offset: 0,
            generation: 0,
        },
        kafka_ts_ms: None,
    };
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let mut scored = 0usize;
    let mut rss = Vec::new();
    for cohort in 0..2 {
        let names: Vec<String> = (0..n)
            .map(|i| format!("host-{cohort}-{i:07}/cpu"))
            .collect();
        for t in 0..points {
            let mut jobs = Vec::with_capacity(n);
            for (s, name) in names.iter().enumerate() {
                let v = 10.0
                    + 3.0 * (t as f32 * std::f32::consts::TAU / 288.0 + s as f32).sin()
                    + ((t * 7919 + s * 104_729) % 97) as f32 / 97.0;
                let sample = Sample {
                    series: name.clone(),
                    ts: 1_700_000_000_000 + t as i64 * 60_000,
                    values: Values::Single(v),
                    labels: Default::default(),
                };
                jobs.extend(planner.place_sample(sample, meta, 0));
            }
            let (out, _) =
                worker::process_batch(&mut engine, &mut scorer, jobs, c.model.max_batch, None);
            scored += out.len();
            if t % 1000 == 999 {
                eprintln!(
                    "state_memory: cohort {cohort}, {} of {points} time steps, {:.0} s",
                    t + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        rss.push(status_kib("VmRSS:"));
    }
    let (win, sc) = (planner.window_bytes(), scorer.approx_bytes());
    let per = (rss[1].saturating_sub(rss[0])) * 1024 / n as u64;
    println!(
        "2 x {n} warm series x {points} points (context {}, stride {}): {scored} scored in {:.1} s; \
         RSS {} MiB at start, {} MiB after the first cohort ({:.1} KiB per series, one-time costs included), \
         {} MiB after the second: {per} bytes ({:.1} KiB) per further warm series; \
         estimates: window stage {} bytes + score stage {} bytes = {} bytes per series",
        contract.window,
        c.model.stride,
        started.elapsed().as_secs_f64(),
        before / 1024,
        rss[0] / 1024,
        (rss[0].saturating_sub(before)) as f64 / n as f64,
        rss[1] / 1024,
        per as f64 / 1024.0,
        win / (2 * n),
        sc / (2 * n),
        (win + sc) / (2 * n)
    );
}
