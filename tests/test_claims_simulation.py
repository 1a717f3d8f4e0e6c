"""Simulations of the claims' tests (kinlm_core.stats, as kinlm_core.claims uses them): on arms with
no difference each test rejects at its nominal rate alpha, and on a planted effect of the planned
size (the smallest effect the design detects with 80% power) it rejects about 80% of the time.

Each scenario runs a few thousand simulated experiments of 3 seeds an arm, as the claims do (numpy,
fixed seed); a rate must lie within 3 binomial standard errors of its target."""

import math

import numpy as np
import pytest

from kinlm_core import stats

N = 3000  # experiments per scenario
SEEDS = 3
ALPHA = 0.05
POWER = 0.8


def within(rate: float, target: float, n: int = N) -> bool:
    return abs(rate - target) <= 3 * math.sqrt(target * (1 - target) / n)


def arms(rng, effect=0.0, sd_seed=1.0, sd_noise=0.5, sd_t=None):
    """N experiments of two arms that share seeds: a seed's effect (initialisation and data order)
    is common to both arms, plus each run's own noise; the treatment is shifted by ``effect``."""
    seed = rng.normal(0.0, sd_seed, (N, SEEDS))
    base = seed + rng.normal(0.0, sd_noise, (N, SEEDS))
    treat = seed + effect + rng.normal(0.0, sd_noise if sd_t is None else sd_t, (N, SEEDS))
    return treat, base


def rate(test, treat, base, p=lambda c: c.p):
    return sum(p(test(t, b)) < ALPHA for t, b in zip(treat, base)) / N


def paired(t, b):
    return stats.paired(list(t), list(b), power=None)


def welch(t, b):
    return stats.welch(list(t), list(b), power=None)


def test_each_test_rejects_identical_arms_at_alpha():
    rng = np.random.default_rng(20261205)
    treat, base = arms(rng)
    assert within(rate(paired, treat, base), ALPHA)
    # independent seeds (no shared seed effect), unequal spreads: Welch
    t, b = rng.normal(0.0, 0.5, (N, SEEDS)), rng.normal(0.0, 2.0, (N, SEEDS))
    assert within(rate(welch, t, b), ALPHA)
    x = rng.normal(30.0, 4.0, (N, SEEDS))
    assert within(sum(stats.one_sample(list(v), 30.0, power=None).p < ALPHA for v in x) / N, ALPHA)


@pytest.mark.slow
def test_each_test_has_its_planned_power_at_the_planned_effect():
    rng = np.random.default_rng(7)
    # paired: the per-seed differences have sd sqrt(2) * 0.5 whatever the seed effect
    sd_d = math.sqrt(2) * 0.5
    d = stats.detectable(sd_d / math.sqrt(SEEDS), SEEDS - 1, ALPHA, POWER)
    treat, base = arms(rng, effect=d)
    assert within(rate(paired, treat, base), POWER)
    # Welch, unequal spreads 1 and 2: its df is random, so the plan integrates over it
    d = stats.welch_detectable(1.0, 2.0, SEEDS, SEEDS, ALPHA, POWER)
    t, b = rng.normal(d, 1.0, (N, SEEDS)), rng.normal(0.0, 2.0, (N, SEEDS))
    assert within(rate(welch, t, b), POWER)
    # the noncentral t at Welch's mean df would promise 80% and deliver less: the reason for welch_power
    naive = stats.detectable(math.sqrt(5 / SEEDS), 2 * (SEEDS - 1), ALPHA, POWER)
    t = rng.normal(naive, 1.0, (N, SEEDS))
    assert rate(welch, t, b) < POWER - 3 * math.sqrt(POWER * (1 - POWER) / N)
    # one-sample against a fixed value
    d = stats.detectable(4.0 / math.sqrt(SEEDS), SEEDS - 1, ALPHA, POWER)
    x = rng.normal(30.0 + d, 4.0, (N, SEEDS))
    assert within(sum(stats.one_sample(list(v), 30.0, power=None).p < ALPHA for v in x) / N, POWER)


def test_non_inferiority_holds_alpha_at_the_margin_and_its_power_beyond_it():
    """Higher is better, margin 1: the one-sided test that the difference is above -1."""
    rng = np.random.default_rng(11)
    margin, sd_d = 1.0, math.sqrt(2) * 0.5

    def p(c):
        return stats.one_sided_p(c, -margin, True)

    treat, base = arms(rng, effect=-margin)  # exactly at the margin: a false claim
    assert within(rate(paired, treat, base, p), ALPHA)
    d = stats.detectable(sd_d / math.sqrt(SEEDS), SEEDS - 1, ALPHA, POWER, sides=1)
    treat, base = arms(rng, effect=-margin + d)
    assert within(rate(paired, treat, base, p), POWER)


@pytest.mark.slow
def test_tost_holds_alpha_at_the_margin_and_its_power_at_the_planned_margin():
    rng = np.random.default_rng(13)
    sd_d = math.sqrt(2) * 0.5
    se = sd_d / math.sqrt(SEEDS)
    wide = 40 * se  # at the edge of a wide margin only the near one-sided test binds: its rate is alpha
    treat, base = arms(rng, effect=wide)
    assert within(rate(paired, treat, base, lambda c: stats.tost(c, wide)), ALPHA)
    m = stats.equivalence_detectable(se, SEEDS - 1, ALPHA, POWER)  # equal arms shown equivalent within +-m
    treat, base = arms(rng)
    assert within(rate(paired, treat, base, lambda c: stats.tost(c, m)), POWER)
    m = stats.welch_detectable(1.0, 1.0, SEEDS, SEEDS, ALPHA, POWER, kind="tost")
    t, b = rng.normal(0.0, 1.0, (N, SEEDS)), rng.normal(0.0, 1.0, (N, SEEDS))
    assert within(rate(welch, t, b, lambda c: stats.tost(c, m)), POWER)


def test_holm_keeps_the_family_wise_error_and_bh_the_false_discovery_rate():
    """Four true nulls in a family: Holm's adjusted p < alpha for any of them at most alpha of the
    time; with only true nulls BH's q controls the same rate."""
    rng = np.random.default_rng(17)
    family = 4
    p = rng.uniform(size=(N, family))  # the p-values of exact tests under their nulls
    holm_any = sum(min(stats.holm(list(row))) < ALPHA for row in p) / N
    bh_any = sum(min(stats.bh(list(row))) < ALPHA for row in p) / N
    assert holm_any <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / N)
    assert bh_any <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / N)


@pytest.mark.parametrize("kind", ["two-sided", "one-sided", "tost"])
def test_welch_power_is_its_planned_power_at_its_detectable_effect(kind):
    d = stats.welch_detectable(1.0, 1.5, 3, 4, ALPHA, POWER, kind)
    assert stats.welch_power(d, 1.0, 1.5, 3, 4, ALPHA, kind) == pytest.approx(POWER, abs=1e-6)
