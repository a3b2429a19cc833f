//! The alert policy's rules, message by message.

use super::alert::*;

const MIN: i64 = 60_000_000;
/// Monday 2026-11-23 00:00 UTC.
const T0: i64 = 1_795_392_000_000_000;

fn policy() -> Policy {
    Policy {
        stage: "alerts".into(),
        kind: "metric_anomaly".into(),
        thresholds: [0.5, 0.7, 0.9],
        escalate_after: Some(15 * MIN),
        impact_warning: Some(10.0),
        impact_critical: Some(100.0),
        resolve_after: 15 * MIN,
        cooldown: 60 * MIN,
        flapping: Some((6 * 60 * MIN, 3)),
        maintenance: Vec::new(),
        correlate: Some((vec![vec!["account_id".into()], vec!["az".into()]], 10 * MIN)),
    }
}

fn obs(key: &str, account: &str, az: &str, minute: i64, score: f64) -> Observation {
    Observation {
        key: key.into(),
        resource: key.into(),
        window_start: T0 + (minute - 5) * MIN,
        window_end: T0 + minute * MIN,
        score,
        contributions: vec![
            ("robust_z".into(), score * 0.6),
            ("cusum".into(), score * 0.4),
        ],
        impact: None,
        labels: vec![
            ("resource_id".into(), key.into()),
            ("account_id".into(), account.into()),
            ("az".into(), az.into()),
        ],
    }
}

/// (status, severity, revision, minute of ts) of each message.
fn brief(m: &[AlertMessage]) -> Vec<(Status, Severity, i64, i64)> {
    m.iter()
        .map(|m| (m.status, m.severity, m.revision, (m.ts - T0) / MIN))
        .collect()
}

fn run(p: &mut AlertPolicy, scores: &[(i64, f64)]) -> Vec<AlertMessage> {
    scores
        .iter()
        .flat_map(|&(minute, s)| p.observe(&obs("i-a", "111", "us-east-1a", minute, s)))
        .collect()
}

#[test]
fn an_anomaly_fires_rises_dedups_and_resolves() {
    let mut p = AlertPolicy::new(policy());
    let out = run(
        &mut p,
        &[
            (5, 0.1),
            (10, 0.6),
            (15, 0.65),
            (20, 0.75),
            (25, 0.6),
            (30, 0.2),
            (35, 0.2),
            (40, 0.2),
        ],
    );
    use Severity::*;
    use Status::*;
    assert_eq!(
        brief(&out),
        vec![
            (Firing, Info, 0, 10),
            (Updated, Warning, 1, 20),
            // 15 minutes after the last anomalous window (25).
            (Resolved, Warning, 2, 40),
        ]
    );
    assert!(out.iter().all(|m| m.alert_id == out[0].alert_id));
    assert_eq!(out[0].dedup_key, "metric_anomaly|i-a");
    assert_eq!(out[0].started_at, T0 + 10 * MIN);
    assert_eq!(out[1].peak_score, 0.75);
    // 0.65 and the escalated 0.6 at minute 25 were folded into the open alert.
    assert_eq!(p.suppressed.duplicate, 2);
    assert!(
        out[0]
            .message
            .contains("top detectors: robust_z 0.36, cusum 0.24"),
        "{}",
        out[0].message
    );
    assert_eq!(p.open_alerts(), 0);
}

#[test]
fn a_long_anomaly_escalates_and_reminds_after_the_cooldown() {
    let mut p = AlertPolicy::new(policy());
    let scores: Vec<(i64, f64)> = (1..=15).map(|k| (k * 5, 0.55)).collect();
    let out = run(&mut p, &scores);
    use Severity::*;
    use Status::*;
    // info at 5; 15 minutes on (20) it is raised to warning; a reminder 60 minutes after the
    // last message (80 > 75: none yet).
    assert_eq!(
        brief(&out),
        vec![(Firing, Info, 0, 5), (Updated, Warning, 1, 20)]
    );
    let more = run(&mut p, &[(80, 0.55)]);
    assert_eq!(brief(&more), vec![(Updated, Warning, 2, 80)]);
}

