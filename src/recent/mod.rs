//! What the web page shows: the recent scored points of each series and
//! the recent anomalies, with the explanation of each.
//!
//! Bounded: at most `ui.max_series` series (the least recently updated is
//! dropped), `ui.points_per_series` points each, and `ui.anomalies`
//! anomalies (the oldest is dropped). Each anomaly keeps a copy of its
//! series' values up to it (the newest `points_per_series`), so its
//! explanation can be drawn after the series has moved on. The publish
//! stage feeds it, the HTTP server reads it; each new anomaly's id is also
//! broadcast to the page's event streams (`GET /api/events`), which drop
//! what they cannot keep up with and then ask the page to re-read. The
//! incidents across series ([`incidents`]) are kept here too, and each
//! change to one is broadcast the same way.

pub mod incidents;

use std::collections::VecDeque;
use std::sync::Arc;

use lru::LruCache;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::UiConfig;
use crate::flow::forecast::Explanation;
use crate::flow::incident::Event;
use crate::flow::{Channels, Match, ScoredPoint};
use incidents::{Board, IncidentView};

/// The index of the strongest channel in [`Channels::NAMES`].
fn channel_index(c: &Channels) -> u8 {
    let name = c.strongest();
    Channels::NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

/// What the event streams are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// A new anomaly, by id.
    Anomaly(u64),
    /// An incident opened, changed or closed, by id.
    Incident(Arc<str>),
}

/// The store as the publish stage and the HTTP server share it.
pub type SharedRecent = Arc<std::sync::Mutex<Recent>>;

/// One scored point as the page draws it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PointView {
    /// Grid timestamp (epoch ms).
    pub ts: i64,
    /// The value of the highest-scoring feature.
    pub value: f32,
    /// Its forecast mean.
    pub expected: f32,
    /// Its forecast scale.
    pub expected_std: f32,
    /// The point's score.
    pub score: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// Whether it was flagged.
    pub anomaly: bool,
    /// The channel that drove the score (index into [`Channels::NAMES`]).
    #[serde(skip)]
    pub channel: u8,
}

/// One anomaly, with what explains it.
#[derive(Debug, Clone)]
pub struct Anomaly {
    /// Sequence number (unique, increasing).
    pub id: u64,
    /// Series id.
    pub series: Arc<str>,
    /// Feature that drove the score.
    pub feature: Arc<str>,
    /// The point.
    pub point: PointView,
    /// Channel strengths.
    pub channels: Channels,
    /// Whether this point opened its incident.
    pub alert: bool,
    /// Its incident (the opening alert's timestamp).
    pub incident: Option<i64>,
    /// The nearest past pattern in the series' memory.
    pub nearest: Option<Match>,
    /// The forecast's attention.
    pub explanation: Arc<Explanation>,
    /// The series' values up to and including the anomaly (oldest first).
    pub context_ts: Vec<i64>,
    /// Values at `context_ts`.
    pub context_values: Vec<f32>,
}

/// Counts for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Series held.
    pub series: usize,
    /// Points held over all series.
    pub points: usize,
    /// Anomalies held.
    pub anomalies: usize,
    /// Series dropped for `max_series` so far.
    pub series_evicted: u64,
}

/// The bounded store.
#[derive(Debug)]
pub struct Recent {
    cfg: UiConfig,
    series: LruCache<Arc<str>, VecDeque<PointView>>,
    anomalies: VecDeque<Anomaly>,
    next_id: u64,
    held: Held,
    incidents: Board,
    events: broadcast::Sender<Pushed>,
}

/// New anomalies an event stream may fall behind by before it is told to
/// re-read.
const EVENTS_BEHIND: usize = 1024;

impl Recent {
    /// An empty store with `cfg`'s bounds.
    pub fn new(cfg: &UiConfig) -> Self {
        Recent {
            cfg: cfg.clone(),
            series: LruCache::unbounded(),
            anomalies: VecDeque::new(),
            next_id: 1,
            held: Held::default(),
            incidents: Board::default(),
            events: broadcast::channel(EVENTS_BEHIND).0,
        }
    }

