"""Fit alpha of Eq. 9 from NTK samples (Algorithm 1, lines 6-7). Pure numpy.

Per width n with T samples K_1..K_T:

    y(n) = log(mean(K^2) / mean(K)^2)   (the log of the normalised second moment)

and Eq. 9 says y(n) = alpha * S(n). The fit is weighted least squares with weights
1 / se(y)^2 -- se from the delta method:

    Var(y) ~ Var(K^2)/(T m2^2) + 4 Var(K)/(T m1^2) - 4 Cov(K, K^2)/(T m1 m2)

through the origin (Eq. 9 has no intercept) or, optionally, with one. The confidence interval
is a percentile bootstrap: resample the draws within each width, refit.
:func:`fit_eq9` does all of it for a grid of widths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ce_ray.theory.seeds import derive_seed

# Identity of the bootstrap's draws for a width: (experiment seed, width, BOOTSTRAP_STREAM).
BOOTSTRAP_STREAM = 0xB007


@dataclass(frozen=True)
class WidthMoments:
    count: int
    mean: float
    second_moment: float
    variance: float
    se_mean: float
    se_second_moment: float
    log_ratio: float
    se_log_ratio: float


def width_moments(samples: np.ndarray) -> WidthMoments:
    """Moments of one width's samples (at least 2).

    >>> moments = width_moments(np.array([1.0, 2.0, 3.0, 2.0]))
    >>> moments.mean, moments.second_moment, round(moments.log_ratio, 4)
    (2.0, 4.5, 0.1178)
    """
    k = np.asarray(samples, dtype=np.float64)
    t = k.size
    if t < 2:
        raise ValueError(f"need at least 2 samples per width; got {t}")
    m1, m2 = k.mean(), (k * k).mean()
    covariance = np.cov(np.stack([k, k * k]))  # unbiased: [[Var K, Cov], [Cov, Var K^2]]
    var_k, cov, var_k2 = covariance[0, 0], covariance[0, 1], covariance[1, 1]
    var_log_ratio = (var_k2 / m2**2 + 4 * var_k / m1**2 - 4 * cov / (m1 * m2)) / t
    return WidthMoments(
        count=t,
        mean=float(m1),
        second_moment=float(m2),
        variance=float(var_k),
        se_mean=float(np.sqrt(var_k / t)),
        se_second_moment=float(np.sqrt(var_k2 / t)),
        log_ratio=float(np.log(m2 / m1**2)),
        se_log_ratio=float(np.sqrt(max(var_log_ratio, 0.0))),
    )


@dataclass(frozen=True)
class LineFit:
    """``y = intercept + alpha * S`` fitted by weighted least squares."""

    alpha: float
    intercept: float
    alpha_se: float
    r2: float
    fitted: np.ndarray
    residuals: np.ndarray


def fit_line(
    fan_in_sum: np.ndarray, log_ratio: np.ndarray, weights: np.ndarray, intercept: bool = False
) -> LineFit:
    """Weighted least squares of ``log_ratio`` on ``fan_in_sum``.

    R^2 is the weighted coefficient of determination about the weighted mean of y.

    >>> s = np.array([0.1, 0.2, 0.4])
    >>> round(fit_line(s, 1.6 * s, np.ones(3)).alpha, 6)  # through the origin (Eq. 9)
    1.6
    """
    s, y, w = (np.asarray(a, dtype=np.float64) for a in (fan_in_sum, log_ratio, weights))
    design = np.column_stack([np.ones_like(s), s]) if intercept else s[:, None]
    root_w = np.sqrt(w)
    coefficients, *_ = np.linalg.lstsq(design * root_w[:, None], y * root_w, rcond=None)
    fitted = design @ coefficients
    residuals = y - fitted
    dof = max(len(y) - design.shape[1], 1)
    # Scale the covariance by the reduced chi^2 so the se reflects the actual scatter.
    sigma2 = float(np.sum(w * residuals**2) / dof)
    covariance = sigma2 * np.linalg.inv(design.T @ (design * w[:, None]))
    mean_y = np.sum(w * y) / np.sum(w)
    total = np.sum(w * (y - mean_y) ** 2)
    r2 = 1.0 - np.sum(w * residuals**2) / total if total > 0 else float("nan")
    return LineFit(
        alpha=float(coefficients[-1]),
        intercept=float(coefficients[0]) if intercept else 0.0,
        alpha_se=float(np.sqrt(covariance[-1, -1])),
        r2=float(r2),
        fitted=fitted,
        residuals=residuals,
    )


def bootstrap_log_ratios(
    samples: np.ndarray, replicates: int, rng: np.random.Generator, batch: int = 64
) -> np.ndarray:
    """``replicates`` bootstrap values of log(mean(K^2)/mean(K)^2) for one width."""
    k = np.asarray(samples, dtype=np.float64)
    out = np.empty(replicates)
    for start in range(0, replicates, batch):
        size = min(batch, replicates - start)
        draw = k[rng.integers(0, k.size, size=(size, k.size))]
        out[start : start + size] = np.log((draw * draw).mean(1) / draw.mean(1) ** 2)
    return out


def bootstrap_interval(
    fan_in_sum: np.ndarray,
    replicate_log_ratios: np.ndarray,
    weights: np.ndarray,
    intercept: bool,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of alpha refitted on each replicate (rows of the (B, widths) array)."""
    alphas = np.array(
        [fit_line(fan_in_sum, y, weights, intercept).alpha for y in replicate_log_ratios]
    )
    tail = (1 - level) / 2
    low, high = np.quantile(alphas, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class AlphaFit:
    """Eq. 9 fitted to a grid of widths.

    Attributes:
        alpha: the WLS slope; ``alpha_se`` its standard error.
        ci_low, ci_high: the percentile bootstrap interval at ``ci_level``.
        intercept: 0 unless fitted with one.
        r2: weighted R^2 of the line.
        moments: one row per width: ``width``, ``fan_in_sum``, the :class:`WidthMoments`
            fields, ``fitted_log_ratio`` and ``residual``.
    """

    alpha: float
    alpha_se: float
    ci_low: float
    ci_high: float
    ci_level: float
    intercept: float
    r2: float
    moments: pd.DataFrame


def fit_eq9(
    widths: Sequence[int],
    fan_in_sum: Callable[[np.ndarray], np.ndarray],
    samples_of: Callable[[int], np.ndarray],
    seed: int,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    intercept: bool = False,
) -> AlphaFit:
    """Moments per width, the WLS fit of Eq. 9 and its bootstrap interval.

    ``samples_of(width)`` returns that width's NTK samples; one width is held at a time. The
    bootstrap of width n draws from ``derive_seed(seed, n, BOOTSTRAP_STREAM)``.

    >>> rng = np.random.default_rng(0)
    >>> s = lambda n: 1.0 / np.asarray(n, dtype=float)  # S(n) = 1/n
    >>> draws = lambda n: rng.lognormal(0.0, np.sqrt(2.0 / n), 4000)  # log ratio = 2/n
    >>> round(fit_eq9([8, 16, 32, 64], s, draws, seed=0, bootstrap=50).alpha, 1)
    2.0
    """
    rows, replicates = [], []
    for width in widths:
        k = samples_of(width)
        moments = width_moments(k)
        if not (moments.mean > 0 and np.isfinite(moments.log_ratio)):
            raise ValueError(f"width {width}: mean NTK entry {moments.mean} gives no log-ratio")
        rows.append({"width": width, **dataclasses.asdict(moments)})
        rng = np.random.default_rng(derive_seed(seed, width, BOOTSTRAP_STREAM))
        replicates.append(bootstrap_log_ratios(k, bootstrap, rng))
    frame = pd.DataFrame(rows)
    frame.insert(1, "fan_in_sum", fan_in_sum(frame["width"].to_numpy()))
    weights = 1.0 / np.maximum(frame["se_log_ratio"].to_numpy(), 1e-12) ** 2
    fit = fit_line(frame["fan_in_sum"], frame["log_ratio"], weights, intercept)
    frame["fitted_log_ratio"] = fit.fitted
    frame["residual"] = fit.residuals
    low, high = bootstrap_interval(
        frame["fan_in_sum"].to_numpy(), np.stack(replicates, axis=1), weights, intercept, ci_level
    )
    return AlphaFit(fit.alpha, fit.alpha_se, low, high, ci_level, fit.intercept, fit.r2, frame)


#: Below this R^2 the fit of Eq. 9 through the origin is called weak.
WEAK_R2 = 0.9


@dataclass(frozen=True)
class LawChecks:
    """Whether Eq. 9 describes the block, from a fit's moments: each figure is reported beside
    alpha (alpha.parquet) and each failed check is a warning; nothing is hidden.

    Attributes:
        mean_slope, mean_slope_se: the slope of log E[K] on log n and its standard error; 0
            in the NTK parameterisation, where the mean kernel settles as the block widens.
        r2, r2_intercept: weighted R^2 of the fit through the origin (Eq. 9) and of a fit with
            an intercept: a much better line with an intercept says the origin is off.
        log_ratio_positive: log(E[K^2]/E[K]^2) > 0 at every width.
        log_ratio_falls: it is smaller at the widest width than at the narrowest.
        warnings: one line for each check that fails.
        mean_grows: E[K] grows with n (one of the warnings): not NTK-parameterised.
    """

    mean_slope: float
    mean_slope_se: float
    r2: float
    r2_intercept: float
    log_ratio_positive: bool
    log_ratio_falls: bool
    warnings: tuple[str, ...]
    mean_grows: bool = False


def check_law(moments: pd.DataFrame, r2: float, flat_slope: float = 0.1) -> LawChecks:
    """The checks of :class:`LawChecks` on a fit's ``moments`` (:func:`fit_eq9`'s frame) and
    R^2 through the origin. Warnings: E[K] growing with n (slope more than ``flat_slope``
    above 0 by two standard errors: the block is not NTK-parameterised), a log-ratio that is
    not positive or does not fall with n, and a weak fit (R^2 below :data:`WEAK_R2`)."""
    weights = 1.0 / np.maximum(moments["se_log_ratio"].to_numpy(dtype=np.float64), 1e-12) ** 2
    r2_intercept = fit_line(moments["fan_in_sum"], moments["log_ratio"], weights, True).r2
    warnings = []
    if r2 < WEAK_R2:
        warnings.append(
            f"weak fit of Eq. 9 (R^2 = {r2:.3f} < {WEAK_R2}; {r2_intercept:.3f} with an "
            "intercept): check the curve against a fit with --intercept before trusting it"
        )
    widths = moments["width"].to_numpy(dtype=np.float64)
    log_n, log_mean = np.log(widths), np.log(moments["mean"].to_numpy(dtype=np.float64))
    centred = log_n - log_n.mean()
    slope = float(centred @ (log_mean - log_mean.mean()) / (centred @ centred))
    residual = log_mean - log_mean.mean() - slope * centred
    dof = max(1, len(widths) - 2)
    se = float(np.sqrt(residual @ residual / dof / (centred @ centred)))
    grows = slope - 2 * se > flat_slope
    if grows:
        warnings.append(
            f"E[K] grows with n (slope of log E[K] on log n: {slope:.2f} +- {se:.2f}): the block "
            "is not in the NTK parameterisation, and Eq. 9's alpha does not describe it"
        )
    ratio = moments["log_ratio"].to_numpy(dtype=np.float64)
    positive, falls = bool((ratio > 0).all()), bool(ratio[-1] < ratio[0])
    if not positive:
        warnings.append("log(E[K^2] / E[K]^2) is not positive at every width")
    elif not falls:
        warnings.append(
            f"log(E[K^2] / E[K]^2) does not fall with n ({ratio[0]:.3g} at n={int(widths[0])}, "
            f"{ratio[-1]:.3g} at n={int(widths[-1])})"
        )
    return LawChecks(slope, se, r2, float(r2_intercept), positive, falls, tuple(warnings), grows)
