use super::*;
use crate::flow::forecast::Shape;

/// A forecast of `mean` and `std` for the 3 values after a context
/// ending at `end`.
fn forecast_at(end: i64, mean: f32, std: f32) -> Forecast {
    let shape = Shape {
        layers: 1,
        heads: 1,
        context: 4,
        patch: 2,
    };
    Forecast {
        mean: vec![mean; 3].into(),
        std: vec![std; 3].into(),
        explanation: Arc::new(Explanation::from_heads(&[0.5, 0.5], shape, end, 1, 4)),
        novelty: Box::new([]),
    }
}

fn forecast(mean: f32, std: f32) -> Forecast {
    forecast_at(0, mean, std)
}

fn value(key: &Arc<str>, ts: i64, x: f32) -> Value<'_> {
    Value {
        key,
        ts,
        value: x,
        interval: 1,
    }
}

/// A deterministic value in [-1, 1).
fn noise(i: i64) -> f32 {
    let x = (i as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

#[test]
fn points_are_scored_against_their_forecast_step() {
    let mut s = Scorer::new(ScoreConfig::default(), 10);
    let key: Arc<str> = "a".into();
    assert!(s.score(value(&key, 0, 1.0), 1).is_none(), "no forecast yet");
    s.set_forecast(&key, forecast(10.0, 2.0));
    let p = s.score(value(&key, 1, 16.0), 2).unwrap();
    assert_eq!((p.expected, p.expected_std), (10.0, 2.0));
    assert!((p.scored.raw_score - 3.0).abs() < 1e-12);
    assert!(
        s.score(value(&key, 2, 16.0), 4).is_none(),
        "beyond the horizon"
    );
}

fn forecast_after(end: i64, mean: f32) -> Forecast {
    forecast_at(end, mean, 1.0)
}

#[test]
fn a_value_is_as_surprising_as_the_less_surprised_covering_forecast() {
    let key: Arc<str> = "a".into();
    let raw = |forecasts: u32, x: f32| {
        let cfg = ScoreConfig {
            forecasts,
            ..ScoreConfig::default()
        };
        let mut s = Scorer::new(cfg, 10);
        // The run at ts 0 expects 5 at ts 1..=3; the run at ts 1 expects
        // 0 at ts 2..=4.
        s.set_forecast(&key, forecast_after(0, 5.0));
        s.set_forecast(&key, forecast_after(1, 0.0));
        let p = s.score(value(&key, 2, x), 1).unwrap();
        (p.scored.raw_score, p.expected)
    };
    // Newest alone: 4 is 4 sd from its forecast.
    assert_eq!(raw(1, 4.0), (4.0, 0.0));
    // With the forecast before it, which expected 5: 1 sd, and the
    // output shows the forecast that judged it.
    assert_eq!(raw(2, 4.0), (1.0, 5.0));
    // Both are surprised by 20: the smaller surprise, 15, stands.
    assert_eq!(raw(2, 20.0), (15.0, 5.0));
    // Where the older forecast no longer covers the value (ts 4 is 4
    // after its context, beyond its 3), the newest judges alone.
    let cfg = ScoreConfig::default();
    let mut s = Scorer::new(cfg, 10);
    s.set_forecast(&key, forecast_after(0, 5.0));
    s.set_forecast(&key, forecast_after(1, 0.0));
    let p = s.score(value(&key, 4, 4.0), 3).unwrap();
    assert_eq!((p.scored.raw_score, p.expected), (4.0, 0.0));
}

#[test]
fn series_beyond_max_series_evict_the_least_recent() {
    let mut s = Scorer::new(ScoreConfig::default(), 2);
    for k in ["a", "b", "a", "c"] {
        let key: Arc<str> = k.into();
        s.set_forecast(&key, forecast(0.0, 1.0));
    }
    assert_eq!(s.len(), 2);
    assert_eq!(s.take_evicted(), 1);
    let (a, c): (Arc<str>, Arc<str>) = ("a".into(), "c".into());
    assert!(s.score(value(&c, 0, 0.0), 1).is_some());
    assert!(s.score(value(&a, 0, 0.0), 1).is_some());
    // b was least recently used: its forecast is gone, and its next
    // value starts it over (evicting c, now the least recent).
    let b: Arc<str> = "b".into();
    assert!(s.score(value(&b, 0, 0.0), 1).is_none());
    assert_eq!(s.take_evicted(), 1);
    assert!(s.score(value(&c, 1, 0.0), 1).is_none());
}

/// Score `n` noisy values against a perfect forecast; the scored
/// results.
fn run(s: &mut Scorer, key: &Arc<str>, from: i64, xs: &[f32]) -> Vec<Scored> {
    xs.iter()
        .enumerate()
        .filter_map(|(i, &x)| {
            s.set_forecast(key, forecast(0.0, 1.0));
            s.score(value(key, from + i as i64, x), 1).map(|p| p.scored)
        })
        .collect()
}

#[test]
fn probation_holds_then_a_break_of_the_range_alerts_and_opens_an_incident() {
    let cfg = ScoreConfig {
        probation: 50,
        ..ScoreConfig::default()
    };
    let mut s = Scorer::new(cfg, 10);
    let key: Arc<str> = "a".into();
    // A huge value during probation: scored, never anomalous.
    let early = run(&mut s, &key, 0, &[40.0]);
    assert!(early[0].score > 1.0 && !early[0].anomaly && !early[0].alert);
    let calm: Vec<f32> = (1..600).map(noise).collect();
    let out = run(&mut s, &key, 1, &calm);
    assert!(out.iter().all(|p| !p.alert), "calm values inside the range");
    // Far beyond the range: the range channel alerts, an incident opens.
    let out = run(&mut s, &key, 600, &[500.0, 0.0, 900.0]);
    assert!(out[0].anomaly && out[0].alert, "{:?}", out[0]);
    assert!(out[0].channels.range > 1.0, "{:?}", out[0].channels);
    assert_eq!(out[0].incident, Some(600));
    // The next anomalous point joins it instead of alerting again.
    assert!(out[2].anomaly && !out[2].alert, "{:?}", out[2]);
    assert_eq!(out[2].incident, Some(600));
    assert_eq!(out[1].incident, None);
}

#[test]
fn an_incident_closes_after_incident_quiet_points() {
    let cfg = ScoreConfig {
        probation: 10,
        incident_quiet: 5,
        channels: vec![Channel::Range],
        ..ScoreConfig::default()
    };
    let mut s = Scorer::new(cfg, 10);
    let key: Arc<str> = "a".into();
    let calm: Vec<f32> = (0..300).map(noise).collect();
    run(&mut s, &key, 0, &calm);
    let mut xs = vec![10.0];
    xs.extend((0..5).map(|i| noise(400 + i)));
    xs.push(100.0);
    let out = run(&mut s, &key, 300, &xs);
    assert!(out[0].alert && out[6].alert, "quiet for 5: a new incident");
    assert_eq!(out[6].incident, Some(306));
}

#[test]
fn unscored_values_teach_the_range() {
    let cfg = ScoreConfig {
        probation: 10,
        ..ScoreConfig::default()
    };
    let mut s = Scorer::new(cfg, 10);
    let key: Arc<str> = "a".into();
    // 200 values before the first run, reaching 100.
    for i in 0..200 {
        s.observe(value(&key, i, if i == 7 { 100.0 } else { noise(i) }));
    }
    let out = run(&mut s, &key, 200, &[90.0]);
    assert_eq!(out[0].channels.range, 0.0, "inside the range it learned");
}

#[test]
fn the_memory_channel_is_wired_and_names_a_match() {
    let cfg = ScoreConfig {
        probation: 10,
        memory_spans: vec![std::time::Duration::from_millis(16)],
        ..ScoreConfig::default()
    };
    let mut s = Scorer::new(cfg, 10);
    let key: Arc<str> = "a".into();
    // A period-4 pattern: blocks of one value, queries of 16.
    let xs: Vec<f32> = (0..400).map(|i| [0.0, 1.0, 4.0, 1.0][i % 4]).collect();
    let out = run(&mut s, &key, 0, &xs);
    let last = out.last().unwrap();
    let m = last.nearest.expect("a match");
    assert!(!m.novel && m.distance < 1e-6, "{m:?}");
    assert_eq!((m.end_ts + 1 - m.start_ts), 16);
    // A value that breaks the pattern: no past pattern is like it.
    let out = run(&mut s, &key, 400, &[4.0; 16]);
    assert!(
        out.iter().any(|p| p.channels.memory > 1.0),
        "{:?}",
        out.last()
    );
}