    /// New anomalies and incident changes, as they are kept.
    pub fn subscribe(&self) -> broadcast::Receiver<Pushed> {
        self.events.subscribe()
    }

    /// Fold in an incident event (from the grouping).
    pub fn incident_event(&mut self, event: &Event) {
        let id = self.incidents.apply(event);
        let _ = self.events.send(Pushed::Incident(id));
    }

    /// Up to `limit` incidents, open ones first, then the newest.
    pub fn incidents(&self, limit: usize) -> Vec<&IncidentView> {
        self.incidents.list(limit)
    }

    /// The incident `id`, if held.
    pub fn incident(&self, id: &str) -> Option<&IncidentView> {
        self.incidents.get(id)
    }

    /// Record one scored point (its highest-scoring feature); the id of
    /// the anomaly it is kept as, if it is one.
    pub fn record(&mut self, p: &ScoredPoint) -> Option<u64> {
        let f = p.driver()?;
        let view = PointView {
            ts: p.ts,
            value: f.value,
            expected: f.expected,
            expected_std: f.expected_std,
            score: f.scored.score,
            threshold: f.scored.threshold,
            anomaly: p.anomaly(),
            channel: channel_index(&f.scored.channels),
        };
        let cap = self.cfg.points_per_series.max(1);
        if !self.series.contains(&p.series) {
            while self.series.len() >= self.cfg.max_series.max(1) {
                if let Some((_, dropped)) = self.series.pop_lru() {
                    self.held.points -= dropped.len();
                    self.held.series_evicted += 1;
                }
            }
            self.series
                .put(p.series.clone(), VecDeque::with_capacity(cap.min(64)));
        }
        let ring = self.series.get_mut(&p.series)?;
        if ring.len() >= cap {
            ring.pop_front();
            self.held.points -= 1;
        }
        ring.push_back(view);
        self.held.points += 1;
        let mut kept = None;
        if view.anomaly {
            let anomaly = Anomaly {
                id: self.next_id,
                series: p.series.clone(),
                feature: f.feature.clone(),
                point: view,
                channels: f.scored.channels,
                alert: f.scored.alert,
                incident: f.scored.incident,
                nearest: f.scored.nearest,
                explanation: f.explanation.clone(),
                context_ts: ring.iter().map(|v| v.ts).collect(),
                context_values: ring.iter().map(|v| v.value).collect(),
            };
            kept = Some(self.next_id);
            self.next_id += 1;
            if self.anomalies.len() >= self.cfg.anomalies.max(1) {
                self.anomalies.pop_front();
            }
            self.anomalies.push_back(anomaly);
            // No page listening is not an error.
            let _ = self.events.send(Pushed::Anomaly(self.next_id - 1));
        }
        self.held.series = self.series.len();
        self.held.anomalies = self.anomalies.len();
        kept
    }

    /// What is held now.
    pub fn held(&self) -> Held {
        self.held
    }

    /// Up to `limit` anomalies of series whose id contains `filter` (all
    /// if empty), newest point time first (arrival order only breaks ties:
    /// partitions and replays arrive out of time order).
    pub fn anomalies(&self, filter: &str, limit: usize) -> Vec<&Anomaly> {
        let mut list: Vec<&Anomaly> = self
            .anomalies
            .iter()
            .filter(|a| filter.is_empty() || a.series.contains(filter))
            .collect();
        list.sort_by(|a, b| b.point.ts.cmp(&a.point.ts).then(b.id.cmp(&a.id)));
        list.truncate(limit);
        list
    }

    /// The anomaly with sequence number `id`, if still held.
    pub fn anomaly(&self, id: u64) -> Option<&Anomaly> {
        let first = self.anomalies.front()?.id;
        let a = self.anomalies.get(id.checked_sub(first)? as usize)?;
        (a.id == id).then_some(a)
    }

    /// The recent points of `series` (oldest first), if held.
    pub fn points(&self, series: &str) -> Option<Vec<PointView>> {
        self.series
            .peek(series)
            .map(|r| r.iter().copied().collect())
    }

