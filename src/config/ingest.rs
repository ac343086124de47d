//! `[ingest]`: bounds on every input record. A record over a bound goes to
//! the dead-letter topic with its reason code, like any other bad record.

use serde::{Deserialize, Serialize};

use crate::ingest::decode::{Format, Limits, TimeUnit};

/// Input bounds. Lengths are bytes of UTF-8; a value exactly at its bound
/// is accepted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// What the input topic's messages hold: `attnwatch` (the README's
    /// JSON), `influx` (InfluxDB line protocol, as Telegraf writes it),
    /// `telegraf_json` (Telegraf's JSON serializer) or `prometheus_json`
    /// (prometheus-kafka-adapter's JSON).
    #[serde(default)]
    pub format: Format,
    /// The unit of integer timestamps: `s`, `ms`, `us` or `ns`. Default:
    /// the format's own (`ns` for influx, `s` for telegraf_json, `ms`
    /// otherwise). The attnwatch format always reads milliseconds.
    #[serde(default)]
    pub timestamp_unit: Option<TimeUnit>,
    /// Largest Kafka message payload (one object or an array of them),
    /// checked before the message is parsed. Larger: `message_too_large`,
    /// the whole message dead-lettered.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest series id. Longer: `series_too_long`.
    #[serde(default = "default_max_series_bytes")]
    pub max_series_bytes: usize,
    /// Most labels on one record. More: `too_many_labels` (0: a record with
    /// any label is rejected).
    #[serde(default = "default_max_labels")]
    pub max_labels: usize,
    /// Longest label key, and longest label value. Longer: `label_too_long`.
    #[serde(default = "default_max_label_bytes")]
    pub max_label_bytes: usize,
}

/// The most `max_message_bytes` may be: librdkafka's own ceiling on a
/// message (`message.max.bytes`).
pub const MAX_MESSAGE_BYTES_CEILING: usize = 1_000_000_000;

impl IngestConfig {
    /// The decoder's bounds.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_series_bytes: self.max_series_bytes,
            max_labels: self.max_labels,
            max_label_bytes: self.max_label_bytes,
        }
    }

    /// The unit of integer timestamps, the format's own by default.
    pub fn timestamp_unit(&self) -> TimeUnit {
        self.timestamp_unit
            .unwrap_or_else(|| self.format.default_unit())
    }

    /// Invalid settings, described.
    pub(super) fn problems(&self, problems: &mut Vec<String>) {
        if !(1..=MAX_MESSAGE_BYTES_CEILING).contains(&self.max_message_bytes) {
            problems.push(format!(
                "ingest.max_message_bytes must be in 1..={MAX_MESSAGE_BYTES_CEILING}"
            ));
        }
        if self.max_series_bytes == 0 {
            problems.push("ingest.max_series_bytes must be >= 1".into());
        }
        if self.max_label_bytes == 0 {
            problems.push("ingest.max_label_bytes must be >= 1".into());
        }
        if self.format == Format::Attnwatch
            && self.timestamp_unit.is_some_and(|u| u != TimeUnit::Ms)
        {
            problems.push(
                "ingest.timestamp_unit applies to the other formats; the attnwatch format reads milliseconds"
                    .into(),
            );
        }
    }
}

pub(super) fn default_max_message_bytes() -> usize {
    Limits::DEFAULT.max_message_bytes
}
pub(super) fn default_max_series_bytes() -> usize {
    Limits::DEFAULT.max_series_bytes
}
pub(super) fn default_max_labels() -> usize {
    Limits::DEFAULT.max_labels
}
pub(super) fn default_max_label_bytes() -> usize {
    Limits::DEFAULT.max_label_bytes
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_and_env(toml, env).map_err(|e| e.to_string())
    }

    #[test]
    fn the_format_defaults_to_attnwatch_and_each_has_its_unit() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.ingest.format, Format::Attnwatch);
        assert_eq!(c.ingest.timestamp_unit(), TimeUnit::Ms);
        let c = load("[ingest]\nformat = \"influx\"\n", &[]).unwrap();
        assert_eq!(c.ingest.timestamp_unit(), TimeUnit::Ns);
        let c = load("", &[("ATTNWATCH__INGEST__FORMAT", "telegraf_json")]).unwrap();
        assert_eq!(c.ingest.format, Format::TelegrafJson);
        assert_eq!(c.ingest.timestamp_unit(), TimeUnit::S);
        let c = load(
            "[ingest]\nformat = \"telegraf_json\"\ntimestamp_unit = \"ms\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.ingest.timestamp_unit(), TimeUnit::Ms);
        let c = load("[ingest]\nformat = \"prometheus_json\"\n", &[]).unwrap();
        assert_eq!(c.ingest.format, Format::PrometheusJson);
    }

    #[test]
    fn a_bad_format_or_unit_is_refused() {
        let e = load("[ingest]\nformat = \"csv\"\n", &[]).unwrap_err();
        assert!(e.contains("csv") || e.contains("format"), "{e}");
        let e = load("[ingest]\ntimestamp_unit = \"ns\"\n", &[]).unwrap_err();
        assert!(e.contains("timestamp_unit"), "{e}");
    }
}
