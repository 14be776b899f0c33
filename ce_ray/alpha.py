"""Fit alpha of Eq. 9 from NTK samples (Algorithm 1, lines 6-7). Pure numpy.

Per width n with T samples K_1..K_T:

    y(n) = log(mean(K^2) / mean(K)^2)   (the log of the normalised second moment)

and Eq. 9 says y(n) = alpha * S(n). The fit is weighted least squares with weights
1 / se(y)^2 -- se from the delta method:

    Var(y) ~ Var(K^2)/(T m2^2) + 4 Var(K)/(T m1^2) - 4 Cov(K, K^2)/(T m1 m2)

through the origin (Eq. 9 has no intercept) or, optionally, with one. The confidence interval
is a percentile bootstrap: resample the draws within each width, refit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """Moments of one width's samples (at least 2)."""
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
