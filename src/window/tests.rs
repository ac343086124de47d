use proptest::prelude::*;

use super::*;

const MIN: i64 = 60_000;

fn settings(w: usize) -> Settings {
    Settings {
        interval_ms: Some(MIN),
        ..Settings::for_model(w, w)
    }
}

/// The real (not gap-filled) grid points pushing `pts` emits.
fn push_all(win: &mut Windows, key: &str, pts: &[(i64, f32)]) -> Vec<Emitted> {
    let mut out = Vec::new();
    for &(ts, v) in pts {
        if let Ok(e) = win.push(key, ts, v, 0) {
            out.extend(e.into_iter().filter(|e| !e.filled));
        }
    }
    out
}

#[test]
fn a_bucket_closes_when_the_next_one_starts_and_windows_follow_the_grid() {
    let mut win = Windows::new(settings(3));
    assert!(win.push("a", 0, 1.0, 0).unwrap().is_empty());
    let e = win.push("a", MIN + 5, 2.0, 0).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].ts, e[0].value, e[0].window.is_some()),
        (0, 1.0, false)
    );
    win.push("a", 2 * MIN, 3.0, 0).unwrap();
    let e = win.push("a", 3 * MIN, 4.0, 0).unwrap();
    let w = e[0].window.clone().unwrap();
    assert_eq!(w.values, vec![1.0, 2.0, 3.0]);
    assert_eq!(w.timestamps(), vec![0, MIN, 2 * MIN]);
}

#[test]
fn points_in_one_interval_are_aggregated() {
    for (agg, want) in [(Aggregation::Mean, 2.0), (Aggregation::Last, 3.0)] {
        let mut win = Windows::new(Settings {
            aggregation: agg,
            ..settings(2)
        });
        win.push("a", 10, 1.0, 0).unwrap();
        win.push("a", 40_000, 3.0, 0).unwrap();
        win.push("a", 20_000, 2.0, 0).unwrap();
        let e = win.push("a", MIN, 9.0, 0).unwrap();
        assert_eq!(e[0].value, want, "{agg:?}");
    }
}

#[test]
fn short_gaps_are_filled_and_long_ones_reset() {
    let mut win = Windows::new(Settings {
        max_gap: 2,
        fill: Fill::Linear,
        ..settings(4)
    });
    let e = push_all(
        &mut win,
        "a",
        &[(0, 0.0), (MIN, 3.0), (4 * MIN, 9.0), (5 * MIN, 0.0)],
    );
    // Buckets 2 and 3 are filled linearly between 3.0 and 9.0.
    let w = e.last().unwrap().window.clone().unwrap();
    assert_eq!(w.values, vec![3.0, 5.0, 7.0, 9.0]);
    assert_eq!(win.counters().gaps_filled, 2);
    // Bucket 5 closes on the point at 9; bucket 9 closes on the point at 10
    // after a gap of 3 intervals > max_gap: the window starts again.
    let e = push_all(&mut win, "a", &[(9 * MIN, 1.0), (10 * MIN, 1.0)]);
    assert_eq!(e.len(), 2);
    assert!(e[0].window.is_some());
    assert_eq!(win.counters().resets, 1);
    assert!(e[1].window.is_none(), "a reset window needs W values again");

    let mut win = Windows::new(Settings {
        max_gap: 5,
        fill: Fill::Forward,
        ..settings(3)
    });
    let e = push_all(&mut win, "a", &[(0, 1.0), (3 * MIN, 4.0), (4 * MIN, 0.0)]);
    assert_eq!(
        e.last().unwrap().window.as_ref().unwrap().values,
        vec![1.0, 1.0, 4.0]
    );
}

