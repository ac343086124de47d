//! `cargo bench --bench window_memory`: feed N series x 1 point to the
//! window stage and report peak resident memory (VmHWM) and the stage's
//! own estimate. N defaults to 1,000,000 (`ATTNWATCH_BENCH_SERIES`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use attnwatch::window::{Settings, Windows};

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("ATTNWATCH_BENCH_SERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let window: usize = std::env::var("ATTNWATCH_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let before = status_kib("VmHWM:");
    let started = Instant::now();
    let mut win = Windows::new(Settings {
        max_series: n,
        ..Settings::for_model(window, 32)
    });
    for i in 0..n {
        win.push(&format!("host-{i:07}/cpu"), 1_700_000_000_000, i as f32, 0)
            .unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let after = status_kib("VmHWM:");
    println!(
        "{} series x 1 point (context {window}): {:.2} s ({:.0} points/s); peak RSS {} MiB (baseline {} MiB, +{} MiB = {} bytes per series); stage estimate {} MiB",
        win.series(),
        secs,
        n as f64 / secs,
        after / 1024,
        before / 1024,
        (after - before) / 1024,
        (after - before) * 1024 / n as u64,
        win.approx_bytes() / (1 << 20)
    );
}
