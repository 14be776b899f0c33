"""Primal and dual curves of a collegial-ensemble space (Eqs. 8-14, Algorithm 2).

With relative NTK variance ``v(n) = exp(alpha * S(n)) - 1`` of one member (Eq. 9, in units of
E[K]^2) and Var(K_e) = v(n) / m for m independent members (Eq. 11):

* primal (optimally smooth, Eq. 12): ``m_p(n) = beta_s / beta(n)`` members keep the parameter
  budget of the baseline; the optimum minimises ``v(n) / m_p(n)``;
* dual (optimally compact, Eq. 14): ``m_d(n) = v(n) / v(n~)`` members match the baseline's
  variance; the optimum maximises ``rho(n) = beta_s / (m_d(n) * beta(n))``.

Both optima minimise ``v(n) * beta(n)``, so n_p == n_d (strong duality); only m differs.

Cost models. ``cost="block"`` (the default, the paper's construction) takes beta(n) from ONE
member of the block whose alpha was fitted. ``cost="network"`` uses the whole network's exact
count instead, which is affine in m for fixed n: ``P(m, n) = fixed + m * per_member(n)``
(stem, shortcuts and classifier do not grow with m). Then ``m_p = (P_s - fixed) / per_member(n)``
and ``rho = P_s / P(m_d, n)``. Strong duality still holds: both optima minimise
``v(n) * per_member(n)``. For ``fc`` and ``resnext-block`` the two models coincide.

Integer correction (Algorithm 2, last line). Primal: the integer m whose *whole network* count
is closest to the baseline's (ties to the smaller m). Dual: m_d rounded to the nearest integer
(at least 1), as Algorithm 2 says; this reproduces the paper's 10x10d, 14x10d, 3x23d and 4x16d.
Every table reports rho and Var(K_e) of the integer models from real counts as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ce_ray.spaces import METRICS, Metric, Space

Formulation = Literal["primal", "dual"]
FORMULATIONS: tuple[str, ...] = ("primal", "dual")
CostModel = Literal["block", "network"]
COST_MODELS: tuple[str, ...] = ("block", "network")

#: Columns of every curve table, in order.
CURVE_COLUMNS: tuple[str, ...] = (
    "n",  # member width
    "fan_in_sum",  # S(n)
    "var_member",  # exp(alpha S(n)) - 1: Var(K)/E[K]^2 of one member
    "m_curve",  # m_p(n) or m_d(n), real-valued
    "var_ensemble_curve",  # var_member / m_curve
    "rho_curve",  # cost efficiency on the real-valued curve
    "m",  # integer multiplicity after correction
    "params",  # exact parameter count of the whole network (m, n)
    "flops",  # multiply-accumulates per example of the whole network (m, n)
    "var_ensemble",  # var_member / m
    "rho",  # baseline cost / real cost of (m, n), in the chosen metric
)


@dataclass(frozen=True)
class Curve:
    """A primal or dual curve over a width grid, with its optimum.

    Attributes:
        table: one row per width, columns :data:`CURVE_COLUMNS`.
        optimum: the table's row at the optimum of the real-valued curve.
        baseline: the baseline's row (n = n~, m = 1, rho = 1).
    """

    space: Space
    formulation: Formulation
    alpha: float
    baseline_width: int
    metric: Metric
    cost: CostModel
    table: pd.DataFrame

    @property
    def optimum(self) -> pd.Series:
        column = "var_ensemble_curve" if self.formulation == "primal" else "rho_curve"
        values = self.table[column].to_numpy()
        index = np.argmin(values) if self.formulation == "primal" else np.argmax(values)
        return self.table.iloc[int(index)]

    @property
    def baseline(self) -> pd.Series:
        return self.table.loc[self.table["n"] == self.baseline_width].iloc[0]


def parse_widths(text: str) -> np.ndarray:
    """``"LO:HI"`` (inclusive) or ``"LO:HI:STEP"`` or ``"8,16,32"`` -> sorted unique widths."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi, step = (*parts, 1) if len(parts) == 2 else parts
            if step < 1 or hi < lo:
                raise ValueError
            widths = np.arange(lo, hi + 1, step, dtype=np.int64)
        else:
            widths = np.array([int(p) for p in text.split(",")], dtype=np.int64)
    except ValueError:
        raise ValueError(
            f"widths must be LO:HI, LO:HI:STEP (LO <= HI, STEP >= 1) or a comma list of "
            f"integers; got {text!r}"
        ) from None
    if widths.size == 0 or widths.min() < 1:
        raise ValueError(f"widths must be positive integers; got {text!r}")
    return np.unique(widths)


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0; got {alpha!r}")
    return alpha


