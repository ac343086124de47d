//! Alerts and incidents of one series.
//!
//! Pure, 16 bytes per series. `anomaly` is per point; an **alert** is what
//! would page someone: the first anomalous point of a quiet series. It
//! opens an **incident**, whose id is the alert's grid timestamp (with the
//! series id it names the incident, and a replay names it the same).
//! Anomalous points that follow join the incident until the series has
//! been quiet (no anomalous point) for `quiet` scored points; the next
//! anomalous point after that opens a new one. An incident closes on quiet,
//! not on a timer, so a long outage stays one incident and a false alarm
//! just before a real one does not silence it for a fixed hold-off.

/// The alert state of one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incidents {
    /// The open incident's id (its alert's timestamp).
    open: Option<i64>,
    /// Scored points since the open incident's last anomalous point.
    quiet: u32,
}

/// What one point did to the incidents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// This point opened an incident.
    pub alert: bool,
    /// The incident an anomalous point belongs to.
    pub incident: Option<i64>,
}

impl Incidents {
    /// The next scored point, at `ts`: anomalous or not.
    pub fn step(&mut self, anomaly: bool, ts: i64, quiet: u32) -> Step {
        if !anomaly {
            if self.open.is_some() {
                self.quiet = self.quiet.saturating_add(1);
                if self.quiet >= quiet {
                    self.open = None;
                }
            }
            return Step::default();
        }
        self.quiet = 0;
        match self.open {
            Some(id) => Step {
                alert: false,
                incident: Some(id),
            },
            None => {
                self.open = Some(ts);
                Step {
                    alert: true,
                    incident: Some(ts),
                }
            }
        }
    }

    /// The open incident, if any.
    pub fn open(&self) -> Option<i64> {
        self.open
    }
}

/// Alert openings of a score sequence at threshold `t` under the same rule
/// (for the oracle sweep of `eval nab`): `eligible[i]` is false during the
/// series' probation.
pub fn openings(scores: &[f64], eligible: &[bool], t: f64, quiet: u32) -> Vec<bool> {
    let mut inc = Incidents::default();
    scores
        .iter()
        .zip(eligible)
        .enumerate()
        .map(|(i, (&s, &e))| inc.step(e && s > t, i as i64, quiet).alert)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_anomalous_point_alerts_and_followers_join_until_quiet() {
        let mut inc = Incidents::default();
        let seq = [
            false, true, true, false, true, false, false, false, true, true,
        ];
        let steps: Vec<Step> = seq
            .iter()
            .enumerate()
            .map(|(i, &a)| inc.step(a, 100 + i as i64, 3))
            .collect();
        let alerts: Vec<usize> = (0..seq.len()).filter(|&i| steps[i].alert).collect();
        // 1 opens; 2 and 4 join (quiet for 1 only); 5, 6, 7 are quiet for
        // 3 points, which closes it; 8 opens a new one, 9 joins.
        assert_eq!(alerts, vec![1, 8]);
        assert_eq!(steps[4].incident, Some(101));
        assert_eq!(steps[9].incident, Some(108));
        assert_eq!(steps[3].incident, None, "a quiet point belongs to none");
        assert_eq!(inc.open(), Some(108));
    }

    #[test]
    fn openings_follow_the_same_rule() {
        let s = [0.5, 2.0, 2.0, 0.1, 3.0, 0.1, 0.1, 2.5];
        let ok = [true; 8];
        assert_eq!(
            openings(&s, &ok, 1.0, 2),
            vec![false, true, false, false, false, false, false, true]
        );
        // A higher threshold sees only the 3.0 and the 2.5, far enough apart.
        assert_eq!(
            openings(&s, &ok, 2.2, 2),
            vec![false, false, false, false, true, false, false, true]
        );
        let mut early = ok;
        early[1] = false;
        assert!(openings(&s, &early, 1.0, 2)[2], "probation moves the alert");
    }
}
