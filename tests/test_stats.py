"""msdn/study/stats.py against scipy.stats and numpy, computed independently here."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from msdn.study.stats import mean, paired_difference, sd, t_interval, t_quantile

SAMPLES = [
    [0.61, 0.58, 0.66],
    [0.4123, 0.4500, 0.3877, 0.4012, 0.4301],
    [1.0, 1.0, 1.0],  # no spread: a zero-width interval
    [-2.5, 3.25],
]


@pytest.mark.parametrize("values", SAMPLES)
def test_mean_sd_and_t_interval_match_scipy(values):
    x = np.asarray(values)
    assert mean(values) == pytest.approx(x.mean(), abs=1e-15)
    assert sd(values) == pytest.approx(x.std(ddof=1), abs=1e-15)
    interval = t_interval(values)
    if x.std() == 0:
        low = high = x.mean()
    else:
        low, high = sp.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sp.sem(x))
    assert (interval.low, interval.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert interval.n == len(values) and interval.low <= interval.mean <= interval.high
    # the same interval as scipy's one-sample t test gives for the mean
    if x.std() > 0:
        ci = sp.ttest_1samp(x, 0.0).confidence_interval(0.95)
        assert (interval.low, interval.high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))


def test_t_quantile_known_values():
    # Student t table: t(0.975, 2) = 4.3027, t(0.975, 4) = 2.7764, t(0.95, 9) = 1.8331
    for (p, df), table in {(0.975, 2): 4.3027, (0.975, 4): 2.7764, (0.95, 9): 1.8331}.items():
        assert t_quantile(p, df) == pytest.approx(table, abs=5e-5)


def test_other_confidence_levels():
    values = SAMPLES[1]
    wide, narrow = t_interval(values, 0.99), t_interval(values, 0.80)
    low, high = sp.t.interval(0.99, len(values) - 1, loc=np.mean(values), scale=sp.sem(values))
    assert (wide.low, wide.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert wide.low < narrow.low < narrow.high < wide.high


def test_paired_difference_matches_scipys_paired_t_test():
    tuned = [0.652, 0.631, 0.667, 0.640]
    authors = [0.610, 0.602, 0.641, 0.606]
    interval = paired_difference(tuned, authors)
    ci = sp.ttest_rel(tuned, authors).confidence_interval(0.95)
    assert (interval.low, interval.high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))
    assert interval.mean == pytest.approx(np.mean(np.subtract(tuned, authors)), abs=1e-15)
    # pairing removes the spread the two runs of a seed share: narrower than the unpaired (Welch) interval
    welch = sp.ttest_ind(tuned, authors, equal_var=False).confidence_interval(0.95)
    assert interval.high - interval.low < welch.high - welch.low
    with pytest.raises(ValueError, match="equal counts; got 4 and 3"):
        paired_difference(tuned, authors[:3])


def test_one_value_has_a_mean_and_no_interval():
    interval = t_interval([0.5])
    assert interval.mean == 0.5 and interval.n == 1
    assert all(math.isnan(v) for v in (interval.sd, interval.low, interval.high))
    assert math.isnan(mean([])) and math.isnan(sd([0.5]))
    assert interval.as_dict()["mean"] == 0.5 and math.isnan(interval.as_dict()["ci_low"])
