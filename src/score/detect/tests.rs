use super::robust_z::Baseline;
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
    let mut d = robust_z::RobustZ::new(Baseline::span(DAY, 3));
    assert_eq!(d.observe(0, 10.0), None);
    assert_eq!(d.observe_signed(MIN, 12.0), None);
    assert_eq!(d.observe_signed(2 * MIN, 11.0), None);
    // Baseline 10, 11, 12: median 11, MAD 1 → 1.4826 (above their σ, 0.82).
    let z = d.observe_signed(3 * MIN, 17.0).unwrap();
    assert!((z - 6.0 / trailing::MAD_TO_SIGMA).abs() < 1e-12, "{z}");
    // 17 has now joined: baseline 10, 11, 12, 17 → median 11.5.
    let z = d.observe_signed(4 * MIN, 11.5).unwrap();
    assert_eq!(z, 0.0);
}

#[test]
fn robust_z_forgets_values_older_than_its_baseline() {
    let mut d = robust_z::RobustZ::new(Baseline::span(10 * MIN, 2));
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
    // The deviation is MAX_DEVIATION, the most one detector can say: a score of all but 1.
    let most = squash(MAX_DEVIATION, Z_ALARM);
    assert_eq!(e.observe(5 * MIN, 7.001, None).score, most);
    assert!(most > 0.999_999);
}

