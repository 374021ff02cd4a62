//! davit's additive Holt-Winters against statsmodels' `ExponentialSmoothing`, on the values
//! `tests/reference/holt_winters.py` computed once (committed as `tests/reference/holt_winters.json`): the
//! "simple" initial states, every one-step fitted value and a two-season forecast, for three sets of
//! smoothing parameters.
//!
//! One known difference: for a horizon that is a whole number of seasons (h = m, 2m, …) statsmodels 0.13
//! forecasts with the seasonal term of a season before the last observation's, dropping the newest seasonal
//! update; davit follows the textbook (Hyndman & Athanasopoulos §7.3: `s(t+h−m(k+1))`, the newest). The test checks
//! that this is the only difference, to the digit.

use davit_scaling::forecast::{Params, initial_simple, run};

fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0)
}

#[test]
fn holt_winters_matches_statsmodels() {
    let reference: serde_json::Value = serde_json::from_str(include_str!("reference/holt_winters.json")).unwrap();
    let season = reference["season"].as_u64().unwrap() as usize;
    let numbers = |value: &serde_json::Value| -> Vec<f64> { value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let series = numbers(&reference["series"]);
    let initial = initial_simple(&series, season).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        assert!(close(initial.level, case["initial_level"].as_f64().unwrap()), "level {} vs {}", initial.level, case["initial_level"]);
        assert!(close(initial.trend, case["initial_trend"].as_f64().unwrap()), "trend {} vs {}", initial.trend, case["initial_trend"]);
        for (ours, theirs) in initial.seasonal.iter().zip(numbers(&case["initial_seasonal"])) {
            assert!(close(*ours, theirs), "initial seasonal {ours} vs {theirs}");
        }
        let params =
            Params { alpha: case["alpha"].as_f64().unwrap(), beta: case["beta"].as_f64().unwrap(), gamma: case["gamma"].as_f64().unwrap() };
        let model = run(&series, params, &initial);
        let fitted = numbers(&case["fitted"]);
        assert_eq!(model.fitted.len(), fitted.len());
        for (step, (ours, theirs)) in model.fitted.iter().zip(&fitted).enumerate() {
            assert!(close(*ours, *theirs), "{params:?}: fitted value {step}: {ours} vs statsmodels' {theirs}");
        }
        for (index, theirs) in numbers(&case["forecast"]).into_iter().enumerate() {
            let h = index + 1;
            let ours = model.forecast(h);
            if h % season == 0 {
                // statsmodels' term is the seasonal a season older: replace ours with it and the rest agrees.
                let older = seasonal_replaced_last(&series, params, &initial);
                let adjusted = ours - model.seasonal[season - 1] + older;
                assert!(close(adjusted, theirs), "{params:?}: forecast {h} (whole seasons): {adjusted} vs statsmodels' {theirs}");
            } else {
                assert!(close(ours, theirs), "{params:?}: forecast {h}: {ours} vs statsmodels' {theirs}");
            }
        }
    }
}

/// The seasonal term the last observation's update replaced (that of its phase one season before): before the
/// last observation, it is the next step's term.
fn seasonal_replaced_last(series: &[f64], params: Params, initial: &davit_scaling::forecast::Initial) -> f64 {
    run(&series[..series.len() - 1], params, initial).seasonal[0]
}
