//! From one consumed message to model jobs and dead letters.
//!
//! [`Planner`] is pure: it decodes the payload, pushes every sample into its
//! window(s), and returns the jobs (points with full windows) and dead
//! letters the message causes. The async side registers that count with the
//! offset tracker *before* sending anything, so an acknowledgement can never
//! arrive for a message the tracker does not know.

use super::decode::{self, FeatureSet, Sample, Values};
use super::offsets::Token;
use crate::metrics::Metrics;
use crate::model::worker::{FeatureWindow, Job};
use crate::publish::encode::{self, OutMessage};
use std::collections::BTreeMap;

use crate::window::{Counters, Settings, Windows};

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
    /// Points ready for the model.
    pub jobs: Vec<Job>,
    /// Rejected records.
    pub dead_letters: Vec<OutMessage>,
}

impl Plan {
    /// Number of outputs this message will cause.
    pub fn outputs(&self) -> u32 {
        (self.jobs.len() + self.dead_letters.len()) as u32
    }
}

/// Decodes messages and keeps the windows of every series.
#[derive(Debug)]
pub struct Planner {
    windows: Windows,
    features: FeatureSet,
    metrics: Metrics,
    /// Window counters already reported to the metrics.
    reported: Counters,
}

impl Planner {
    /// A planner with the given window-stage settings.
    pub fn new(settings: Settings, features: FeatureSet, metrics: Metrics) -> Self {
        Planner {
            windows: Windows::new(settings),
            features,
            metrics,
            reported: Counters::default(),
        }
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
        self.plan_inner(payload, key, meta, now_ms, false)
    }

    /// Place the samples of a message that was already published before (a
    /// window rebuild after assignment): windows advance, nothing is emitted.
    pub fn replay(&mut self, payload: &[u8], meta: MessageMeta, now_ms: i64) {
        self.plan_inner(payload, None, meta, now_ms, true);
    }

    fn plan_inner(
        &mut self,
        payload: &[u8],
        key: Option<&[u8]>,
        meta: MessageMeta,
        now_ms: i64,
        replay: bool,
    ) -> Plan {
        let mut plan = Plan::default();
        for item in decode::decode(payload, &self.features) {
            match item {
                Ok(sample) => {
                    if !replay {
                        self.metrics.samples.inc();
                    }
                    let jobs = self.place(sample, meta, now_ms);
                    if !replay {
                        plan.jobs.extend(jobs);
                    }
                }
                Err(_) if replay => {}
                Err(e) => {
                    let code = e.reason.code();
                    self.metrics.dead_lettered.with_label_values(&[code]).inc();
                    let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
                    plan.dead_letters.push(encode::dead_letter(
                        e.bytes,
                        key,
                        code,
                        e.reason.to_string(),
                        Some(meta.token),
                    ));
                }
            }
        }
        self.report();
        plan
    }

    /// Place one already-validated sample (the file path) at processing
    /// time `now_ms`; returns the jobs of the grid points it closed.
    pub fn place_sample(&mut self, sample: Sample, meta: MessageMeta, now_ms: i64) -> Vec<Job> {
        let jobs = self.place(sample, meta, now_ms);
        self.report();
        jobs
    }

    /// Close the open bucket of the single-valued series `series` (the end
    /// of a file); returns its job if it has a window.
    pub fn flush(&mut self, series: &str, meta: MessageMeta) -> Vec<Job> {
        let jobs = self
            .windows
            .flush(series)
            .into_iter()
            .filter_map(|e| {
                let window = e.window?;
                Some(Job {
                    series: series.to_string(),
                    ts: e.ts,
                    value: Some(e.value),
                    labels: Default::default(),
                    windows: vec![FeatureWindow {
                        feature: "value".into(),
                        key: series.to_string(),
                        window,
                    }],
                    token: meta.token,
                    source_ts_ms: None,
                })
            })
            .collect();
        self.report();
        jobs
    }