#[test]
fn seasonal_sees_a_missing_daily_peak_that_the_trailing_baseline_calls_normal() {
    let daily = spec("kind: seasonal\nperiod: 1d\nseasons: 2\nmin_points: 12");
    // The detectors' own deviations, squashed (x² / (x² + 4²)), before any calibration.
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
        let s = squash(seasonal.deviation(t, v, None).unwrap_or(0.0), Z_ALARM);
        let r = squash(robust.deviation(t, v, None).unwrap_or(0.0), Z_ALARM);
        if (2 * DAY..3 * DAY).contains(&t) {
            worst_seasonal_before = worst_seasonal_before.max(s);
        }
        if missing && hour >= 10.5 && at_missing_peak == (0.0, 0.0) {
            at_missing_peak = (s, r);
        }
    }
    // Twice the alarm level (8σ: x² / (x² + 4²) = 0.8) and more.
    assert!(
        at_missing_peak.0 > 0.8,
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
    let mut z = robust_z::RobustZ::new(Baseline::span(DAY, 12));
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
fn the_largest_weighted_deviation_scores_and_contributions_sum_to_the_score() {
    let specs: Vec<DetectorSpec> = serde_norway::from_str(
        "- {kind: robust_z, weight: 0.75, min_points: 3}\n\
         - {kind: model, weight: 0.25, min_points: 3}",
    )
    .unwrap();
    let mut e = Ensemble::plain(&specs).unwrap();
    assert_eq!(e.names(), ["robust_z", "model"]);
    for i in 0..3 {
        let k = i as usize;
        e.observe(i * MIN, [1.0, 2.0, 3.0][k], Some([0.1, 0.2, 0.3][k]));
    }
    // Median 2, MAD 1 → 1.4826: 2 + 4 × 1.4826 is 4σ, weighted 3σ. The model's earlier scores
    // have median 0.2 and scale 0.14826: 0.2 + 2 × 0.14826 is 2σ, weighted 0.5σ.
    let model = 0.2 + 2.0 * 0.1 * trailing::MAD_TO_SIGMA;
    let v = e.observe(3 * MIN, 2.0 + 4.0 * trailing::MAD_TO_SIGMA, Some(model));
    let score = squash(3.0, Z_ALARM); // 9 / 25
    assert!((v.score - score).abs() < 1e-12, "{v:?}");
    let total = 3.0f64 * 3.0 + 0.5 * 0.5;
    assert!((v.contributions[0] - score * 9.0 / total).abs() < 1e-12);
    assert!((v.contributions[1] - score * 0.25 / total).abs() < 1e-12);
    assert!((v.score - v.contributions.iter().sum::<f64>()).abs() < 1e-15);
}

#[test]
fn a_calm_key_alarms_once_on_a_spike_and_a_spiky_key_does_not() {
    // Two keys of the default ensemble, 5-minute values for four days: one calm, one
    // with a burst of 6 every 10 values. At value 1,000 both see the same spike of 10.
    let step = 5 * MIN;
    let mut calm = Ensemble::new(&DetectorSpec::default_ensemble()).unwrap();
    let mut spiky = Ensemble::new(&DetectorSpec::default_ensemble()).unwrap();
    let (mut calm_at, mut spiky_at) = (Vec::new(), Vec::new());
    for i in 0..1_200u64 {
        let t = i as i64 * step;
        let spike = if i == 1_000 { 10.0 } else { 0.0 };
        let burst = if i % 10 == 7 { 6.0 } else { 0.0 };
        let c = calm.observe(t, noise(i) + spike, None).score;
        let s = spiky.observe(t, noise(i) + burst + spike, None).score;
        if i >= 300 {
            calm_at.push(c);
            spiky_at.push(s);
        }
    }
    let alarms = |scores: &[f64]| scores.iter().filter(|&&s| s >= 0.5).count();
    assert_eq!(
        alarms(&calm_at),
        1,
        "the calm key alarms at the spike alone"
    );
    assert!(calm_at[700] >= 0.5, "{}", calm_at[700]);
    // The alarm silences the calm key for the next 100 values, spike or not.
    assert!(calm_at[701..=800].iter().all(|&s| s == 0.0));
    // The spiky key's usual bursts, and the spike, are what it does.
    assert_eq!(
        alarms(&spiky_at),
        0,
        "{:?}",
        spiky_at.iter().copied().fold(0.0, f64::max)
    );
}

#[test]
fn a_weekly_pattern_is_learnt_in_a_week_and_then_only_a_real_dip_alarms() {
    // A dev box: busy (80) on weekdays 9–18, idle (5) otherwise; hourly values for four
    // weeks, day 0 a Monday. In week 4, on Wednesday 10:00–14:00, it hangs (idle).
    let specs = [
        spec("{kind: robust_z}"),
        spec("{kind: seasonal, period: 1d, seasons: 3}"),
        spec("{kind: seasonal, period: 7d, seasons: 3}"),
    ];
    let mut e = Ensemble::new(&specs).unwrap();
    let (mut learning, mut alarms) = (Vec::new(), Vec::new());
    for i in 0..28 * 24i64 {
        let (day, hour) = (i / 24, i % 24);
        let busy = day % 7 < 5 && (9..18).contains(&hour);
        let hung = day == 23 && (10..14).contains(&hour);
        let v = if busy && !hung { 80.0 } else { 5.0 } + noise(i as u64);
        let score = e.observe(i * HOUR, v, None).score;
        if i < 7 * 24 {
            learning.push(score);
        } else if score >= 0.5 {
            alarms.push((day, hour));
        }
    }
    // The first week (every Monday and Saturday is new to it) scores nothing.
    assert!(learning.iter().all(|&s| s == 0.0), "{learning:?}");
    // Then weekday mornings after weekends do not alarm; the hang does, once.
    assert_eq!(alarms, [(23, 10)]);
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
            .and_then(|s| s.build().map(|_| ()).map_err(|e| e.to_string()))
            .unwrap_err()
    };
    assert!(err("kind: seasonal\nperiod: 1h\nwidth: 2h").contains("seasonal.width"));
    assert!(err("kind: robust_z\nbaseline: soon").contains("robust_z.baseline"));
    assert!(err("kind: cusum\nh: 0").contains("cusum.h"));
    assert!(err("kind: robust_z\nweight: -1").contains("weight"));
    assert!(err("kind: robust_z\nbasline: 1h").contains("unknown field `basline`"));
    assert!(err("kind: prophet").contains("unknown variant `prophet`"));
    let all_zero = [spec("kind: model\nweight: 0")];
    assert_eq!(
        Ensemble::new(&all_zero).unwrap_err().to_string(),
        "detectors: at least one weight must be positive"
    );
    assert_eq!(
        err("kind: robust_z\nbaseline: soon"),
        "robust_z.baseline: \"soon\" is not a duration; write for example \"30s\", \"1 minute\" or \"5m\""
    );
    assert_eq!(
        err("kind: zscore\nwindow: 0s"),
        "zscore.window must be positive"
    );
    assert_eq!(
        err("kind: robust_z\nweight: -1"),
        "robust_z.weight must be a number ≥ 0, not -1"
    );
    assert_eq!(
        err("kind: cusum\nmin_relative_scale: 1"),
        "cusum.min_relative_scale must be in [0, 1), not 1"
    );
    let calibration = CalibrationSpec {
        alarm: -1.0,
        ..CalibrationSpec::default()
    };
    assert!(matches!(
        Ensemble::with_calibration(&DetectorSpec::default_ensemble(), &calibration),
        Err(DetectError::Calibration(CalibrationError::Alarm(_)))
    ));
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
