use super::*;

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Deterministic noise in [-1, 1] (splitmix64 of `i`).
fn noise(i: u64) -> f64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn spec(yaml: &str) -> DetectorSpec {
    serde_norway::from_str(yaml).unwrap()
}

#[test]
fn robust_z_scores_against_the_median_and_mad_of_earlier_values_only() {
    let mut d = robust_z::RobustZ::new(DAY, 3);
    assert_eq!(d.observe(0, 10.0), None);
    assert_eq!(d.observe_signed(MIN, 12.0), None);
    assert_eq!(d.observe_signed(2 * MIN, 11.0), None);
    // Baseline 10, 11, 12: median 11, MAD 1 → σ 1.4826.
    let z = d.observe_signed(3 * MIN, 17.0).unwrap();
    assert!((z - 6.0 / trailing::MAD_TO_SIGMA).abs() < 1e-12, "{z}");
    // 17 has now joined: baseline 10, 11, 12, 17 → median 11.5, |dev| 1.5, 0.5, 0.5, 5.5 → MAD 1.
    let z = d.observe_signed(4 * MIN, 11.5).unwrap();
    assert_eq!(z, 0.0);
}

#[test]
fn robust_z_forgets_values_older_than_its_baseline() {
    let mut d = robust_z::RobustZ::new(10 * MIN, 2);
    for i in 0..10 {
        d.observe(i * MIN, 100.0 + noise(i as u64));
    }
    for i in 10..30 {
        d.observe(i * MIN, noise(i as u64));
    }
    // After more than the baseline span at the new level, the new level is normal.
    assert!(d.observe(30 * MIN, 0.5).unwrap() < 3.0);
}

#[test]
fn a_constant_baseline_makes_any_change_maximal_and_no_change_nothing() {
    let mut e = Ensemble::plain(&[spec("kind: robust_z\nmin_points: 3")]).unwrap();
    for i in 0..5 {
        assert_eq!(e.observe(i * MIN, 7.0, None).score, 0.0);
    }
    // The detector's term is (all but) 1, the most one detector can say.
    let most = 1.0 - (-1.0f64).exp();
    assert!((e.observe(5 * MIN, 7.001, None).score - most).abs() < 1e-9);
}

#[test]
fn seasonal_sees_a_missing_daily_peak_that_the_trailing_baseline_calls_normal() {
    let daily = spec("kind: seasonal\nperiod: 1d\nseasons: 2\nmin_points: 12");
    // The detectors' own scores (x² / (x² + 4²)), before any likelihood or ensemble.
    let mut seasonal = daily.build().unwrap();
    let mut robust = spec("kind: robust_z").build().unwrap();
    let step = 5 * MIN;
    let mut worst_seasonal_before = 0.0f64;
    let mut at_missing_peak = (0.0f64, 0.0f64);
    for i in 0..(4 * DAY / step) {
        let t = i * step;
        let hour = (t % DAY) as f64 / HOUR as f64;
        let peak = (10.0..12.0).contains(&hour);
        let missing = t >= 3 * DAY && peak;
        let v = 20.0 + if peak && !missing { 30.0 } else { 0.0 } + noise(i as u64);
        let s = seasonal.observe(t, v, None).unwrap_or(0.0);
        let r = robust.observe(t, v, None).unwrap_or(0.0);
        if (2 * DAY..3 * DAY).contains(&t) {
            worst_seasonal_before = worst_seasonal_before.max(s);
        }
        if missing && hour >= 10.5 && at_missing_peak == (0.0, 0.0) {
            at_missing_peak = (s, r);
        }
    }
    assert!(
        at_missing_peak.0 > 0.9,
        "seasonal at the missing peak: {at_missing_peak:?}"
    );
    assert!(
        at_missing_peak.1 < 0.5,
        "robust z at the missing peak: {at_missing_peak:?}"
    );
    assert!(
        worst_seasonal_before < 0.5,
        "seasonal before it: {worst_seasonal_before}"
    );
}

