//! From one consumed message to model jobs and dead letters.
//!
//! [`Planner`] is pure: it decodes the payload, pushes every sample into its
//! window(s), and returns the jobs (closed grid points, with the contexts of
//! the model runs due on them) and dead letters the message causes. The
//! async side registers the number of outputs with the offset tracker
//! *before* sending anything, so an acknowledgement can never arrive for a
//! message the tracker does not know.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::decode::{self, FeatureSet, Format, Limits, Sample, TimeUnit, Values};
use crate::flow::{DeadLetter, FeatureJob, Job, Labels, Mode, StaleEvent, Token};
use crate::metrics::Metrics;
use crate::window::{Counters, Emitted, IdleTimers, Mark, Settings, Windows};

/// Separator between series id and feature name in window keys.
const FEATURE_SEP: char = '\u{1f}';

/// Input message metadata the planner needs.
#[derive(Debug, Clone, Copy)]
pub struct MessageMeta {
    /// Offset token.
    pub token: Token,
    /// Kafka timestamp (epoch ms) if the message has one.
    pub kafka_ts_ms: Option<i64>,
}

/// What one message produced.
#[derive(Debug, Default)]
pub struct Plan {
    /// Grid points for the model stage (scored, or carrying a run).
    pub jobs: Vec<Job>,
    /// Rejected records.
    pub dead_letters: Vec<DeadLetter>,
}

impl Plan {
    /// Number of outputs this message will cause: one per published point
    /// and one per dead letter.
    pub fn outputs(&self) -> u32 {
        (self.jobs.iter().filter(|j| j.publishes()).count() + self.dead_letters.len()) as u32
    }
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

/// Decodes messages and keeps the windows of every series.
#[derive(Debug)]
pub struct Planner {
    windows: Windows,
    features: FeatureSet,
    limits: Limits,
    /// What the messages hold, and the unit of integer timestamps.
    format: (Format, TimeUnit),
    metrics: Metrics,
    /// Window counters already reported to the metrics.
    reported: Counters,
    /// The feature name of single-value samples, shared.
    value_feature: Arc<str>,
    /// Shared empty labels.
    no_labels: Labels,
}

impl Planner {
    /// A planner with the given window-stage settings and the default
    /// input [`Limits`].
    pub fn new(settings: Settings, features: FeatureSet, metrics: Metrics) -> Self {
        Planner {
            windows: Windows::new(settings),
            features,
            limits: Limits::DEFAULT,
            format: (Format::Attnwatch, Format::Attnwatch.default_unit()),
            metrics,
            reported: Counters::default(),
            value_feature: Arc::from("value"),
            no_labels: Arc::new(BTreeMap::new()),
        }
    }

    /// The same planner with other input bounds (`[ingest]`).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same planner reading another input format (`ingest.format`),
    /// integer timestamps in `unit`.
    pub fn with_format(mut self, format: Format, unit: TimeUnit) -> Self {
        self.format = (format, unit);
        self
    }

    /// Decode `payload` and place its samples at processing time `now_ms`.
    /// `key` is the Kafka message key.
    pub fn plan(
        &mut self,
        payload: &[u8],
        key: Option<&[u8]>,
        meta: MessageMeta,
        now_ms: i64,
    ) -> Plan {
        self.plan_inner(payload, key, meta, now_ms, Mode::Publish)
    }

    /// Place the samples of a message that was already published before (a
    /// rebuild after assignment): windows advance and the jobs rebuild the
    /// model stage's forecasts and calibration, but nothing is published and
    /// bad records are not dead-lettered again.
    pub fn replay(&mut self, payload: &[u8], meta: MessageMeta, now_ms: i64) -> Vec<Job> {
        self.plan_inner(payload, None, meta, now_ms, Mode::Rebuild)
            .jobs
    }

