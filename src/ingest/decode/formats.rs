//! The input formats that other tools already write into Kafka, decoded to
//! the same [`Sample`]s as attnwatch's own JSON (`ingest.format`).
//!
//! - `influx`: InfluxDB line protocol, one metric per line, as Telegraf's
//!   Kafka output writes it with `data_format = "influx"`. Parsed with the
//!   maintained `influxdb-line-protocol` crate.
//! - `telegraf_json`: Telegraf's JSON serializer (`data_format = "json"`),
//!   one metric per message or a batch `{"metrics": [...]}`.
//! - `prometheus_json`: prometheus-kafka-adapter's JSON, one sample of a
//!   Prometheus remote write per message.
//!
//! Naming, so that one source names a series the same way every time:
//! Influx and Telegraf metrics are named by the measurement and the tags in
//! key order (`cpu,cpu=cpu0,host=web-1`), the tags become labels and every
//! numeric field becomes a feature (string and boolean fields are not
//! numbers and are skipped). Prometheus samples are named as Prometheus
//! prints them (`up{instance="a:9100",job="node"}`, labels in key order),
//! the labels other than `__name__` become labels, and the value (a string
//! in that format) is the single value. Every bound of [`Limits`] and every
//! reason of the native format apply the same way; fields that a format
//! does not use are ignored, so a newer tool version that adds one is not
//! rejected.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    bounded_labels as labels, strings, DecodeError, FeatureSet, Limits, Reason, Sample, Values,
    MAX_TS_MS, MIN_TS_MS,
};

/// What the messages of the input topic hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// attnwatch's own JSON (the README's input format).
    #[default]
    Attnwatch,
    /// InfluxDB line protocol (Telegraf `data_format = "influx"`).
    Influx,
    /// Telegraf's JSON (`data_format = "json"`).
    TelegrafJson,
    /// prometheus-kafka-adapter's JSON (`SERIALIZATION_FORMAT=json`).
    PrometheusJson,
}

impl Format {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Format::Attnwatch => "attnwatch",
            Format::Influx => "influx",
            Format::TelegrafJson => "telegraf_json",
            Format::PrometheusJson => "prometheus_json",
        }
    }

    /// The unit of an integer timestamp when the config does not name one:
    /// nanoseconds for line protocol, seconds for Telegraf's JSON (its
    /// `json_timestamp_units` default), milliseconds otherwise.
    pub fn default_unit(self) -> TimeUnit {
        match self {
            Format::Influx => TimeUnit::Ns,
            Format::TelegrafJson => TimeUnit::S,
            Format::Attnwatch | Format::PrometheusJson => TimeUnit::Ms,
        }
    }
}

/// The unit of an integer timestamp (`ingest.timestamp_unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl TimeUnit {
    /// `t` in this unit as epoch milliseconds (floored), in range.
    fn to_ms(self, t: i64) -> Result<i64, Reason> {
        let ms = match self {
            TimeUnit::S => t.checked_mul(1000).ok_or(Reason::TimestampOutOfRange(t))?,
            TimeUnit::Ms => t,
            TimeUnit::Us => t.div_euclid(1000),
            TimeUnit::Ns => t.div_euclid(1_000_000),
        };
        in_range(ms)
    }
}

fn in_range(ms: i64) -> Result<i64, Reason> {
    if (MIN_TS_MS..=MAX_TS_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(Reason::TimestampOutOfRange(ms))
    }
}

/// How to read one foreign message.
#[derive(Debug, Clone, Copy)]
pub struct Foreign<'a> {
    /// The format (not `Attnwatch`).
    pub format: Format,
    /// The unit of integer timestamps.
    pub unit: TimeUnit,
    /// The model's features.
    pub features: &'a FeatureSet,
    /// The input bounds.
    pub limits: &'a Limits,
}

