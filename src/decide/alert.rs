//! The alert policy: from scored rows to alert lifecycle messages, in event time.
//!
//! In: [`Observation`]s — one scored window of one key (its anomaly score, each detector's
//! contribution, the cost impact where known, its labels) — in time order per key, and the
//! stage's watermark ([`AlertPolicy::advance`]).
//! Out: [`AlertMessage`]s: `firing`, `updated` and `resolved`, each carrying the alert's
//! severity, its `dedup_key`, its `correlation_id` and the probable first cause.
//!
//! Rules, all in event time so a replay emits the same messages:
//! - **Severity** is the highest of `info`, `warning`, `critical` whose score threshold the
//!   window reaches, raised one level once the anomaly has lasted `escalate_after`, and to at
//!   least `warning` / `critical` when the impact (USD) reaches `impact_warning` /
//!   `impact_critical`. An open alert's severity never falls.
//! - **Dedup**: one open alert per key. Further anomalous windows fold into it; an `updated`
//!   goes out when its severity rises, or as a reminder once `cooldown` has passed since its
//!   last message. A key anomalous again within `cooldown` of its resolution re-opens the same
//!   alert (same `alert_id`, next revision).
//! - **Resolution**: `resolved` once no anomalous window for `resolve_after` — seen on the
//!   key's next window, or on the watermark for a key that fell silent.
//! - **Suppression**: windows in a maintenance window (once, or weekly) whose labels match are
//!   ignored; a key that fired `max_firings` times within `flapping.window` is flapping, and
//!   its further firings are suppressed until it calms down.
//! - **Correlation**: a new alert joins a group that was active within `correlate.window` and
//!   shares the values of any one of the `correlate.by` column sets (e.g. the account, or the
//!   zone); the group's id is its first alert's id, and that alert is named as the probable
//!   first cause. Otherwise it starts a group.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::stable_hash;

/// Alert severities, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    fn raised(self) -> Severity {
        match self {
            Severity::Info => Severity::Warning,
            _ => Severity::Critical,
        }
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Updated,
    Resolved,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Firing, Status::Updated, Status::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Updated => "updated",
            Status::Resolved => "resolved",
        }
    }
}

/// When maintenance suppresses alerts.
#[derive(Debug, Clone, PartialEq)]
pub enum MaintenanceTime {
    /// [start, end), µs.
    Once { start: i64, end: i64 },
    /// Days of the week (0 = Monday) and [from, to) minutes of the UTC day.
    Weekly { days: Vec<u32>, from: u32, to: u32 },
}

/// A maintenance window: when, and which labels it covers (all must match; none: every key).
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub when: MaintenanceTime,
    pub matches: Vec<(String, String)>,
}

impl Maintenance {
    fn covers(&self, t: i64, labels: &[(String, String)]) -> bool {
        let in_time = match &self.when {
            MaintenanceTime::Once { start, end } => (*start..*end).contains(&t),
            MaintenanceTime::Weekly { days, from, to } => {
                const DAY: i64 = 86_400_000_000;
                let day = ((t.div_euclid(DAY) + 3).rem_euclid(7)) as u32;
                let minute = (t.rem_euclid(DAY) / 60_000_000) as u32;
                days.contains(&day) && (*from..*to).contains(&minute)
            }
        };
        in_time
            && self
                .matches
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// The policy's settings, durations in µs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub stage: String,
    pub kind: String,
    /// Score thresholds of info, warning, critical.
    pub thresholds: [f64; 3],
    pub escalate_after: Option<i64>,
    pub impact_warning: Option<f64>,
    pub impact_critical: Option<f64>,
    pub resolve_after: i64,
    pub cooldown: i64,
    /// (window, max firings).
    pub flapping: Option<(i64, usize)>,
    pub maintenance: Vec<Maintenance>,
    /// Column sets any one of which, shared, correlates two alerts; and the window.
    pub correlate: Option<(Vec<Vec<String>>, i64)>,
}

/// One scored window of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The key's values joined by `|`.
    pub key: String,
    pub resource: String,
    pub window_start: i64,
    pub window_end: i64,
    pub score: f64,
    pub contributions: Vec<(String, f64)>,
    pub impact: Option<f64>,
    /// Key and label columns with their values.
    pub labels: Vec<(String, String)>,
}

