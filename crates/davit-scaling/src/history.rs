//! A bounded, evenly spaced history of one metric for the forecaster: samples are averaged into buckets of a
//! fixed length (at most [`MAX_POINTS_PER_SEASON`] per season, never shorter than the sampling interval), a
//! bucket without samples repeats the one before, and at most [`SEASONS_KEPT`] seasons are kept: a series costs
//! at most `8 × 288 × 3` bytes, whatever the season. Times are seconds on the caller's clock.

use std::collections::VecDeque;

use crate::forecast::{self, Model};

/// Most points per season (one every 5 minutes for a 24-hour season).
pub const MAX_POINTS_PER_SEASON: usize = 288;
/// Seasons of points kept (two are needed to fit; a third lets the model settle).
pub const SEASONS_KEPT: usize = 3;

#[derive(Clone, Debug)]
pub struct SeasonalHistory {
    /// Seconds per point.
    bucket: f64,
    per_season: usize,
    values: VecDeque<f64>,
    /// The first sample's time: bucket 0 starts there.
    origin: Option<f64>,
    /// The bucket being filled: its index, the sum and number of its samples.
    open: Option<(i64, f64, u32)>,
    /// The model fitted on `values`, and how many points were pushed when it was.
    model: Option<(Model, u64)>,
    closed: u64,
}

impl SeasonalHistory {
    /// A history for a season of `season` seconds sampled every `interval` seconds.
    pub fn new(season: f64, interval: f64) -> SeasonalHistory {
        let per_season = ((season / interval.max(1e-3)).floor() as usize).clamp(1, MAX_POINTS_PER_SEASON);
        SeasonalHistory {
            bucket: season / per_season as f64,
            per_season,
            values: VecDeque::new(),
            origin: None,
            open: None,
            model: None,
            closed: 0,
        }
    }

    pub fn points_per_season(&self) -> usize {
        self.per_season
    }

    /// Seconds per point.
    pub fn bucket(&self) -> f64 {
        self.bucket
    }

    /// Full seasons of points so far (fractional).
    pub fn seasons(&self) -> f64 {
        self.values.len() as f64 / self.per_season as f64
    }

    pub fn points(&self) -> Vec<f64> {
        self.values.iter().copied().collect()
    }

    /// Adds a sample taken at `at`.
    pub fn push(&mut self, at: f64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let origin = *self.origin.get_or_insert(at);
        let index = ((at - origin) / self.bucket).floor() as i64;
        match self.open {
            None => self.open = Some((index, value, 1)),
            Some((open, sum, count)) if index <= open => self.open = Some((open, sum + value, count + 1)),
            Some((open, sum, count)) => {
                let mean = sum / f64::from(count);
                // The closed bucket, then any empty ones in between (bounded: at most a whole history).
                let gaps = usize::try_from(index - open - 1).unwrap_or(0).min(SEASONS_KEPT * self.per_season);
                for _ in 0..=gaps {
                    self.values.push_back(mean);
                    self.closed += 1;
                }
                while self.values.len() > SEASONS_KEPT * self.per_season {
                    self.values.pop_front();
                }
                self.open = Some((index, value, 1));
            }
        }
    }

    /// The forecast for time `at + lead` (`at`: now), once two seasons of points exist; the model is fitted
    /// again only when a bucket closed.
    pub fn forecast(&mut self, at: f64, lead: f64) -> Option<f64> {
        if self.values.len() < 2 * self.per_season {
            return None;
        }
        if self.model.as_ref().is_none_or(|(_, fitted_at)| *fitted_at != self.closed) {
            let model = forecast::fit(self.values.make_contiguous(), self.per_season)?;
            self.model = Some((model, self.closed));
        }
        let (open, _, _) = self.open?;
        let origin = self.origin?;
        let target = ((at + lead - origin) / self.bucket).floor() as i64;
        // Steps after the last closed bucket (`open - 1`).
        let steps = usize::try_from(target - (open - 1)).unwrap_or(1).max(1);
        self.model.as_ref().map(|(model, _)| model.forecast(steps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_averaged_into_buckets_and_gaps_repeat_the_last_one() {
        let mut history = SeasonalHistory::new(10.0, 1.0);
        assert_eq!((history.points_per_season(), history.bucket()), (10, 1.0));
        history.push(100.0, 1.0);
        history.push(100.5, 3.0);
        history.push(101.2, 5.0);
        history.push(104.0, 7.0); // buckets 2 and 3 had no sample
        assert_eq!(history.points(), vec![2.0, 5.0, 5.0, 5.0]);
        // A long season is kept in at most 288 points a season, three seasons.
        let mut day = SeasonalHistory::new(86_400.0, 15.0);
        assert_eq!(day.points_per_season(), MAX_POINTS_PER_SEASON);
        for step in 0..2_000 {
            day.push(f64::from(step) * 300.0, 1.0);
        }
        assert_eq!(day.points().len(), SEASONS_KEPT * MAX_POINTS_PER_SEASON);
    }

    #[test]
    fn a_recurring_step_is_forecast_ahead_of_time() {
        // A season of 40 s sampled every second: 20 in its last 15 s, else 0.
        let load = |t: f64| if t.rem_euclid(40.0) >= 25.0 { 20.0 } else { 0.0 };
        let mut history = SeasonalHistory::new(40.0, 1.0);
        let mut t = 0.0;
        while t < 80.5 {
            history.push(t, load(t));
            t += 1.0;
        }
        assert!(history.forecast(80.0, 10.0).is_some());
        // At 92 s the next 13 s are quiet: the forecast 10 s ahead is low; 10 s before the step it is high.
        while t < 95.5 {
            history.push(t, load(t));
            t += 1.0;
        }
        assert!(history.forecast(95.0, 3.0).unwrap() < 5.0, "{:?}", history.forecast(95.0, 3.0));
        assert!(history.forecast(95.0, 12.0).unwrap() > 15.0, "{:?}", history.forecast(95.0, 12.0));
    }
}
