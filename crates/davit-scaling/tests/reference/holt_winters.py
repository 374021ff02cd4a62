#!/usr/bin/env python3
"""Reference values for davit-scaling's additive Holt-Winters (src/forecast.rs), computed once with statsmodels'
ExponentialSmoothing and committed next to this script as holt_winters.json, which
tests/holt_winters_reference.rs compares against.

    python3 holt_winters.py > holt_winters.json     # needs statsmodels (pip install statsmodels, or Debian's
                                                    # python3-statsmodels); the JSON says which version made it

The series is a trend, a sine season of 12 steps, a spike at one phase and seeded noise; for each set of fixed
smoothing parameters statsmodels fits from the "simple" initial states (Hyndman & Athanasopoulos §7.6, computed
by statsmodels' own `_initialization_simple`; statsmodels 0.13's ExponentialSmoothing takes them as "known") and
records them, its one-step fitted values and a 24-step forecast.
"""
import json

import numpy as np
import statsmodels
from statsmodels.tsa.exponential_smoothing.initialization import _initialization_simple
from statsmodels.tsa.holtwinters import ExponentialSmoothing

SEASON = 12
rng = np.random.default_rng(7)
t = np.arange(6 * SEASON)
series = 200 + 1.5 * t + 40 * np.sin(2 * np.pi * t / SEASON) + 15.0 * (t % SEASON == 3) + rng.normal(0, 3, t.size)

cases = []
for alpha, beta, gamma in [(0.3, 0.05, 0.2), (0.6, 0.0, 0.1), (0.1, 0.2, 0.5)]:
    level, trend, seasonal = _initialization_simple(series, trend="add", seasonal="add", seasonal_periods=SEASON)
    model = ExponentialSmoothing(
        series, trend="add", seasonal="add", seasonal_periods=SEASON, initialization_method="known",
        initial_level=level, initial_trend=trend, initial_seasonal=seasonal,
    )
    fit = model.fit(smoothing_level=alpha, smoothing_trend=beta, smoothing_seasonal=gamma, optimized=False)
    cases.append({
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "initial_level": float(level),
        "initial_trend": float(trend),
        "initial_seasonal": [float(x) for x in seasonal],
        "fitted": [float(x) for x in fit.fittedvalues],
        "forecast": [float(x) for x in fit.forecast(2 * SEASON)],
    })

print(json.dumps({
    "made_by": f"statsmodels {statsmodels.__version__}, crates/davit-scaling/tests/reference/holt_winters.py",
    "season": SEASON,
    "series": [float(x) for x in series],
    "cases": cases,
}, indent=1))