#[test]
fn lateness_lets_late_points_land_until_the_watermark_passes() {
    let mut win = Windows::new(Settings {
        lateness_ms: 2 * MIN,
        ..settings(2)
    });
    win.push("a", 0, 1.0, 0).unwrap();
    win.push("a", 2 * MIN, 3.0, 0).unwrap();
    // Within lateness: bucket 0 is still open.
    assert!(win.push("a", 30_000, 5.0, 0).is_ok());
    let e = win.push("a", 3 * MIN, 4.0, 0).unwrap();
    assert_eq!((e[0].ts, e[0].value), (0, 3.0), "mean of 1 and 5");
    // Bucket 0 is closed now: too late.
    assert_eq!(win.push("a", 10, 1.0, 0), Err(Rejected::Late));
    assert_eq!(win.counters().late, 1);
}

#[test]
fn duplicates_count_once_and_the_larger_value_wins() {
    let mut win = Windows::new(settings(2));
    win.push("a", 0, 1.0, 0).unwrap();
    win.push("a", 0, 7.0, 0).unwrap();
    win.push("a", 0, 3.0, 0).unwrap();
    let e = win.push("a", MIN, 1.0, 0).unwrap();
    assert_eq!(e[0].value, 7.0);
    assert_eq!(win.counters().duplicates, 2);
}

#[test]
fn the_interval_is_inferred_from_the_median_delta() {
    let mut win = Windows::new(Settings {
        interval_ms: None,
        infer_points: 5,
        ..settings(3)
    });
    let mut out = Vec::new();
    // 5-minute data with one jittered point.
    for (i, ts) in [
        0, 300_000, 600_000, 905_000, 1_200_000, 1_500_000, 1_800_000,
    ]
    .iter()
    .enumerate()
    {
        out.extend(win.push("a", *ts, i as f32, 0).unwrap());
    }
    assert!(!out.is_empty());
    assert!(out.iter().all(|e| e.ts % 300_000 == 0), "{out:?}");
    // An inferred grid keeps the data's phase.
    let mut win = Windows::new(Settings {
        interval_ms: None,
        infer_points: 3,
        ..settings(2)
    });
    let mut out = Vec::new();
    for i in 0..5 {
        out.extend(win.push("b", 7_000 + i * 60_000, 1.0, 0).unwrap());
    }
    assert_eq!(
        out.iter().map(|e| e.ts).collect::<Vec<_>>(),
        vec![7_000, 67_000, 127_000, 187_000]
    );
}

#[test]
fn partial_windows_from_min_points() {
    let mut win = Windows::new(Settings {
        min_points: 2,
        ..settings(4)
    });
    let e = push_all(&mut win, "a", &[(0, 1.0), (MIN, 2.0), (2 * MIN, 3.0)]);
    let w = e.last().unwrap().window.clone().unwrap();
    assert!(w.values[0].is_nan() && w.values[1].is_nan());
    assert_eq!(&w.values[2..], &[1.0, 2.0]);
    assert_eq!(w.timestamps()[..2], [MISSING_TS, MISSING_TS]);
    assert!(!w.present(1) && w.present(2));
}

#[test]
fn least_recently_used_and_idle_series_are_evicted() {
    let mut win = Windows::new(Settings {
        max_series: 2,
        idle_ttl_ms: 1000,
        ..settings(2)
    });
    win.push("a", 0, 1.0, 0).unwrap();
    win.push("b", 0, 1.0, 10).unwrap();
    win.push("a", MIN, 1.0, 20).unwrap(); // a is now most recent
    win.push("c", 0, 1.0, 30).unwrap(); // evicts b
    assert_eq!(win.series(), 2);
    assert_eq!(win.counters().evicted_lru, 1);
    win.push("c", MIN, 1.0, 1025).unwrap(); // a idle since 20 > 1000 ms
    assert_eq!(win.series(), 1);
    assert_eq!(win.counters().evicted_idle, 1);
}

#[test]
fn flush_closes_open_buckets() {
    let mut win = Windows::new(settings(2));
    push_all(&mut win, "a", &[(0, 1.0), (MIN, 2.0)]);
    let e = win.flush("a");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].ts, MIN);
}

