"""kinlm_core.stats: the tests behind a claim's verdict, against scipy and hand computations, and a
simulation that false claims are called supported no more often than the nominal rate."""

import math
import random

import pytest
from scipy import stats as sps

from kinlm_core import stats


def test_welch_matches_scipy_and_the_hand_formula():
    a, b = [5.0, 5.2, 5.4], [4.0, 4.1, 4.5]
    c = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert c.t == pytest.approx(ref.statistic, rel=1e-9)
    # by hand: means 5.2 and 4.2, variances 0.04 and 0.07, se^2 = 0.04/3 + 0.07/3 = 0.11/3
    assert c.difference == pytest.approx(1.0)
    se = math.sqrt(0.11 / 3)
    assert c.se == pytest.approx(se)
    df = (0.11 / 3) ** 2 / ((0.04 / 3) ** 2 / 2 + (0.07 / 3) ** 2 / 2)
    assert c.df == pytest.approx(df)  # 3.78...
    q = sps.t.ppf(0.975, df)
    assert c.ci95 == pytest.approx((1.0 - q * se, 1.0 + q * se))
    assert c.mean == pytest.approx((5.2, 4.2)) and c.n == (3, 3)


def test_welch_against_a_null_and_on_the_log_scale():
    a, b = [1.2, 1.25, 1.18, 1.22], [1.0, 1.02, 0.99]
    c = stats.welch(a, b, null=0.1)
    ref = sps.ttest_ind([x - 0.1 for x in a], b, equal_var=False)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-9)
    lg = stats.welch(a, b, null=0.165, scale="log")
    la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
    ref = sps.ttest_ind([x - math.log(1.165) for x in la], lb, equal_var=False)
    assert lg.p == pytest.approx(ref.pvalue, rel=1e-9)
    # the difference is a ratio - 1 of the geometric means, its interval transformed the same way
    gm = math.exp(sum(la) / 4 - sum(lb) / 3)
    assert lg.difference == pytest.approx(gm - 1)
    assert lg.ci95[0] < lg.difference < lg.ci95[1]
    with pytest.raises(stats.StatsError, match="log scale"):
        stats.welch([1.0, -1.0], [1.0, 2.0], scale="log")


def test_paired_and_one_sample_match_scipy():
    a, b = [2.0, 2.5, 2.1, 2.8], [1.9, 2.2, 2.0, 2.4]
    c = stats.paired(a, b)
    ref = sps.ttest_rel(a, b)
    assert c.p == pytest.approx(ref.pvalue, rel=1e-9) and c.df == 3
    assert c.difference == pytest.approx(0.225)
    o = stats.one_sample([55.0, 57.0, 59.0], 30.0)
    ref = sps.ttest_1samp([55.0, 57.0, 59.0], 30.0)
    assert o.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert o.difference == pytest.approx(27.0)
    # se = 2 / sqrt(3); df 2
    assert o.ci95 == pytest.approx((27 - sps.t.ppf(0.975, 2) * 2 / math.sqrt(3), 27 + sps.t.ppf(0.975, 2) * 2 / math.sqrt(3)))


def test_too_few_values_is_an_error_with_its_reason():
    with pytest.raises(stats.StatsError, match="2 or more values per arm"):
        stats.welch([1.0], [1.0, 2.0])
    with pytest.raises(stats.StatsError, match="complete pairs"):
        stats.paired([1.0, None], [1.0, 2.0])


def test_identical_arms_have_no_difference_and_p_one():
    a = [5.31, 5.35, 5.29]
    c = stats.welch(a, list(a))
    assert c.difference == 0 and c.p == pytest.approx(1.0)
    assert c.detectable > 0  # what such a design could find: stated on the card
    same = stats.welch([1.0, 1.0], [1.0, 1.0])  # no spread at all
    assert same.p == 1.0 and same.ci95 == (0.0, 0.0)


def test_detectable_difference_has_80_percent_power_by_simulation():
    # a paired design of 3 seeds with differences of sd 1: se = 1 / sqrt(3), df 2
    se = 1 / math.sqrt(3)
    d = stats.detectable(se, 2.0)
    nc = d / se  # power from the noncentral t at that difference is 80%
    tc = sps.t.ppf(0.975, 2)
    assert sps.nct.sf(tc, 2, nc) + sps.nct.cdf(-tc, 2, nc) == pytest.approx(0.8, abs=1e-6)
    rng = random.Random(0)
    trials, hits = 400, 0
    for _ in range(trials):
        diffs = [rng.gauss(d, 1) for _ in range(3)]
        hits += stats.paired(diffs, [0.0, 0.0, 0.0]).p < 0.05
    assert 0.74 < hits / trials < 0.86  # 0.8 within simulation noise (sd 0.02)


