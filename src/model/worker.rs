//! Inference threads: each owns one [`Forecaster`] and one [`Scorer`] shard.
//!
//! Series are routed to threads by a hash of the series id, so each series
//! is handled in order by exactly one thread and its forecast and
//! calibration live there without locks. A thread gathers jobs until it has
//! `max_jobs` or `max_delay` has passed since the first one, then runs
//! [`process_batch`]: every value is scored at once against the forecast
//! that covers it, and the contexts of the runs due are batched across
//! series into inference calls of at most `max_batch`. Scored points go to
//! the publisher over a bounded channel (blocking when the publisher is
//! behind: that is the back-pressure); the publisher encodes them.
//!
//! A thread ends when its input channel is closed and drained, which is how
//! shutdown drains inference.

use std::sync::Arc;
use std::time::{Duration, Instant};

// A fast (non-DoS-resistant) hash for series keys: they are looked up
// several times per value here, and they come from our own window stage.
use hashbrown::HashSet;
use tokio::sync::mpsc;

use super::reload::Reload;
use super::Forecaster;
use crate::flow::forecast::{Explanation, Forecast, Shape};
use crate::flow::{DeadLetter, FeatureScore, Job, Mode, Outgoing, ScoredPoint};
use crate::metrics::Metrics;
use crate::score::{Scorer, Value};
use crate::window::Window;

/// Settings of one inference thread.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Most contexts per inference call.
    pub max_batch: usize,
    /// Most jobs gathered per batch.
    pub max_jobs: usize,
    /// Longest wait for a batch to fill.
    pub max_delay: Duration,
}

/// Gather one batch: block for the first job, then take more until the
/// batch is full or `max_delay` has passed. `None` once the channel is
/// closed and empty.
pub fn gather(rx: &flume::Receiver<Job>, max_jobs: usize, max_delay: Duration) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let mut jobs = vec![first];
    let deadline = Instant::now() + max_delay;
    while jobs.len() < max_jobs {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(flume::TryRecvError::Disconnected) => break,
            Err(flume::TryRecvError::Empty) => match rx.recv_deadline(deadline) {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            },
        }
    }
    Some(jobs)
}

/// What one batch did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Model runs (contexts forecast).
    pub runs: u64,
    /// Inference calls.
    pub calls: u64,
    /// Values scored (published or rebuilding).
    pub scored: u64,
    /// Values owed a score that had no covering forecast.
    pub unscored: u64,
    /// Inference calls that failed.
    pub failed_calls: u64,
    /// Seconds spent in inference calls.
    pub model_seconds: f64,
}

/// Runs waiting for one inference call (of at most `max_batch`).
struct Pending {
    max_batch: usize,
    keys: Vec<Arc<str>>,
    contexts: Vec<Window>,
    waiting: HashSet<Arc<str>>,
}

impl Pending {
    fn new(max_batch: usize) -> Self {
        Pending {
            max_batch: max_batch.max(1),
            keys: Vec::new(),
            contexts: Vec::new(),
            waiting: HashSet::new(),
        }
    }
}