/// One message on the alerts topic.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertMessage {
    pub alert_id: String,
    /// 0 for the first message of an alert, then 1, 2, …
    pub revision: i64,
    pub status: Status,
    /// Event time of the message, µs.
    pub ts: i64,
    pub severity: Severity,
    pub kind: String,
    pub resource: String,
    pub dedup_key: String,
    pub score: f64,
    pub peak_score: f64,
    pub contributions: Vec<(String, f64)>,
    pub window_start: i64,
    pub window_end: i64,
    pub started_at: i64,
    pub impact_usd: Option<f64>,
    pub correlation_id: String,
    /// The dedup key of the correlated group's first alert.
    pub cause: String,
    pub labels: Vec<(String, String)>,
    pub message: String,
}

/// How many windows each rule held back (for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Suppressed {
    pub maintenance: u64,
    pub flapping: u64,
    pub duplicate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Open {
    alert_id: String,
    /// The revision of its last message (−1 before the first).
    revision: i64,
    severity: Severity,
    started: i64,
    last_anomalous: i64,
    last_sent: i64,
    peak: f64,
    correlation_id: String,
    cause: String,
    last: LastSeen,
}

/// The key's latest window, for messages sent without a new one (resolution by watermark).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LastSeen {
    resource: String,
    window_start: i64,
    window_end: i64,
    score: f64,
    contributions: Vec<(String, f64)>,
    impact: Option<f64>,
    labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct KeyState {
    open: Option<Open>,
    /// The last resolved alert: id, its last revision, when.
    resolved: Option<(String, i64, i64)>,
    /// When the key fired lately (flapping).
    firings: VecDeque<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    id: String,
    cause: String,
    /// Per `by` set, the values its members had.
    values: Vec<Vec<String>>,
    last_active: i64,
    members: u64,
}

/// The policy and its state; the state is serialisable for checkpoints.
#[derive(Debug, Clone)]
pub struct AlertPolicy {
    pub policy: Policy,
    state: State,
    pub suppressed: Suppressed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    keys: BTreeMap<String, KeyState>,
    groups: Vec<Group>,
}

impl AlertPolicy {
    pub fn new(policy: Policy) -> Self {
        AlertPolicy {
            policy,
            state: State::default(),
            suppressed: Suppressed::default(),
        }
    }

    /// The state as JSON (checkpoints).
    pub fn snapshot(&self) -> serde_json::Result<String> {
        serde_json::to_string(&self.state)
    }

    /// Restores a [`snapshot`](Self::snapshot).
    pub fn restore(&mut self, json: &str) -> serde_json::Result<()> {
        self.state = serde_json::from_str(json)?;
        Ok(())
    }

    /// Keys with an open alert.
    pub fn open_alerts(&self) -> usize {
        self.state
            .keys
            .values()
            .filter(|k| k.open.is_some())
            .count()
    }

    fn level(&self, o: &Observation, started: Option<i64>) -> Option<Severity> {
        let p = &self.policy;
        let by_score = [Severity::Critical, Severity::Warning, Severity::Info]
            .into_iter()
            .find(|s| o.score >= p.thresholds[*s as usize]);
        let mut level = by_score?;
        if let (Some(after), Some(started)) = (p.escalate_after, started)
            && o.window_end - started >= after
        {
            level = level.raised();
        }
        if let Some(impact) = o.impact.map(f64::abs) {
            if p.impact_critical.is_some_and(|c| impact >= c) {
                level = Severity::Critical;
            } else if p.impact_warning.is_some_and(|w| impact >= w) {
                level = level.max(Severity::Warning);
            }
        }
        Some(level)
    }

