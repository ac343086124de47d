//! Output encoding: scored points and dead letters to Kafka messages.
//!
//! Pure, and the only place that knows the output format. It is the one
//! DESIGN.md gives: one JSON object per scored point, keyed by series. For
//! `values` samples each feature is scored on its own (channel-independent);
//! the point's score is the highest of its features and `features` lists
//! them, highest first, so the output names what drove it. Attention detail
//! follows `publish.attention`: the forecasting token's attention over the
//! context, as time ranges.

use crate::config::{AttentionDetail, PublishConfig};
use crate::flow::forecast::Explanation;
use crate::flow::{Channels, DeadLetter, FeatureScore, ScoredPoint, StaleEvent, Token};

use super::json;

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

/// Encode a scored point for the output topic.
pub fn score_message(point: &ScoredPoint, cfg: &PublishConfig) -> Result<OutMessage, EncodeError> {
    let mut payload = Vec::with_capacity(512);
    score_record(point, cfg, &mut payload)?;
    Ok(OutMessage {
        dest: Dest::Output,
        key: Some(point.series.to_string()),
        payload,
        headers: Vec::new(),
        token: Some(point.token),
        source_ts_ms: point.source_ts_ms,
    })
}

/// Append the record of a series gone silent to `out`:
/// `{"series":"…","ts":…,"event":"stale"}`, where `ts` is its newest
/// timestamp (epoch ms). It goes to the output topic, keyed by series, so a
/// consumer of scores sees it in order with the series' points.
pub fn stale_record(event: &StaleEvent, out: &mut Vec<u8>) {
    out.push(b'{');
    json::key(out, "series");
    json::string(out, &event.series);
    out.extend_from_slice(b",\"ts\":");
    json::int(out, event.ts);
    out.extend_from_slice(b",\"event\":\"stale\"}");
}

/// Append the JSON record of a scored point to `out` (the producer task
/// reuses one buffer for every record). Field order: series, ts,
/// value/values, score, threshold, anomaly, alert, incident (anomalous
/// points only), raw_score, channels, nearest (anomalous points only),
/// expected, expected_std, model, labels, features, attention.
pub fn score_record(
    point: &ScoredPoint,
    cfg: &PublishConfig,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let Some(driver) = point.driver() else {
        return Err(EncodeError::NoFeatures);
    };
    let s = &driver.scored;
    out.push(b'{');
    json::key(out, "series");
    json::string(out, &point.series);
    out.extend_from_slice(b",\"ts\":");
    json::int(out, point.ts);
    match point.value {
        Some(v) => {
            out.extend_from_slice(b",\"value\":");
            json::f32(out, v);
        }
        None => {
            out.extend_from_slice(b",\"values\":{");
            let mut sorted: Vec<&FeatureScore> = point.features.iter().collect();
            sorted.sort_by(|a, b| a.feature.cmp(&b.feature));
            for (i, f) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::key(out, &f.feature);
                json::f32(out, f.value);
            }
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"score\":");
    json::f64(out, s.score);
    out.extend_from_slice(b",\"threshold\":");
    json::f64(out, s.threshold);
    out.extend_from_slice(if point.anomaly() {
        b",\"anomaly\":true"
    } else {
        b",\"anomaly\":false"
    });
    out.extend_from_slice(if point.alert() {
        b",\"alert\":true"
    } else {
        b",\"alert\":false"
    });
    if let Some(id) = point.incident() {
        out.extend_from_slice(b",\"incident\":");
        json::int(out, id);
    }
    out.extend_from_slice(b",\"raw_score\":");
    json::f64(out, s.raw_score);
    let c = &s.channels;
    for (i, (name, v)) in Channels::NAMES.iter().zip(c.values()).enumerate() {
        out.extend_from_slice(if i == 0 { b",\"channels\":{" } else { b"," });
        json::key(out, name);
        json::f32(out, v as f32);
    }
    out.push(b'}');
    if let Some(m) = s.nearest.as_ref().filter(|_| point.anomaly()) {
        out.extend_from_slice(b",\"nearest\":{\"start_ts\":");
        json::int(out, m.start_ts);
        out.extend_from_slice(b",\"end_ts\":");
        json::int(out, m.end_ts);
        out.extend_from_slice(b",\"distance\":");
        json::f32(out, m.distance);
        out.extend_from_slice(if m.novel {
            b",\"novel\":true}"
        } else {
            b",\"novel\":false}"
        });
    }
    out.extend_from_slice(b",\"expected\":");
    json::f32(out, driver.expected);
    out.extend_from_slice(b",\"expected_std\":");
    json::f32(out, driver.expected_std);
    out.extend_from_slice(b",\"model\":");
    json::string(out, &point.model);
    out.extend_from_slice(b",\"labels\":{");
    for (i, (k, v)) in point.labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::key(out, k);
        json::string(out, v);
    }
    out.push(b'}');
    if point.value.is_none() {
        let mut f: Vec<&FeatureScore> = point.features.iter().collect();
        f.sort_by(|a, b| b.scored.score.total_cmp(&a.scored.score));
        out.extend_from_slice(b",\"features\":[");
        for (i, f) in f.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            json::string(out, &f.feature);
            out.extend_from_slice(b",\"score\":");
            json::f64(out, f.scored.score);
            out.extend_from_slice(b",\"raw_score\":");
            json::f64(out, f.scored.raw_score);
            out.extend_from_slice(if f.scored.anomaly {
                b",\"anomaly\":true}"
            } else {
                b",\"anomaly\":false}"
            });
        }
        out.push(b']');
    }
    attention(&driver.explanation, cfg, out);
    out.push(b'}');
    Ok(())
}