/// Run one batch of jobs through scoring and the model: the step shared by
/// the inference threads, `attnwatch score` and `eval nab`. Jobs of one
/// series must come in time order (forecasts and calibration are stateful).
///
/// Each value is scored against its series' newest forecast *before* the
/// run due on it is queued; a run still queued is executed before any
/// later value of its series is scored. The result is therefore the same
/// however the jobs are cut into batches.
///
/// Returns one item per job that owes an output, in job order within each
/// series (series may interleave differently from the input). An
/// inference failure is counted and leaves the affected series without a
/// forecast; their values are dead-lettered (`no_forecast`) until the next
/// run succeeds.
pub fn process_batch(
    model: &mut dyn Forecaster,
    scorer: &mut Scorer,
    jobs: Vec<Job>,
    max_batch: usize,
    metrics: Option<&Metrics>,
) -> (Vec<Outgoing>, BatchStats) {
    let mut out = Vec::with_capacity(jobs.len());
    let mut stats = BatchStats::default();
    let mut pending = Pending::new(max_batch);
    let model_id: Arc<str> = model.contract().id().into();
    let mut round = jobs;
    // Rounds: a job whose series still waits for a queued run (or is behind
    // such a job) is deferred to the next round, after the queued runs are
    // executed. Other series go on, so the runs of many series share an
    // inference call even when each message holds many points of one series.
    let mut blocked: HashSet<Arc<str>> = HashSet::new();
    while !round.is_empty() {
        let mut deferred = Vec::new();
        for job in round {
            // A forget waits for a queued run of its series too, which would
            // otherwise bring the forgotten state back.
            let forget = job.mode == Mode::Forget;
            let waits = job.features.iter().any(|f| {
                blocked.contains(&f.key)
                    || ((f.scored() || forget) && pending.waiting.contains(&f.key))
            });
            if waits {
                blocked.extend(job.features.iter().map(|f| f.key.clone()));
                deferred.push(job);
                continue;
            }
            if let Some(item) = process_job(
                model,
                scorer,
                job,
                &model_id,
                &mut pending,
                &mut stats,
                metrics,
            ) {
                out.push(item);
            }
        }
        flush(model, scorer, &mut pending, &mut stats, metrics);
        blocked.clear();
        round = deferred;
    }
    (out, stats)
}

/// Score one job's values and queue the runs due on it; the item it owes
/// the publish stage, if any.
fn process_job(
    model: &mut dyn Forecaster,
    scorer: &mut Scorer,
    mut job: Job,
    model_id: &Arc<str>,
    pending: &mut Pending,
    stats: &mut BatchStats,
    metrics: Option<&Metrics>,
) -> Option<Outgoing> {
    if job.mode == Mode::Forget {
        for f in &job.features {
            scorer.forget(&f.key);
        }
        return None;
    }
    let mut features = Vec::with_capacity(job.features.len());
    let mut missing = 0usize;
    for f in &mut job.features {
        let value = Value {
            key: &f.key,
            ts: job.ts,
            value: f.value,
            interval: f.interval,
        };
        if f.filled {
            // A gap value carries a run only: neither scored nor learned.
        } else if let Some(step) = f.step {
            match scorer.score(value, step) {
                Some(p) => {
                    stats.scored += 1;
                    features.push(FeatureScore {
                        feature: f.feature.clone(),
                        value: f.value,
                        scored: p.scored,
                        expected: p.expected,
                        expected_std: p.expected_std,
                        explanation: p.explanation,
                    });
                }
                None => missing += 1,
            }
        } else {
            scorer.observe(value);
        }
        if let Some(context) = f.run.take() {
            pending.waiting.insert(f.key.clone());
            pending.keys.push(f.key.clone());
            pending.contexts.push(context);
            if pending.keys.len() >= pending.max_batch {
                flush(model, scorer, pending, stats, metrics);
            }
        }
    }
    if !job.publishes() {
        return None;
    }
    stats.unscored += missing as u64;
    if features.is_empty() {
        return Some(Outgoing::DeadLetter(unscored(&job)));
    }
    Some(Outgoing::Point(ScoredPoint {
        series: job.series,
        ts: job.ts,
        value: job.value,
        labels: job.labels,
        features,
        token: job.token,
        source_ts_ms: job.source_ts_ms,
        model: model_id.clone(),
    }))
}