#[test]
fn readme_worked_example() {
    let t = |h: i64, m: i64, sec: i64| ((h * 60 + m) * 60 + sec) * 1000;
    let mut win = Windows::new(Settings {
        interval_ms: Some(MIN),
        lateness_ms: MIN,
        max_gap: 2,
        ..Settings::for_model(8, 2)
    });
    let mut push = |ts, v| win.push("s", ts, v, 0);
    assert_eq!(push(t(10, 0, 10), 4.0), Ok(vec![]));
    assert_eq!(push(t(10, 0, 50), 6.0), Ok(vec![]));
    assert_eq!(push(t(10, 1, 30), 5.0), Ok(vec![]));
    assert_eq!(
        push(t(10, 0, 20), 8.0),
        Ok(vec![]),
        "lands in the open bucket"
    );
    let e = push(t(10, 2, 5), 7.0).unwrap();
    assert_eq!((e.len(), e[0].ts, e[0].value), (1, t(10, 0, 0), 6.0));
    assert_eq!(push(t(10, 0, 40), 1.0), Err(Rejected::Late));
    let e = push(t(10, 5, 10), 3.0).unwrap();
    assert_eq!(
        e.iter().map(|x| (x.ts, x.value)).collect::<Vec<_>>(),
        vec![(t(10, 1, 0), 5.0), (t(10, 2, 0), 7.0)]
    );
    let e = push(t(10, 7, 0), 2.0).unwrap();
    // The two filled values carry runs (stride 1) but are not real points.
    assert_eq!(e.iter().filter(|x| x.filled).count(), 2);
    let e: Vec<_> = e.into_iter().filter(|x| !x.filled).collect();
    assert_eq!((e.len(), e[0].ts, e[0].value), (1, t(10, 5, 0), 3.0));
    let w = e[0].window.as_ref().unwrap();
    assert_eq!(&w.values[2..], &[6.0, 5.0, 7.0, 7.0, 7.0, 3.0]);
    assert_eq!(win.counters().gaps_filled, 2);
    assert_eq!(win.counters().late, 1);
}

#[test]
fn runs_are_due_every_stride_values_and_steps_count_from_the_last_run() {
    let mut win = Windows::new(Settings {
        stride: 3,
        max_gap: 4,
        ..Settings {
            interval_ms: Some(MIN),
            ..Settings::for_model(8, 2)
        }
    });
    // Series "c" has no stagger at stride 3 (its second run is not early).
    assert_eq!(series::stagger("c", 3), 0);
    let pts: Vec<(i64, f32)> = (0..9).map(|i| (i * MIN, i as f32)).collect();
    let e = push_all(&mut win, "c", &pts);
    // Values 0..=7 are closed; the first run is due at the 2nd (min_points).
    let runs: Vec<bool> = e.iter().map(|x| x.window.is_some()).collect();
    assert_eq!(
        runs,
        vec![false, true, false, false, true, false, false, true]
    );
    let steps: Vec<Option<u32>> = e.iter().map(|x| x.step).collect();
    assert_eq!(
        steps,
        vec![
            None,
            None,
            Some(1),
            Some(2),
            Some(3),
            Some(1),
            Some(2),
            Some(3)
        ]
    );
    // Value 8 closes when 12 arrives; 12 closes when 13 arrives, after a
    // gap of 3 (9, 10, 11) that is filled. The run due on the filled 10 is
    // emitted as a filled run; the real 12 is then 2 steps after it.
    let at = |x: &Emitted| (x.ts / MIN, x.filled, x.step, x.window.is_some());
    let e = win.push("c", 12 * MIN, 0.0, 0).unwrap();
    assert_eq!(
        e.iter().map(at).collect::<Vec<_>>(),
        vec![(8, false, Some(1), false)]
    );
    let e = win.push("c", 13 * MIN, 0.0, 0).unwrap();
    assert_eq!(
        e.iter().map(at).collect::<Vec<_>>(),
        vec![(10, true, Some(3), true), (12, false, Some(2), false)]
    );
}

