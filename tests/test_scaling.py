"""The scaling-law fit (kinlm_core.scaling): exact recovery, interval coverage of a planted exponent,
the floor variant's bootstrap, the band, and bad input in one line."""

import math

import numpy as np
import pytest

from kinlm_core.scaling import ScalingError, figure, fit_power_law

TOKENS = [56_602, 110_516, 216_119, 529_173]  # CVFP's four training sizes


def test_exact_power_law_is_recovered_exactly():
    y = [75_687 * x ** -0.4109 for x in TOKENS]
    fit = fit_power_law(TOKENS, y)
    assert fit.alpha == pytest.approx(-0.4109, abs=1e-12) and fit.a == pytest.approx(75_687, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.se == pytest.approx(0.0, abs=1e-12)
    assert fit.ci[0] == pytest.approx(-0.4109, abs=1e-9) and fit.ci[1] == pytest.approx(-0.4109, abs=1e-9)
    assert fit.n == 4 and fit.distinct_x == 4 and fit.df == 2 and fit.floor is None
    assert fit.predict([1e5])[0] == pytest.approx(75_687 * 1e5 ** -0.4109)


def test_the_sources_four_points_give_its_fit():
    """CVFP's reported PPL at 57k-529k tokens: its linregress gave PPL = 75,687 tokens^-0.4109, R^2 0.982."""
    fit = fit_power_law(TOKENS, [799.42, 680.12, 500.12, 325.00])
    assert fit.alpha == pytest.approx(-0.4109, abs=5e-5) and fit.a == pytest.approx(75_687, rel=2e-3)
    assert fit.r2 == pytest.approx(0.982, abs=5e-4)


def test_slope_standard_error_and_interval_against_hand_computation():
    x = [1.0, math.e, math.e ** 2, math.e ** 3]  # log x = 0, 1, 2, 3
    ly = [0.0, -0.5, -0.8, -1.5]  # hand: slope = sum((lx - 1.5)(ly - m)) / 5 = -2.4 / 5 = -0.48
    fit = fit_power_law(x, np.exp(ly))
    assert fit.alpha == pytest.approx(-0.48)
    # intercept = mean(ly) - slope * 1.5 = -0.7 + 0.72 = 0.02; se = sqrt(SSR / (n - 2) / Sxx), Sxx = 5
    resid = np.array(ly) - (0.02 - 0.48 * np.arange(4))
    se = math.sqrt((resid ** 2).sum() / 2 / 5)
    assert fit.a == pytest.approx(math.exp(0.02)) and fit.se == pytest.approx(se)
    q = 4.302652729911275  # t_{0.975, 2 df}
    assert fit.ci == pytest.approx((-0.48 - q * se, -0.48 + q * se))
    assert fit.r2 == pytest.approx(1 - (resid ** 2).sum() / sum((v + 0.7) ** 2 for v in ly))


def test_a_planted_exponent_with_noise_is_covered_at_the_stated_rate():
    """alpha -0.41 planted with log-normal noise, 3 seeds at each of 4 sizes: the 95% interval covers
    it in about 95% of 400 simulated sweeps (and in the first one)."""
    rng = np.random.default_rng(0)
    x = np.repeat(TOKENS, 3)
    covered, first = 0, None
    for i in range(400):
        y = 75_687 * x ** -0.41 * np.exp(rng.normal(0, 0.05, x.size))
        fit = fit_power_law(x, y)
        covered += fit.ci[0] <= -0.41 <= fit.ci[1]
        first = first or fit
    assert first.ci[0] <= -0.41 <= first.ci[1] and first.ci[1] - first.ci[0] < 0.2 and first.n == 12
    assert 0.92 <= covered / 400 <= 0.98


def test_floor_variant_recovers_an_exact_law_and_its_bootstrap_is_seeded():
    x = np.array([1e3, 3e3, 1e4, 3e4, 1e5, 3e5])
    y = 40.0 * x ** -0.5 + 1.5
    fit = fit_power_law(x, y, floor=True, boots=200, seed=3)
    assert fit.alpha == pytest.approx(-0.5, abs=1e-6) and fit.floor == pytest.approx(1.5, abs=1e-6)
    assert fit.a == pytest.approx(40.0, rel=1e-5) and fit.r2 == pytest.approx(1.0)
    assert fit.method == "bootstrap" and fit.boots == 200
    assert fit.ci[0] == pytest.approx(-0.5, abs=1e-5) and fit.ci[1] == pytest.approx(-0.5, abs=1e-5)
    noisy = y * np.exp(np.random.default_rng(1).normal(0, 0.01, x.size))
    xs, ys = np.repeat(x, 2), np.concatenate([noisy, noisy * np.exp(np.random.default_rng(2).normal(0, 0.01, 6))])
    a = fit_power_law(xs, ys, floor=True, boots=200, seed=7)
    b = fit_power_law(xs, ys, floor=True, boots=200, seed=7)
    c = fit_power_law(xs, ys, floor=True, boots=200, seed=8)
    assert a.ci == b.ci and a.ci != c.ci  # the seed fixes the resamples
    assert a.ci[0] <= -0.5 <= a.ci[1] and a.floor_ci[0] <= 1.5 <= a.floor_ci[1]
    lo, hi = a.band(x)
    assert np.all(lo <= a.predict(x) + 1e-9) and np.all(a.predict(x) <= hi + 1e-9)


def test_band_of_the_pure_law_is_narrowest_at_the_mean_log_x():
    rng = np.random.default_rng(4)
    x = np.repeat(TOKENS, 3)
    fit = fit_power_law(x, 100 * x ** -0.3 * np.exp(rng.normal(0, 0.05, x.size)))
    grid = np.geomspace(1e4, 1e6, 50)
    lo, hi = fit.band(grid)
    width = np.log(hi) - np.log(lo)
    centre = math.exp(np.log(x).mean())
    assert np.all(lo < fit.predict(grid)) and np.all(fit.predict(grid) < hi)
    assert abs(grid[np.argmin(width)] - centre) / centre < 0.1


def test_bad_input_is_one_line():
    with pytest.raises(ScalingError) as e:
        fit_power_law([1000, 1000, 2000, 2000], [3.0, 3.1, 2.9, 2.8])
    assert str(e.value) == "scaling fit: needs at least 3 distinct x values, got 2 (1000, 2000)"
    with pytest.raises(ScalingError, match=r"^scaling fit: needs at least 4 distinct x values, got 3 \(1, 2, 3\)$"):
        fit_power_law([1, 2, 3], [3.0, 2.0, 1.5], floor=True)
    with pytest.raises(ScalingError) as e:
        fit_power_law([1, 2, 3], [3.0, 0.0, 1.5], labels=["runs/a", "runs/b", "runs/c"])
    assert str(e.value) == ("scaling fit: runs/b: y = 0 is not a positive number (a power law is fitted to "
                            "logarithms)")
    with pytest.raises(ScalingError, match=r"^scaling fit: point 1: x = -5 is not a positive"):
        fit_power_law([-5, 2, 3], [3.0, 2.0, 1.5])
    with pytest.raises(ScalingError, match="y = nan"):
        fit_power_law([1, 2, 3], [3.0, float("nan"), 1.5])


def test_figure_is_a_png(tmp_path):
    fit = fit_power_law(TOKENS, [799.42, 680.12, 500.12, 325.00])
    figure(fit, TOKENS, [799.42, 680.12, 500.12, 325.00], tmp_path / "s.png", metric="eval/ppl", xlabel="tokens")
    data = (tmp_path / "s.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
