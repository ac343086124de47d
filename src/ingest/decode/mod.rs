//! Decoding of input records: JSON bytes to validated [`Sample`]s.
//!
//! Pure. A Kafka message holds one JSON object or an array of them. Each
//! object is decoded on its own: a bad element is rejected with a
//! [`DecodeError`] carrying its original bytes, and the good elements of the
//! same message still go through. A message that is not JSON at all, or
//! that is larger than [`Limits::max_message_bytes`] (checked before any
//! parsing), is rejected whole.
//!
//! Other tools' formats (Influx line protocol, Telegraf's JSON,
//! prometheus-kafka-adapter's JSON) are decoded by [`formats`] to the same
//! samples, under the same bounds and reasons ([`decode_as`]).
//!
//! Every input is bounded ([`Limits`]): the message size, the length of a
//! series id, the number of labels and the length of each label key and
//! value. A record over a bound is rejected like any other bad record.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub mod formats;

pub use formats::{Format, TimeUnit};

/// Earliest accepted timestamp (epoch ms): 1970-01-01.
pub const MIN_TS_MS: i64 = 0;
/// Latest accepted timestamp (epoch ms): 2200-01-01.
pub const MAX_TS_MS: i64 = 7_258_118_400_000;

/// Bounds on what one input record may hold (`[ingest]` in the config).
/// Lengths are in bytes of UTF-8 (after JSON unescaping); a value exactly at
/// its bound is accepted, one byte (or label) more is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest Kafka message payload, checked before it is parsed.
    pub max_message_bytes: usize,
    /// Longest series id.
    pub max_series_bytes: usize,
    /// Most labels on one record.
    pub max_labels: usize,
    /// Longest label key, and longest label value.
    pub max_label_bytes: usize,
}

