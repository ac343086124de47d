//! Decoding of input records: JSON bytes to validated [`Sample`]s.
//!
//! Pure. A Kafka message holds one JSON object or an array of them. Each
//! object is decoded on its own: a bad element is rejected with a
//! [`DecodeError`] carrying its original bytes, and the good elements of the
//! same message still go through. A message that is not JSON at all is
//! rejected whole.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Earliest accepted timestamp (epoch ms): 1970-01-01.
pub const MIN_TS_MS: i64 = 0;
/// Latest accepted timestamp (epoch ms): 2200-01-01.
pub const MAX_TS_MS: i64 = 7_258_118_400_000;

/// The value(s) of a sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `value`: one number.
    Single(f32),
    /// `values`: named features, in the order given.
    Multi(Vec<(String, f32)>),
}

/// One validated input sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series id.
    pub series: String,
    /// Timestamp, epoch milliseconds.
    pub ts: i64,
    /// The value or values.
    pub values: Values,
    /// Labels carried through to the output unchanged.
    pub labels: BTreeMap<String, String>,
}

/// Why a record was rejected. The `reason()` string is the dead-letter
/// header and the metric label; the set is fixed (bounded cardinality).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Not valid JSON (includes `NaN` literals and empty messages).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON but not an object (or array of objects).
    #[error("record is not a JSON object")]
    NotAnObject,
    /// No `series`, or it is empty or not a string.
    #[error("missing or empty \"series\"")]
    MissingSeries,
    /// No `ts`.
    #[error("missing \"ts\"")]
    MissingTimestamp,
    /// `ts` is neither epoch milliseconds nor RFC 3339.
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    /// `ts` is outside 1970..2200.
    #[error("timestamp out of range: {0}")]
    TimestampOutOfRange(i64),
    /// Neither `value` nor `values`, or both.
    #[error("exactly one of \"value\" or \"values\" is required")]
    MissingValue,
    /// A value that is not finite as f32.
    #[error("value is not finite: {0}")]
    NonFiniteValue(String),
    /// A field has the wrong JSON type.
    #[error("wrong type for \"{0}\"")]
    WrongType(&'static str),
    /// A field that the format does not define.
    #[error("unknown field \"{0}\"")]
    UnknownField(String),
    /// A feature name that the model does not declare.
    #[error("unknown feature \"{0}\"")]
    UnknownFeature(String),
}

impl Reason {
    /// Short stable name, used as header value and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::InvalidJson(_) => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingSeries => "missing_series",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::BadTimestamp(_) => "bad_timestamp",
            Reason::TimestampOutOfRange(_) => "timestamp_out_of_range",
            Reason::MissingValue => "missing_value",
            Reason::NonFiniteValue(_) => "non_finite_value",
            Reason::WrongType(_) => "wrong_type",
            Reason::UnknownField(_) => "unknown_field",
            Reason::UnknownFeature(_) => "unknown_feature",
        }
    }

    /// Every reason code, for pre-registering metrics.
    pub const ALL_CODES: [&'static str; 11] = [
        "invalid_json",
        "not_an_object",
        "missing_series",
        "missing_timestamp",
        "bad_timestamp",
        "timestamp_out_of_range",
        "missing_value",
        "non_finite_value",
        "wrong_type",
        "unknown_field",
        "unknown_feature",
    ];
}

/// A rejected record: its original bytes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// Original bytes (the whole message, or the array element).
    pub bytes: Vec<u8>,
    /// The reason.
    pub reason: Reason,
}

/// Feature names the model accepts in `values`. `None`: any name (the
/// general, channel-independent model).
#[derive(Debug, Clone, Default)]
pub struct FeatureSet(pub Option<Vec<String>>);

/// Decode one Kafka message payload into samples and rejections.
pub fn decode(payload: &[u8], features: &FeatureSet) -> Vec<Result<Sample, DecodeError>> {
    let reject = |bytes: &[u8], reason| {
        Err(DecodeError {
            bytes: bytes.to_vec(),
            reason,
        })
    };
    let trimmed = payload.trim_ascii_start();
    if trimmed.first() == Some(&b'[') {
        match serde_json::from_slice::<Vec<&RawValue>>(payload) {
            Ok(items) => items
                .into_iter()
                .map(|raw| decode_object(raw.get().as_bytes(), features))
                .collect(),
            Err(e) => vec![reject(payload, Reason::InvalidJson(e.to_string()))],
        }
    } else {
        vec![decode_object(payload, features)]
    }
}