    fn plan_inner(
        &mut self,
        payload: &[u8],
        key: Option<&[u8]>,
        meta: MessageMeta,
        now_ms: i64,
        mode: Mode,
    ) -> Plan {
        let mut plan = Plan::default();
        let publish = mode == Mode::Publish;
        let (format, unit) = self.format;
        for item in decode::decode_as(format, unit, payload, &self.features, &self.limits) {
            match item {
                Ok(sample) => {
                    if publish {
                        self.metrics.samples.inc();
                    }
                    self.place(sample, meta, now_ms, mode, &mut plan.jobs);
                }
                Err(_) if !publish => {}
                Err(e) => {
                    let code = e.reason.code();
                    self.metrics.dead_lettered.with_label_values(&[code]).inc();
                    plan.dead_letters.push(DeadLetter {
                        bytes: e.bytes,
                        key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
                        reason: code,
                        detail: e.reason.to_string(),
                        token: Some(meta.token),
                    });
                }
            }
        }
        self.report();
        plan
    }

    /// Place one already-validated sample (the file path) at processing
    /// time `now_ms`; returns the jobs of the grid points it closed.
    pub fn place_sample(&mut self, sample: Sample, meta: MessageMeta, now_ms: i64) -> Vec<Job> {
        let mut jobs = Vec::new();
        self.place(sample, meta, now_ms, Mode::Publish, &mut jobs);
        self.report();
        jobs
    }

    /// Close the open bucket of the single-valued series `series` (the end
    /// of a file); returns the jobs of the grid points it closed.
    pub fn flush(&mut self, series: &str, meta: MessageMeta) -> Vec<Job> {
        let key: Arc<str> = Arc::from(series);
        let emitted = self.windows.flush(series);
        let mut jobs = Vec::new();
        for e in emitted.into_iter().filter(useful) {
            jobs.push(Job {
                series: key.clone(),
                ts: e.ts,
                value: Some(e.value),
                labels: self.no_labels.clone(),
                features: vec![feature_job(self.value_feature.clone(), key.clone(), e)],
                token: meta.token,
                source_ts_ms: None,
                mode: Mode::Publish,
            });
        }
        self.report();
        jobs
    }

    /// The timer marks of every partition whose marks changed since the
    /// last call (see [`super::marks`]).
    pub fn take_changed_marks(&mut self) -> Vec<(i32, Vec<Mark>)> {
        let dirty = self.windows.take_dirty();
        dirty
            .into_iter()
            .filter(|p| *p >= 0)
            .map(|p| (p, self.windows.marks(p)))
            .collect()
    }

    /// Drop the window state of every series of a revoked `partition`, its
    /// timers with it; returns the jobs that tell the model stage to drop
    /// their score state too ([`Mode::Forget`]).
    pub fn drop_partition(&mut self, partition: i32) -> Vec<Job> {
        let keys = self.windows.drop_partition(partition);
        self.report();
        keys.into_iter()
            .map(|key| {
                let series: Arc<str> = match key.split_once(FEATURE_SEP) {
                    Some((series, _)) => Arc::from(series),
                    None => Arc::from(key.as_str()),
                };
                Job {
                    series,
                    ts: 0,
                    value: None,
                    labels: self.no_labels.clone(),
                    features: vec![FeatureJob {
                        feature: self.value_feature.clone(),
                        key: Arc::from(key),
                        value: 0.0,
                        step: None,
                        filled: true,
                        run: None,
                        interval: 0,
                    }],
                    token: Token::UNTRACKED,
                    source_ts_ms: None,
                    mode: Mode::Forget,
                }
            })
            .collect()
    }

    /// Restore the committed timer marks of `partition` after its rebuild:
    /// the series whose timers had fired get their flags back, and the
    /// buckets the idle flush had closed are closed again. Returns rebuild
    /// jobs for those buckets (scored to keep forecasts and calibration
    /// as they were, published before: nothing is published again).
    pub fn restore_marks(&mut self, partition: i32, marks: &HashMap<u64, u8>) -> Vec<Job> {
        let closed = self.windows.restore(partition, marks);
        let mut jobs = Vec::new();
        for (key, emitted) in closed {
            self.timer_jobs(&key, emitted, Mode::Rebuild, &mut jobs);
        }
        self.report();
        jobs
    }

