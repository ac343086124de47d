//! Output encoding: scored points and dead letters to Kafka messages.
//!
//! Pure. The output format is the one DESIGN.md gives: one JSON object per
//! scored point, keyed by series. For `values` samples each feature is scored
//! on its own (channel-independent); the point's score is the highest of its
//! features and `features` lists them, highest first, so the output names
//! what drove it. Attention detail follows `publish.attention`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{AttentionDetail, PublishConfig};
use crate::ingest::offsets::Token;
use crate::model::worker::Job;
use crate::model::Contract;
use crate::score::Scored;
use crate::window::MISSING_TS;

/// Header with the dead-letter reason code.
pub const REASON_HEADER: &str = "attnwatch.reason";
/// Header with the human-readable dead-letter detail.
pub const DETAIL_HEADER: &str = "attnwatch.error";

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// The output (scores) topic.
    Output,
    /// The dead-letter topic.
    DeadLetter,
}

/// A message ready for the producer.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Destination topic.
    pub dest: Dest,
    /// Message key (the series id, when known).
    pub key: Option<String>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
    /// The input message this output belongs to.
    pub token: Option<Token>,
    /// Kafka timestamp of that input message, for end-to-end latency.
    pub source_ts_ms: Option<i64>,
}

/// The scoring result of one feature of a point.
#[derive(Debug, Clone)]
pub struct FeatureResult {
    /// Feature name.
    pub feature: String,
    /// Calibrated score.
    pub scored: Scored,
    /// Model's prediction for the point.
    pub pred_mean: f32,
    /// Model's predicted scale.
    pub pred_std: f32,
    /// Attention of the scored row, `[layers, heads, W]`.
    pub attention: Vec<f32>,
    /// Encoder layers in `attention`.
    pub layers: usize,
    /// Heads per layer in `attention`.
    pub heads: usize,
    /// Timestamps of the window positions.
    pub window_ts: Vec<i64>,
}

/// All features of one scored point.
#[derive(Debug, Clone)]
pub struct ScoredPoint {
    /// One entry per feature (one for `value` samples).
    pub features: Vec<FeatureResult>,
}

impl ScoredPoint {
    /// The feature with the highest score.
    pub fn driver(&self) -> Option<&FeatureResult> {
        self.features
            .iter()
            .max_by(|a, b| a.scored.score.total_cmp(&b.scored.score))
    }

    /// Whether any feature is anomalous.
    pub fn anomaly(&self) -> bool {
        self.features.iter().any(|f| f.scored.anomaly)
    }
}

#[derive(Serialize)]
struct Record<'a> {
    series: &'a str,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<BTreeMap<&'a str, f32>>,
    score: f64,
    threshold: f64,
    anomaly: bool,
    raw_score: f64,
    run_score: f64,
    expected: f32,
    expected_std: f32,
    model: &'a str,
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Vec<FeatureRecord<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attention: Option<Attention>,
}

#[derive(Serialize)]
struct FeatureRecord<'a> {
    name: &'a str,
    score: f64,
    raw_score: f64,
    anomaly: bool,
}

#[derive(Serialize)]
struct Attention {
    step_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    top: Option<Vec<TopEntry>>,
    /// Timestamps of the window positions; `null` where missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<Vec<Option<i64>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<Vec<f32>>>,
}

#[derive(Serialize)]
struct TopEntry {
    ts: i64,
    weight: f32,
}

/// Mean of the attention rows over heads, per layer: `[layers][W]`.
pub fn per_layer(attention: &[f32], layers: usize, heads: usize, w: usize) -> Vec<Vec<f32>> {
    (0..layers)
        .map(|l| {
            (0..w)
                .map(|i| {
                    let sum: f32 = (0..heads).map(|h| attention[(l * heads + h) * w + i]).sum();
                    sum / heads as f32
                })
                .collect()
        })
        .collect()
}

/// Indices and weights of the `k` most-attended present positions (mean
/// over layers and heads), highest first; ties go to the newer position.
pub fn top_k(
    attention: &[f32],
    layers: usize,
    heads: usize,
    w: usize,
    k: usize,
    present: impl Fn(usize) -> bool,
) -> Vec<(usize, f32)> {
    let rows = per_layer(attention, layers, heads, w);
    let mut mean: Vec<(usize, f32)> = (0..w)
        .filter(|i| present(*i))
        .map(|i| (i, rows.iter().map(|r| r[i]).sum::<f32>() / layers as f32))
        .collect();
    mean.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    mean.truncate(k);
    mean
}

