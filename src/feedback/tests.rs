use super::*;

fn not_anomaly(series: &str, ts: i64, point: f64, range: f64) -> Record {
    Record {
        verdict: Verdict::NotAnomaly,
        series: series.into(),
        feature: "value".into(),
        start_ts: ts,
        end_ts: ts,
        channels: [("point".to_string(), point), ("range".to_string(), range)]
            .into_iter()
            .collect(),
        at_ms: ts,
        note: None,
    }
}

#[test]
fn a_mark_sets_ceilings_on_its_series_only() {
    let mut b = Book::new();
    let r = not_anomaly("a", 10, 3.0, 0.5);
    assert!(b.apply(&r.key(), Some(r.clone())));
    let c = b.ceilings("a").unwrap();
    assert!((c.ceiling[0] - 3.3).abs() < 1e-9 && (c.ceiling[4] - 0.55).abs() < 1e-9);
    assert!(b.ceilings("b").is_none());
    // The same strength no longer passes the threshold; 20% more does.
    let mut same = Channels {
        point: 3.0,
        range: 0.5,
        ..Channels::default()
    };
    apply_ceilings(&mut same, c, 1.0);
    assert!(same.max() <= 1.0, "{same:?}");
    let mut stronger = Channels {
        point: 3.6,
        ..Channels::default()
    };
    apply_ceilings(&mut stronger, c, 1.0);
    assert!(stronger.max() > 1.0, "{stronger:?}");
    // A channel below the threshold at the mark is left as it is.
    let mut range = Channels {
        range: 2.0,
        ..Channels::default()
    };
    apply_ceilings(&mut range, c, 1.0);
    assert_eq!(range.range, 2.0);
}

#[test]
fn marks_keep_the_highest_ceiling_and_a_tombstone_withdraws_one() {
    let mut b = Book::new();
    let (low, high) = (
        not_anomaly("a", 10, 2.0, 0.0),
        not_anomaly("a", 20, 5.0, 0.0),
    );
    b.apply(&low.key(), Some(low.clone()));
    b.apply(&high.key(), Some(high.clone()));
    assert!((b.ceilings("a").unwrap().ceiling[0] - 5.5).abs() < 1e-9);
    b.apply(&high.key(), None);
    assert!((b.ceilings("a").unwrap().ceiling[0] - 2.2).abs() < 1e-9);
    b.apply(&low.key(), None);
    assert!(b.ceilings("a").is_none() && b.is_empty());
}

#[test]
fn a_full_book_refuses_more_but_takes_replacements() {
    let mut b = Book::bounded(1_000);
    for i in 0..1_000 {
        let r = not_anomaly(&format!("s{}", i % 50), i, 2.0, 0.0);
        assert!(b.apply(&r.key(), Some(r)));
    }
    assert_eq!((b.len(), b.series_with_ceilings()), (1_000, 50));
    let one_more = not_anomaly("s0", -1, 9.0, 0.0);
    assert!(!b.apply(&one_more.key(), Some(one_more)), "full");
    // Replacing a held record is not a new one.
    let again = not_anomaly("s0", 0, 3.0, 0.0);
    assert!(b.apply(&again.key(), Some(again)));
    assert!((b.ceilings("s0").unwrap().ceiling[0] - 3.3).abs() < 1e-9);
}

fn missed(series: &str, channels: &[(&str, f64)]) -> Record {
    Record {
        verdict: Verdict::Missed,
        series: series.into(),
        feature: "value".into(),
        start_ts: 100,
        end_ts: 200,
        channels: channels.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        at_ms: 5,
        note: Some("disk filled".into()),
    }
}

#[test]
fn missed_without_the_ranges_points_is_kept_and_teaches_nothing() {
    let mut b = Book::new();
    let r = missed("a", &[]);
    r.validate().unwrap();
    b.apply(&r.key(), Some(r));
    assert_eq!(b.len(), 1);
    assert!(b.ceilings("a").is_none());
}

#[test]
fn missed_makes_the_same_strength_pass_on_its_series_only() {
    let mut b = Book::new();
    let r = missed("a", &[("point", 0.88)]);
    r.validate().unwrap();
    b.apply(&r.key(), Some(r));
    let adj = *b.ceilings("a").unwrap();
    assert!((adj.floor[0] - 0.8).abs() < 1e-9, "{adj:?}");
    assert!(b.ceilings("b").is_none());
    // The range's peak now passes the threshold; 20% less does not, and
    // other channels are as they were.
    let mut same = Channels {
        point: 0.88,
        range: 0.5,
        ..Channels::default()
    };
    apply_ceilings(&mut same, &adj, 1.0);
    assert!(same.point > 1.0 && same.range == 0.5, "{same:?}");
    let mut weaker = Channels {
        point: 0.7,
        ..Channels::default()
    };
    apply_ceilings(&mut weaker, &adj, 1.0);
    assert!(weaker.max() <= 1.0, "{weaker:?}");
    // A weak peak is scaled by MAX_BOOST at most.
    let r = missed("c", &[("memory", 0.2)]);
    b.apply(&r.key(), Some(r));
    let mut weak = Channels {
        memory: 0.2,
        ..Channels::default()
    };
    apply_ceilings(&mut weak, b.ceilings("c").unwrap(), 1.0);
    assert!((weak.memory - 0.2 * MAX_BOOST).abs() < 1e-9, "{weak:?}");
    // "Not an anomaly" on the same channel wins over "missed".
    let n = not_anomaly("a", 10, 3.0, 0.0);
    b.apply(&n.key(), Some(n));
    let mut both = Channels {
        point: 3.0,
        ..Channels::default()
    };
    apply_ceilings(&mut both, b.ceilings("a").unwrap(), 1.0);
    assert!(both.point <= 1.0, "{both:?}");
    // Bad strengths are refused for missed too.
    assert!(missed("a", &[("nope", 1.0)]).validate().is_err());
    assert!(missed("a", &[("point", f64::NAN)]).validate().is_err());
}

#[test]
fn bad_records_are_refused_with_a_reason() {
    let mut r = not_anomaly("a", 10, 3.0, 0.0);
    r.channels.insert("pointy".into(), 1.0);
    assert!(matches!(r.validate(), Err(FeedbackError::Channels(s)) if s == "pointy"));
    let mut r = not_anomaly("a", 10, 3.0, 0.0);
    r.channels.clear();
    assert!(r.validate().is_err(), "not_anomaly without strengths");
    let mut r = not_anomaly("a", 10, 3.0, 0.0);
    r.end_ts = 5;
    assert_eq!(
        r.validate(),
        Err(FeedbackError::Range { start: 10, end: 5 })
    );
    assert!(matches!(
        Record::from_json(b"{\"verdict\":\"maybe\"}"),
        Err(FeedbackError::Invalid(_))
    ));
    let ok = not_anomaly("a", 10, 3.0, 0.0);
    let json = serde_json::to_vec(&ok).unwrap();
    assert_eq!(Record::from_json(&json).unwrap(), ok);
}

#[test]
fn a_feature_has_its_own_score_key() {
    let mut r = not_anomaly("pump", 1, 2.0, 0.0);
    assert_eq!(r.score_key(), "pump");
    r.feature = "flow".into();
    assert_eq!(r.score_key(), "pump\u{1f}flow");
}
