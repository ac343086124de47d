//! The decoder's unit tests: every reason, the bounds at and one past
//! their limits, and the lists of reason codes.

use super::*;

fn one(s: &str) -> Result<Sample, Reason> {
    let mut v = decode(s.as_bytes(), &FeatureSet::default(), &Limits::DEFAULT);
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
    let out = decode(msg, &FeatureSet::default(), &Limits::DEFAULT);
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
    let out = decode(
        br#"{"series":"a","ts":1,"values":{"heat":1}}"#,
        &fs,
        &Limits::DEFAULT,
    );
    assert_eq!(
        out[0].as_ref().unwrap_err().reason.code(),
        "unknown_feature"
    );
    let ok = br#"{"series":"a","ts":1,"values":{"flow":1}}"#;
    assert!(decode(ok, &fs, &Limits::DEFAULT)[0].is_ok());
}

#[test]
fn whole_array_that_is_not_json_is_one_rejection() {
    let out = decode(b"[{\"series\":", &FeatureSet::default(), &Limits::DEFAULT);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().reason.code(), "invalid_json");
}

/// A record of `series`, with `labels` (key, value) pairs.
fn record(series: &str, labels: &[(String, String)]) -> String {
    serde_json::json!({
        "series": series,
        "ts": 1,
        "value": 1,
        "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>(),
    })
    .to_string()
}

fn labels(n: usize, key_len: usize, value_len: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{i:0key_len$}"), "v".repeat(value_len)))
        .collect()
}

#[test]
fn series_id_length_is_bounded_at_exactly_the_limit() {
    let max = Limits::DEFAULT.max_series_bytes;
    assert_eq!(max, 256);
    assert!(one(&record(&"a".repeat(max), &[])).is_ok());
    let r = one(&record(&"a".repeat(max + 1), &[])).unwrap_err();
    assert_eq!(r.code(), "series_too_long");
    assert_eq!(r, Reason::SeriesTooLong { len: 257, max: 256 });
    // Bytes of UTF-8, after JSON unescaping: "é" is 2 bytes, "\u0061" is 1.
    assert_eq!(
        code(&record(&"é".repeat(max / 2 + 1), &[])),
        "series_too_long"
    );
    assert!(one(&record(&"é".repeat(max / 2), &[])).is_ok());
    let escaped = format!(
        r#"{{"series":"{}","ts":1,"value":1}}"#,
        "\\u0061".repeat(max)
    );
    assert!(one(&escaped).is_ok());
}

#[test]
fn label_count_is_bounded_at_exactly_the_limit() {
    let max = Limits::DEFAULT.max_labels;
    assert_eq!(max, 32);
    let s = one(&record("a", &labels(max, 2, 1))).unwrap();
    assert_eq!(s.labels.len(), max);
    let r = one(&record("a", &labels(max + 1, 2, 1))).unwrap_err();
    assert_eq!(r, Reason::TooManyLabels { count: 33, max: 32 });
    assert_eq!(r.code(), "too_many_labels");
}

#[test]
fn label_key_and_value_lengths_are_bounded_at_exactly_the_limit() {
    let max = Limits::DEFAULT.max_label_bytes;
    assert_eq!(max, 256);
    assert!(one(&record("a", &labels(2, max, max))).is_ok());
    let r = one(&record("a", &labels(1, max + 1, 1))).unwrap_err();
    assert_eq!(
        r,
        Reason::LabelTooLong {
            part: "key",
            len: 257,
            max: 256
        }
    );
    let r = one(&record("a", &labels(1, 1, max + 1))).unwrap_err();
    assert_eq!(
        r,
        Reason::LabelTooLong {
            part: "value",
            len: 257,
            max: 256
        }
    );
    assert_eq!(r.code(), "label_too_long");
}

#[test]
fn message_size_is_bounded_at_exactly_the_limit_before_parsing() {
    let max = Limits::DEFAULT.max_message_bytes;
    assert_eq!(max, 1024 * 1024);
    // A valid record padded with whitespace to exactly the bound.
    let body = r#"{"series":"a","ts":1,"value":1}"#;
    let mut at = body.as_bytes().to_vec();
    at.resize(max, b' ');
    let out = decode(&at, &FeatureSet::default(), &Limits::DEFAULT);
    assert!(out.len() == 1 && out[0].is_ok(), "{:?}", out[0]);
    at.push(b' ');
    let out = decode(&at, &FeatureSet::default(), &Limits::DEFAULT);
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.reason, Reason::MessageTooLarge { size: max + 1, max });
    assert_eq!(e.bytes, at, "the original bytes, whole");
    // Not parsed: garbage over the bound is too large, not invalid JSON.
    let small = Limits {
        max_message_bytes: 8,
        ..Limits::DEFAULT
    };
    let out = decode(b"[{not json", &FeatureSet::default(), &small);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].as_ref().unwrap_err().reason.code(),
        "message_too_large"
    );
    // An array is one message: its total size counts.
    let array = format!("[{body},{body}]");
    let limits = Limits {
        max_message_bytes: array.len() - 1,
        ..Limits::DEFAULT
    };
    let out = decode(array.as_bytes(), &FeatureSet::default(), &limits);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].as_ref().unwrap_err().reason.code(),
        "message_too_large"
    );
}