    /// Applies one window; returns the messages it causes.
    pub fn observe(&mut self, o: &Observation) -> Vec<AlertMessage> {
        let mut out = Vec::new();
        let t = o.window_end;
        let resolve_after = self.policy.resolve_after;
        // A key quiet for `resolve_after` is resolved before this window counts.
        if let Some(ks) = self.state.keys.get_mut(&o.key)
            && ks
                .open
                .as_ref()
                .is_some_and(|a| t - a.last_anomalous >= resolve_after)
        {
            out.extend(resolve(&self.policy, &o.key, ks));
        }
        if self
            .policy
            .maintenance
            .iter()
            .any(|m| m.covers(t, &o.labels))
        {
            self.suppressed.maintenance += 1;
            return out;
        }
        let started = self
            .state
            .keys
            .get(&o.key)
            .and_then(|k| k.open.as_ref())
            .map(|a| a.started);
        let level = self.level(o, started);
        let last = LastSeen {
            resource: o.resource.clone(),
            window_start: o.window_start,
            window_end: o.window_end,
            score: o.score,
            contributions: o.contributions.clone(),
            impact: o.impact,
            labels: o.labels.clone(),
        };
        let cooldown = self.policy.cooldown;
        let ks = self.state.keys.entry(o.key.clone()).or_default();
        match (&mut ks.open, level) {
            (Some(open), level) => {
                open.last = last;
                let Some(level) = level else { return out };
                open.last_anomalous = t;
                open.peak = open.peak.max(o.score);
                if level > open.severity {
                    open.severity = level;
                    out.push(message(&self.policy, &o.key, open, Status::Updated, t));
                } else if t - open.last_sent >= cooldown {
                    out.push(message(&self.policy, &o.key, open, Status::Updated, t));
                } else {
                    self.suppressed.duplicate += 1;
                }
            }
            (None, Some(level)) => {
                if let Some((window, max)) = self.policy.flapping {
                    while ks.firings.front().is_some_and(|&f| f <= t - window) {
                        ks.firings.pop_front();
                    }
                    if ks.firings.len() >= max {
                        self.suppressed.flapping += 1;
                        return out;
                    }
                    ks.firings.push_back(t);
                }
                let (alert_id, revision) = match ks.resolved.take() {
                    Some((id, rev, at)) if t - at < cooldown => (id, rev),
                    _ => (
                        format!(
                            "{:016x}",
                            stable_hash(&[&self.policy.stage, &o.key, &t.to_string()])
                        ),
                        -1,
                    ),
                };
                let (correlation_id, cause) = correlate(
                    &self.policy,
                    &mut self.state.groups,
                    &alert_id,
                    &o.key,
                    &o.labels,
                    t,
                );
                let open = Open {
                    alert_id,
                    revision,
                    severity: level,
                    started: t,
                    last_anomalous: t,
                    last_sent: t,
                    peak: o.score,
                    correlation_id,
                    cause,
                    last,
                };
                out.push(message(&self.policy, &o.key, &open, Status::Firing, t));
                ks.open = Some(open);
            }
            (None, None) => {}
        }
        if let Some(a) = ks.open.as_mut()
            && let Some(m) = out.last()
            && m.alert_id == a.alert_id
        {
            a.revision = m.revision;
            a.last_sent = m.ts;
        }
        out
    }