/// Run the queued contexts in one inference call and store the forecasts.
fn flush(
    model: &mut dyn Forecaster,
    scorer: &mut Scorer,
    pending: &mut Pending,
    stats: &mut BatchStats,
    metrics: Option<&Metrics>,
) {
    let n = pending.keys.len();
    if n == 0 {
        return;
    }
    let c = model.contract();
    let (h, f, att) = (c.horizon, c.f(), c.layers * c.heads * c.tokens());
    let novelty_k = c.novelty;
    let shape = Shape {
        layers: c.layers,
        heads: c.heads,
        context: c.window,
        patch: c.patch,
    };
    let mut input = Vec::with_capacity(n * c.window * f);
    for ctx in &pending.contexts {
        input.extend_from_slice(&ctx.values);
    }
    let started = Instant::now();
    let result = model.forecast(&input, n);
    let secs = started.elapsed().as_secs_f64();
    stats.model_seconds += secs;
    if let Some(m) = metrics {
        m.inference_latency.observe(secs);
        m.batch_size.observe(n as f64);
    }
    stats.calls += 1;
    match result {
        Ok(inf) => {
            stats.runs += n as u64;
            for (i, (key, ctx)) in pending.keys.iter().zip(&pending.contexts).enumerate() {
                // F = 1 for the models this build serves: [H, 1] per row.
                let mean = inf.mean[i * h * f..(i + 1) * h * f].to_vec();
                let std = inf.std[i * h * f..(i + 1) * h * f].to_vec();
                let explanation = Explanation::from_heads(
                    &inf.attention[i * att..(i + 1) * att],
                    shape,
                    ctx.end_ts,
                    ctx.interval,
                    ctx.present,
                );
                scorer.set_forecast(
                    key,
                    Forecast {
                        mean: mean.into(),
                        std: std.into(),
                        explanation: Arc::new(explanation),
                        novelty: inf
                            .novelty
                            .get(i * novelty_k..(i + 1) * novelty_k)
                            .unwrap_or_default()
                            .into(),
                    },
                );
            }
        }
        Err(e) => {
            stats.failed_calls += 1;
            if let Some(m) = metrics {
                m.error("inference", &e);
            }
            for key in &pending.keys {
                scorer.drop_forecast(key);
            }
        }
    }
    pending.keys.clear();
    pending.contexts.clear();
    pending.waiting.clear();
}

/// The dead letter for a point that owed a score but had no forecast.
fn unscored(job: &Job) -> DeadLetter {
    let body = match job.value {
        Some(v) => {
            serde_json::json!({"series": &*job.series, "ts": job.ts, "value": v, "labels": &*job.labels})
        }
        None => {
            let values: serde_json::Map<String, serde_json::Value> = job
                .features
                .iter()
                .filter(|f| !f.filled)
                .map(|f| (f.feature.to_string(), serde_json::json!(f.value)))
                .collect();
            serde_json::json!({"series": &*job.series, "ts": job.ts, "values": values, "labels": &*job.labels})
        }
    };
    DeadLetter {
        bytes: body.to_string().into_bytes(),
        key: Some(job.series.to_string()),
        reason: "no_forecast",
        detail:
            "no forecast covers this point (its series' model state was dropped, or its run failed)"
                .into(),
        token: Some(job.token),
    }
}