    /// Jobs for grid points a timer closed on window key `key`.
    fn timer_jobs(&self, key: &str, emitted: Vec<Emitted>, mode: Mode, jobs: &mut Vec<Job>) {
        let (series, feature) = match key.split_once(FEATURE_SEP) {
            Some((series, feature)) => (Arc::from(series), Some(Arc::from(feature))),
            None => (Arc::from(key), None),
        };
        let key: Arc<str> = Arc::from(key);
        for e in emitted.into_iter().filter(useful) {
            let (ts, value) = (e.ts, e.value);
            let single = feature.is_none();
            let f = feature
                .clone()
                .unwrap_or_else(|| self.value_feature.clone());
            jobs.push(Job {
                series: Arc::clone(&series),
                ts,
                value: single.then_some(value),
                labels: self.no_labels.clone(),
                features: vec![feature_job(f, key.clone(), e)],
                token: Token::UNTRACKED,
                source_ts_ms: None,
                mode,
            });
        }
    }

    /// Fire the idle timers at processing time `now_ms`: the jobs of the
    /// buckets the idle flush closed (their outputs owed by no input
    /// message: [`Token::UNTRACKED`]), and the series that went stale.
    pub fn sweep(&mut self, now_ms: i64, timers: IdleTimers) -> (Vec<Job>, Vec<StaleEvent>) {
        self.sweep_except(now_ms, timers, &[])
    }

    /// [`Planner::sweep`], leaving alone the series of the partitions in
    /// `hold` (rebuilding: their timers wait until the rebuild is done).
    pub fn sweep_except(
        &mut self,
        now_ms: i64,
        timers: IdleTimers,
        hold: &[i32],
    ) -> (Vec<Job>, Vec<StaleEvent>) {
        let swept = self.windows.sweep_except(now_ms, timers, hold);
        let mut jobs = Vec::new();
        for (key, emitted) in swept.flushed {
            self.timer_jobs(&key, emitted, Mode::Publish, &mut jobs);
        }
        // A series of several features goes stale once, at its newest time.
        let mut stale: BTreeMap<&str, i64> = BTreeMap::new();
        for (key, ts) in &swept.stale {
            let series = key.split_once(FEATURE_SEP).map_or(key.as_str(), |(s, _)| s);
            let e = stale.entry(series).or_insert(*ts);
            *e = (*e).max(*ts);
        }
        let stale = stale
            .into_iter()
            .map(|(series, ts)| StaleEvent {
                series: Arc::from(series),
                ts,
            })
            .collect();
        self.report();
        (jobs, stale)
    }

    /// Push a sample's value(s) into the window stage; one job per closed
    /// grid time (all features of one grid time together).
    fn place(
        &mut self,
        sample: Sample,
        meta: MessageMeta,
        now_ms: i64,
        mode: Mode,
        jobs: &mut Vec<Job>,
    ) {
        let Sample {
            series,
            ts,
            values,
            labels,
        } = sample;
        let series: Arc<str> = Arc::from(series);
        let labels = if labels.is_empty() {
            self.no_labels.clone()
        } else {
            Arc::new(labels)
        };
        let job = |ts: i64, value: Option<f32>, features: Vec<FeatureJob>| Job {
            series: series.clone(),
            ts,
            value,
            labels: labels.clone(),
            features,
            token: meta.token,
            source_ts_ms: meta.kafka_ts_ms,
            mode,
        };
        match values {
            Values::Single(v) => {
                // Dropped points are counted by the window stage.
                let Ok(emitted) =
                    self.windows
                        .push_from(&series, ts, v, now_ms, meta.token.partition)
                else {
                    return;
                };
                for e in emitted.into_iter().filter(useful) {
                    let (ts, value) = (e.ts, e.value);
                    let f = feature_job(self.value_feature.clone(), series.clone(), e);
                    jobs.push(job(ts, Some(value), vec![f]));
                }
            }
            Values::Multi(pairs) => {
                let mut by_time: BTreeMap<i64, Vec<FeatureJob>> = BTreeMap::new();
                for (feature, v) in pairs {
                    let key = format!("{series}{FEATURE_SEP}{feature}");
                    let Ok(emitted) =
                        self.windows
                            .push_from(&key, ts, v, now_ms, meta.token.partition)
                    else {
                        continue;
                    };
                    let (feature, key): (Arc<str>, Arc<str>) = (Arc::from(feature), Arc::from(key));
                    for e in emitted.into_iter().filter(useful) {
                        by_time.entry(e.ts).or_default().push(feature_job(
                            feature.clone(),
                            key.clone(),
                            e,
                        ));
                    }
                }
                for (ts, features) in by_time {
                    jobs.push(job(ts, None, features));
                }
            }
        }
    }

