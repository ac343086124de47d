//! Alerts beside labelled anomaly windows (`summarize --labels`): which
//! windows the service's alerts caught, which it missed, and which alerts
//! fell outside every window.
//!
//! Pure but for [`read_windows`]. The labels are NAB's
//! `combined_windows.json` (`"category/file.csv": [[start, end], ...]`,
//! wall-clock times read as UTC, as `replay` reads the files); a series is
//! matched to the file whose stem is its id, which is the id `replay` gives
//! a file by default.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use super::summarize::ScoreRecord;

/// Labelled windows (epoch ms, inclusive) by series id.
pub type Windows = BTreeMap<String, Vec<(i64, i64)>>;

/// Read NAB's `combined_windows.json`, keyed by file stem.
pub fn read_windows(path: &Path) -> anyhow::Result<Windows> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let raw: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not NAB's windows JSON: {e}", path.display()))?;
    let mut out = Windows::new();
    for (key, spans) in raw {
        let stem = Path::new(&key)
            .file_stem()
            .map_or_else(|| key.clone(), |s| s.to_string_lossy().into_owned());
        let mut windows = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            windows.push((parse(&a, &key)?, parse(&b, &key)?));
        }
        out.insert(stem, windows);
    }
    Ok(out)
}

fn parse(s: &str, key: &str) -> anyhow::Result<i64> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc().timestamp_millis())
        .map_err(|e| anyhow::anyhow!("{key}: window bound {s:?}: {e}"))
}

/// What the alerts of the labelled series did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Windows with an alert inside.
    pub caught: usize,
    /// Windows without one.
    pub missed: usize,
    /// Alerts outside every window.
    pub false_alerts: usize,
}

/// The alerts of every labelled series beside its windows, in words, and
/// the totals. Series without labels are left out.
pub fn against(records: &[ScoreRecord], windows: &Windows) -> (String, Tally) {
    let mut alerts: BTreeMap<&str, Vec<&ScoreRecord>> = BTreeMap::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *seen.entry(r.series.as_str()).or_default() += 1;
        if r.alert {
            alerts.entry(r.series.as_str()).or_default().push(r);
        }
    }
    let mut out = String::new();
    let mut tally = Tally::default();
    for (series, n) in &seen {
        let Some(spans) = windows.get(*series) else {
            continue;
        };
        let mut mine = alerts.remove(series).unwrap_or_default();
        mine.sort_by_key(|r| r.ts);
        let _ = writeln!(
            out,
            "{series}: {n} points scored, {} labelled windows, {} alerts",
            spans.len(),
            mine.len()
        );
        for &(a, b) in spans {
            match mine.iter().find(|r| (a..=b).contains(&r.ts)) {
                Some(r) => {
                    tally.caught += 1;
                    let into = 100.0 * (r.ts - a) as f64 / (b - a).max(1) as f64;
                    let _ = writeln!(
                        out,
                        "  caught  window {} .. {}: alert at {} ({into:.0}% into the window, score {:.2})",
                        time(a),
                        time(b),
                        time(r.ts),
                        r.score
                    );
                }
                None => {
                    tally.missed += 1;
                    let _ = writeln!(out, "  missed  window {} .. {}", time(a), time(b));
                }
            }
        }
        for r in mine
            .iter()
            .filter(|r| !spans.iter().any(|&(a, b)| (a..=b).contains(&r.ts)))
        {
            tally.false_alerts += 1;
            let _ = writeln!(
                out,
                "  false   alert at {} (score {:.2}, outside every window)",
                time(r.ts),
                r.score
            );
        }
    }
    let _ = writeln!(
        out,
        "labelled windows: {} caught, {} missed; {} false alerts",
        tally.caught, tally.missed, tally.false_alerts
    );
    (out, tally)
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(series: &str, ts: i64, alert: bool) -> ScoreRecord {
        ScoreRecord {
            series: series.into(),
            ts,
            value: Some(1.0),
            score: if alert { 2.0 } else { 0.1 },
            anomaly: alert,
            alert,
            raw_score: 0.0,
        }
    }

    #[test]
    fn windows_are_caught_missed_and_alerts_outside_are_false() {
        let windows: Windows = [
            ("a".to_string(), vec![(100, 200), (500, 600)]),
            ("b".to_string(), vec![]),
        ]
        .into();
        let records = vec![
            rec("a", 50, false),
            rec("a", 150, true),
            rec("a", 180, true),
            rec("a", 300, true),
            rec("a", 550, false),
            rec("b", 10, true),
            rec("unlabelled", 10, true),
        ];
        let (text, tally) = against(&records, &windows);
        assert_eq!(
            tally,
            Tally {
                caught: 1,
                missed: 1,
                false_alerts: 2
            }
        );
        assert!(text.contains("caught  window"), "{text}");
        assert!(text.contains("missed  window"), "{text}");
        assert!(!text.contains("unlabelled"), "{text}");
        assert!(
            text.contains("1 caught, 1 missed; 2 false alerts"),
            "{text}"
        );
    }

    #[test]
    fn nab_windows_are_read_by_file_stem() {
        let dir = std::env::temp_dir().join(format!("aw-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.json");
        std::fs::write(
            &path,
            r#"{"realTraffic/speed_7578.csv": [["2011-09-08 12:00:00.000000", "2011-09-09 05:10:00.000000"]], "x/none.csv": []}"#,
        )
        .unwrap();
        let w = read_windows(&path).unwrap();
        assert_eq!(
            w["speed_7578"],
            vec![(1_315_483_200_000, 1_315_545_000_000)]
        );
        assert!(w["none"].is_empty());
        std::fs::write(&path, "[]").unwrap();
        assert!(read_windows(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
