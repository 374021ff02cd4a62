//! Additive Holt-Winters (level, trend, season) for predictive scaling, as in Hyndman & Athanasopoulos,
//! *Forecasting: principles and practice*, §7.5–7.6, and statsmodels' `ExponentialSmoothing(trend="add",
//! seasonal="add")`:
//!
//! ```text
//! ŷ(t+1)  = ℓ(t) + b(t) + s(t+1−m)
//! ℓ(t)    = α (y(t) − s(t−m)) + (1 − α)(ℓ(t−1) + b(t−1))
//! b(t)    = β (ℓ(t) − ℓ(t−1)) + (1 − β) b(t−1)
//! s(t)    = γ (y(t) − ℓ(t−1) − b(t−1)) + (1 − γ) s(t−m)
//! ŷ(t+h)  = ℓ(t) + h b(t) + s(t+h−m(k+1))
//! ```
//!
//! [`fit`] takes its initial states from the first two seasons with the trend taken out of the first season's
//! deviations ([`initial_detrended`]; statsmodels' `"simple"`, [`initial_simple`], leaves it in, which biases
//! the seasonal terms of a growing series for many seasons) and chooses the smoothing parameters by a grid search
//! for the smallest sum of squared one-step errors.
//! Pure: the caller keeps the history.

/// Smoothing parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

/// The states before the first observation: level, trend and the `m` seasonal terms, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Initial {
    pub level: f64,
    pub trend: f64,
    pub seasonal: Vec<f64>,
}

/// The model after the series: one-step fitted values and the final states.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub params: Params,
    pub fitted: Vec<f64>,
    pub level: f64,
    pub trend: f64,
    /// The last `m` seasonal terms, oldest first: `seasonal[0]` is the next step's.
    pub seasonal: Vec<f64>,
    /// Sum of squared one-step errors.
    pub sse: f64,
}

impl Model {
    /// The forecast `h` steps (h ≥ 1) after the last observation.
    pub fn forecast(&self, h: usize) -> f64 {
        let m = self.seasonal.len();
        self.level + h as f64 * self.trend + self.seasonal[(h.max(1) - 1) % m]
    }
}