fn decode_object(bytes: &[u8], features: &FeatureSet) -> Result<Sample, DecodeError> {
    parse_sample(bytes, features).map_err(|reason| DecodeError {
        bytes: bytes.to_vec(),
        reason,
    })
}

fn parse_sample(bytes: &[u8], features: &FeatureSet) -> Result<Sample, Reason> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| Reason::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(Reason::NotAnObject);
    };
    let series = match obj.remove("series") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) | None => return Err(Reason::MissingSeries),
        Some(_) => return Err(Reason::WrongType("series")),
    };
    let ts = parse_ts(obj.remove("ts"))?;
    let values = match (obj.remove("value"), obj.remove("values")) {
        (Some(v), None) => Values::Single(finite(&v, "value")?),
        (None, Some(Value::Object(map))) => Values::Multi(parse_features(map, features)?),
        (None, Some(_)) => return Err(Reason::WrongType("values")),
        _ => return Err(Reason::MissingValue),
    };
    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(Reason::WrongType("labels")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Reason::WrongType("labels")),
    };
    if let Some(field) = obj.keys().next() {
        return Err(Reason::UnknownField(field.clone()));
    }
    Ok(Sample {
        series,
        ts,
        values,
        labels,
    })
}

fn parse_features(
    map: Map<String, Value>,
    features: &FeatureSet,
) -> Result<Vec<(String, f32)>, Reason> {
    if map.is_empty() {
        return Err(Reason::MissingValue);
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if let Some(known) = &features.0 {
            if !known.iter().any(|k| k == &name) {
                return Err(Reason::UnknownFeature(name));
            }
        }
        out.push((name, finite(&v, "values")?));
    }
    Ok(out)
}

fn finite(v: &Value, field: &'static str) -> Result<f32, Reason> {
    let Value::Number(n) = v else {
        return Err(if v.is_null() {
            Reason::MissingValue
        } else {
            Reason::WrongType(field)
        });
    };
    let x = n.as_f64().ok_or(Reason::WrongType(field))?;
    let f = x as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(Reason::NonFiniteValue(n.to_string()))
    }
}