def test_holm_against_a_hand_example():
    # p sorted: 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.06
    p = [0.03, 0.01, 0.04, 0.02]
    assert stats.holm(p) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # None is not counted in m
    assert stats.holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert stats.holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_binomial_above_chance():
    assert stats.binomial_above_chance(3500, 6700) < 0.001  # 0.522 on 6,700 pairs is above chance
    assert stats.binomial_above_chance(3360, 6700) > 0.3  # 0.501 is not
    assert stats.binomial_above_chance(0, 0) == 1.0


# --- the tests the design allows: one-sided, TOST, power, correlation, Holm's levels, BH ------------


def test_one_sided_and_tost_match_scipy():
    a, b = [5.0, 5.3, 5.1], [4.9, 5.0, 5.2]
    c = stats.paired(a, b)
    d = [x - y for x, y in zip(a, b)]
    assert stats.one_sided_p(c, -0.5, True) == pytest.approx(sps.ttest_1samp(d, -0.5, alternative="greater").pvalue)
    assert stats.one_sided_p(c, 0.5, False) == pytest.approx(sps.ttest_1samp(d, 0.5, alternative="less").pvalue)
    assert stats.tost(c, 0.5) == pytest.approx(max(sps.ttest_1samp(d, -0.5, alternative="greater").pvalue,
                                                   sps.ttest_1samp(d, 0.5, alternative="less").pvalue))
    w = stats.welch(a, b)
    ref = sps.ttest_ind([x + 0.5 for x in a], b, equal_var=False, alternative="greater").pvalue
    assert stats.one_sided_p(w, -0.5, True) == pytest.approx(ref)
    # on the log scale the bounds are ratios: within +-10% means log(0.9) < log(a / b) < log(1.1)
    lg = stats.paired(a, b, scale="log")
    ld = [math.log(x / y) for x, y in zip(a, b)]
    assert stats.tost(lg, 0.1) == pytest.approx(max(sps.ttest_1samp(ld, math.log(0.9), alternative="greater").pvalue,
                                                    sps.ttest_1samp(ld, math.log(1.1), alternative="less").pvalue))
    with pytest.raises(stats.StatsError):
        stats.tost(c, 0.0)


def test_power_and_detectable_are_inverse_and_match_the_noncentral_t():
    se, df = 0.3, 4.0
    d = stats.detectable(se, df, 0.01)
    tc = sps.t.ppf(0.995, df)
    assert sps.nct.sf(tc, df, d / se) + sps.nct.cdf(-tc, df, d / se) == pytest.approx(0.8, abs=1e-9)
    assert stats.power(d, se, df, 0.01) == pytest.approx(0.8)
    one = stats.detectable(se, df, 0.05, sides=1)
    assert sps.nct.sf(sps.t.ppf(0.95, df), df, one / se) == pytest.approx(0.8, abs=1e-9)
    assert one < stats.detectable(se, df, 0.05)  # a one-sided test needs less
    # a smaller (Holm-adjusted) alpha needs a larger effect
    assert stats.detectable(se, df, 0.05 / 11) > stats.detectable(se, df, 0.05)
    m = stats.equivalence_detectable(se, df, 0.05)
    assert stats.equivalence_power(m, se, df, 0.05) == pytest.approx(0.8, abs=1e-6)


def test_pearson_matches_scipy_and_paired_reports_it():
    a, b = [1.0, 2.0, 3.5, 2.2], [0.5, 1.9, 3.0, 2.6]
    assert stats.pearson(a, b) == pytest.approx(sps.pearsonr(a, b)[0])
    assert stats.paired(a, b).correlation == pytest.approx(sps.pearsonr(a, b)[0])
    assert stats.pearson([1, 1, 1], [1, 2, 3]) is None and stats.pearson([1, 2], [2, 1]) is None
    assert stats.welch(a, b).correlation is None


def test_bh_matches_scipy_and_holm_levels_decide_as_holm():
    p = [0.001, 0.04, 0.03, 0.2, 0.012, None]
    q = stats.bh(p)
    ref = sps.false_discovery_control([x for x in p if x is not None])
    assert q[:5] == pytest.approx(list(ref)) and q[5] is None
    levels = stats.holm_levels(p, 0.05)
    adj = stats.holm(p)
    for pi, lv, ai in zip(p[:5], levels, adj):
        assert (pi < lv) == (ai < 0.05)
    # by hand: sorted 0.001 < 0.05/5 rejects, 0.012 < 0.05/4 rejects, 0.03 >= 0.05/3 stops: the rest at 0.05/3
    assert levels[:5] == pytest.approx([0.01, 0.05 / 3, 0.05 / 3, 0.05 / 3, 0.0125])
