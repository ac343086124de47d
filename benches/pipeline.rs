//! `cargo bench --bench pipeline`: throughput of the model and of the pure
//! stages, on one thread, medians over repeated runs (the machine is shared
//! and noisy).
//!
//! - model: contexts forecast per second by inference batch size;
//! - model stage: `worker::process_batch` (scoring against forecasts, runs
//!   batched across series, calibration) on planner jobs of 256 warm
//!   series, in scored points per second, at strides 8, 16, 32 and 64;
//! - window stage and calibration alone, in points per second.
//!
//! Needs ONNX Runtime where `model::library` finds it (scripts/setup installs it).
//! Optional: `ATTNWATCH_BENCH_MODEL` (default models/attnwatch-encoder.onnx).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use attnwatch::config::Config;
use attnwatch::flow::{Job, Token};
use attnwatch::ingest::decode::{FeatureSet, Sample, Values};
use attnwatch::ingest::stage::{MessageMeta, Planner};
use attnwatch::metrics::Metrics;
use attnwatch::model::{worker, Engine};
use attnwatch::score::{Calibration, Scorer};
use attnwatch::window::Windows;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median of `reps` timings of `f`, in seconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn value(series: usize, t: usize) -> f32 {
    let phase = series as f32 * 0.37;
    10.0 + (t as f32 * std::f32::consts::TAU / 288.0 + phase).sin() * 3.0
        + ((t * 7919 + series * 104_729) % 97) as f32 / 97.0
}

/// Planner jobs of `series` series x `points` points on a grid of
/// `interval_ms`, time step by time step.
fn jobs_at(
    c: &Config,
    engine: &Engine,
    stride: usize,
    series: usize,
    points: usize,
    interval_ms: i64,
) -> Vec<Job> {
    let contract = engine.contract();
    let mut planner = Planner::new(
        c.window
            .settings(contract.window, contract.min_points, stride),
        FeatureSet(None),
        Metrics::new().unwrap(),
    );
    let meta = MessageMeta {
        token: Token {
            partition: 0,
            offset: 0,
            generation: 0,
        },
        kafka_ts_ms: None,
    };
    let mut out = Vec::new();
    for t in 0..points {
        for s in 0..series {
            let sample = Sample {
                series: format!("host-{s:04}/cpu"),
                ts: 1_700_000_000_000 + t as i64 * interval_ms,
                values: Values::Single(value(s, t)),
                labels: Default::default(),
            };
            out.extend(planner.place_sample(sample, meta, 0));
        }
    }
    out
}

/// The model stage on `(series, warm, measured)` points of each series on an
/// `interval_ms` grid: every series warmed up first (untimed), then the
/// measured points timed; (scored points per second, µs per point), median
/// of 5.
fn model_stage(
    c: &Config,
    engine: &mut Engine,
    stride: usize,
    (series, warm, measured): (usize, usize, usize),
    interval_ms: i64,
) -> (f64, f64) {
    let all = jobs_at(c, engine, stride, series, warm + measured, interval_ms);
    let split = all.partition_point(|j| j.ts < 1_700_000_000_000 + warm as i64 * interval_ms);
    let (warmup, timed) = all.split_at(split);
    let scored = timed.iter().filter(|j| j.publishes()).count();
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            // State as the service has it: every series warm (untimed).
            let mut scorer = Scorer::new(c.score.clone(), c.window.max_series);
            let max_batch = c.model.max_batch;
            worker::process_batch(engine, &mut scorer, warmup.to_vec(), max_batch, None);
            let batch = timed.to_vec();
            let t = Instant::now();
            let (out, stats) = worker::process_batch(engine, &mut scorer, batch, max_batch, None);
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(out.len(), scored);
            assert_eq!(stats.unscored, 0);
            secs
        })
        .collect();
    let secs = median(runs);
    (scored as f64 / secs, secs / scored as f64 * 1e6)
}

