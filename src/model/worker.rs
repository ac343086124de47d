//! Inference threads: each owns one [`Engine`] and one [`Scorer`] shard.
//!
//! Series are routed to threads by a hash of the series id, so each series
//! is scored in order by exactly one thread and its calibration state lives
//! there without locks. A thread gathers jobs until it has `max_batch`
//! windows or `max_delay` has passed since the first one, runs one
//! inference call for all of them, scores and encodes each point, and sends
//! the encoded messages to the publisher over a bounded channel (blocking
//! when the publisher is behind: that is the back-pressure).
//!
//! A thread ends when its input channel is closed and drained, which is how
//! shutdown drains inference.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::engine::{Engine, Inference, ModelError};
use crate::config::PublishConfig;
use crate::ingest::offsets::Token;
use crate::metrics::Metrics;
use crate::publish::encode::{self, FeatureResult, OutMessage, ScoredPoint};
use crate::score::Scorer;
use crate::window::Window;

/// One input point with the windows to score for it (one per feature).
#[derive(Debug, Clone)]
pub struct Job {
    /// Series id.
    pub series: String,
    /// Point timestamp (epoch ms).
    pub ts: i64,
    /// `Some` for a `value` sample, `None` for `values`.
    pub value: Option<f32>,
    /// Labels, carried through.
    pub labels: BTreeMap<String, String>,
    /// Windows to score: (feature name, calibration key, window).
    pub windows: Vec<FeatureWindow>,
    /// The input message this point came from.
    pub token: Token,
    /// Kafka timestamp of the input message (epoch ms), for end-to-end latency.
    pub source_ts_ms: Option<i64>,
}

/// One feature's window of a point.
#[derive(Debug, Clone)]
pub struct FeatureWindow {
    /// Feature name (`value` for single-value samples).
    pub feature: String,
    /// Calibration and window key of the (series, feature) pair.
    pub key: String,
    /// The window ending at the point.
    pub window: Window,
}

/// Settings of one inference thread.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Most windows per inference call.
    pub max_batch: usize,
    /// Longest wait for a batch to fill.
    pub max_delay: Duration,
    /// Output encoding.
    pub publish: PublishConfig,
}

