//! Recommendations: what to change, what it saves (as an interval), its risk, how sure we are,
//! and why — and whether it differs enough from the last one issued to be issued again.
//!
//! In: the outcome of [`super::spot`], [`super::mix`] or [`super::rightsize`] for one subject.
//! Out: a [`Recommendation`] (its JSON form is `schemas/recommendation.json`).

use serde::{Deserialize, Serialize};

use super::mix::Purchase;

/// Hours in the month savings are quoted for.
pub const MONTH_HOURS: f64 = 730.0;

/// What is recommended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SpotVsOnDemand,
    Rightsizing,
    InstanceMix,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SpotVsOnDemand => "spot_vs_on_demand",
            Kind::Rightsizing => "rightsizing",
            Kind::InstanceMix => "instance_mix",
        }
    }
}

/// Instances of one type bought one way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub instance_type: String,
    pub purchase: Purchase,
    pub count: u32,
}

/// A point of the instance-mix Pareto front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    pub cost_usd_hour: f64,
    pub risk: f64,
    pub performance: f64,
    pub mix: String,
    pub chosen: bool,
}

/// Risk in words.
pub fn risk_level(score: f64) -> &'static str {
    if score < 0.05 {
        "low"
    } else if score < 0.15 {
        "medium"
    } else {
        "high"
    }
}

/// One recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub rec_id: String,
    /// 0 when first issued, then 1, 2, … as it is re-issued with material changes.
    pub revision: i64,
    /// Event time, µs.
    pub ts: i64,
    pub kind: Kind,
    /// The workload or resource.
    pub subject: String,
    pub current: Vec<Line>,
    pub recommended: Vec<Line>,
    /// USD per month: expected, and a 90 % interval.
    pub savings: f64,
    pub savings_low: f64,
    pub savings_high: f64,
    /// In [0, 1]: the chance the change goes wrong (see each kind).
    pub risk_score: f64,
    pub confidence: f64,
    pub rationale: String,
    pub pareto: Vec<ParetoPoint>,
}

impl Recommendation {
    pub fn risk(&self) -> &'static str {
        risk_level(self.risk_score)
    }

    /// Whether `self` differs enough from `previous` to be issued again: another
    /// configuration, another risk level, or expected savings moved by more than 10 % (and
    /// more than 5 USD a month).
    pub fn differs_materially(&self, previous: &Recommendation) -> bool {
        let moved = (self.savings - previous.savings).abs();
        self.recommended != previous.recommended
            || self.risk() != previous.risk()
            || (moved > 0.1 * previous.savings.abs() && moved > 5.0)
    }
}

/// The last recommendation issued per subject; decides what is issued next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    last: std::collections::BTreeMap<String, Recommendation>,
}

impl Issued {
    /// `rec` as it should be issued (with its id and revision), or None when it does not
    /// differ materially from the last one for its subject. A subject whose recommendation
    /// is now "keep as is" (`recommended == current`) is not issued, and forgets the last one.
    pub fn issue(&mut self, mut rec: Recommendation) -> Option<Recommendation> {
        let key = format!("{}|{}", rec.kind.as_str(), rec.subject);
        if rec.recommended == rec.current {
            self.last.remove(&key);
            return None;
        }
        match self.last.get(&key) {
            Some(prev) if !rec.differs_materially(prev) => None,
            prev => {
                rec.rec_id = prev.map_or_else(
                    || format!("{:016x}", super::stable_hash(&[&key, &rec.ts.to_string()])),
                    |p| p.rec_id.clone(),
                );
                rec.revision = prev.map_or(0, |p| p.revision + 1);
                self.last.insert(key, rec.clone());
                Some(rec)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(purchase: Purchase, savings: f64, risk: f64, ts: i64) -> Recommendation {
        Recommendation {
            rec_id: String::new(),
            revision: 0,
            ts,
            kind: Kind::SpotVsOnDemand,
            subject: "web".into(),
            current: vec![Line {
                instance_type: "m5.large".into(),
                purchase: Purchase::OnDemand,
                count: 4,
            }],
            recommended: vec![Line {
                instance_type: "m5.large".into(),
                purchase,
                count: 4,
            }],
            savings,
            savings_low: savings * 0.8,
            savings_high: savings * 1.2,
            risk_score: risk,
            confidence: 0.9,
            rationale: String::new(),
            pareto: Vec::new(),
        }
    }

    #[test]
    fn a_recommendation_is_reissued_only_when_it_changes_materially() {
        let mut issued = Issued::default();
        let first = issued.issue(rec(Purchase::Spot, 100.0, 0.02, 1)).unwrap();
        assert_eq!(first.revision, 0);
        // 8 % more savings, same risk level: not material.
        assert!(issued.issue(rec(Purchase::Spot, 108.0, 0.03, 2)).is_none());
        // 15 % more: material; same id, next revision.
        let again = issued.issue(rec(Purchase::Spot, 115.0, 0.03, 3)).unwrap();
        assert_eq!(
            (again.rec_id.as_str(), again.revision),
            (first.rec_id.as_str(), 1)
        );
        // Risk level changes: material.
        assert!(issued.issue(rec(Purchase::Spot, 115.0, 0.10, 4)).is_some());
        // Keep as is: nothing, and the next change starts a new recommendation.
        assert!(issued.issue(rec(Purchase::OnDemand, 0.0, 0.0, 5)).is_none());
        let new = issued.issue(rec(Purchase::Spot, 115.0, 0.10, 6)).unwrap();
        assert_eq!(new.revision, 0);
        assert_ne!(new.rec_id, first.rec_id);
    }
}