fn main() {
    let mut c = Config::from_toml_and_env("", std::env::vars()).unwrap();
    c.model.path = std::env::var_os("ATTNWATCH_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/attnwatch-encoder.onnx")
        });
    let lib = attnwatch::model::library::find(&c.model)
        .unwrap_or_else(|e| panic!("{e}"))
        .path;
    let mut engine = Engine::load(&c.model, &lib).unwrap();
    let contract = engine.contract().clone();
    let w = contract.window;
    println!(
        "model {} (context {w}, patch {}, horizon {}, layers {}, heads {}, {:.2} MFLOP per run), provider {:?}, intra_threads {}",
        contract.id(),
        contract.patch,
        contract.horizon,
        contract.layers,
        contract.heads,
        contract.flops_per_run as f64 / 1e6,
        engine.provider(),
        c.model.intra_threads
    );

    // Model: contexts per second by batch size (one session, one thread).
    for batch in [1usize, 8, 32, 64, 128] {
        let input: Vec<f32> = (0..batch * w).map(|i| ((i % 97) as f32).sin()).collect();
        let reps = if batch >= 64 { 15 } else { 40 };
        let secs = time(reps, || {
            engine.infer(&input, batch).unwrap();
        });
        println!(
            "model  batch {batch:>4}: {:>9.0} runs/s  ({:.3} ms per call, median of {reps})",
            batch as f64 / secs,
            secs * 1e3
        );
    }

    // Model stage: planner jobs of warm series through process_batch.
    let (series, warm, measured) = (256usize, w + 64, 256usize);
    for stride in [8usize, 16, 32, 64] {
        if stride > contract.horizon {
            continue;
        }
        let (rate, us) = model_stage(&c, &mut engine, stride, (series, warm, measured), 60_000);
        println!(
            "model stage, stride {stride:>2}: {rate:>9.0} scored points/s ({series} warm series x {measured} points, max_batch {}, {us:.1} us per point; {:.3} MFLOP per point; median of 5)",
            c.model.max_batch,
            contract.flops_per_run as f64 / stride as f64 / 1e6
        );
    }
    // The score stage's pattern memory queries once per block: at a 1-minute
    // grid a day is 90 values a block and the runs above never fill it. At
    // 5 minutes (blocks of 18) and an hour (blocks of 2, 481 keys a query,
    // its most expensive case) the memory is warm and queried.
    for (label, interval_ms) in [("5 min", 300_000i64), ("1 h", 3_600_000)] {
        let stride = c.model.stride;
        let (rate, us) = model_stage(
            &c,
            &mut engine,
            stride,
            (series, warm, measured),
            interval_ms,
        );
        println!(
            "model stage, stride {stride:>2}, {label} grid (memory warm): {rate:>9.0} scored points/s ({us:.1} us per point; median of 5)"
        );
    }

    // Window stage: points per second over 1000 series.
    let points = 200_000usize;
    let secs = time(7, || {
        let mut win = Windows::new(c.window.settings(w, contract.min_points, c.model.stride));
        let mut n = 0usize;
        for i in 0..points {
            let key = format!("series-{}", i % 1000);
            let ts = (i / 1000) as i64 * 60_000;
            for e in win.push(&key, ts, i as f32, 0).unwrap_or_default() {
                n += e.window.map_or(1, |x| x.values.len());
            }
        }
        assert!(n > 0);
    });
    println!(
        "window stage (grid, inferred interval): {:>9.0} points/s (context {w}, stride {}, 1000 series, median of 7)",
        points as f64 / secs,
        c.model.stride
    );

    // Calibration alone: points per second (state warm).
    let mut cal = Calibration::new();
    for i in 0..c.score.history * 2 {
        cal.score(((i % 17) as f64 - 8.0) * 0.3, &[], &c.score);
    }
    let n = 200_000usize;
    let secs = time(7, || {
        for i in 0..n {
            cal.score(((i % 17) as f64 - 8.0) * 0.3, &[], &c.score);
        }
    });
    println!(
        "calibration (point, run, shift channels): {:>9.0} points/s (median of 7)",
        n as f64 / secs
    );
}