/// Decode one message of a foreign format (the size bound is already
/// checked). Each line or metric is accepted or rejected on its own.
pub fn decode(payload: &[u8], how: Foreign<'_>) -> Vec<Result<Sample, DecodeError>> {
    match how.format {
        Format::Influx => influx(payload, how),
        Format::TelegrafJson => telegraf(payload, how),
        Format::PrometheusJson => vec![on_its_own(payload, prometheus(payload, how))],
        Format::Attnwatch => super::decode(payload, how.features, how.limits),
    }
}

fn on_its_own(bytes: &[u8], r: Result<Sample, Reason>) -> Result<Sample, DecodeError> {
    r.map_err(|reason| DecodeError {
        bytes: bytes.to_vec(),
        reason,
    })
}

fn influx(payload: &[u8], how: Foreign<'_>) -> Vec<Result<Sample, DecodeError>> {
    let Ok(text) = std::str::from_utf8(payload) else {
        let reason = Reason::InvalidLineProtocol("not UTF-8".into());
        return vec![on_its_own(payload, Err(reason))];
    };
    influxdb_line_protocol::split_lines(text)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| on_its_own(line.as_bytes(), influx_line(line, how)))
        .collect()
}

fn influx_line(line: &str, how: Foreign<'_>) -> Result<Sample, Reason> {
    let parsed = influxdb_line_protocol::parse_lines(line)
        .next()
        .ok_or_else(|| Reason::InvalidLineProtocol("empty line".into()))?
        .map_err(|e| Reason::InvalidLineProtocol(e.to_string()))?;
    let measurement = parsed.series.measurement.as_str();
    let tags: Vec<(String, String)> = parsed
        .series
        .tag_set
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
        .collect();
    let ts = parsed.timestamp.ok_or(Reason::MissingTimestamp)?;
    let mut fields = Vec::new();
    for (name, v) in &parsed.field_set {
        let x = match v {
            influxdb_line_protocol::FieldValue::F64(x) => *x,
            influxdb_line_protocol::FieldValue::I64(x) => *x as f64,
            influxdb_line_protocol::FieldValue::U64(x) => *x as f64,
            _ => continue,
        };
        fields.push((name.as_str().to_owned(), x));
    }
    metric(measurement, tags, fields, how.unit.to_ms(ts)?, how)
}

fn telegraf(payload: &[u8], how: Foreign<'_>) -> Vec<Result<Sample, DecodeError>> {
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return vec![on_its_own(payload, Err(Reason::InvalidJson(e.to_string())))],
    };
    match value {
        Value::Object(mut batch)
            if batch.contains_key("metrics") && !batch.contains_key("name") =>
        {
            match batch.remove("metrics") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|item| {
                        let bytes = serde_json::to_vec(&item).unwrap_or_default();
                        on_its_own(&bytes, telegraf_metric(item, how))
                    })
                    .collect(),
                _ => vec![on_its_own(payload, Err(Reason::WrongType("metrics")))],
            }
        }
        other => vec![on_its_own(payload, telegraf_metric(other, how))],
    }
}

fn telegraf_metric(value: Value, how: Foreign<'_>) -> Result<Sample, Reason> {
    let Value::Object(mut obj) = value else {
        return Err(Reason::NotAnObject);
    };
    let name = match obj.remove("name") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) | None => return Err(Reason::MissingSeries),
        Some(_) => return Err(Reason::WrongType("name")),
    };
    let tags = match obj.remove("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => strings(map, "tags")?,
        Some(_) => return Err(Reason::WrongType("tags")),
    };
    let ts = match obj.remove("timestamp") {
        None | Some(Value::Null) => return Err(Reason::MissingTimestamp),
        Some(Value::Number(n)) => {
            let t = n
                .as_i64()
                .ok_or_else(|| Reason::BadTimestamp(n.to_string()))?;
            how.unit.to_ms(t)?
        }
        Some(Value::String(s)) => in_range(rfc3339(&s)?)?,
        Some(_) => return Err(Reason::WrongType("timestamp")),
    };
    let fields = match obj.remove("fields") {
        None | Some(Value::Null) => return Err(Reason::MissingValue),
        Some(Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Number(n) => Some((k, n.as_f64().unwrap_or(f64::NAN))),
                _ => None,
            })
            .collect(),
        Some(_) => return Err(Reason::WrongType("fields")),
    };
    metric(&name, tags, fields, ts, how)
}