/// The loop of one inference thread; returns when `rx` is closed and
/// drained. A model sent on `reloads` replaces the running one before the
/// next batch (calibrations reset unless the reload keeps them).
pub fn run(
    mut model: Box<dyn Forecaster + Send>,
    mut scorer: Scorer,
    rx: flume::Receiver<Job>,
    reloads: flume::Receiver<Reload>,
    tx: mpsc::Sender<Outgoing>,
    settings: WorkerSettings,
    metrics: Metrics,
) {
    while let Some(jobs) = gather(&rx, settings.max_jobs, settings.max_delay) {
        while let Ok(r) = reloads.try_recv() {
            model = r.model;
            if !r.keep_calibration {
                let n = scorer.reset_calibrations();
                tracing::info!(series = n, model = %model.contract().id(), "calibrations reset");
            }
        }
        let started = Instant::now();
        let (items, stats) = process_batch(
            model.as_mut(),
            &mut scorer,
            jobs,
            settings.max_batch,
            Some(&metrics),
        );
        let busy = started.elapsed().as_secs_f64();
        metrics.busy("model", stats.model_seconds);
        metrics.busy("score", (busy - stats.model_seconds).max(0.0));
        metrics.model_runs.inc_by(stats.runs);
        metrics.points_scored.inc_by(stats.scored);
        if stats.unscored > 0 {
            metrics
                .dead_lettered
                .with_label_values(&["no_forecast"])
                .inc_by(stats.unscored);
        }
        let evicted = scorer.take_evicted();
        if evicted > 0 {
            metrics
                .series_evicted
                .with_label_values(&["calibration_lru"])
                .inc_by(evicted);
        }
        for item in items {
            if let Outgoing::Point(p) = &item {
                if p.anomaly() {
                    metrics.anomalies.inc();
                }
                if p.alert() {
                    if let Some(d) = p.driver() {
                        metrics
                            .alerts
                            .with_label_values(&[d.scored.channels.strongest()])
                            .inc();
                    }
                }
            }
            if tx.blocking_send(item).is_err() {
                return; // publisher gone: shutting down
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScoreConfig;
    use crate::flow::{FeatureJob, Mode, Token};
    use crate::model::{Contract, Inference, ModelError};

    /// Forecasts the last context value for every step, scale 1; counts calls.
    struct Persistence {
        contract: Contract,
        calls: Vec<usize>,
    }

    impl Persistence {
        fn new(window: usize, horizon: usize) -> Self {
            Persistence {
                contract: Contract {
                    name: "persistence".into(),
                    version: "0".into(),
                    window,
                    patch: 1,
                    horizon,
                    min_points: 1,
                    features: vec!["value".into()],
                    layers: 1,
                    heads: 1,
                    score: String::new(),
                    flops_per_run: 0,
                    novelty: 0,
                    scores_compatible_with: Vec::new(),
                },
                calls: Vec::new(),
            }
        }
    }

    impl Forecaster for Persistence {
        fn contract(&self) -> &Contract {
            &self.contract
        }

        fn forecast(&mut self, input: &[f32], batch: usize) -> Result<Inference, ModelError> {
            self.calls.push(batch);
            let (w, h) = (self.contract.window, self.contract.horizon);
            let mut out = Inference::default();
            for ctx in input.chunks(w) {
                let last = ctx[w - 1];
                out.mean.extend(std::iter::repeat_n(last, h));
                out.std.extend(std::iter::repeat_n(1.0, h));
                out.attention.extend(std::iter::repeat_n(1.0 / w as f32, w));
            }
            Ok(out)
        }
    }

    fn token() -> Token {
        Token {
            partition: 0,
            offset: 0,
            generation: 0,
        }
    }

    /// Jobs of series `key` for values `xs`, a run on every value (stride 1).
    fn jobs(key: &str, xs: &[f32], w: usize) -> Vec<Job> {
        let key: Arc<str> = key.into();
        xs.iter()
            .enumerate()
            .map(|(i, &x)| {
                let ctx: Vec<f32> = (0..w)
                    .map(|k| {
                        let j = i as i64 - (w - 1 - k) as i64;
                        if j < 0 {
                            f32::NAN
                        } else {
                            xs[j as usize]
                        }
                    })
                    .collect();
                Job {
                    series: key.clone(),
                    ts: i as i64,
                    value: Some(x),
                    labels: Arc::default(),
                    features: vec![FeatureJob {
                        feature: "value".into(),
                        key: key.clone(),
                        value: x,
                        step: (i > 0).then_some(1),
                        filled: false,
                        run: Some(Window {
                            values: ctx,
                            end_ts: i as i64,
                            interval: 1,
                            present: (i + 1).min(w),
                        }),
                        interval: 1,
                    }],
                    token: token(),
                    source_ts_ms: None,
                    mode: Mode::Publish,
                }
            })
            .collect()
    }

    fn scores(items: &[Outgoing]) -> Vec<(i64, f64)> {
        items
            .iter()
            .map(|o| match o {
                Outgoing::Point(p) => (p.ts, p.features[0].scored.raw_score),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_value_is_scored_against_the_run_before_it_whatever_the_batching() {
        let xs = [1.0, 3.0, 6.0, 10.0, 15.0];
        let mut all_at_once = Vec::new();
        for cut in [5usize, 1, 2] {
            let mut model = Persistence::new(2, 1);
            let mut scorer = Scorer::new(ScoreConfig::default(), 10);
            let mut got = Vec::new();
            let js = jobs("a", &xs, 2);
            for chunk in js.chunks(cut) {
                let (items, stats) =
                    process_batch(&mut model, &mut scorer, chunk.to_vec(), 64, None);
                assert_eq!(stats.unscored, 0);
                got.extend(scores(&items));
            }
            // Persistence: |x_t - x_{t-1}| / 1.
            assert_eq!(
                got,
                vec![(1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0)],
                "cut {cut}"
            );
            if cut == 5 {
                all_at_once = model.calls.clone();
            }
        }
        // One series in one batch: each run must finish before the next value.
        assert_eq!(all_at_once, vec![1, 1, 1, 1, 1]);
    }

    #[test]
    fn runs_of_many_series_share_inference_calls() {
        let mut model = Persistence::new(2, 1);
        let mut scorer = Scorer::new(ScoreConfig::default(), 10);
        let (a, b) = (jobs("a", &[1.0, 2.0], 2), jobs("b", &[5.0, 7.0], 2));
        // Interleaved by time: a0 b0 a1 b1.
        let batch = vec![a[0].clone(), b[0].clone(), a[1].clone(), b[1].clone()];
        let (items, stats) = process_batch(&mut model, &mut scorer, batch, 64, None);
        assert_eq!(model.calls, vec![2, 2], "a0+b0 together, a1+b1 together");
        assert_eq!((stats.runs, stats.calls, stats.scored), (4, 2, 2));
        assert_eq!(scores(&items), vec![(1, 1.0), (1, 2.0)]);
    }

    #[test]
    fn runs_share_calls_even_when_each_series_comes_in_a_block() {
        // Many points of one series per message: a0 a1 a2 b0 b1 b2.
        let mut model = Persistence::new(2, 1);
        let mut scorer = Scorer::new(ScoreConfig::default(), 10);
        let (a, b) = (
            jobs("a", &[1.0, 2.0, 4.0], 2),
            jobs("b", &[5.0, 7.0, 10.0], 2),
        );
        let batch: Vec<Job> = a.iter().chain(&b).cloned().collect();
        let (items, _) = process_batch(&mut model, &mut scorer, batch, 64, None);
        assert_eq!(model.calls, vec![2, 2, 2]);
        // Per series, the same scores in the same order as one at a time.
        let got = scores(&items);
        let of = |ts: i64| {
            got.iter()
                .filter(|x| x.0 == ts)
                .map(|x| x.1)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(1), vec![1.0, 2.0]);
        assert_eq!(of(2), vec![2.0, 3.0]);
    }

    #[test]
    fn a_value_without_forecast_is_dead_lettered_not_lost() {
        let mut model = Persistence::new(2, 1);
        let mut scorer = Scorer::new(ScoreConfig::default(), 10);
        let mut js = jobs("a", &[1.0, 2.0], 2);
        js[0].features[0].run = None; // the run before value 1 never happened
        let (items, stats) = process_batch(&mut model, &mut scorer, js, 64, None);
        assert_eq!(stats.unscored, 1);
        match &items[..] {
            [Outgoing::DeadLetter(d)] => {
                assert_eq!(d.reason, "no_forecast");
                let v: serde_json::Value = serde_json::from_slice(&d.bytes).unwrap();
                assert_eq!(v["value"], 2.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rebuild_jobs_update_state_but_publish_nothing() {
        let mut model = Persistence::new(2, 1);
        let mut scorer = Scorer::new(ScoreConfig::default(), 10);
        let mut js = jobs("a", &[1.0, 2.0, 4.0], 2);
        for j in &mut js[..2] {
            j.mode = Mode::Rebuild;
        }
        let (items, stats) = process_batch(&mut model, &mut scorer, js, 64, None);
        assert_eq!(stats.scored, 2);
        assert_eq!(scores(&items), vec![(2, 2.0)]);
    }

    #[test]
    fn gather_stops_at_max_jobs_or_delay_and_ends_when_closed() {
        let (tx, rx) = flume::bounded(16);
        for j in jobs("a", &[1.0; 5], 1) {
            tx.send(j).unwrap();
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
