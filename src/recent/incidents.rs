//! The incidents the page lists: the grouping's open, update and close
//! events ([`crate::alerting`]) folded into one view per incident, bounded
//! (the oldest closed incident goes first, then the oldest open one).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::flow::incident::{Event, Incident};

/// Incidents kept for the page.
pub const MAX_INCIDENTS: usize = 500;

/// One series of an incident, as the page lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    /// Series id.
    pub series: String,
    /// Data time of its first anomalous point in the incident.
    pub first_ts: i64,
    /// Its highest score in the incident.
    pub score: f64,
}

/// The strongest anomalous point of an incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrongestView {
    /// Series id.
    pub series: String,
    /// Data time.
    pub ts: i64,
    /// Its score.
    pub score: f64,
    /// Why, in words.
    pub why: String,
    /// Its id among the page's anomalies (`/#anomaly=ID`), when kept.
    pub anomaly: Option<u64>,
}

/// One incident as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentView {
    /// `group@first_ts` (its address: `/#incident=ID`, percent-encoded).
    pub id: String,
    /// `open` or `closed`.
    pub state: &'static str,
    /// The group's label values (empty for a series on its own).
    pub group: BTreeMap<String, String>,
    /// Data time of the first anomalous point.
    pub opened_ts: i64,
    /// Data time of the latest anomalous point.
    pub last_ts: i64,
    /// The series in it, earliest first.
    pub members: Vec<MemberView>,
    /// The strongest anomalous point.
    pub strongest: StrongestView,
}

impl IncidentView {
    fn of(inc: &Incident, open: bool) -> Self {
        let mut members: Vec<MemberView> = inc
            .members
            .iter()
            .map(|(s, m)| MemberView {
                series: s.to_string(),
                first_ts: m.first_ts,
                score: m.score,
            })
            .collect();
        members.sort_by(|a, b| a.first_ts.cmp(&b.first_ts).then(a.series.cmp(&b.series)));
        let s = &inc.strongest;
        IncidentView {
            id: inc.id.clone(),
            state: if open { "open" } else { "closed" },
            group: inc.group.clone(),
            opened_ts: inc.opened_ts,
            last_ts: inc.last_ts,
            members,
            strongest: StrongestView {
                series: s.series.to_string(),
                ts: s.ts,
                score: s.score,
                why: s.why.clone(),
                anomaly: s.page_id,
            },
        }
    }
}

/// The bounded set of incidents.
#[derive(Debug, Default)]
pub struct Board {
    list: VecDeque<IncidentView>,
}

impl Board {
    /// Fold in one event; the incident's id.
    pub fn apply(&mut self, event: &Event) -> Arc<str> {
        let view = IncidentView::of(event.incident(), !matches!(event, Event::Close(_)));
        let id: Arc<str> = view.id.as_str().into();
        match self.list.iter_mut().find(|v| *v.id == *id) {
            Some(v) => *v = view,
            None => {
                if self.list.len() >= MAX_INCIDENTS {
                    let oldest = self
                        .list
                        .iter()
                        .position(|v| v.state == "closed")
                        .unwrap_or(0);
                    self.list.remove(oldest);
                }
                self.list.push_back(view);
            }
        }
        id
    }

    /// Up to `limit` incidents: open ones first, then the most recently
    /// opened.
    pub fn list(&self, limit: usize) -> Vec<&IncidentView> {
        let mut all: Vec<&IncidentView> = self.list.iter().collect();
        all.sort_by(|a, b| {
            (a.state != "open")
                .cmp(&(b.state != "open"))
                .then(b.opened_ts.cmp(&a.opened_ts))
                .then(a.id.cmp(&b.id))
        });
        all.truncate(limit);
        all
    }

    /// The incident `id`, if held.
    pub fn get(&self, id: &str) -> Option<&IncidentView> {
        self.list.iter().find(|v| v.id == id)
    }

    /// Incidents held.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::incident::{Member, Observation};

    fn incident(id: &str, opened: i64, series: &[&str]) -> Incident {
        let strongest = Observation {
            series: series[0].into(),
            labels: Arc::new(BTreeMap::new()),
            ts: opened,
            anomaly: true,
            score: 3.0,
            why: "value 9 where 1 was expected".into(),
            page_id: Some(7),
        };
        Incident {
            id: id.into(),
            group: BTreeMap::from([("host".to_string(), "web-1".to_string())]),
            opened_ts: opened,
            last_ts: opened + 10,
            members: series
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let m = Member {
                        first_ts: opened + i as i64,
                        score: 2.0,
                    };
                    (Arc::<str>::from(*s), m)
                })
                .collect(),
            strongest,
        }
    }

    #[test]
    fn events_fold_into_one_view_and_open_incidents_list_first() {
        let mut b = Board::default();
        b.apply(&Event::Open(incident("a@1", 1, &["cpu"])));
        b.apply(&Event::Open(incident("b@5", 5, &["disk"])));
        b.apply(&Event::Update(incident("a@1", 1, &["cpu", "mem"])));
        assert_eq!(b.len(), 2);
        let a = b.get("a@1").unwrap();
        assert_eq!(a.state, "open");
        let names: Vec<&str> = a.members.iter().map(|m| &*m.series).collect();
        assert_eq!(names, ["cpu", "mem"]);
        assert_eq!(a.strongest.anomaly, Some(7));
        // Newest first while both are open; a closed one goes below.
        let ids: Vec<&str> = b.list(10).iter().map(|v| &*v.id).collect();
        assert_eq!(ids, ["b@5", "a@1"]);
        b.apply(&Event::Close(incident("b@5", 5, &["disk"])));
        let ids: Vec<&str> = b.list(10).iter().map(|v| &*v.id).collect();
        assert_eq!(ids, ["a@1", "b@5"]);
        assert_eq!(b.get("b@5").unwrap().state, "closed");
        assert_eq!(b.list(1).len(), 1);
    }

    #[test]
    fn the_board_is_bounded_and_drops_closed_incidents_first() {
        let mut b = Board::default();
        b.apply(&Event::Open(incident("open@0", 0, &["x"])));
        for i in 1..=MAX_INCIDENTS as i64 {
            let id = format!("c@{i}");
            b.apply(&Event::Close(incident(&id, i, &["y"])));
        }
        assert_eq!(b.len(), MAX_INCIDENTS);
        assert!(b.get("open@0").is_some(), "the open one stays");
        assert!(b.get("c@1").is_none(), "the oldest closed one went");
    }
}