#[test]
fn a_key_anomalous_again_within_the_cooldown_reopens_its_alert_and_flapping_is_suppressed() {
    let mut p = AlertPolicy::new(policy());
    // Three short anomalies 20 minutes apart (each resolves after 15 minutes), then a fourth.
    let mut scores = Vec::new();
    for start in [0, 20, 40, 60] {
        scores.push((start + 5, 0.6));
        scores.push((start + 10, 0.1));
        scores.push((start + 15, 0.1));
        scores.push((start + 20, 0.1));
    }
    let out = run(&mut p, &scores);
    use Severity::*;
    use Status::*;
    assert_eq!(
        brief(&out),
        vec![
            (Firing, Info, 0, 5),
            (Resolved, Info, 1, 20),
            (Firing, Info, 2, 25),
            (Resolved, Info, 3, 40),
            (Firing, Info, 4, 45),
            (Resolved, Info, 5, 60),
            // The fourth firing within 6 hours: flapping, suppressed.
        ]
    );
    assert!(out.iter().all(|m| m.alert_id == out[0].alert_id));
    assert!(out[2].message.contains("anomalous again"));
    assert_eq!(p.suppressed.flapping, 1);
    // After the cooldown a new anomaly is a new alert.
    let mut q = AlertPolicy::new(policy());
    let a = run(&mut q, &[(5, 0.6), (20, 0.1), (100, 0.6)]);
    assert_eq!(brief(&a)[2], (Firing, Info, 0, 100));
    assert_ne!(a[2].alert_id, a[0].alert_id);
}

#[test]
fn maintenance_windows_suppress_only_the_matching_keys_and_times() {
    let mut pol = policy();
    pol.maintenance = vec![
        Maintenance {
            // Mondays 00:00–00:30 UTC, account 111 only.
            when: MaintenanceTime::Weekly {
                days: vec![0],
                from: 0,
                to: 30,
            },
            matches: vec![("account_id".into(), "111".into())],
        },
        Maintenance {
            when: MaintenanceTime::Once {
                start: T0 + 100 * MIN,
                end: T0 + 110 * MIN,
            },
            matches: Vec::new(),
        },
    ];
    let mut p = AlertPolicy::new(pol);
    let mut out = p.observe(&obs("i-a", "111", "us-east-1a", 10, 0.95));
    assert!(out.is_empty());
    out = p.observe(&obs("i-b", "222", "us-east-1b", 10, 0.95));
    assert_eq!(
        brief(&out),
        vec![(Status::Firing, Severity::Critical, 0, 10)]
    );
    assert!(
        p.observe(&obs("i-c", "333", "us-east-1c", 105, 0.95))
            .is_empty()
    );
    assert_eq!(
        p.observe(&obs("i-c", "333", "us-east-1c", 110, 0.95)).len(),
        1
    );
    assert_eq!(p.suppressed.maintenance, 2);
}

#[test]
fn alerts_sharing_an_account_or_zone_within_the_window_share_a_correlation_id() {
    let mut p = AlertPolicy::new(policy());
    let b = p.observe(&obs("i-b", "111", "us-east-1a", 10, 0.8));
    let c = p.observe(&obs("i-c", "222", "us-east-1a", 15, 0.8)); // same zone
    let d = p.observe(&obs("i-d", "333", "us-east-1b", 15, 0.8)); // nothing shared
    let e = p.observe(&obs("i-e", "222", "us-east-1c", 20, 0.8)); // account of i-c
    let f = p.observe(&obs("i-f", "111", "us-east-1a", 40, 0.8)); // the group went quiet at 20
    assert_eq!(c[0].correlation_id, b[0].alert_id);
    assert_eq!(c[0].cause, "metric_anomaly|i-b");
    assert!(c[0].message.contains("correlated with i-b"));
    assert_eq!(d[0].correlation_id, d[0].alert_id);
    assert_eq!(e[0].correlation_id, b[0].alert_id);
    assert_eq!(f[0].correlation_id, f[0].alert_id);
    assert_eq!(f[0].cause, "metric_anomaly|i-f");
}

#[test]
fn a_silent_key_is_resolved_by_the_watermark_and_impact_sets_severity() {
    let mut p = AlertPolicy::new(policy());
    let mut o = obs("acct|EC2", "111", "", 60, 0.55);
    o.impact = Some(150.0);
    let fired = p.observe(&o);
    assert_eq!(fired[0].severity, Severity::Critical);
    assert_eq!(fired[0].impact_usd, Some(150.0));
    assert!(p.advance(T0 + 70 * MIN).is_empty());
    let resolved = p.advance(T0 + 80 * MIN);
    assert_eq!(
        brief(&resolved),
        vec![(Status::Resolved, Severity::Critical, 1, 75)]
    );
    assert!(p.advance(T0 + 90 * MIN).is_empty());
}

#[test]
fn a_restored_policy_continues_exactly_as_an_uninterrupted_one() {
    let scores: Vec<(i64, f64)> = (1..=60)
        .map(|k| (k * 5, if (k / 7) % 2 == 0 { 0.8 } else { 0.1 }))
        .collect();
    let mut whole = AlertPolicy::new(policy());
    let expected = run(&mut whole, &scores);
    let mut first = AlertPolicy::new(policy());
    let mut got = run(&mut first, &scores[..23]);
    let mut second = AlertPolicy::new(policy());
    second.restore(&first.snapshot().unwrap()).unwrap();
    got.extend(run(&mut second, &scores[23..]));
    assert_eq!(got, expected);
    assert!(expected.len() >= 6);
}