    /// The highest score of `series` over `start..=end` (grid time) and the
    /// channel that drove it, if the store holds points there.
    pub fn peak(&self, series: &str, start: i64, end: i64) -> Option<(&'static str, f64)> {
        let points = self.series.peek(series)?;
        let best = points
            .iter()
            .filter(|p| (start..=end).contains(&p.ts) && p.score.is_finite())
            .max_by(|a, b| a.score.total_cmp(&b.score))?;
        let name = Channels::NAMES.get(usize::from(best.channel))?;
        Some((name, best.score))
    }

    /// Ids of the held series, most recently updated first.
    pub fn series_ids(&self) -> Vec<Arc<str>> {
        self.series.iter().map(|(k, _)| k.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::forecast::Shape;
    use crate::flow::{FeatureScore, Token};
    use crate::score::{Channels, Scored};

    fn point(series: &str, ts: i64, score: f64) -> ScoredPoint {
        let shape = Shape {
            layers: 1,
            heads: 1,
            context: 4,
            patch: 2,
        };
        ScoredPoint {
            series: series.into(),
            ts,
            value: Some(ts as f32),
            labels: Arc::default(),
            features: vec![FeatureScore {
                feature: "value".into(),
                value: ts as f32,
                scored: Scored {
                    score,
                    threshold: 1.0,
                    anomaly: score > 1.0,
                    alert: score > 1.0,
                    incident: (score > 1.0).then_some(ts),
                    raw_score: score,
                    channels: Channels {
                        point: score,
                        ..Channels::default()
                    },
                    nearest: None,
                },
                expected: 0.0,
                expected_std: 1.0,
                explanation: Arc::new(Explanation::from_heads(&[0.5, 0.5], shape, ts, 1, 4)),
            }],
            token: Token {
                partition: 0,
                offset: ts,
                generation: 0,
            },
            source_ts_ms: None,
            model: "m@1".into(),
        }
    }

    fn cfg(max_series: usize, points: usize, anomalies: usize) -> UiConfig {
        UiConfig {
            enabled: true,
            max_series,
            points_per_series: points,
            anomalies,
        }
    }

    #[test]
    fn everything_is_bounded_and_counted() {
        let mut r = Recent::new(&cfg(2, 3, 2));
        for ts in 0..10 {
            r.record(&point("a", ts, if ts % 3 == 0 { 5.0 } else { 0.1 }));
        }
        assert_eq!(
            r.points("a")
                .unwrap()
                .iter()
                .map(|p| p.ts)
                .collect::<Vec<_>>(),
            [7, 8, 9]
        );
        // Anomalies at 0, 3, 6, 9: the newest two, newest first.
        let ids: Vec<i64> = r.anomalies("", 10).iter().map(|a| a.point.ts).collect();
        assert_eq!(ids, [9, 6]);
        r.record(&point("b", 0, 0.1));
        r.record(&point("c", 0, 0.1));
        assert!(r.points("a").is_none(), "the least recently updated goes");
        assert_eq!(
            r.held(),
            Held {
                series: 2,
                points: 2,
                anomalies: 2,
                series_evicted: 1
            }
        );
    }

    #[test]
    fn an_anomaly_keeps_its_context_and_is_found_by_id() {
        let mut r = Recent::new(&cfg(10, 4, 10));
        for ts in 0..6 {
            r.record(&point("web-01/cpu", ts, if ts == 4 { 9.0 } else { 0.2 }));
        }
        r.record(&point("db", 0, 3.0));
        r.record(&point("db", 2, 3.0));
        // Newest point time first, not arrival order.
        let newest = r.anomalies("", 10);
        let order: Vec<(&str, i64)> = newest.iter().map(|a| (&*a.series, a.point.ts)).collect();
        assert_eq!(order, [("web-01/cpu", 4), ("db", 2), ("db", 0)]);
        assert_eq!(r.anomalies("", 2).len(), 2);
        let a = r.anomalies("web", 10)[0];
        assert_eq!(a.context_ts, [1, 2, 3, 4], "the newest 4 points up to it");
        assert_eq!(a.context_values, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(r.anomaly(a.id).unwrap().point.ts, 4);
        assert!(r.anomaly(a.id + 100).is_none());
        assert!(r.anomaly(0).is_none());
    }
}