/// A measurement's sample: the series named by the measurement and sorted
/// tags, the tags as labels, the numeric fields as features.
fn metric(
    measurement: &str,
    mut tags: Vec<(String, String)>,
    fields: Vec<(String, f64)>,
    ts: i64,
    how: Foreign<'_>,
) -> Result<Sample, Reason> {
    tags.sort();
    let mut series = measurement.to_owned();
    for (k, v) in &tags {
        series.push(',');
        series.push_str(k);
        series.push('=');
        series.push_str(v);
    }
    let labels = labels(tags, how.limits)?;
    check_series(&series, how.limits)?;
    if fields.is_empty() {
        return Err(Reason::MissingValue);
    }
    let mut values = Vec::with_capacity(fields.len());
    for (name, x) in fields {
        if let Some(known) = &how.features.0 {
            if !known.iter().any(|k| k == &name) {
                return Err(Reason::UnknownFeature(name));
            }
        }
        values.push((name, finite(x)?));
    }
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Sample {
        series,
        ts,
        values: Values::Multi(values),
        labels,
    })
}

fn prometheus(payload: &[u8], how: Foreign<'_>) -> Result<Sample, Reason> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| Reason::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(Reason::NotAnObject);
    };
    let mut labels = match obj.remove("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => strings(map, "labels")?,
        Some(_) => return Err(Reason::WrongType("labels")),
    };
    let from_labels = labels
        .iter()
        .position(|(k, _)| k == "__name__")
        .map(|i| labels.remove(i).1);
    let name = match (obj.remove("name"), from_labels) {
        (Some(Value::String(s)), _) if !s.is_empty() => s,
        (Some(Value::String(_)) | None, Some(s)) if !s.is_empty() => s,
        (Some(Value::String(_)) | None, _) => return Err(Reason::MissingSeries),
        (Some(_), _) => return Err(Reason::WrongType("name")),
    };
    labels.sort();
    let mut series = name;
    if !labels.is_empty() {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        series = format!("{series}{{{}}}", inner.join(","));
    }
    let labels = self::labels(labels, how.limits)?;
    check_series(&series, how.limits)?;
    let ts = match obj.remove("timestamp") {
        None | Some(Value::Null) => return Err(Reason::MissingTimestamp),
        Some(Value::String(s)) => in_range(rfc3339(&s)?)?,
        Some(Value::Number(n)) => {
            let t = n
                .as_i64()
                .ok_or_else(|| Reason::BadTimestamp(n.to_string()))?;
            how.unit.to_ms(t)?
        }
        Some(_) => return Err(Reason::WrongType("timestamp")),
    };
    let x = match obj.remove("value") {
        None | Some(Value::Null) => return Err(Reason::MissingValue),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(x) => x,
            Err(_) => return Err(Reason::WrongType("value")),
        },
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(_) => return Err(Reason::WrongType("value")),
    };
    Ok(Sample {
        series,
        ts,
        values: Values::Single(finite(x)?),
        labels,
    })
}

fn rfc3339(s: &str) -> Result<i64, Reason> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| Reason::BadTimestamp(format!("{s:?}: {e}")))
}

fn check_series(series: &str, limits: &Limits) -> Result<(), Reason> {
    if series.len() > limits.max_series_bytes {
        return Err(Reason::SeriesTooLong {
            len: series.len(),
            max: limits.max_series_bytes,
        });
    }
    Ok(())
}

fn finite(x: f64) -> Result<f32, Reason> {
    let f = x as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(Reason::NonFiniteValue(x.to_string()))
    }
}

#[cfg(test)]
mod tests;