/// Encode a scored point for the output topic.
pub fn score_message(
    job: Job,
    point: ScoredPoint,
    model_id: &str,
    contract: &Contract,
    cfg: &PublishConfig,
) -> Result<OutMessage, serde_json::Error> {
    let Some(driver) = point.driver() else {
        return Err(serde::ser::Error::custom("scored point without features"));
    };
    let (layers, heads, w) = (contract.layers, contract.heads, contract.window);
    let ts = &driver.window_ts;
    let present: Vec<i64> = ts.iter().copied().filter(|t| *t != MISSING_TS).collect();
    let step_ms = match (present.first(), present.last()) {
        (Some(a), Some(b)) if present.len() > 1 => (b - a) / (present.len() as i64 - 1),
        _ => 0,
    };
    let attention = match cfg.attention {
        AttentionDetail::None => None,
        AttentionDetail::TopK => Some(Attention {
            step_ms,
            top: Some(
                top_k(&driver.attention, layers, heads, w, cfg.top_k, |i| {
                    ts[i] != MISSING_TS
                })
                .into_iter()
                .map(|(i, weight)| TopEntry { ts: ts[i], weight })
                .collect(),
            ),
            ts: None,
            layers: None,
        }),
        AttentionDetail::Row => Some(Attention {
            step_ms,
            top: None,
            ts: Some(
                ts.iter()
                    .map(|t| (*t != MISSING_TS).then_some(*t))
                    .collect(),
            ),
            layers: Some(per_layer(&driver.attention, layers, heads, w)),
        }),
    };
    let multi = job.value.is_none();
    let values = multi.then(|| {
        job.windows
            .iter()
            .filter_map(|fw| fw.window.values.last().map(|v| (fw.feature.as_str(), *v)))
            .collect()
    });
    let features = multi.then(|| {
        let mut f: Vec<FeatureRecord> = point
            .features
            .iter()
            .map(|f| FeatureRecord {
                name: &f.feature,
                score: f.scored.score,
                raw_score: f.scored.raw_score,
                anomaly: f.scored.anomaly,
            })
            .collect();
        f.sort_by(|a, b| b.score.total_cmp(&a.score));
        f
    });
    let record = Record {
        series: &job.series,
        ts: job.ts,
        value: job.value,
        values,
        score: driver.scored.score,
        threshold: driver.scored.threshold,
        anomaly: point.anomaly(),
        raw_score: driver.scored.raw_score,
        run_score: driver.scored.run_score,
        expected: driver.pred_mean,
        expected_std: driver.pred_std,
        model: model_id,
        labels: &job.labels,
        features,
        attention,
    };
    let payload = serde_json::to_vec(&record)?;
    Ok(OutMessage {
        dest: Dest::Output,
        key: Some(job.series),
        payload,
        headers: Vec::new(),
        token: Some(job.token),
        source_ts_ms: job.source_ts_ms,
    })
}

/// A dead letter: the original bytes, the reason code and detail as headers.
pub fn dead_letter(
    bytes: Vec<u8>,
    key: Option<String>,
    reason: &'static str,
    detail: String,
    token: Option<Token>,
) -> OutMessage {
    OutMessage {
        dest: Dest::DeadLetter,
        key,
        payload: bytes,
        headers: vec![(REASON_HEADER, reason.to_string()), (DETAIL_HEADER, detail)],
        token,
        source_ts_ms: None,
    }
}

