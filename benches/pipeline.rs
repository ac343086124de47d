//! `cargo bench --bench pipeline`: throughput of the pure stages and of the
//! model, medians over repeated runs (the machine is shared and noisy).
//!
//! Needs `ORT_DYLIB_PATH` (source scripts/lib.sh after scripts/setup).
//! Optional: `ATTNWATCH_BENCH_MODEL` (default models/attnwatch-encoder.onnx).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use attnwatch::config::Config;
use attnwatch::model::Engine;
use attnwatch::score::Scorer;
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

fn main() {
    let mut c = Config::from_toml_and_env("", std::env::vars()).unwrap();
    c.model.path = std::env::var_os("ATTNWATCH_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/attnwatch-encoder.onnx")
        });
    let lib = c
        .onnxruntime_library()
        .expect("set ORT_DYLIB_PATH (source scripts/lib.sh)");
    let mut engine = Engine::load(&c.model, &lib).unwrap();
    let contract = engine.contract().clone();
    let w = contract.window;
    println!(
        "model {} (W = {w}, layers {}, heads {}), provider {:?}, intra_threads {}",
        contract.id(),
        contract.layers,
        contract.heads,
        engine.provider(),
        c.model.intra_threads
    );

    // Model: windows per second by batch size (one session, one thread).
    for batch in [1usize, 2, 4, 8, 16, 64] {
        let input: Vec<f32> = (0..batch * w).map(|i| ((i % 97) as f32).sin()).collect();
        let reps = if batch >= 64 { 15 } else { 50 };
        let secs = time(reps, || {
            engine.infer(input.clone(), batch).unwrap();
        });
        println!(
            "model  batch {batch:>4}: {:>9.0} windows/s  ({:.3} ms per call, median of {reps})",
            batch as f64 / secs,
            secs * 1e3
        );
    }

    // Window stage: points per second over 1000 series.
    let points = 200_000usize;
    let secs = time(7, || {
        let mut win = Windows::new(c.window.settings(w, contract.min_points));
        let mut n = 0usize;
        for i in 0..points {
            let key = format!("series-{}", i % 1000);
            let ts = (i / 1000) as i64 * 60_000;
            for e in win.push(&key, ts, i as f32, 0).unwrap_or_default() {
                n += e.window.map_or(0, |x| x.values.len());
            }
        }
        assert!(n > 0);
    });
    println!("window stage (grid, inferred interval): {:>9.0} points/s (W = {w}, 1000 series, median of 7)", points as f64 / secs);

    // Score stage: SPOT calibration per point (history full).
    let mut scorer = Scorer::new(c.score.clone(), 1);
    for i in 0..c.score.history * 2 {
        scorer.score("s", (i % 17) as f64 * 0.3);
    }
    let n = 20_000usize;
    let secs = time(7, || {
        for i in 0..n {
            scorer.score("s", (i % 17) as f64 * 0.3);
        }
    });
    println!(
        "score (SPOT, history {}): {:>9.0} points/s (median of 7)",
        c.score.history,
        n as f64 / secs
    );
}