/// Append `,"attention":{...}` per `publish.attention` (nothing for `none`
/// or a forecaster without attention).
fn attention(e: &Explanation, cfg: &PublishConfig, out: &mut Vec<u8>) {
    if e.layers == 0 || cfg.attention == AttentionDetail::None {
        return;
    }
    out.extend_from_slice(b",\"attention\":{");
    match cfg.attention {
        AttentionDetail::None => {}
        AttentionDetail::TopK => {
            out.extend_from_slice(b"\"top\":[");
            for (i, r) in e.top(cfg.top_k).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"start_ts\":");
                json::int(out, r.start_ts);
                out.extend_from_slice(b",\"end_ts\":");
                json::int(out, r.end_ts);
                out.extend_from_slice(b",\"weight\":");
                json::f32(out, r.weight);
                out.push(b'}');
            }
            out.push(b']');
        }
        AttentionDetail::Row => {
            out.extend_from_slice(b"\"tokens\":[");
            for k in 0..e.tokens() {
                if k > 0 {
                    out.push(b',');
                }
                if e.token_present(k) {
                    let (a, b) = e.token_range(k);
                    out.push(b'[');
                    json::int(out, a);
                    out.push(b',');
                    json::int(out, b);
                    out.push(b']');
                } else {
                    out.extend_from_slice(b"null");
                }
            }
            out.extend_from_slice(b"],\"layers\":[");
            for l in 0..e.layers {
                if l > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                for (i, w) in e.layer(l).iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json::f32(out, *w);
                }
                out.push(b']');
            }
            out.push(b']');
        }
    }
    out.push(b'}');
}

/// Why a point cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The point has no scored feature.
    #[error("scored point without features")]
    NoFeatures,
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
    use crate::flow::forecast::Shape;
    use crate::score::{Channels, Scored};

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
                alert: anomaly,
                incident: anomaly.then_some(7),
                raw_score: score * 4.0,
                channels: Channels {
                    point: score,
                    ..Channels::default()
                },
                nearest: None,
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
            model: "enc@1".into(),
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
        let msg = score_message(&p, &cfg(AttentionDetail::TopK)).unwrap();
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
        let msg = score_message(&p, &cfg(AttentionDetail::Row)).unwrap();
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
        let msg = score_message(&p, &cfg(AttentionDetail::None)).unwrap();
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

    #[test]
    fn stale_event_is_series_ts_and_event() {
        let mut out = Vec::new();
        stale_record(
            &StaleEvent {
                series: std::sync::Arc::from("db \"7\""),
                ts: 1_700_000_000_000,
            },
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"series": "db \"7\"", "ts": 1_700_000_000_000i64, "event": "stale"})
        );
    }
}