    /// Resolves alerts of keys silent for `resolve_after` before `watermark`, and forgets state
    /// no rule needs any more.
    pub fn advance(&mut self, watermark: i64) -> Vec<AlertMessage> {
        let mut out = Vec::new();
        let p = &self.policy;
        let horizon = [
            p.cooldown,
            p.flapping.map_or(0, |f| f.0),
            p.correlate.as_ref().map_or(0, |c| c.1),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        for (key, ks) in self.state.keys.iter_mut() {
            if ks
                .open
                .as_ref()
                .is_some_and(|a| watermark - a.last_anomalous >= p.resolve_after)
            {
                out.extend(resolve(p, key, ks));
            }
        }
        self.state.keys.retain(|_, ks| {
            ks.open.is_some()
                || ks
                    .resolved
                    .as_ref()
                    .is_some_and(|r| watermark - r.2 < horizon)
                || ks.firings.back().is_some_and(|&f| watermark - f < horizon)
        });
        let window = p.correlate.as_ref().map_or(0, |c| c.1);
        self.state
            .groups
            .retain(|g| watermark - g.last_active < window);
        out
    }
}

fn resolve(p: &Policy, key: &str, ks: &mut KeyState) -> Option<AlertMessage> {
    let open = ks.open.take()?;
    let at = open.last_anomalous + p.resolve_after;
    let msg = message(p, key, &open, Status::Resolved, at);
    ks.resolved = Some((open.alert_id.clone(), msg.revision, at));
    Some(msg)
}

/// The group a new alert joins (or starts): its correlation id and its first cause.
fn correlate(
    p: &Policy,
    groups: &mut Vec<Group>,
    alert_id: &str,
    key: &str,
    labels: &[(String, String)],
    t: i64,
) -> (String, String) {
    let Some((by, window)) = &p.correlate else {
        return (alert_id.to_string(), key.to_string());
    };
    let values: Vec<String> = by
        .iter()
        .map(|set| {
            set.iter()
                .map(|c| {
                    labels
                        .iter()
                        .find(|(k, _)| k == c)
                        .map_or("", |(_, v)| v.as_str())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    let joined = groups.iter_mut().find(|g| {
        t - g.last_active < *window
            && values
                .iter()
                .enumerate()
                .any(|(i, v)| !v.is_empty() && g.values[i].contains(v))
    });
    match joined {
        Some(g) => {
            for (i, v) in values.into_iter().enumerate() {
                if !g.values[i].contains(&v) {
                    g.values[i].push(v);
                }
            }
            g.last_active = t;
            g.members += 1;
            (g.id.clone(), g.cause.clone())
        }
        None => {
            groups.push(Group {
                id: alert_id.to_string(),
                cause: key.to_string(),
                values: values.into_iter().map(|v| vec![v]).collect(),
                last_active: t,
                members: 1,
            });
            (alert_id.to_string(), key.to_string())
        }
    }
}

fn message(p: &Policy, key: &str, a: &Open, status: Status, ts: i64) -> AlertMessage {
    let revision = a.revision + 1;
    let l = &a.last;
    let mut top = l.contributions.clone();
    top.sort_by(|x, y| y.1.total_cmp(&x.1));
    let top: Vec<String> = top
        .iter()
        .take(3)
        .filter(|(_, v)| *v > 0.0)
        .map(|(n, v)| format!("{n} {v:.2}"))
        .collect();
    let minutes = (ts - a.started) / 60_000_000;
    let what = match status {
        Status::Firing if revision > 0 => "anomalous again",
        Status::Firing => "anomalous",
        Status::Updated => "still anomalous",
        Status::Resolved => "back to normal",
    };
    let mut text = format!(
        "{} {}: {what} ({}), score {:.2}, peak {:.2}, for {minutes} min",
        p.kind,
        key.replace('|', " "),
        a.severity.as_str(),
        l.score,
        a.peak
    );
    if !top.is_empty() && status != Status::Resolved {
        text.push_str(&format!("; top detectors: {}", top.join(", ")));
    }
    if let Some(i) = l.impact {
        text.push_str(&format!("; cost impact {i:.2} USD"));
    }
    if a.cause != key {
        text.push_str(&format!(
            "; correlated with {}, the probable first cause",
            a.cause.replace('|', " ")
        ));
    }
    AlertMessage {
        alert_id: a.alert_id.clone(),
        revision,
        status,
        ts,
        severity: a.severity,
        kind: p.kind.clone(),
        resource: l.resource.clone(),
        dedup_key: format!("{}|{key}", p.kind),
        score: l.score,
        peak_score: a.peak,
        contributions: l.contributions.clone(),
        window_start: l.window_start,
        window_end: l.window_end,
        started_at: a.started,
        impact_usd: l.impact,
        correlation_id: a.correlation_id.clone(),
        cause: format!("{}|{}", p.kind, a.cause),
        labels: l.labels.clone(),
        message: text,
    }
}
