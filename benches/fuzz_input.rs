//! `cargo bench --bench fuzz_input`: bad input at volume through the
//! service's own stages: `decode` -> window stage (the planner) ->
//! `worker::process_batch` with the committed model and the calibration.
//!
//! Inputs (`ATTNWATCH_FUZZ_INPUTS`, default 1,000,000 under `cargo bench`,
//! 20,000 under `cargo test`, which runs it in CI) are Kafka message
//! payloads, generated from a fixed seed: good records of every shape
//! (`value`, `values`, labels, RFC 3339 and epoch timestamps, arrays), and
//! mutations of them (byte flips, truncation, insertions, deletions,
//! spliced fragments, wrong types, non-finite and huge numbers, timestamps
//! out of range, unknown fields, deep nesting, empty and random bytes).
//!
//! Checked for every input, and the run fails otherwise:
//! - no panic anywhere (each message is run under `catch_unwind`);
//! - every record `decode` rejects is dead-lettered, with a reason code
//!   from the fixed set and a detail;
//! - every record it accepts is placed (no record is both or neither).
//!
//! Needs ONNX Runtime where `model::library` finds it (scripts/setup installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

use attnwatch::config::Config;
use attnwatch::flow::Token;
use attnwatch::ingest::decode::{self, FeatureSet, Reason};
use attnwatch::ingest::stage::{MessageMeta, Planner};
use attnwatch::metrics::Metrics;
use attnwatch::model::reload::load_engines;
use attnwatch::model::worker;
use attnwatch::score::Scorer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERIES: [&str; 6] = ["web-01/cpu", "db-7/latency", "π", "a\"b", "", "q"];

