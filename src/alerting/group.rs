//! Incidents across series: one outage, one incident (pure).
//!
//! Each series already raises its own alerts (`score::incident`: the first
//! anomalous point of a quiet series). Here the anomalous points of series
//! that share the values of the `group_by` labels (for example `host`) join
//! one incident while they keep coming: an anomalous point of a group
//! within `gap` (data time) of the group's last one joins its open incident;
//! one later than that, or in a group with none open, opens a new one. A
//! group's incident closes on the first scored point of any of its series
//! more than `gap` after its last anomalous point. A series that lacks one
//! of the labels is a group of its own, and so is every series when
//! `group_by` is empty.
//!
//! The incident's id is its group and the data time of its first anomalous
//! point (`host=web-1@1700000000000`), so a replay names it the same.

use std::collections::{BTreeMap, HashMap};

pub use crate::flow::incident::{Event, Incident, Member, Observation};

/// The open incidents of every group.
#[derive(Debug, Clone)]
pub struct Groups {
    by: Vec<String>,
    gap_ms: i64,
    open: HashMap<String, Incident>,
}

impl Groups {
    /// Group by the values of the labels `by`, joining anomalies up to
    /// `gap_ms` apart.
    pub fn new(by: Vec<String>, gap_ms: i64) -> Self {
        Groups {
            by,
            gap_ms: gap_ms.max(0),
            open: HashMap::new(),
        }
    }

    /// Incidents open now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Whether an ordinary (not anomalous) point at data time `ts` leaves
    /// every incident as it is: none is open past its gap then. Cheap (no
    /// allocation), so ordinary points skip the grouping.
    pub fn untouched_by_ordinary(&self, ts: i64) -> bool {
        self.open
            .values()
            .all(|i| ts.saturating_sub(i.last_ts) <= self.gap_ms)
    }

    /// The group key and its label values for a series.
    fn key(&self, o: &Observation) -> (String, BTreeMap<String, String>) {
        let values: Option<BTreeMap<String, String>> = self
            .by
            .iter()
            .map(|k| o.labels.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        match values {
            Some(v) if !v.is_empty() => {
                let key = v
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (key, v)
            }
            _ => (format!("series={}", o.series), BTreeMap::new()),
        }
    }

    /// The next scored point of a series; the events it causes, in order.
    pub fn observe(&mut self, o: &Observation) -> Vec<Event> {
        let (key, group) = self.key(o);
        let mut events = Vec::new();
        if let Some(inc) = self.open.get(&key) {
            if o.ts.saturating_sub(inc.last_ts) > self.gap_ms {
                if let Some(closed) = self.open.remove(&key) {
                    events.push(Event::Close(closed));
                }
            }
        }
        if !o.anomaly {
            return events;
        }
        match self.open.get_mut(&key) {
            Some(inc) => {
                inc.last_ts = inc.last_ts.max(o.ts);
                if o.score > inc.strongest.score {
                    inc.strongest = o.clone();
                }
                match inc.members.get_mut(&o.series) {
                    Some(m) => m.score = m.score.max(o.score),
                    None => {
                        inc.members.insert(
                            o.series.clone(),
                            Member {
                                first_ts: o.ts,
                                score: o.score,
                            },
                        );
                        events.push(Event::Update(inc.clone()));
                    }
                }
            }
            None => {
                let inc = Incident {
                    id: format!("{key}@{}", o.ts),
                    group,
                    opened_ts: o.ts,
                    last_ts: o.ts,
                    members: [(
                        o.series.clone(),
                        Member {
                            first_ts: o.ts,
                            score: o.score,
                        },
                    )]
                    .into(),
                    strongest: o.clone(),
                };
                events.push(Event::Open(inc.clone()));
                self.open.insert(key, inc);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn obs(series: &str, host: Option<&str>, ts: i64, score: f64) -> Observation {
        let mut labels = BTreeMap::new();
        if let Some(h) = host {
            labels.insert("host".to_string(), h.to_string());
        }
        labels.insert("dc".to_string(), "a".to_string());
        Observation {
            series: series.into(),
            labels: Arc::new(labels),
            ts,
            anomaly: score > 1.0,
            score,
            why: format!("{series} at {ts}"),
            page_id: None,
        }
    }

    fn kinds(events: &[Event]) -> Vec<(&'static str, String, usize)> {
        events
            .iter()
            .map(|e| {
                (
                    e.kind(),
                    e.incident().id.clone(),
                    e.incident().members.len(),
                )
            })
            .collect()
    }

    #[test]
    fn one_host_failing_is_one_incident_and_it_closes_after_the_gap() {
        let mut g = Groups::new(vec!["host".into()], 10);
        assert!(g.observe(&obs("cpu", Some("h1"), 0, 0.2)).is_empty());
        let e = g.observe(&obs("cpu", Some("h1"), 1, 3.0));
        assert_eq!(kinds(&e), [("open", "host=h1@1".into(), 1)]);
        // The same series again: no event; another series of the host joins.
        assert!(g.observe(&obs("cpu", Some("h1"), 2, 5.0)).is_empty());
        let e = g.observe(&obs("mem", Some("h1"), 3, 2.0));
        assert_eq!(kinds(&e), [("update", "host=h1@1".into(), 2)]);
        // Another host is another incident.
        let e = g.observe(&obs("cpu", Some("h2"), 3, 2.0));
        assert_eq!(kinds(&e), [("open", "host=h2@3".into(), 1)]);
        assert_eq!(g.open(), 2);
        // Quiet points within the gap keep it open (an ordinary point may
        // skip the grouping then); past it, it closes.
        assert!(g.untouched_by_ordinary(13));
        assert!(
            !g.untouched_by_ordinary(14),
            "h1's incident is past its gap"
        );
        assert!(g.observe(&obs("disk", Some("h1"), 13, 0.1)).is_empty());
        let e = g.observe(&obs("disk", Some("h1"), 14, 0.1));
        assert_eq!(kinds(&e), [("close", "host=h1@1".into(), 2)]);
        let closed = e[0].incident();
        assert_eq!(closed.strongest.score, 5.0, "the strongest point is kept");
        assert_eq!(closed.members[&Arc::from("mem")].first_ts, 3);
        assert_eq!(g.open(), 1);
    }

    #[test]
    fn an_anomaly_after_the_gap_closes_and_opens_again() {
        let mut g = Groups::new(vec!["host".into()], 10);
        g.observe(&obs("cpu", Some("h1"), 0, 3.0));
        let e = g.observe(&obs("cpu", Some("h1"), 20, 3.0));
        assert_eq!(
            kinds(&e),
            [
                ("close", "host=h1@0".into(), 1),
                ("open", "host=h1@20".into(), 1)
            ]
        );
    }

    #[test]
    fn a_series_without_the_labels_is_a_group_of_its_own() {
        let mut g = Groups::new(vec!["host".into()], 10);
        let a = g.observe(&obs("x", None, 0, 3.0));
        let b = g.observe(&obs("y", None, 0, 3.0));
        assert_eq!(kinds(&a), [("open", "series=x@0".into(), 1)]);
        assert_eq!(kinds(&b), [("open", "series=y@0".into(), 1)]);
        assert!(a[0].incident().group.is_empty());
        // No group_by: every series on its own, even with labels.
        let mut g = Groups::new(vec![], 10);
        g.observe(&obs("cpu", Some("h1"), 0, 3.0));
        let e = g.observe(&obs("mem", Some("h1"), 0, 3.0));
        assert_eq!(kinds(&e), [("open", "series=mem@0".into(), 1)]);
    }
}
