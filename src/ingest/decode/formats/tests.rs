//! Samples written as Telegraf and prometheus-kafka-adapter write them, and
//! their bad variants.

use super::super::decode_as;
use super::*;

fn run(format: Format, payload: &str) -> Vec<Result<Sample, DecodeError>> {
    decode_as(
        format,
        format.default_unit(),
        payload.as_bytes(),
        &FeatureSet::default(),
        &Limits::DEFAULT,
    )
}

fn one(format: Format, payload: &str) -> Result<Sample, Reason> {
    let mut v = run(format, payload);
    assert_eq!(v.len(), 1, "{payload}");
    v.remove(0).map_err(|e| e.reason)
}

fn multi(pairs: &[(&str, f32)]) -> Values {
    Values::Multi(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

/// What Telegraf's Kafka output writes with `data_format = "influx"`: a
/// batch of lines, integer fields with `i`, a string field, nanoseconds.
const TELEGRAF_INFLUX: &str = "cpu,cpu=cpu-total,host=web-1 usage_idle=98.5,usage_user=1.25,usage_system=0.25 1700000000000000000
mem,host=web-1 available=8123456i,used_percent=43.5 1700000000000000000
disk,device=sda1,fstype=ext4,host=web-1,mode=rw,path=/ free=1024i,used_percent=55.5 1700000010000000000
system,host=web-1 load1=0.5,uptime_format=\"1 day,  2:03\",n_cpus=2u 1700000010000000000
";

#[test]
fn influx_lines_from_telegraf() {
    let out = run(Format::Influx, TELEGRAF_INFLUX);
    assert_eq!(out.len(), 4);
    let cpu = out[0].as_ref().unwrap();
    assert_eq!(cpu.series, "cpu,cpu=cpu-total,host=web-1");
    assert_eq!(cpu.ts, 1_700_000_000_000);
    assert_eq!(
        cpu.values,
        multi(&[
            ("usage_idle", 98.5),
            ("usage_system", 0.25),
            ("usage_user", 1.25)
        ])
    );
    assert_eq!(cpu.labels["host"], "web-1");
    assert_eq!(cpu.labels["cpu"], "cpu-total");
    let mem = out[1].as_ref().unwrap();
    assert_eq!(
        mem.values,
        multi(&[("available", 8_123_456.0), ("used_percent", 43.5)])
    );
    let disk = out[2].as_ref().unwrap();
    assert_eq!(
        disk.series,
        "disk,device=sda1,fstype=ext4,host=web-1,mode=rw,path=/"
    );
    assert_eq!(disk.ts, 1_700_000_010_000);
    // The string field is skipped; the unsigned one is a number.
    let system = out[3].as_ref().unwrap();
    assert_eq!(system.values, multi(&[("load1", 0.5), ("n_cpus", 2.0)]));
}

#[test]
fn influx_tags_in_any_order_name_the_same_series() {
    let a = one(Format::Influx, "cpu,host=a,cpu=0 v=1 1000000000").unwrap();
    let b = one(Format::Influx, "cpu,cpu=0,host=a v=1 1000000000").unwrap();
    assert_eq!(a.series, b.series);
    assert_eq!(a.series, "cpu,cpu=0,host=a");
}

#[test]
fn influx_bad_lines_are_rejected_alone() {
    let payload = "cpu,host=a usage=1 1700000000000000000\n\
                   cpu,host=a usage= 1700000000000000000\n\
                   cpu,host=a usage=2\n\
                   cpu,host=a note=\"only text\" 1700000000000000000\n\
                   cpu,host=a usage=3 99999999999999999999\n\
                   cpu,host=a usage=1e39 1700000000000000000\n\
                   # a comment\n\
                   cpu,host=a usage=4 1700000001000000000\n";
    let out = run(Format::Influx, payload);
    let codes: Vec<&str> = out
        .iter()
        .map(|r| r.as_ref().map_or_else(|e| e.reason.code(), |_| "ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "ok",
            "invalid_line_protocol",
            "missing_timestamp",
            "missing_value",
            "invalid_line_protocol",
            "non_finite_value",
            "ok"
        ]
    );
    // Each rejection carries its own line.
    assert_eq!(
        out[2].as_ref().unwrap_err().bytes,
        b"cpu,host=a usage=2".to_vec()
    );
    let e = run(Format::Influx, "cpu v=1 1\n\u{0}\u{ff}");
    assert!(e
        .iter()
        .all(|r| r.is_ok() || r.as_ref().unwrap_err().reason.code() == "invalid_line_protocol"));
    let bad_utf8 = decode_as(
        Format::Influx,
        TimeUnit::Ns,
        b"cpu v=1 \xff\xfe",
        &FeatureSet::default(),
        &Limits::DEFAULT,
    );
    assert_eq!(
        bad_utf8[0].as_ref().unwrap_err().reason.code(),
        "invalid_line_protocol"
    );
}

#[test]
fn influx_bounds_and_precision() {
    let small = Limits {
        max_series_bytes: 10,
        max_labels: 1,
        max_label_bytes: 4,
        ..Limits::DEFAULT
    };
    let code = |line: &str| {
        decode_as(
            Format::Influx,
            TimeUnit::Ns,
            line.as_bytes(),
            &FeatureSet::default(),
            &small,
        )[0]
        .as_ref()
        .unwrap_err()
        .reason
        .code()
    };
    assert_eq!(code("cpu,host=abcdef v=1 1"), "label_too_long");
    assert_eq!(code("cpu,a=1,b=2 v=1 1"), "too_many_labels");
    assert_eq!(code("cpu_long_name,h=a v=1 1"), "series_too_long");
    let ms = decode_as(
        Format::Influx,
        TimeUnit::Ms,
        b"cpu v=1 1700000000123",
        &FeatureSet::default(),
        &Limits::DEFAULT,
    );
    assert_eq!(ms[0].as_ref().unwrap().ts, 1_700_000_000_123);
    let s = decode_as(
        Format::Influx,
        TimeUnit::S,
        b"cpu v=1 1700000000",
        &FeatureSet::default(),
        &Limits::DEFAULT,
    );
    assert_eq!(s[0].as_ref().unwrap().ts, 1_700_000_000_000);
    let declared = FeatureSet(Some(vec!["usage".into()]));
    let out = decode_as(
        Format::Influx,
        TimeUnit::Ns,
        b"cpu heat=1 1",
        &declared,
        &Limits::DEFAULT,
    );
    assert_eq!(
        out[0].as_ref().unwrap_err().reason.code(),
        "unknown_feature"
    );
}

/// Telegraf's JSON serializer, one metric per message (seconds).
const TELEGRAF_JSON: &str = r#"{"fields":{"usage_idle":98.5,"usage_user":1.25},"name":"cpu","tags":{"cpu":"cpu-total","host":"web-1"},"timestamp":1700000000}"#;

#[test]
fn telegraf_json_one_metric_and_a_batch() {
    let s = one(Format::TelegrafJson, TELEGRAF_JSON).unwrap();
    assert_eq!(s.series, "cpu,cpu=cpu-total,host=web-1");
    assert_eq!(s.ts, 1_700_000_000_000);
    assert_eq!(
        s.values,
        multi(&[("usage_idle", 98.5), ("usage_user", 1.25)])
    );
    assert_eq!(s.labels["host"], "web-1");
    // The same metric in line protocol names the same series.
    let lp = one(
        Format::Influx,
        "cpu,host=web-1,cpu=cpu-total usage_idle=98.5,usage_user=1.25 1700000000000000000",
    )
    .unwrap();
    assert_eq!(lp, s);
    // Batch mode: {"metrics": [...]}, each metric on its own.
    let batch = format!(
        r#"{{"metrics":[{TELEGRAF_JSON},{{"fields":{{"v":"text"}},"name":"x","tags":{{}},"timestamp":1700000000}},{{"fields":{{"free":7}},"name":"mem","timestamp":1700000010}}]}}"#
    );
    let out = run(Format::TelegrafJson, &batch);
    assert_eq!(out.len(), 3);
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().reason.code(), "missing_value");
    assert!(std::str::from_utf8(&out[1].as_ref().unwrap_err().bytes)
        .unwrap()
        .contains("\"text\""));
    assert_eq!(out[2].as_ref().unwrap().series, "mem");
}

#[test]
fn telegraf_json_bad_variants() {
    let code = |s: &str| one(Format::TelegrafJson, s).unwrap_err().code();
    assert_eq!(code(r#"{"fields":{"v":1},"name":"cpu","#), "invalid_json");
    assert_eq!(code(r#"[1]"#), "not_an_object");
    assert_eq!(
        code(r#"{"fields":{"v":1},"timestamp":1}"#),
        "missing_series"
    );
    assert_eq!(
        code(r#"{"fields":{"v":1},"name":"cpu"}"#),
        "missing_timestamp"
    );
    assert_eq!(
        code(r#"{"fields":{"v":1},"name":"cpu","timestamp":1.5}"#),
        "bad_timestamp"
    );
    assert_eq!(
        code(r#"{"fields":{"v":1},"name":"cpu","timestamp":-5}"#),
        "timestamp_out_of_range"
    );
    assert_eq!(code(r#"{"name":"cpu","timestamp":1}"#), "missing_value");
    assert_eq!(
        code(r#"{"fields":{"v":1e300},"name":"cpu","timestamp":1}"#),
        "non_finite_value"
    );
    assert_eq!(
        code(r#"{"fields":{"v":1},"name":"cpu","tags":{"host":1},"timestamp":1}"#),
        "wrong_type"
    );
    assert_eq!(code(r#"{"metrics":3}"#), "wrong_type");
}

/// prometheus-kafka-adapter's JSON: the value is a string, the timestamp
/// RFC 3339, `__name__` among the labels.
const ADAPTER_JSON: &str = r#"{"timestamp":"2023-11-14T22:13:20Z","value":"0.25","name":"node_load1","labels":{"__name__":"node_load1","job":"node","instance":"web-1:9100"}}"#;

#[test]
fn prometheus_adapter_json() {
    let s = one(Format::PrometheusJson, ADAPTER_JSON).unwrap();
    assert_eq!(s.series, r#"node_load1{instance="web-1:9100",job="node"}"#);
    assert_eq!(s.ts, 1_700_000_000_000);
    assert_eq!(s.values, Values::Single(0.25));
    assert_eq!(s.labels.len(), 2);
    assert_eq!(s.labels["job"], "node");
    let bare = one(
        Format::PrometheusJson,
        r#"{"timestamp":"2023-11-14T22:13:20Z","value":"1","labels":{"__name__":"up"}}"#,
    )
    .unwrap();
    assert_eq!(bare.series, "up");
}

#[test]
fn prometheus_adapter_bad_variants() {
    let code = |s: &str| one(Format::PrometheusJson, s).unwrap_err().code();
    // A stale marker or a +Inf bucket bound: not a finite number.
    assert_eq!(
        code(&ADAPTER_JSON.replace("\"0.25\"", "\"NaN\"")),
        "non_finite_value"
    );
    assert_eq!(
        code(&ADAPTER_JSON.replace("\"0.25\"", "\"+Inf\"")),
        "non_finite_value"
    );
    assert_eq!(
        code(&ADAPTER_JSON.replace("\"0.25\"", "\"fast\"")),
        "wrong_type"
    );
    assert_eq!(
        code(&ADAPTER_JSON.replace("\"0.25\"", "true")),
        "wrong_type"
    );
    assert_eq!(
        code(
            &ADAPTER_JSON
                .replace("Z\"", "\"")
                .replace("2023-11-14T22:13:20", "yesterday")
        ),
        "bad_timestamp"
    );
    assert_eq!(
        code(r#"{"timestamp":"2023-11-14T22:13:20Z","value":"1","labels":{}}"#),
        "missing_series"
    );
    assert_eq!(code(r#"{"value":"1","name":"up"}"#), "missing_timestamp");
    assert_eq!(
        code(r#"{"timestamp":"2023-11-14T22:13:20Z","name":"up"}"#),
        "missing_value"
    );
    assert_eq!(
        code(r#"{"timestamp":"2023-11-14T22:13:20Z","value":"1","name":"up","labels":{"a":2}}"#),
        "wrong_type"
    );
    assert_eq!(code("not json"), "invalid_json");
    assert_eq!(code("[]"), "not_an_object");
}

#[test]
fn the_size_bound_holds_for_every_format() {
    let tiny = Limits {
        max_message_bytes: 8,
        ..Limits::DEFAULT
    };
    for format in [Format::Influx, Format::TelegrafJson, Format::PrometheusJson] {
        let out = decode_as(
            format,
            TimeUnit::Ns,
            b"cpu v=1 1700000000000000000",
            &FeatureSet::default(),
            &tiny,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].as_ref().unwrap_err().reason.code(),
            "message_too_large"
        );
    }
}