#[test]
fn limits_apply_to_each_element_of_an_array() {
    let limits = Limits {
        max_series_bytes: 3,
        ..Limits::DEFAULT
    };
    let msg = br#"[{"series":"abc","ts":1,"value":1},{"series":"abcd","ts":1,"value":1}]"#;
    let out = decode(msg, &FeatureSet::default(), &limits);
    assert!(out[0].is_ok());
    let bad = out[1].as_ref().unwrap_err();
    assert_eq!(bad.reason.code(), "series_too_long");
    assert_eq!(bad.bytes, br#"{"series":"abcd","ts":1,"value":1}"#);
}

/// The position of a reason in [`Reason::ALL_CODES`]. The match has no
/// wildcard: a new reason does not compile until it is placed here, and
/// `every_code_is_listed` then needs an input that gives it.
fn position(r: &Reason) -> usize {
    match r {
        Reason::InvalidJson(_) => 0,
        Reason::InvalidLineProtocol(_) => 1,
        Reason::NotAnObject => 2,
        Reason::MissingSeries => 3,
        Reason::MissingTimestamp => 4,
        Reason::BadTimestamp(_) => 5,
        Reason::TimestampOutOfRange(_) => 6,
        Reason::MissingValue => 7,
        Reason::NonFiniteValue(_) => 8,
        Reason::WrongType(_) => 9,
        Reason::UnknownField(_) => 10,
        Reason::UnknownFeature(_) => 11,
        Reason::MessageTooLarge { .. } => 12,
        Reason::SeriesTooLong { .. } => 13,
        Reason::TooManyLabels { .. } => 14,
        Reason::LabelTooLong { .. } => 15,
    }
}

#[test]
fn every_code_is_listed() {
    // One input per reason, in the order of ALL_CODES, decoded with small
    // bounds and a declared feature list.
    let limits = Limits {
        max_message_bytes: 64,
        max_series_bytes: 4,
        max_labels: 1,
        max_label_bytes: 4,
    };
    let features = FeatureSet(Some(vec!["flow".into()]));
    let inputs: [&str; Reason::ALL_CODES.len()] = [
        "{",
        "cpu value=1 1 trailing",
        "1",
        "{}",
        r#"{"series":"a"}"#,
        r#"{"series":"a","ts":"x"}"#,
        r#"{"series":"a","ts":-1}"#,
        r#"{"series":"a","ts":1}"#,
        r#"{"series":"a","ts":1,"value":1e300}"#,
        r#"{"series":1}"#,
        r#"{"series":"a","ts":1,"value":1,"x":1}"#,
        r#"{"series":"a","ts":1,"values":{"heat":1}}"#,
        r#"{"series":"a","ts":1,"value":1,"labels":{"k":"v"},"pad":"0123456789"}"#,
        r#"{"series":"abcde","ts":1,"value":1}"#,
        r#"{"series":"a","ts":1,"value":1,"labels":{"k":"v","l":"w"}}"#,
        r#"{"series":"a","ts":1,"value":1,"labels":{"k":"vvvvv"}}"#,
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in inputs.iter().enumerate() {
        let format = if i == 1 {
            Format::Influx
        } else {
            Format::Attnwatch
        };
        let out = decode_as(format, TimeUnit::Ns, input.as_bytes(), &features, &limits);
        let reason = &out[0].as_ref().unwrap_err().reason;
        assert_eq!(position(reason), i, "{input}: {reason:?}");
        assert_eq!(reason.code(), Reason::ALL_CODES[i], "{input}");
        assert!(!reason.to_string().is_empty());
        seen.insert(reason.code());
    }
    assert_eq!(seen.len(), Reason::ALL_CODES.len(), "codes are distinct");
}

#[test]
fn the_readme_lists_every_reason_code() {
    let readme = include_str!("../../../README.md");
    for code in Reason::ALL_CODES.iter().chain(&["no_forecast"]) {
        assert!(
            readme.contains(&format!("`{code}`")),
            "README lacks `{code}`"
        );
    }
}