/// Hyndman & Athanasopoulos §7.6: the level is the first season's mean, the trend the change of the mean from
/// the first season to the second per step, each seasonal term the first season's deviation from its mean.
/// `None` with fewer than two seasons of observations.
pub fn initial_simple(series: &[f64], m: usize) -> Option<Initial> {
    if m == 0 || series.len() < 2 * m {
        return None;
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    let first = mean(&series[..m]);
    let second = mean(&series[m..2 * m]);
    Some(Initial { level: first, trend: (second - first) / m as f64, seasonal: series[..m].iter().map(|y| y - first).collect() })
}

/// As [`initial_simple`], with the first season's trend taken out: the level is placed before the first
/// observation (the first season's mean is its middle's) and each seasonal term is the deviation from the
/// trend line through that mean.
pub fn initial_detrended(series: &[f64], m: usize) -> Option<Initial> {
    let simple = initial_simple(series, m)?;
    let middle = (m as f64 - 1.0) / 2.0;
    let seasonal = series[..m].iter().enumerate().map(|(i, y)| y - (simple.level + simple.trend * (i as f64 - middle))).collect();
    Some(Initial { level: simple.level - simple.trend * (middle + 1.0), trend: simple.trend, seasonal })
}

/// Runs the recursions over `series`.
pub fn run(series: &[f64], params: Params, initial: &Initial) -> Model {
    let m = initial.seasonal.len();
    let Params { alpha, beta, gamma } = params;
    let (mut level, mut trend) = (initial.level, initial.trend);
    let mut seasonal: std::collections::VecDeque<f64> = initial.seasonal.iter().copied().collect();
    let mut fitted = Vec::with_capacity(series.len());
    let mut sse = 0.0;
    for &y in series {
        let past = seasonal[0];
        let predicted = level + trend + past;
        fitted.push(predicted);
        sse += (y - predicted) * (y - predicted);
        let new_level = alpha * (y - past) + (1.0 - alpha) * (level + trend);
        let new_trend = beta * (new_level - level) + (1.0 - beta) * trend;
        let new_seasonal = gamma * (y - level - trend) + (1.0 - gamma) * past;
        seasonal.pop_front();
        seasonal.push_back(new_seasonal);
        level = new_level;
        trend = new_trend;
    }
    debug_assert_eq!(seasonal.len(), m);
    Model { params, fitted, level, trend, seasonal: seasonal.into(), sse }
}

const ALPHAS: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
const BETAS: [f64; 5] = [0.0, 0.01, 0.05, 0.1, 0.2];
const GAMMAS: [f64; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// The model with the smallest sum of squared one-step errors over a grid of parameters (γ ≤ 1 − α, as
/// statsmodels bounds it), from [`initial_detrended`]; `None` with fewer than two seasons.
pub fn fit(series: &[f64], m: usize) -> Option<Model> {
    let initial = initial_detrended(series, m)?;
    let mut best: Option<Model> = None;
    for alpha in ALPHAS {
        for beta in BETAS {
            for gamma in GAMMAS.into_iter().filter(|gamma| *gamma <= 1.0 - alpha + 1e-12) {
                let model = run(series, Params { alpha, beta, gamma }, &initial);
                if best.as_ref().is_none_or(|best| model.sse < best.sse) {
                    best = Some(model);
                }
            }
        }
    }
    best
}

/// A backtest: the model fitted on all but the last season forecasts it; the naive seasonal forecast repeats
/// the season before. Mean absolute percentage errors over the points that are not 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Backtest {
    pub holt_winters_mape: f64,
    pub naive_mape: f64,
    pub params: Params,
    pub points: usize,
}

/// `None` with fewer than three seasons (two to fit, one to forecast).
pub fn backtest(series: &[f64], m: usize) -> Option<Backtest> {
    if m == 0 || series.len() < 3 * m {
        return None;
    }
    let split = series.len() - m;
    let model = fit(&series[..split], m)?;
    let (mut hw, mut naive, mut points) = (0.0, 0.0, 0);
    for h in 1..=m {
        let actual = series[split + h - 1];
        if actual == 0.0 {
            continue;
        }
        hw += ((actual - model.forecast(h)) / actual).abs();
        naive += ((actual - series[split + h - 1 - m]) / actual).abs();
        points += 1;
    }
    let points_f = points.max(1) as f64;
    Some(Backtest { holt_winters_mape: 100.0 * hw / points_f, naive_mape: 100.0 * naive / points_f, params: model.params, points })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pure_season_is_forecast_exactly() {
        // A repeating pattern without noise or trend: the simple initialization already has it.
        let season = [1.0, 5.0, 9.0, 5.0];
        let series: Vec<f64> = season.iter().cycle().take(12).copied().collect();
        let model = run(&series, Params { alpha: 0.3, beta: 0.1, gamma: 0.2 }, &initial_simple(&series, 4).unwrap());
        for h in 1..=8 {
            assert!((model.forecast(h) - season[(h - 1) % 4]).abs() < 1e-9, "h {h}: {}", model.forecast(h));
        }
        assert!(model.sse < 1e-18);
    }

    #[test]
    fn a_trend_carries_on_and_the_fit_beats_the_naive_forecast_on_it() {
        let series: Vec<f64> = (0..60).map(|t| 100.0 + 2.0 * t as f64 + [0.0, 20.0, -10.0, 5.0, -15.0][t % 5]).collect();
        let result = backtest(&series, 5).unwrap();
        // A trend and a season without noise: the detrended start has them exactly.
        assert!(result.holt_winters_mape < 1e-6, "{result:?}");
        // The naive seasonal forecast lags a season's growth (10 per season here).
        assert!(result.naive_mape > 3.0 && result.holt_winters_mape < result.naive_mape / 10.0, "{result:?}");
        assert!(fit(&series[..9], 5).is_none() && backtest(&series[..14], 5).is_none());
    }
}