impl Limits {
    /// The defaults: 1 MiB per message, 256 bytes per series id, 32 labels,
    /// 256 bytes per label key or value.
    pub const DEFAULT: Limits = Limits {
        max_message_bytes: 1024 * 1024,
        max_series_bytes: 256,
        max_labels: 32,
        max_label_bytes: 256,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

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
    /// A line that is not InfluxDB line protocol (`ingest.format = "influx"`).
    #[error("invalid line protocol: {0}")]
    InvalidLineProtocol(String),
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
    /// The whole message is larger than `ingest.max_message_bytes` (not parsed).
    #[error("message of {size} bytes is over ingest.max_message_bytes ({max})")]
    MessageTooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The series id is longer than `ingest.max_series_bytes`.
    #[error("series id of {len} bytes is over ingest.max_series_bytes ({max})")]
    SeriesTooLong {
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// More labels than `ingest.max_labels`.
    #[error("{count} labels, over ingest.max_labels ({max})")]
    TooManyLabels {
        /// How many labels the record has.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A label key or value longer than `ingest.max_label_bytes`.
    #[error("label {part} of {len} bytes is over ingest.max_label_bytes ({max})")]
    LabelTooLong {
        /// `key` or `value`.
        part: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
}

impl Reason {
    /// Short stable name, used as header value and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::InvalidJson(_) => "invalid_json",
            Reason::InvalidLineProtocol(_) => "invalid_line_protocol",
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
            Reason::MessageTooLarge { .. } => "message_too_large",
            Reason::SeriesTooLong { .. } => "series_too_long",
            Reason::TooManyLabels { .. } => "too_many_labels",
            Reason::LabelTooLong { .. } => "label_too_long",
        }
    }

    /// Every reason code the decoder gives, in the order of the variants,
    /// for pre-registering metrics. (The model stage adds `no_forecast`.)
    pub const ALL_CODES: [&'static str; 16] = [
        "invalid_json",
        "invalid_line_protocol",
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
        "message_too_large",
        "series_too_long",
        "too_many_labels",
        "label_too_long",
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

/// Decode one Kafka message payload into samples and rejections. A payload
/// over `limits.max_message_bytes` is rejected whole before it is parsed.
pub fn decode(
    payload: &[u8],
    features: &FeatureSet,
    limits: &Limits,
) -> Vec<Result<Sample, DecodeError>> {
    let reject = |bytes: &[u8], reason| {
        Err(DecodeError {
            bytes: bytes.to_vec(),
            reason,
        })
    };
    if payload.len() > limits.max_message_bytes {
        let reason = Reason::MessageTooLarge {
            size: payload.len(),
            max: limits.max_message_bytes,
        };
        return vec![reject(payload, reason)];
    }
    let trimmed = payload.trim_ascii_start();
    if trimmed.first() == Some(&b'[') {
        match serde_json::from_slice::<Vec<&RawValue>>(payload) {
            Ok(items) => items
                .into_iter()
                .map(|raw| decode_object(raw.get().as_bytes(), features, limits))
                .collect(),
            Err(e) => vec![reject(payload, Reason::InvalidJson(e.to_string()))],
        }
    } else {
        vec![decode_object(payload, features, limits)]
    }
}

/// Decode one message in `format`, integer timestamps in `unit`. The size
/// bound is checked first, for every format.
pub fn decode_as(
    format: Format,
    unit: TimeUnit,
    payload: &[u8],
    features: &FeatureSet,
    limits: &Limits,
) -> Vec<Result<Sample, DecodeError>> {
    if format == Format::Attnwatch || payload.len() > limits.max_message_bytes {
        return decode(payload, features, limits);
    }
    formats::decode(
        payload,
        formats::Foreign {
            format,
            unit,
            features,
            limits,
        },
    )
}

fn decode_object(
    bytes: &[u8],
    features: &FeatureSet,
    limits: &Limits,
) -> Result<Sample, DecodeError> {
    parse_sample(bytes, features, limits).map_err(|reason| DecodeError {
        bytes: bytes.to_vec(),
        reason,
    })
}

fn parse_sample(bytes: &[u8], features: &FeatureSet, limits: &Limits) -> Result<Sample, Reason> {
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
    if series.len() > limits.max_series_bytes {
        return Err(Reason::SeriesTooLong {
            len: series.len(),
            max: limits.max_series_bytes,
        });
    }
    let ts = parse_ts(obj.remove("ts"))?;
    let values = match (obj.remove("value"), obj.remove("values")) {
        (Some(v), None) => Values::Single(finite(&v, "value")?),
        (None, Some(Value::Object(map))) => Values::Multi(parse_features(map, features)?),
        (None, Some(_)) => return Err(Reason::WrongType("values")),
        _ => return Err(Reason::MissingValue),
    };
    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => parse_labels(map, limits)?,
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

fn parse_labels(
    map: Map<String, Value>,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, Reason> {
    if map.len() > limits.max_labels {
        return Err(Reason::TooManyLabels {
            count: map.len(),
            max: limits.max_labels,
        });
    }
    bounded_labels(strings(map, "labels")?, limits)
}

/// The string members of a JSON object (`field` names it in the error).
fn strings(map: Map<String, Value>, field: &'static str) -> Result<Vec<(String, String)>, Reason> {
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(Reason::WrongType(field)),
        })
        .collect()
}

/// Labels under the bounds of `limits`: how many, and each key and value's
/// length.
fn bounded_labels(
    pairs: Vec<(String, String)>,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, Reason> {
    if pairs.len() > limits.max_labels {
        return Err(Reason::TooManyLabels {
            count: pairs.len(),
            max: limits.max_labels,
        });
    }
    let too_long = |part, len| Reason::LabelTooLong {
        part,
        len,
        max: limits.max_label_bytes,
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            if k.len() > limits.max_label_bytes {
                Err(too_long("key", k.len()))
            } else if v.len() > limits.max_label_bytes {
                Err(too_long("value", v.len()))
            } else {
                Ok((k, v))
            }
        })
        .collect()
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
mod tests;
