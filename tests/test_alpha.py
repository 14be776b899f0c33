"""Moments, the weighted fit of Eq. 9 and its bootstrap interval (numpy only)."""

import numpy as np
import pytest

from ce_ray.theory.alpha import bootstrap_interval, bootstrap_log_ratios, fit_line, width_moments


def test_width_moments_by_hand():
    k = np.array([1.0, 2.0, 3.0, 6.0])
    moments = width_moments(k)
    assert moments.count == 4
    assert moments.mean == pytest.approx(3.0)
    assert moments.second_moment == pytest.approx((1 + 4 + 9 + 36) / 4)
    assert moments.variance == pytest.approx(np.var(k, ddof=1))
    assert moments.se_mean == pytest.approx(np.sqrt(np.var(k, ddof=1) / 4))
    assert moments.log_ratio == pytest.approx(np.log(12.5 / 9.0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        width_moments(np.array([1.0]))


def test_delta_method_matches_the_bootstrap_spread():
    rng = np.random.default_rng(0)
    k = rng.gamma(shape=3.0, size=5000)
    delta = width_moments(k).se_log_ratio
    spread = bootstrap_log_ratios(k, 400, np.random.default_rng(1)).std()
    assert delta == pytest.approx(spread, rel=0.15)


def test_fit_recovers_an_exact_line():
    s = np.array([0.5, 0.25, 0.1, 0.02])
    fit = fit_line(s, 1.6 * s, np.ones(4))
    assert fit.alpha == pytest.approx(1.6) and fit.intercept == 0.0
    assert fit.r2 == pytest.approx(1.0)
    with_intercept = fit_line(s, 0.3 + 2.0 * s, np.array([1.0, 2.0, 3.0, 4.0]), intercept=True)
    assert (with_intercept.alpha, with_intercept.intercept) == pytest.approx((2.0, 0.3))
    np.testing.assert_allclose(with_intercept.residuals, 0, atol=1e-12)


def test_weights_favour_precise_widths():
    s = np.array([0.4, 0.2, 0.1])
    y = np.array([0.8, 0.4, 0.5])  # the last point is off the alpha = 2 line
    assert fit_line(s, y, np.array([1.0, 1.0, 1e-6])).alpha == pytest.approx(2.0, rel=1e-4)


def test_bootstrap_interval_covers_the_true_alpha():
    """Gamma samples with E[K^2]/E[K]^2 = 1 + 1/shape = exp(alpha S) exactly."""
    alpha, widths = 2.5, np.array([4, 8, 16, 32, 64])
    fan_in_sum = 1.0 / widths
    rng = np.random.default_rng(7)
    samples = [rng.gamma(1.0 / np.expm1(alpha * s), size=4000) for s in fan_in_sum]
    moments = [width_moments(k) for k in samples]
    y = np.array([m.log_ratio for m in moments])
    weights = 1 / np.array([m.se_log_ratio for m in moments]) ** 2
    fit = fit_line(fan_in_sum, y, weights)
    replicates = np.stack([bootstrap_log_ratios(k, 300, rng) for k in samples], axis=1)
    low, high = bootstrap_interval(fan_in_sum, replicates, weights, intercept=False)
    assert low < alpha < high
    assert low < fit.alpha < high
    assert high - low < 0.5