    /// Bring the metrics up to date with the window stage's counters.
    fn report(&mut self) {
        let now = self.windows.counters();
        let last = self.reported;
        let m = &self.metrics;
        m.late.inc_by(now.late - last.late);
        m.duplicate.inc_by(now.duplicates - last.duplicates);
        m.bucket_overflow.inc_by(now.overflow - last.overflow);
        m.gaps_filled.inc_by(now.gaps_filled - last.gaps_filled);
        m.window_resets.inc_by(now.resets - last.resets);
        m.series_evicted
            .with_label_values(&["lru"])
            .inc_by(now.evicted_lru - last.evicted_lru);
        m.series_evicted
            .with_label_values(&["idle"])
            .inc_by(now.evicted_idle - last.evicted_idle);
        m.buckets_flushed
            .inc_by(now.flushed_idle - last.flushed_idle);
        m.series_stale.inc_by(now.stale - last.stale);
        m.active_series.set(self.windows.series() as i64);
        self.reported = now;
    }

    /// Approximate heap bytes of the window state.
    pub fn window_bytes(&self) -> usize {
        self.windows.approx_bytes()
    }
}

/// Whether a grid value matters to the model stage: it is real (scored,
/// or, before the series' first run, observed by the range and the pattern
/// memory), or a run is due on it. (A filled gap value without a run is
/// neither.)
fn useful(e: &Emitted) -> bool {
    !e.filled || e.window.is_some()
}

fn feature_job(feature: Arc<str>, key: Arc<str>, e: Emitted) -> FeatureJob {
    FeatureJob {
        feature,
        key,
        value: e.value,
        step: e.step,
        filled: e.filled,
        run: e.window,
        interval: e.interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(offset: i64) -> MessageMeta {
        MessageMeta {
            token: Token {
                partition: 0,
                offset,
                generation: 1,
            },
            kafka_ts_ms: None,
        }
    }

    fn settings(w: usize) -> Settings {
        Settings {
            interval_ms: Some(1),
            ..Settings::for_model(w, w)
        }
    }

    fn scored(plan: &Plan) -> Vec<&Job> {
        plan.jobs.iter().filter(|j| j.publishes()).collect()
    }

    fn msg(series: &str, ts: i64) -> Vec<u8> {
        format!(r#"{{"series":"{series}","ts":{ts},"value":1}}"#).into_bytes()
    }

    #[test]
    fn warm_up_then_one_published_job_per_grid_point_and_dead_letters_for_bad_records() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(settings(3), FeatureSet::default(), m.clone());
        // A bucket closes when the next one starts: buckets 0..=1 close on ts 1..=2.
        for ts in 0..3 {
            assert_eq!(p.plan(&msg("a", ts), None, meta(ts), 0).outputs(), 0);
        }
        // Bucket 2 completes min_points = 3: the first run is due on it, but
        // no forecast covers it yet, so nothing is published for it.
        let both = br#"[{"series":"a","ts":3,"value":1},{"series":"a","ts":"x","value":1}]"#;
        let plan = p.plan(both, Some(b"a"), meta(3), 0);
        assert_eq!(plan.jobs.len(), 1);
        assert_eq!(plan.jobs[0].ts, 2);
        let run = plan.jobs[0].features[0].run.as_ref().unwrap();
        assert_eq!(run.timestamps(), vec![0, 1, 2]);
        assert_eq!(plan.dead_letters.len(), 1);
        assert_eq!(plan.outputs(), 1, "the dead letter only");
        assert_eq!(plan.dead_letters[0].key.as_deref(), Some("a"));
        assert_eq!(
            m.dead_lettered.with_label_values(&["bad_timestamp"]).get(),
            1
        );
        // Bucket 3 is one step after the run: scored and published.
        let plan = p.plan(&msg("a", 4), None, meta(4), 0);
        let jobs = scored(&plan);
        assert_eq!((jobs.len(), jobs[0].ts), (1, 3));
        assert_eq!(jobs[0].features[0].step, Some(1));
        assert_eq!(plan.outputs(), 1);
        // A late point is dropped and counted, not dead-lettered.
        assert_eq!(p.plan(&msg("a", 1), None, meta(5), 0).outputs(), 0);
        assert_eq!(m.late.get(), 1);
        assert_eq!(m.active_series.get(), 1);
    }

    #[test]
    fn replayed_messages_rebuild_without_output_or_counts() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(settings(2), FeatureSet::default(), m.clone());
        assert!(p.replay(&msg("a", 0), meta(0), 0).is_empty());
        assert!(p.replay(b"{bad", meta(1), 0).is_empty());
        // Bucket 0 closes: a real value before the first run, which the
        // score stage only observes.
        let jobs = p.replay(&msg("a", 1), meta(2), 0);
        assert!(jobs.len() == 1 && !jobs[0].publishes() && jobs[0].features[0].step.is_none());
        // Bucket 1 completes the window: its run is rebuilt, not published.
        let jobs = p.replay(&msg("a", 2), meta(3), 0);
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].features[0].run.is_some() && !jobs[0].publishes());
        assert_eq!(m.samples.get(), 0);
        assert_eq!(
            m.dead_lettered.with_label_values(&["invalid_json"]).get(),
            0
        );
        let plan = p.plan(&msg("a", 3), None, meta(4), 0);
        assert_eq!(scored(&plan).len(), 1, "scoring resumes at once");
    }

    #[test]
    fn multi_value_samples_window_each_feature() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(settings(2), FeatureSet::default(), m);
        for (i, (a, b)) in [(1, 2), (3, 4), (5, 6)].into_iter().enumerate() {
            let body = format!(
                r#"{{"series":"p","ts":{},"values":{{"a":{a},"b":{b}}}}}"#,
                i + 1
            );
            p.plan(body.as_bytes(), None, meta(i as i64), 0);
        }
        let plan = p.plan(
            br#"{"series":"p","ts":4,"values":{"a":7,"b":8}}"#,
            None,
            meta(3),
            0,
        );
        let job = &plan.jobs[0];
        assert_eq!(job.value, None);
        let names: Vec<_> = job.features.iter().map(|f| &*f.feature).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(job.features[1].value, 6.0);
        assert_eq!(job.features[1].run.as_ref().unwrap().values, vec![4.0, 6.0]);
        assert!(job.publishes());
    }

    #[test]
    fn records_over_the_configured_limits_are_dead_lettered_with_their_reason() {
        let m = Metrics::new().unwrap();
        let limits = Limits {
            max_message_bytes: 60,
            max_series_bytes: 3,
            ..Limits::DEFAULT
        };
        let mut p = Planner::new(settings(2), FeatureSet::default(), m.clone()).with_limits(limits);
        assert_eq!(p.plan(&msg("abc", 0), None, meta(0), 0).outputs(), 0);
        let long = msg("abcd", 1);
        let plan = p.plan(&long, Some(b"abcd"), meta(1), 0);
        assert_eq!(plan.dead_letters.len(), 1);
        let d = &plan.dead_letters[0];
        assert_eq!(
            (d.reason, d.bytes.as_slice()),
            ("series_too_long", &long[..])
        );
        assert!(d.detail.contains("ingest.max_series_bytes"), "{}", d.detail);
        let one = String::from_utf8(msg("abc", 2)).unwrap();
        let big = format!("[{one},{one}]");
        let plan = p.plan(big.as_bytes(), None, meta(2), 0);
        assert_eq!(plan.dead_letters[0].reason, "message_too_large");
        for (code, n) in [("series_too_long", 1), ("message_too_large", 1)] {
            assert_eq!(
                m.dead_lettered.with_label_values(&[code]).get(),
                n,
                "{code}"
            );
        }
        assert_eq!(m.samples.get(), 1);
    }

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
}
