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
use crate::window::{Rejected, Windows};

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
}

impl Planner {
    /// A planner with windows of length `w`, yielded from `min_points` points on.
    pub fn new(w: usize, min_points: usize, features: FeatureSet, metrics: Metrics) -> Self {
        Planner {
            windows: Windows::new(w, min_points),
            features,
            metrics,
        }
    }

    /// Decode `payload` and place its samples. `key` is the Kafka message key.
    pub fn plan(&mut self, payload: &[u8], key: Option<&[u8]>, meta: MessageMeta) -> Plan {
        self.plan_inner(payload, key, meta, false)
    }

    /// Place the samples of a message that was already published before (a
    /// window rebuild after assignment): windows advance, nothing is emitted
    /// or counted as new.
    pub fn replay(&mut self, payload: &[u8], meta: MessageMeta) {
        self.plan_inner(payload, None, meta, true);
    }

    fn plan_inner(
        &mut self,
        payload: &[u8],
        key: Option<&[u8]>,
        meta: MessageMeta,
        replay: bool,
    ) -> Plan {
        let mut plan = Plan::default();
        for item in decode::decode(payload, &self.features) {
            match item {
                Ok(sample) => {
                    if replay {
                        self.place(sample, meta);
                        continue;
                    }
                    self.metrics.samples.inc();
                    if let Some(job) = self.place(sample, meta) {
                        plan.jobs.push(job);
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
        self.metrics.active_series.set(self.windows.series() as i64);
        plan
    }

    fn place(&mut self, sample: Sample, meta: MessageMeta) -> Option<Job> {
        let Sample {
            series,
            ts,
            values,
            labels,
        } = sample;
        let (value, pairs): (Option<f32>, Vec<(String, f32)>) = match values {
            Values::Single(v) => (Some(v), vec![("value".to_string(), v)]),
            Values::Multi(m) => (None, m),
        };
        let mut windows = Vec::with_capacity(pairs.len());
        for (feature, v) in pairs {
            let key = if value.is_some() {
                series.clone()
            } else {
                format!("{series}{FEATURE_SEP}{feature}")
            };
            match self.windows.push(&key, ts, v) {
                Ok(Some(window)) => windows.push(FeatureWindow {
                    feature,
                    key,
                    window,
                }),
                Ok(None) => {}
                Err(Rejected::Late) => self.metrics.late.inc(),
                Err(Rejected::Duplicate) => self.metrics.duplicate.inc(),
            }
        }
        (!windows.is_empty()).then_some(Job {
            series,
            ts,
            value,
            labels,
            windows,
            token: meta.token,
            source_ts_ms: meta.kafka_ts_ms,
        })
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

    #[test]
    fn warm_up_then_one_job_per_point_and_dead_letters_for_bad_records() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(3, 3, FeatureSet::default(), m.clone());
        for ts in 0..2 {
            let plan = p.plan(
                format!(r#"{{"series":"a","ts":{ts},"value":1}}"#).as_bytes(),
                None,
                meta(ts),
            );
            assert_eq!(plan.outputs(), 0);
        }
        let plan = p.plan(
            br#"[{"series":"a","ts":2,"value":1},{"series":"a","ts":"x","value":1}]"#,
            Some(b"a"),
            meta(2),
        );
        assert_eq!(plan.jobs.len(), 1);
        assert_eq!(plan.dead_letters.len(), 1);
        assert_eq!(plan.outputs(), 2);
        assert_eq!(plan.jobs[0].windows[0].window.ts, vec![0, 1, 2]);
        assert_eq!(plan.dead_letters[0].key.as_deref(), Some("a"));
        assert_eq!(
            m.dead_lettered.with_label_values(&["bad_timestamp"]).get(),
            1
        );
        // A late point is dropped and counted, not dead-lettered.
        let plan = p.plan(br#"{"series":"a","ts":1,"value":1}"#, None, meta(3));
        assert_eq!(plan.outputs(), 0);
        assert_eq!(m.late.get(), 1);
    }

    #[test]
    fn multi_value_samples_window_each_feature() {
        let m = Metrics::new().unwrap();
        let mut p = Planner::new(2, 2, FeatureSet::default(), m);
        p.plan(
            br#"{"series":"p","ts":1,"values":{"a":1,"b":2}}"#,
            None,
            meta(0),
        );
        let plan = p.plan(
            br#"{"series":"p","ts":2,"values":{"a":3,"b":4}}"#,
            None,
            meta(1),
        );
        let job = &plan.jobs[0];
        assert_eq!(job.value, None);
        let names: Vec<_> = job.windows.iter().map(|w| w.feature.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(job.windows[1].window.values, vec![2.0, 4.0]);
    }
}
