use super::*;

#[test]
fn points_are_valid_json_on_the_grid_and_anomalies_are_injected_at_the_rate() {
    let spec = LoadSpec {
        brokers: String::new(),
        topic: String::new(),
        partitions: 1,
        series: 1,
        points: 10_000,
        interval_ms: 60_000,
        start_ms: 1_700_000_000_000,
        per_message: 1,
        anomaly_rate: 0.01,
        bad_rate: 0.0,
        rate: None,
        seed: 3,
        format: Format::Attnwatch,
    };
    let shape = Shape {
        name: "s1".into(),
        level: 1.0,
        amp: 2.0,
        period: 50.0,
        phase: 0.0,
    };
    let mut rng = Rng::new(1);
    let mut anomalies = 0;
    for t in 0..spec.points {
        let (json, a) = point(&shape, t, &spec, &mut rng);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["ts"], spec.start_ms + t as i64 * 60_000);
        assert!(v["value"].as_f64().unwrap().is_finite());
        anomalies += usize::from(a);
    }
    assert!((60..=140).contains(&anomalies), "{anomalies}");
}

#[test]
fn every_format_decodes_to_the_same_point() {
    use crate::ingest::decode::{decode_as, FeatureSet, Limits, Values};
    let ts = 1_700_000_040_000;
    for (format, series) in [
        (Format::Attnwatch, "s000001"),
        (Format::Influx, "loadgen,series=s000001"),
        (Format::TelegrafJson, "loadgen,series=s000001"),
        (Format::PrometheusJson, r#"loadgen{series="s000001"}"#),
    ] {
        let one = render(format, "s000001", ts, 2.5);
        let two = batch(
            format,
            &[one.clone(), render(format, "s000001", ts + 60_000, -1.0)],
        );
        let payloads = match format {
            Format::PrometheusJson => vec![one],
            _ => vec![one, two],
        };
        for payload in payloads {
            let out = decode_as(
                format,
                format.default_unit(),
                payload.as_bytes(),
                &FeatureSet::default(),
                &Limits::DEFAULT,
            );
            let s = out[0].as_ref().unwrap();
            assert_eq!((s.series.as_str(), s.ts), (series, ts), "{payload}");
            let v = match &s.values {
                Values::Single(v) => *v,
                Values::Multi(f) => f[0].1,
            };
            assert_eq!(v, 2.5, "{payload}");
        }
        let bad = bad_foreign(format, "s000001");
        if format != Format::Attnwatch {
            let out = decode_as(
                format,
                format.default_unit(),
                bad.as_bytes(),
                &FeatureSet::default(),
                &Limits::DEFAULT,
            );
            assert!(out.iter().all(Result::is_err), "{bad}");
        }
    }
}

#[test]
fn every_bad_kind_is_rejected_by_the_decoder() {
    use crate::ingest::decode::{decode, FeatureSet, Limits, Reason};
    let mut reasons = std::collections::BTreeSet::new();
    for kind in 0..BAD_KINDS {
        let bad = bad_record(kind, "s1");
        let out = decode(bad.as_bytes(), &FeatureSet::default(), &Limits::DEFAULT);
        assert!(out.iter().all(Result::is_err), "{bad} decoded");
        for e in out.into_iter().filter_map(Result::err) {
            reasons.insert(e.reason.code());
        }
    }
    // Every reason but unknown_feature and message_too_large, once each.
    assert_eq!(reasons.len(), BAD_KINDS, "{reasons:?}");
    let left: Vec<_> = Reason::ALL_CODES
        .iter()
        .filter(|c| !reasons.contains(*c))
        .collect();
    assert_eq!(
        left,
        [
            &"invalid_line_protocol",
            &"unknown_feature",
            &"message_too_large"
        ]
    );
    assert_eq!(bad_record(BAD_KINDS, "s1"), bad_record(0, "s1"), "rotated");
}