#[test]
fn series_that_start_together_stagger_their_runs_and_steps_stay_within_the_stride() {
    let stride = 8usize;
    let mut win = Windows::new(Settings {
        stride,
        interval_ms: Some(MIN),
        ..Settings::for_model(16, 4)
    });
    let keys: Vec<String> = (0..40).map(|i| format!("host-{i}")).collect();
    let mut runs_at: Vec<Vec<i64>> = vec![Vec::new(); keys.len()];
    for t in 0..80 {
        for (k, key) in keys.iter().enumerate() {
            for e in win.push(key, t * MIN, t as f32, 0).unwrap() {
                assert!(
                    e.step.is_none_or(|s| (1..=stride as u32).contains(&s)),
                    "{e:?}"
                );
                if e.window.is_some() {
                    runs_at[k].push(e.ts / MIN);
                }
            }
        }
    }
    // Every series runs first on its 4th value (min_points), then every
    // `stride` values after a first gap of 1..=stride.
    for r in &runs_at {
        assert_eq!(r[0], 3);
        assert!((1..=stride as i64).contains(&(r[1] - r[0])), "{r:?}");
        assert!(
            r.windows(2).skip(1).all(|w| w[1] - w[0] == stride as i64),
            "{r:?}"
        );
    }
    let second: std::collections::HashSet<i64> = runs_at.iter().map(|r| r[1]).collect();
    assert!(second.len() > stride / 2, "runs are spread: {second:?}");
}
#[test]
fn idle_flush_closes_the_open_bucket_once_and_a_new_point_rearms_it() {
    let mut win = Windows::new(settings(2));
    let timers = IdleTimers {
        flush_after_ms: Some(5_000),
        stale_after_ms: None,
    };
    win.push("a", 0, 1.0, 0).unwrap();
    win.push("a", MIN, 2.0, 1_000).unwrap();
    // Not silent long enough: the flush waits one interval at least.
    assert_eq!(win.sweep(30_000, timers), Swept::default());
    let swept = win.sweep(1_000 + MIN, timers);
    assert_eq!(swept.flushed.len(), 1);
    assert_eq!(swept.flushed[0].0, "a");
    assert_eq!(swept.flushed[0].1[0].ts, MIN);
    // Fires once per silence.
    assert!(win.sweep(10 * MIN, timers).flushed.is_empty());
    // The next point lands in the next bucket as usual, and re-arms it.
    assert!(win.push("a", 2 * MIN, 3.0, 10 * MIN).unwrap().is_empty());
    let again = win.sweep(12 * MIN, timers);
    assert_eq!(again.flushed[0].1[0].ts, 2 * MIN);
    assert_eq!(win.counters().flushed_idle, 2);
}

#[test]
fn stale_fires_once_after_the_longer_of_stale_after_and_three_intervals() {
    let mut win = Windows::new(settings(2));
    let timers = IdleTimers {
        flush_after_ms: None,
        stale_after_ms: Some(10_000),
    };
    win.push("a", 0, 1.0, 0).unwrap();
    win.push("a", MIN, 2.0, 0).unwrap();
    win.push("b", 7 * MIN, 2.0, 2 * MIN).unwrap();
    // 10 s is shorter than three 1-minute intervals.
    assert!(win.sweep(2 * MIN, timers).stale.is_empty());
    let swept = win.sweep(3 * MIN, timers);
    assert_eq!(swept.stale, vec![("a".to_string(), MIN)]);
    assert!(win.sweep(4 * MIN, timers).stale.is_empty());
    // b was last seen at 2 min: stale three intervals later.
    assert_eq!(win.sweep(5 * MIN - 1, timers).stale, vec![]);
    assert_eq!(
        win.sweep(5 * MIN, timers).stale,
        vec![("b".to_string(), 7 * MIN)]
    );
    assert_eq!(win.counters().stale, 2);
}

#[test]
fn no_timers_no_sweep() {
    let mut win = Windows::new(settings(2));
    win.push("a", 0, 1.0, 0).unwrap();
    assert_eq!(
        win.sweep(i64::MAX / 2, IdleTimers::default()),
        Swept::default()
    );
}