fn parse_ts(v: Option<Value>) -> Result<i64, Reason> {
    let ms = match v {
        None | Some(Value::Null) => return Err(Reason::MissingTimestamp),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                i
            } else {
                let f = n
                    .as_f64()
                    .ok_or_else(|| Reason::BadTimestamp(n.to_string()))?;
                if f.fract() != 0.0 || !f.is_finite() || f.abs() > 9.0e15 {
                    return Err(Reason::BadTimestamp(n.to_string()));
                }
                f as i64
            }
        }
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| Reason::BadTimestamp(format!("{s:?}: {e}")))?
            .timestamp_millis(),
        Some(_) => return Err(Reason::WrongType("ts")),
    };
    if (MIN_TS_MS..=MAX_TS_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Reason::TimestampOutOfRange(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Sample, Reason> {
        let mut v = decode(s.as_bytes(), &FeatureSet::default());
        assert_eq!(v.len(), 1);
        v.remove(0).map_err(|e| {
            assert_eq!(e.bytes, s.trim().as_bytes());
            e.reason
        })
    }

    fn code(s: &str) -> &'static str {
        one(s).unwrap_err().code()
    }

    #[test]
    fn valid_single_value() {
        let s = one(r#"{"series":"web-01/cpu","ts":1700000000000,"value":0.73}"#).unwrap();
        assert_eq!(s.series, "web-01/cpu");
        assert_eq!(s.ts, 1_700_000_000_000);
        assert_eq!(s.values, Values::Single(0.73));
        assert!(s.labels.is_empty());
    }

    #[test]
    fn valid_rfc3339_multi_and_labels() {
        let s = one(r#"{"series":"pump-7","ts":"2024-05-01T12:00:00Z","values":{"pressure":3.1,"flow":0.4},"labels":{"site":"a"}}"#)
            .unwrap();
        assert_eq!(s.ts, 1_714_564_800_000);
        assert_eq!(
            s.values,
            Values::Multi(vec![("flow".into(), 0.4), ("pressure".into(), 3.1)])
        );
        assert_eq!(s.labels["site"], "a");
        let s = one(r#"{"series":"x","ts":"2024-05-01T14:00:00.250+02:00","value":1}"#).unwrap();
        assert_eq!(s.ts, 1_714_564_800_250);
    }

    #[test]
    fn array_of_objects_is_decoded_element_by_element() {
        let msg = br#"[{"series":"a","ts":1,"value":1},{"series":"a","ts":2},{"series":"a","ts":3,"value":3}]"#;
        let out = decode(msg, &FeatureSet::default());
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok() && out[2].is_ok());
        let bad = out[1].as_ref().unwrap_err();
        assert_eq!(bad.reason, Reason::MissingValue);
        assert_eq!(bad.bytes, br#"{"series":"a","ts":2}"#);
    }

    #[test]
    fn every_class_of_bad_input() {
        assert_eq!(code("{not json"), "invalid_json");
        assert_eq!(code(""), "invalid_json");
        assert_eq!(code(r#"{"series":"a","ts":1,"value":NaN}"#), "invalid_json");
        assert_eq!(code("42"), "not_an_object");
        assert_eq!(code(r#"{"ts":1,"value":1}"#), "missing_series");
        assert_eq!(code(r#"{"series":"","ts":1,"value":1}"#), "missing_series");
        assert_eq!(code(r#"{"series":7,"ts":1,"value":1}"#), "wrong_type");
        assert_eq!(code(r#"{"series":"a","value":1}"#), "missing_timestamp");
        assert_eq!(
            code(r#"{"series":"a","ts":"yesterday","value":1}"#),
            "bad_timestamp"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":1.5,"value":1}"#),
            "bad_timestamp"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":-5,"value":1}"#),
            "timestamp_out_of_range"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":99999999999999999,"value":1}"#),
            "timestamp_out_of_range"
        );
        assert_eq!(code(r#"{"series":"a","ts":true,"value":1}"#), "wrong_type");
        assert_eq!(code(r#"{"series":"a","ts":1}"#), "missing_value");
        assert_eq!(
            code(r#"{"series":"a","ts":1,"value":null}"#),
            "missing_value"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":1,"value":1,"values":{"b":1}}"#),
            "missing_value"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":1,"values":{}}"#),
            "missing_value"
        );
        assert_eq!(code(r#"{"series":"a","ts":1,"value":"3"}"#), "wrong_type");
        assert_eq!(code(r#"{"series":"a","ts":1,"values":[1]}"#), "wrong_type");
        assert_eq!(
            code(r#"{"series":"a","ts":1,"value":1e300}"#),
            "non_finite_value"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":1,"value":1,"labels":{"k":1}}"#),
            "wrong_type"
        );
        assert_eq!(
            code(r#"{"series":"a","ts":1,"value":1,"extra":1}"#),
            "unknown_field"
        );
    }

    #[test]
    fn declared_features_are_enforced() {
        let fs = FeatureSet(Some(vec!["flow".into()]));
        let out = decode(br#"{"series":"a","ts":1,"values":{"heat":1}}"#, &fs);
        assert_eq!(
            out[0].as_ref().unwrap_err().reason.code(),
            "unknown_feature"
        );
        assert!(decode(br#"{"series":"a","ts":1,"values":{"flow":1}}"#, &fs)[0].is_ok());
    }

    #[test]
    fn whole_array_that_is_not_json_is_one_rejection() {
        let out = decode(b"[{\"series\":", &FeatureSet::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().unwrap_err().reason.code(), "invalid_json");
    }

    #[test]
    fn every_code_is_listed() {
        let codes = [code("{"), code("1"), code("{}"), code(r#"{"series":"a"}"#)];
        for c in codes {
            assert!(Reason::ALL_CODES.contains(&c), "{c}");
        }
    }
}
