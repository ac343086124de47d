//! Output encoding: scored points and dead letters to Kafka messages.
//!
//! Pure, and the only place that knows the output format. It is the one
//! DESIGN.md gives: one JSON object per scored point, keyed by series. For
//! `values` samples each feature is scored on its own (channel-independent);
//! the point's score is the highest of its features and `features` lists
//! them, highest first, so the output names what drove it. Attention detail
//! follows `publish.attention`: the forecasting token's attention over the
//! context, as time ranges.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{AttentionDetail, PublishConfig};
use crate::flow::{DeadLetter, ScoredPoint, Token};
use crate::model::forecast::Explanation;
use crate::score::Channels;

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
    channels: ChannelRecord,
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
struct ChannelRecord {
    point: f64,
    run: f64,
    shift: f64,
    novelty: f64,
}

impl From<Channels> for ChannelRecord {
    fn from(c: Channels) -> Self {
        ChannelRecord {
            point: c.point,
            run: c.run,
            shift: c.shift,
            novelty: c.novelty,
        }
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    top: Option<Vec<RangeRecord>>,
    /// Time range of each context token; `null` where it has no data.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<Option<[i64; 2]>>>,
    /// Per layer, attention per token (mean over heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<Vec<f32>>>,
}

#[derive(Serialize)]
struct RangeRecord {
    start_ts: i64,
    end_ts: i64,
    weight: f32,
}

fn attention(e: &Explanation, cfg: &PublishConfig) -> Option<Attention> {
    match cfg.attention {
        AttentionDetail::None => None,
        _ if e.layers == 0 => None,
        AttentionDetail::TopK => Some(Attention {
            top: Some(
                e.top(cfg.top_k)
                    .map(|r| RangeRecord {
                        start_ts: r.start_ts,
                        end_ts: r.end_ts,
                        weight: r.weight,
                    })
                    .collect(),
            ),
            tokens: None,
            layers: None,
        }),
        AttentionDetail::Row => Some(Attention {
            top: None,
            tokens: Some(
                (0..e.tokens())
                    .map(|k| {
                        e.token_present(k).then(|| {
                            let (a, b) = e.token_range(k);
                            [a, b]
                        })
                    })
                    .collect(),
            ),
            layers: Some((0..e.layers).map(|l| e.layer(l).to_vec()).collect()),
        }),
    }
}

/// Encode a scored point for the output topic.
pub fn score_message(
    point: &ScoredPoint,
    model_id: &str,
    cfg: &PublishConfig,
) -> Result<OutMessage, serde_json::Error> {
    let mut payload = Vec::with_capacity(512);
    score_record(point, model_id, cfg, &mut payload)?;
    Ok(OutMessage {
        dest: Dest::Output,
        key: Some(point.series.to_string()),
        payload,
        headers: Vec::new(),
        token: Some(point.token),
        source_ts_ms: point.source_ts_ms,
    })
}

/// Append the JSON record of a scored point to `out` (the producer task
/// reuses one buffer for every record).
pub fn score_record(
    point: &ScoredPoint,
    model_id: &str,
    cfg: &PublishConfig,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let Some(driver) = point.driver() else {
        return Err(serde::ser::Error::custom("scored point without features"));
    };
    let multi = point.value.is_none();
    let values = multi.then(|| {
        point
            .features
            .iter()
            .map(|f| (&*f.feature, f.value))
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
        series: &point.series,
        ts: point.ts,
        value: point.value,
        values,
        score: driver.scored.score,
        threshold: driver.scored.threshold,
        anomaly: point.anomaly(),
        raw_score: driver.scored.raw_score,
        channels: driver.scored.channels.into(),
        expected: driver.expected,
        expected_std: driver.expected_std,
        model: model_id,
        labels: &point.labels,
        features,
        attention: attention(&driver.explanation, cfg),
    };
    serde_json::to_writer(out, &record)
}

/// A dead letter: the original bytes, the reason code and detail as headers.
pub fn dead_letter(d: DeadLetter) -> OutMessage {
    OutMessage {
        dest: Dest::DeadLetter,
        key: d.key,
        payload: d.bytes,
        headers: vec![
            (REASON_HEADER, d.reason.to_string()),
            (DETAIL_HEADER, d.detail),
        ],
        token: d.token,
        source_ts_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::flow::FeatureScore;
    use crate::model::forecast::Shape;
    use crate::score::Scored;

    fn explanation() -> Arc<Explanation> {
        // C = 4, patch 1 -> T = 4 tokens at ts 1000..4000; 2 layers, 2 heads.
        // Layer 0: heads attend to positions 3 and 1; layer 1: both to 0.
        let attention = [
            0.0, 0.0, 0.0, 1.0, /**/ 0.0, 1.0, 0.0, 0.0, //
            1.0, 0.0, 0.0, 0.0, /**/ 1.0, 0.0, 0.0, 0.0,
        ];
        let shape = Shape {
            layers: 2,
            heads: 2,
            context: 4,
            patch: 1,
        };
        Arc::new(Explanation::from_heads(&attention, shape, 4000, 1000, 4))
    }

    fn feature(name: &str, value: f32, score: f64, anomaly: bool) -> FeatureScore {
        FeatureScore {
            feature: name.into(),
            value,
            scored: Scored {
                score,
                threshold: 1.0,
                anomaly,
                raw_score: score * 4.0,
                channels: Channels {
                    point: score,
                    ..Channels::default()
                },
            },
            expected: 1.0,
            expected_std: 0.5,
            explanation: explanation(),
        }
    }

    fn point(features: Vec<FeatureScore>, multi: bool) -> ScoredPoint {
        ScoredPoint {
            series: "s".into(),
            ts: 5000,
            value: (!multi).then_some(2.5),
            labels: Arc::new([("env".to_string(), "prod".to_string())].into()),
            features,
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
        let p = point(vec![feature("value", 2.5, 0.4, false)], false);
        let msg = score_message(&p, "enc@1", &cfg(AttentionDetail::TopK)).unwrap();
        assert_eq!(msg.key.as_deref(), Some("s"));
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["series"], "s");
        assert_eq!(v["value"], 2.5);
        assert_eq!(v["score"], 0.4);
        assert_eq!(v["threshold"], 1.0);
        assert_eq!(v["anomaly"], false);
        assert_eq!(v["channels"]["point"], 0.4);
        assert_eq!(v["model"], "enc@1");
        assert_eq!(v["labels"]["env"], "prod");
        // mean weights: token0 = 0.5, token1 = 0.25, token3 = 0.25 -> top: 0 then 3 (newer wins the tie)
        let top = v["attention"]["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(
            (&top[0]["start_ts"], &top[0]["end_ts"]),
            (&1000.into(), &1000.into())
        );
        assert_eq!(top[0]["weight"], 0.5);
        assert_eq!(top[1]["start_ts"], 4000);
        assert!(v.get("features").is_none());
    }

    #[test]
    fn multi_value_names_the_driving_feature_and_row_detail() {
        let p = point(
            vec![feature("a", 1.0, 0.3, false), feature("b", 2.0, 1.7, true)],
            true,
        );
        assert!(p.anomaly());
        let msg = score_message(&p, "enc@1", &cfg(AttentionDetail::Row)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["score"], 1.7);
        assert_eq!(v["anomaly"], true);
        assert_eq!(v["values"]["b"], 2.0);
        assert_eq!(v["features"][0]["name"], "b");
        let layers = v["attention"]["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0], serde_json::json!([0.0, 0.5, 0.0, 0.5]));
        assert_eq!(
            v["attention"]["tokens"],
            serde_json::json!([[1000, 1000], [2000, 2000], [3000, 3000], [4000, 4000]])
        );
    }

    #[test]
    fn attention_none_is_omitted() {
        let p = point(vec![feature("value", 2.5, 0.4, false)], false);
        let msg = score_message(&p, "enc@1", &cfg(AttentionDetail::None)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert!(v.get("attention").is_none());
    }

    #[test]
    fn dead_letter_keeps_bytes_and_reason() {
        let m = dead_letter(DeadLetter {
            bytes: b"{bad".to_vec(),
            key: None,
            reason: "invalid_json",
            detail: "eof".into(),
            token: None,
        });
        assert_eq!(m.payload, b"{bad");
        assert_eq!(m.dest, Dest::DeadLetter);
        assert_eq!(m.headers[0], (REASON_HEADER, "invalid_json".to_string()));
    }
}