/// All emitted grid points of `key` after pushing `pts` in order and flushing.
fn run(s: &Settings, pts: &[(i64, f32)]) -> Vec<Emitted> {
    let mut win = Windows::new(s.clone());
    let mut out = push_all(&mut win, "k", pts);
    out.extend(win.flush("k"));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn reordering_within_the_allowed_lateness_gives_the_same_windows(
        raw in prop::collection::vec((0i64..400, -100i32..100, 0i64..3), 1..120),
        lateness in 0i64..5,
        w in 2usize..6,
    ) {
        // Timestamps in seconds on a 10 s grid; duplicates are allowed.
        let s = Settings { interval_ms: Some(10_000), lateness_ms: lateness * 10_000, max_gap: 8, ..Settings::for_model(w, 2) };
        let mut pts: Vec<(i64, f32, i64)> = raw.iter().map(|(t, v, j)| (t * 1000, *v as f32, *j)).collect();
        pts.sort_by_key(|p| p.0);
        let sorted: Vec<(i64, f32)> = pts.iter().map(|p| (p.0, p.1)).collect();
        // Arrival order: by ts + jitter, jitter <= lateness, so nothing is late.
        let mut arrival = pts.clone();
        arrival.sort_by_key(|p| p.0 + (p.2 * 10_000).min(lateness * 10_000));
        let shuffled: Vec<(i64, f32)> = arrival.iter().map(|p| (p.0, p.1)).collect();
        let a = run(&s, &sorted);
        let b = run(&s, &shuffled);
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(x.ts, y.ts);
            prop_assert_eq!(x.value.to_bits(), y.value.to_bits());
            prop_assert_eq!(x.window.as_ref().map(Window::timestamps), y.window.as_ref().map(Window::timestamps));
            prop_assert_eq!(x.step, y.step);
            let bits = |w: &Option<Window>| w.as_ref().map(|w| w.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(bits(&x.window), bits(&y.window));
        }
    }

    #[test]
    fn output_timestamps_strictly_increase(
        raw in prop::collection::vec((0i64..100_000, -1e3f32..1e3), 1..300),
        lateness in 0i64..20_000,
    ) {
        let s = Settings { interval_ms: Some(1000), lateness_ms: lateness, ..Settings::for_model(4, 2) };
        let out = run(&s, &raw);
        for pair in out.windows(2) {
            prop_assert!(pair[0].ts < pair[1].ts);
        }
        for e in &out {
            if let Some(w) = &e.window {
                let ts = w.timestamps();
                prop_assert_eq!(*ts.last().unwrap(), e.ts);
                let present: Vec<i64> = ts.iter().copied().filter(|t| *t != MISSING_TS).collect();
                prop_assert!(present.windows(2).all(|p| p[0] < p[1]));
            }
        }
    }

    #[test]
    fn memory_stays_under_the_series_cap(
        raw in prop::collection::vec((0u32..5000, 0i64..1_000_000, -1e3f32..1e3), 1..500),
        cap in 1usize..50,
    ) {
        let s = Settings { max_series: cap, ..Settings::for_model(8, 2) };
        let mut win = Windows::new(s);
        for (i, (k, ts, v)) in raw.iter().enumerate() {
            let _ = win.push(&format!("s{k}"), *ts, *v, i as i64);
            prop_assert!(win.series() <= cap);
        }
        // Each series holds at most W values plus open-bucket points.
        prop_assert!(win.approx_bytes() <= cap * (1024 + 8 * 4 + 64 * 16));
    }

    #[test]
    fn no_panic_on_any_input(
        raw in prop::collection::vec((any::<i64>(), any::<f32>()), 1..100),
        interval in prop::option::of(1i64..i64::MAX),
        lateness in any::<i64>(),
        max_gap in 0usize..100,
    ) {
        let s = Settings {
            interval_ms: interval,
            lateness_ms: lateness,
            max_gap,
            fill: Fill::Linear,
            infer_points: 3,
            ..Settings::for_model(4, 1)
        };
        let mut win = Windows::new(s);
        for (i, (ts, v)) in raw.iter().enumerate() {
            let _ = win.push("k", *ts, *v, i as i64);
        }
        let _ = win.flush("k");
    }
}