/// A dead letter for a point that could not be scored (the sample re-encoded).
pub fn dead_letter_for_job(job: &Job, reason: &'static str, detail: &str) -> OutMessage {
    let values: BTreeMap<&str, f32> = job
        .windows
        .iter()
        .filter_map(|fw| fw.window.values.last().map(|v| (fw.feature.as_str(), *v)))
        .collect();
    let body = match job.value {
        Some(v) => {
            serde_json::json!({"series": job.series, "ts": job.ts, "value": v, "labels": job.labels})
        }
        None => {
            serde_json::json!({"series": job.series, "ts": job.ts, "values": values, "labels": job.labels})
        }
    };
    dead_letter(
        body.to_string().into_bytes(),
        Some(job.series.clone()),
        reason,
        detail.to_string(),
        Some(job.token),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::worker::FeatureWindow;
    use crate::window::Window;

    fn contract() -> Contract {
        Contract {
            name: "enc".into(),
            version: "1".into(),
            window: 4,
            min_points: 4,
            features: vec!["value".into()],
            layers: 2,
            heads: 2,
            score: String::new(),
        }
    }

    fn scored(score: f64, anomaly: bool) -> Scored {
        Scored {
            score,
            threshold: 1.0,
            anomaly,
            raw_score: score * 4.0,
            run_score: 0.0,
        }
    }

    fn feature(name: &str, score: f64, anomaly: bool) -> FeatureResult {
        // Layer 0: heads attend to positions 3 and 1; layer 1: both to 0.
        let attention = vec![
            0.0, 0.0, 0.0, 1.0, /**/ 0.0, 1.0, 0.0, 0.0, //
            1.0, 0.0, 0.0, 0.0, /**/ 1.0, 0.0, 0.0, 0.0,
        ];
        FeatureResult {
            feature: name.into(),
            scored: scored(score, anomaly),
            pred_mean: 1.0,
            pred_std: 0.5,
            attention,
            layers: 2,
            heads: 2,
            window_ts: vec![1000, 2000, 3000, 4000],
        }
    }

    fn job(multi: bool) -> Job {
        let fw = |f: &str, v: f32| FeatureWindow {
            feature: f.into(),
            key: format!("s/{f}"),
            window: Window {
                values: vec![0.0, 0.0, 0.0, v],
                ts: vec![1000, 2000, 3000, 4000],
            },
        };
        Job {
            series: "s".into(),
            ts: 4000,
            value: (!multi).then_some(2.5),
            labels: [("env".to_string(), "prod".to_string())].into(),
            windows: if multi {
                vec![fw("a", 1.0), fw("b", 2.0)]
            } else {
                vec![fw("value", 2.5)]
            },
            token: Token {
                partition: 0,
                offset: 7,
                generation: 1,
            },
            source_ts_ms: Some(5),
        }
    }

    fn cfg(attention: AttentionDetail) -> PublishConfig {
        PublishConfig {
            attention,
            top_k: 2,
            ..PublishConfig::default()
        }
    }

    #[test]
    fn single_value_top_k() {
        let point = ScoredPoint {
            features: vec![feature("value", 0.4, false)],
        };
        let msg = score_message(
            job(false),
            point,
            "enc@1",
            &contract(),
            &cfg(AttentionDetail::TopK),
        )
        .unwrap();
        assert_eq!(msg.key.as_deref(), Some("s"));
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["series"], "s");
        assert_eq!(v["value"], 2.5);
        assert_eq!(v["score"], 0.4);
        assert_eq!(v["threshold"], 1.0);
        assert_eq!(v["anomaly"], false);
        assert_eq!(v["model"], "enc@1");
        assert_eq!(v["labels"]["env"], "prod");
        assert_eq!(v["attention"]["step_ms"], 1000);
        // mean weights: pos0 = 0.5, pos1 = 0.25, pos3 = 0.25 -> top: 0 then 3 (newer wins the tie)
        let top = v["attention"]["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["ts"], 1000);
        assert_eq!(top[0]["weight"], 0.5);
        assert_eq!(top[1]["ts"], 4000);
        assert!(v.get("features").is_none());
    }

    #[test]
    fn multi_value_names_the_driving_feature_and_row_detail() {
        let point = ScoredPoint {
            features: vec![feature("a", 0.3, false), feature("b", 1.7, true)],
        };
        assert!(point.anomaly());
        let msg = score_message(
            job(true),
            point,
            "enc@1",
            &contract(),
            &cfg(AttentionDetail::Row),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["score"], 1.7);
        assert_eq!(v["anomaly"], true);
        assert_eq!(v["values"]["b"], 2.0);
        assert_eq!(v["features"][0]["name"], "b");
        let layers = v["attention"]["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0], serde_json::json!([0.0, 0.5, 0.0, 0.5]));
        assert_eq!(
            v["attention"]["ts"],
            serde_json::json!([1000, 2000, 3000, 4000])
        );
    }

    #[test]
    fn attention_none_is_omitted() {
        let point = ScoredPoint {
            features: vec![feature("value", 0.4, false)],
        };
        let msg = score_message(
            job(false),
            point,
            "enc@1",
            &contract(),
            &cfg(AttentionDetail::None),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert!(v.get("attention").is_none());
    }

    #[test]
    fn dead_letter_keeps_bytes_and_reason() {
        let m = dead_letter(b"{bad".to_vec(), None, "invalid_json", "eof".into(), None);
        assert_eq!(m.payload, b"{bad");
        assert_eq!(m.dest, Dest::DeadLetter);
        assert_eq!(m.headers[0], (REASON_HEADER, "invalid_json".to_string()));
    }
}
