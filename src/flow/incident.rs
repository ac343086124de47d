//! Incidents: one outage across series, as the grouping
//! ([`crate::alerting::group`]) builds it and its readers (the
//! Alertmanager notifier, the incidents topic, the page) see it.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What one scored point of a series tells the grouping.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Series id.
    pub series: Arc<str>,
    /// Its labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Grid timestamp (data time, ms).
    pub ts: i64,
    /// Anomalous (any feature).
    pub anomaly: bool,
    /// The strongest feature's score.
    pub score: f64,
    /// Why, in words (the explanation of the strongest feature).
    pub why: String,
    /// The page's id of this anomaly, when the page keeps it.
    pub page_id: Option<u64>,
}

/// One series in an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Data time of its first anomalous point in the incident.
    pub first_ts: i64,
    /// Its highest score in the incident.
    pub score: f64,
}

/// An incident across the series of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// `group@first_ts`.
    pub id: String,
    /// The group's label values (empty for a series on its own).
    pub group: BTreeMap<String, String>,
    /// Data time of the first anomalous point.
    pub opened_ts: i64,
    /// Data time of the latest anomalous point.
    pub last_ts: i64,
    /// The series in it, by id.
    pub members: BTreeMap<Arc<str>, Member>,
    /// The strongest anomalous point so far.
    pub strongest: Observation,
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new incident.
    Open(Incident),
    /// Another series joined the incident.
    Update(Incident),
    /// The incident's group was quiet for `gap`.
    Close(Incident),
}

impl Event {
    /// `open`, `update` or `close`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Open(_) => "open",
            Event::Update(_) => "update",
            Event::Close(_) => "close",
        }
    }

    /// The incident as of this event.
    pub fn incident(&self) -> &Incident {
        match self {
            Event::Open(i) | Event::Update(i) | Event::Close(i) => i,
        }
    }
}

impl Incident {
    /// The incident's own address on the page at `page` (its base
    /// address; empty: none): `{page}/#incident={id}`, the id
    /// percent-encoded.
    pub fn link(&self, page: &str) -> Option<String> {
        let page = page.trim_end_matches('/');
        if page.is_empty() {
            return None;
        }
        let mut id = String::with_capacity(self.id.len() * 3);
        for b in self.id.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                id.push(char::from(b));
            } else {
                id.push_str(&format!("%{b:02X}"));
            }
        }
        Some(format!("{page}/#incident={id}"))
    }
}