#[test]
fn cusum_accumulates_a_small_level_shift_that_no_single_point_reveals() {
    let mut cusum = cusum::Cusum::new(DAY, 12, 0.5, 5.0);
    let mut z = robust_z::RobustZ::new(DAY, 12);
    for i in 0..288 {
        let v = noise(i);
        cusum.observe(i as i64 * 5 * MIN, v);
        z.observe(i as i64 * 5 * MIN, v);
    }
    // Uniform noise on [-1, 1] has MAD 0.5, so σ ≈ 0.74; shift the level by 1.5 σ.
    let mut alarm_after = None;
    for i in 288..340 {
        let t = i as i64 * 5 * MIN;
        let v = 1.1 + noise(i);
        assert!(
            z.observe(t, v).unwrap() < Z_ALARM,
            "no single point is a 4σ outlier"
        );
        if cusum.observe(t, v).unwrap() >= cusum.h() && alarm_after.is_none() {
            alarm_after = Some(i - 288);
        }
    }
    let after = alarm_after.expect("CUSUM raises the alarm");
    assert!(after <= 12, "alarm after {after} points");
}

#[test]
fn contributions_are_weighted_shares_that_sum_to_the_score() {
    let specs: Vec<DetectorSpec> = serde_norway::from_str(
        "- {kind: robust_z, weight: 0.75, min_points: 3}\n- {kind: model, weight: 0.25}",
    )
    .unwrap();
    let mut e = Ensemble::plain(&specs).unwrap();
    assert_eq!(e.names(), ["robust_z", "model"]);
    for i in 0..3 {
        e.observe(i * MIN, [1.0, 2.0, 3.0][i as usize], None);
    }
    // Median 2, MAD 1 → σ 1.4826; 2 + 4σ scores exactly ½ for robust_z; the model says 0.2.
    let v = e.observe(3 * MIN, 2.0 + 4.0 * trailing::MAD_TO_SIGMA, Some(0.2));
    // Evidence 0.75 × ½ + 0.25 × 0.2; the score is 1 − e^(−evidence), shared in proportion.
    let evidence: f64 = 0.75 * 0.5 + 0.25 * 0.2;
    let score = 1.0 - (-evidence).exp();
    assert!((v.score - score).abs() < 1e-12);
    assert!((v.contributions[0] - 0.75 * 0.5 * score / evidence).abs() < 1e-12);
    assert!((v.contributions[1] - 0.25 * 0.2 * score / evidence).abs() < 1e-12);
    assert!((v.score - v.contributions.iter().sum::<f64>()).abs() < 1e-15);
}

#[test]
fn a_restored_ensemble_scores_exactly_as_the_one_never_stopped() {
    let mut live = Ensemble::new(&DetectorSpec::default_ensemble()).unwrap();
    let step = 10 * MIN;
    let series: Vec<(i64, f64)> = (0..3_000)
        .map(|i| {
            (
                i * step,
                50.0 + 10.0 * ((i % 144) as f64 / 23.0).sin() + noise(i as u64),
            )
        })
        .collect();
    let mut restored = None::<Ensemble>;
    for (n, &(t, v)) in series.iter().enumerate() {
        let a = live.observe(t, v, None);
        if let Some(r) = restored.as_mut() {
            assert_eq!(r.observe(t, v, None), a, "row {n}");
        }
        if n == 2_100 {
            restored = Some(serde_json::from_str(&serde_json::to_string(&live).unwrap()).unwrap());
        }
    }
}

#[test]
fn bad_specs_are_refused_with_the_field_named() {
    let err = |yaml: &str| {
        serde_norway::from_str::<DetectorSpec>(yaml)
            .map_err(|e| e.to_string())
            .and_then(|s| s.build().map(|_| ()))
            .unwrap_err()
    };
    assert!(err("kind: seasonal\nperiod: 1h\nwidth: 2h").contains("seasonal.width"));
    assert!(err("kind: robust_z\nbaseline: soon").contains("robust_z.baseline"));
    assert!(err("kind: cusum\nh: 0").contains("cusum.h"));
    assert!(err("kind: robust_z\nweight: -1").contains("weight"));
    assert!(err("kind: robust_z\nbasline: 1h").contains("unknown field `basline`"));
    assert!(err("kind: prophet").contains("unknown variant `prophet`"));
    let all_zero = [spec("kind: model\nweight: 0")];
    assert!(
        Ensemble::new(&all_zero)
            .unwrap_err()
            .contains("at least one weight")
    );
}

#[test]
fn squash_is_half_at_the_alarm_and_safe_on_any_input() {
    assert_eq!(squash(0.0, 4.0), 0.0);
    assert_eq!(squash(4.0, 4.0), 0.5);
    assert_eq!(squash(-4.0, 4.0), 0.5);
    assert_eq!(squash(f64::NAN, 4.0), 0.0);
    assert_eq!(squash(f64::INFINITY, 4.0), 1.0);
    assert!(squash(MAX_DEVIATION, 4.0) <= 1.0);
}