/// A good record. Series live for 2,000 inputs each (a mutated timestamp far
/// in the future makes the rest of its series late, as it would in the
/// service), so the scoring path keeps getting fresh series.
fn good(rng: &mut StdRng, step: &mut i64, i: usize) -> String {
    *step += 60_000;
    let ts = 1_700_000_000_000i64 + *step;
    let series = format!("{}#{}", SERIES[rng.random_range(0..4)], i / 2000);
    let v: f64 = rng.random_range(-1e3..1e3);
    match rng.random_range(0..5) {
        0 => format!(r#"{{"series":{series:?},"ts":{ts},"value":{v}}}"#),
        1 => format!(
            r#"{{"series":{series:?},"ts":"{}","value":{v},"labels":{{"env":"prod"}}}}"#,
            chrono::DateTime::from_timestamp_millis(ts)
                .unwrap()
                .to_rfc3339()
        ),
        2 => format!(
            r#"{{"series":{series:?},"ts":{ts},"values":{{"a":{v},"b":{}}}}}"#,
            v * 2.0
        ),
        3 => format!(
            r#"[{{"series":{series:?},"ts":{ts},"value":{v}}},{{"series":"other","ts":{ts},"value":1}}]"#
        ),
        _ => format!(r#"{{"ts":{ts},"value":{v},"series":{series:?}}}"#),
    }
}

const FRAGMENTS: [&str; 24] = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e39",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "\"ts\":",
    "\"value\":",
    "\"values\":{}",
    "\"series\":1",
    "\"extra\":2",
    "\\u0000",
    "\u{fffd}",
    "99999999999999999999",
    "-1",
    "\"2024-13-45T99:00:00Z\"",
    ",",
    ":",
    "}",
    "\"",
];

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn mutate(rng: &mut StdRng, s: String) -> Vec<u8> {
    let mut b = s.into_bytes();
    for _ in 0..rng.random_range(1..4) {
        let n = b.len().max(1);
        match rng.random_range(0..8) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 => b.truncate(rng.random_range(0..n)),
            2 => {
                let i = rng.random_range(0..=b.len());
                b.insert(i, rng.random());
            }
            3 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b.remove(i);
            }
            4 => {
                let i = rng.random_range(0..=b.len());
                let f = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                b.splice(i..i, f.bytes());
            }
            5 => {
                // Replace a number (the timestamp's or the value's) with a fragment.
                let from = if rng.random_bool(0.5) {
                    find(&b, b"\"value\":").map_or(0, |p| p + 8)
                } else {
                    0
                };
                let start = b[from.min(b.len())..]
                    .iter()
                    .position(|c| c.is_ascii_digit() || *c == b'-')
                    .map(|p| p + from);
                if let Some(i) = start {
                    let j = (i + 1..b.len())
                        .find(|&j| !(b[j].is_ascii_digit() || b[j] == b'.'))
                        .unwrap_or(b.len());
                    let f = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                    b.splice(i..j, f.bytes());
                }
            }
            6 => {
                let depth = rng.random_range(1..200);
                let mut nested = "[".repeat(depth).into_bytes();
                nested.extend(b.iter());
                nested.extend("]".repeat(depth).bytes());
                b = nested;
            }
            _ => {
                b = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            }
        }
    }
    b
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let inputs: usize = std::env::var("ATTNWATCH_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 20_000 });
    let mut c = Config::from_toml_and_env("", std::env::vars()).unwrap();
    c.model.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/attnwatch-encoder.onnx");
    let lib = attnwatch::model::library::find(&c.model)
        .unwrap_or_else(|e| panic!("{e}"))
        .path;
    let mut engine = load_engines(&c.model, &lib).unwrap().remove(0);
    let contract = engine.contract().clone();
    let metrics = Metrics::new().unwrap();
    let mut planner = Planner::new(
        c.window
            .settings(contract.window, contract.min_points, c.model.stride),
        FeatureSet(None),
        metrics.clone(),
    );
    let mut scorer = Scorer::new(c.score.clone(), c.window.max_series);
    let mut rng = StdRng::seed_from_u64(20261129);
    let (mut step, mut records, mut accepted, mut dead, mut jobs_n, mut scored) =
        (0i64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut panics = 0u64;
    let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut pending = Vec::new();
    let started = Instant::now();
    // Panics are counted, not printed one by one.
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..inputs {
        let base = good(&mut rng, &mut step, i);
        let payload = if rng.random_bool(0.5) {
            base.into_bytes()
        } else {
            mutate(&mut rng, base)
        };
        let meta = MessageMeta {
            token: Token {
                partition: 0,
                offset: i as i64,
                generation: 0,
            },
            kafka_ts_ms: None,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let decoded = decode::decode(&payload, &FeatureSet(None), &decode::Limits::DEFAULT);
            let plan = planner.plan(&payload, Some(b"k"), meta, i as i64);
            (decoded, plan)
        }));
        let Ok((decoded, plan)) = outcome else {
            panics += 1;
            continue;
        };
        let rejected: Vec<&Reason> = decoded
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| &e.reason))
            .collect();
        records += decoded.len() as u64;
        accepted += (decoded.len() - rejected.len()) as u64;
        assert_eq!(
            plan.dead_letters.len(),
            rejected.len(),
            "input {i}: every rejected record is dead-lettered: {:?}",
            String::from_utf8_lossy(&payload)
        );
        for (d, r) in plan.dead_letters.iter().zip(&rejected) {
            assert_eq!(d.reason, r.code());
            assert!(Reason::ALL_CODES.contains(&d.reason) && !d.detail.is_empty());
            *by_reason.entry(d.reason).or_default() += 1;
        }
        dead += plan.dead_letters.len() as u64;
        jobs_n += plan.jobs.len() as u64;
        pending.extend(plan.jobs);
        if pending.len() >= 4096 || i + 1 == inputs {
            let batch = std::mem::take(&mut pending);
            let r = catch_unwind(AssertUnwindSafe(|| {
                worker::process_batch(&mut engine, &mut scorer, batch, c.model.max_batch, None)
            }));
            match r {
                Ok((_, stats)) => scored += stats.scored,
                Err(_) => panics += 1,
            }
        }
    }
    let _ = std::panic::take_hook();
    let secs = started.elapsed().as_secs_f64();
    let reasons: Vec<String> = by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "fuzz_input: {inputs} inputs ({records} records: {accepted} accepted, {dead} dead-lettered) \
         through decode, the window stage and process_batch in {secs:.1} s ({:.0} inputs/s): \
         {jobs_n} grid points, {scored} scored; panics: {panics}",
        inputs as f64 / secs
    );
    println!("dead letters by reason: {}", reasons.join(", "));
    println!(
        "accepted records the window stage dropped (counted, not dead-lettered): late {}, duplicate {}, bucket full {}; window resets {}",
        metrics.late.get(),
        metrics.duplicate.get(),
        metrics.bucket_overflow.get(),
        metrics.window_resets.get()
    );
    assert_eq!(panics, 0, "{panics} panics");
    assert!(accepted > 0 && dead > 0, "the generator must make both");
}