/// Which inference thread owns `series` (stable for the life of the process).
pub fn shard_of(series: &str, shards: usize) -> usize {
    // FNV-1a: stable, cheap, no per-process random seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in series.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Gather one batch: block for the first job, then take more until the
/// batch is full or `max_delay` has passed. `None` once the channel is
/// closed and empty.
pub fn gather(
    rx: &flume::Receiver<Job>,
    max_batch: usize,
    max_delay: Duration,
) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let mut rows = first.windows.len();
    let mut jobs = vec![first];
    let deadline = Instant::now() + max_delay;
    while rows < max_batch {
        match rx.recv_deadline(deadline) {
            Ok(job) => {
                rows += job.windows.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Run one batch of jobs through the model and the calibration: the step
/// shared by the inference threads and the file path (`attnwatch score`).
/// Jobs of one series must come in time order (the scorer is stateful).
pub fn process_batch(
    engine: &mut Engine,
    scorer: &mut Scorer,
    jobs: &[Job],
    metrics: Option<&Metrics>,
) -> Result<Vec<ScoredPoint>, ModelError> {
    let contract = engine.contract();
    let per_window = contract.window * contract.f();
    let dims = (contract.layers, contract.heads, contract.window);
    let rows: usize = jobs.iter().map(|j| j.windows.len()).sum();
    let mut input = Vec::with_capacity(rows * per_window);
    for fw in jobs.iter().flat_map(|j| &j.windows) {
        input.extend_from_slice(&fw.window.values);
    }
    let started = Instant::now();
    let result = engine.infer(input, rows);
    if let Some(m) = metrics {
        m.inference_latency.observe(started.elapsed().as_secs_f64());
        m.batch_size.observe(rows as f64);
    }
    let out = result?;
    let mut row = 0;
    Ok(jobs
        .iter()
        .map(|job| score_job(job, &out, &mut row, dims, scorer))
        .collect())
}

/// The loop of one inference thread; returns when `rx` is closed and drained.
pub fn run(
    mut engine: Engine,
    mut scorer: Scorer,
    rx: flume::Receiver<Job>,
    tx: mpsc::Sender<OutMessage>,
    settings: WorkerSettings,
    metrics: Metrics,
) {
    let contract = engine.contract().clone();
    let model_id = contract.id();
    while let Some(jobs) = gather(&rx, settings.max_batch, settings.max_delay) {
        let points = match process_batch(&mut engine, &mut scorer, &jobs, Some(&metrics)) {
            Ok(points) => points,
            Err(e) => {
                metrics.error("inference", &e);
                // Without scores the points cannot be published as scores;
                // dead-letter them so they are visible and offsets move on.
                for job in &jobs {
                    let msg = encode::dead_letter_for_job(job, "inference_failed", &e.to_string());
                    metrics
                        .dead_lettered
                        .with_label_values(&["inference_failed"])
                        .inc();
                    if tx.blocking_send(msg).is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        metrics
            .windows_scored
            .inc_by(jobs.iter().map(|j| j.windows.len() as u64).sum());
        let evicted = scorer.take_evicted();
        if evicted > 0 {
            metrics
                .series_evicted
                .with_label_values(&["calibration_lru"])
                .inc_by(evicted);
        }
        for (job, point) in jobs.into_iter().zip(points) {
            if point.anomaly() {
                metrics.anomalies.inc();
            }
            match encode::score_message(job, point, &model_id, &contract, &settings.publish) {
                Ok(msg) => {
                    if tx.blocking_send(msg).is_err() {
                        return; // publisher gone: shutting down
                    }
                }
                Err(e) => metrics.error("encode", &e),
            }
        }
    }
}

fn score_job(
    job: &Job,
    out: &Inference,
    row: &mut usize,
    (layers, heads, w): (usize, usize, usize),
    scorer: &mut Scorer,
) -> ScoredPoint {
    let att_per_row = layers * heads * w;
    let mut features = Vec::with_capacity(job.windows.len());
    for fw in &job.windows {
        let r = *row;
        *row += 1;
        let scored = scorer.score(&fw.key, f64::from(out.raw_score[r]));
        features.push(FeatureResult {
            feature: fw.feature.clone(),
            scored,
            pred_mean: out.pred_mean[r],
            pred_std: out.pred_std[r],
            attention: out.attention[r * att_per_row..(r + 1) * att_per_row].to_vec(),
            layers,
            heads,
            window_ts: fw.window.ts.clone(),
        });
    }
    ScoredPoint { features }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        for n in 1..8 {
            for s in ["a", "web-01/cpu", "", "pump-7"] {
                let k = shard_of(s, n);
                assert!(k < n);
                assert_eq!(k, shard_of(s, n));
            }
        }
    }

    fn job(n: usize) -> Job {
        Job {
            series: "s".into(),
            ts: 0,
            value: Some(0.0),
            labels: BTreeMap::new(),
            windows: (0..n)
                .map(|_| FeatureWindow {
                    feature: "value".into(),
                    key: "s".into(),
                    window: Window {
                        values: vec![],
                        ts: vec![],
                    },
                })
                .collect(),
            token: Token {
                partition: 0,
                offset: 0,
                generation: 0,
            },
            source_ts_ms: None,
        }
    }

    #[test]
    fn gather_stops_at_max_batch_or_delay_and_ends_when_closed() {
        let (tx, rx) = flume::bounded(16);
        for _ in 0..5 {
            tx.send(job(1)).unwrap();
        }
        let b = gather(&rx, 3, Duration::from_secs(5)).unwrap();
        assert_eq!(b.len(), 3);
        let started = Instant::now();
        let b = gather(&rx, 100, Duration::from_millis(20)).unwrap();
        assert_eq!(b.len(), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(tx);
        assert!(gather(&rx, 3, Duration::from_millis(1)).is_none());
    }
}