def curve(
    space: Space,
    alpha: float,
    baseline_width: int,
    widths: np.ndarray | None = None,
    formulation: Formulation = "primal",
    metric: Metric = "params",
    cost: CostModel = "block",
) -> Curve:
    """The primal or dual curve of ``space`` around the baseline ``(m=1, n=baseline_width)``.

    Args:
        space: the architecture family.
        alpha: the fitted constant of Eq. 9 (> 0).
        baseline_width: n~, the baseline's width; must lie in ``widths``.
        widths: the grid of member widths (positive integers); default ``1..baseline_width``.
        formulation: ``"primal"`` (same budget, least variance) or ``"dual"`` (same variance,
            least budget).
        metric: the budget -- ``"params"`` or ``"flops"``.
        cost: ``"block"`` (the paper's curve from one member of the fitted block) or
            ``"network"`` (the whole network's exact count).
    """
    alpha = check_alpha(alpha)
    if formulation not in FORMULATIONS:
        allowed = ", ".join(FORMULATIONS)
        raise ValueError(f"formulation must be one of {allowed}; got {formulation!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if cost not in COST_MODELS:
        raise ValueError(f"cost must be one of {', '.join(COST_MODELS)}; got {cost!r}")
    if isinstance(baseline_width, bool) or int(baseline_width) != baseline_width:
        raise ValueError(f"baseline width must be an integer; got {baseline_width!r}")
    baseline_width = int(baseline_width)
    if baseline_width < 1:
        raise ValueError(f"baseline width must be a positive integer; got {baseline_width}")
    n = np.arange(1, baseline_width + 1) if widths is None else np.unique(np.asarray(widths))
    if n.size == 0 or n.min() < 1 or not np.issubdtype(n.dtype, np.integer):
        raise ValueError("widths must be a non-empty grid of positive integers")
    n = n.astype(np.int64)
    if baseline_width not in n:
        raise ValueError(
            f"baseline width {baseline_width} is outside the width grid {n.min()}..{n.max()}"
        )

    # Per-member cost and the part that does not grow with m, as float64 for the curve.
    if cost == "block":
        fixed = 0.0
        per_member = np.asarray(space.block_cost(n, metric), dtype=np.float64)
        baseline_cost = float(space.block_cost(baseline_width, metric))
    else:
        fixed, per_member = _network_cost_affine(space, n, metric)
        baseline_cost = float(space.network_cost(1, baseline_width, metric))

    fan_in_sum = space.fan_in_sum(n)
    var_member = np.expm1(alpha * fan_in_sum)
    var_baseline = math.expm1(alpha * float(space.fan_in_sum(baseline_width)))

    if formulation == "primal":
        m_curve = (baseline_cost - fixed) / per_member
        var_ensemble_curve = var_member / m_curve
        rho_curve = np.ones_like(m_curve)
        m = _closest_budget_m(space, n, metric, baseline_width)
    else:
        m_curve = var_member / var_baseline
        var_ensemble_curve = np.full_like(m_curve, var_baseline)
        rho_curve = baseline_cost / (fixed + m_curve * per_member)
        m = np.maximum(1, np.floor(m_curve + 0.5)).astype(np.int64)

    real_baseline_cost = float(space.network_cost(1, baseline_width, metric))
    table = pd.DataFrame(
        {
            "n": n,
            "fan_in_sum": fan_in_sum,
            "var_member": var_member,
            "m_curve": m_curve,
            "var_ensemble_curve": var_ensemble_curve,
            "rho_curve": rho_curve,
            "m": m,
            "params": np.asarray(space.num_params(m, n), dtype=np.int64),
            "flops": np.asarray(space.flops(m, n), dtype=np.int64),
            "var_ensemble": var_member / m,
            "rho": real_baseline_cost / np.asarray(space.network_cost(m, n, metric), np.float64),
        },
        columns=list(CURVE_COLUMNS),
    )
    return Curve(space, formulation, alpha, baseline_width, metric, cost, table)


def _network_cost_affine(space: Space, n: np.ndarray, metric: Metric) -> tuple[float, np.ndarray]:
    """``(fixed, per_member)`` with whole-network cost ``fixed + m * per_member(n)``."""
    one = np.asarray(space.network_cost(1, n, metric), dtype=np.float64)
    per_member = np.asarray(space.network_cost(2, n, metric), dtype=np.float64) - one
    return float(one[0] - per_member[0]), per_member


def _closest_budget_m(
    space: Space, n: np.ndarray, metric: Metric, baseline_width: int
) -> np.ndarray:
    """Per width, the integer m >= 1 whose whole-network cost is closest to the baseline's.

    The cost is affine and increasing in m, so the answer is the floor or the ceiling of the
    real root; the two candidates are compared on exact integer counts (ties: smaller m).
    """
    target = int(space.network_cost(1, baseline_width, metric))
    fixed, per_member = _network_cost_affine(space, n, metric)
    lower = np.maximum(1, np.floor((target - fixed) / per_member)).astype(np.int64)
    upper = lower + 1
    lower_gap = np.abs(np.asarray(space.network_cost(lower, n, metric), dtype=np.int64) - target)
    upper_gap = np.abs(np.asarray(space.network_cost(upper, n, metric), dtype=np.int64) - target)
    return np.where(upper_gap < lower_gap, upper, lower)