    /// Push a sample's value(s) into the window stage; one job per closed
    /// grid point that has a window (all features of one grid time together).
    fn place(&mut self, sample: Sample, meta: MessageMeta, now_ms: i64) -> Vec<Job> {
        let Sample {
            series,
            ts,
            values,
            labels,
        } = sample;
        let single = matches!(values, Values::Single(_));
        let pairs: Vec<(String, f32)> = match values {
            Values::Single(v) => vec![("value".to_string(), v)],
            Values::Multi(m) => m,
        };
        let mut by_time: BTreeMap<i64, (f32, Vec<FeatureWindow>)> = BTreeMap::new();
        for (feature, v) in pairs {
            let key = if single {
                series.clone()
            } else {
                format!("{series}{FEATURE_SEP}{feature}")
            };
            // Dropped points are counted by the window stage.
            let Ok(emitted) = self.windows.push(&key, ts, v, now_ms) else {
                continue;
            };
            for e in emitted {
                if let Some(window) = e.window {
                    let entry = by_time.entry(e.ts).or_insert((e.value, Vec::new()));
                    entry.1.push(FeatureWindow {
                        feature: feature.clone(),
                        key: key.clone(),
                        window,
                    });
                }
            }
        }
        by_time
            .into_iter()
            .map(|(ts, (value, windows))| Job {
                series: series.clone(),
                ts,
                value: single.then_some(value),
                labels: labels.clone(),
                windows,
                token: meta.token,
                source_ts_ms: meta.kafka_ts_ms,
            })
            .collect()
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
        m.active_series.set(self.windows.series() as i64);
        self.reported = now;
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

    fn msg(series: &str, ts: i64) -> Vec<u8> {
        format!(r#"{{"series":"{series}","ts":{ts},"value":1}}"#).into_bytes()
    }

    #[test]
    fn warm_up_then_one_job_per_grid_point_and_dead_letters_for_bad_records() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(settings(3), FeatureSet::default(), m.clone());
        // A bucket closes when the next one starts: buckets 0..=2 close on ts 1..=3.
        for ts in 0..3 {
            assert_eq!(p.plan(&msg("a", ts), None, meta(ts), 0).outputs(), 0);
        }
        let both = br#"[{"series":"a","ts":3,"value":1},{"series":"a","ts":"x","value":1}]"#;
        let plan = p.plan(both, Some(b"a"), meta(3), 0);
        assert_eq!(plan.jobs.len(), 1);
        assert_eq!(plan.dead_letters.len(), 1);
        assert_eq!(plan.outputs(), 2);
        assert_eq!(plan.jobs[0].ts, 2);
        assert_eq!(plan.jobs[0].windows[0].window.ts, vec![0, 1, 2]);
        assert_eq!(plan.dead_letters[0].key.as_deref(), Some("a"));
        assert_eq!(
            m.dead_lettered.with_label_values(&["bad_timestamp"]).get(),
            1
        );
        // A late point is dropped and counted, not dead-lettered.
        assert_eq!(p.plan(&msg("a", 1), None, meta(4), 0).outputs(), 0);
        assert_eq!(m.late.get(), 1);
        assert_eq!(m.active_series.get(), 1);
    }

    #[test]
    fn replayed_messages_advance_windows_without_output_or_counts() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(settings(2), FeatureSet::default(), m.clone());
        p.replay(&msg("a", 0), meta(0), 0);
        p.replay(b"{bad", meta(1), 0);
        p.replay(&msg("a", 1), meta(2), 0);
        assert_eq!(m.samples.get(), 0);
        assert_eq!(
            m.dead_lettered.with_label_values(&["invalid_json"]).get(),
            0
        );
        let plan = p.plan(&msg("a", 2), None, meta(3), 0);
        assert_eq!(plan.jobs.len(), 1, "the rebuilt window is ready at once");
    }

    #[test]
    fn multi_value_samples_window_each_feature() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(settings(2), FeatureSet::default(), m);
        p.plan(
            br#"{"series":"p","ts":1,"values":{"a":1,"b":2}}"#,
            None,
            meta(0),
            0,
        );
        p.plan(
            br#"{"series":"p","ts":2,"values":{"a":3,"b":4}}"#,
            None,
            meta(1),
            0,
        );
        let plan = p.plan(
            br#"{"series":"p","ts":3,"values":{"a":5,"b":6}}"#,
            None,
            meta(2),
            0,
        );
        let job = &plan.jobs[0];
        assert_eq!(job.value, None);
        let names: Vec<_> = job.windows.iter().map(|w| w.feature.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(job.windows[1].window.values, vec![2.0, 4.0]);
    }
}
