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

import numpy as np
import pandas as pd

from ce_ray.choices import (
    COST_MODELS,
    FORMULATIONS,
    METRICS,
    CostModel,
    Formulation,
    Metric,
    check_choice,
)
from ce_ray.limits import MAX_ALPHA, MAX_GRID_VALUES, MAX_WIDTH
from ce_ray.theory.spaces import Space

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
            values = list(range(lo, hi + 1, step)) if (hi - lo) // step < MAX_GRID_VALUES else []
            count = (hi - lo) // step + 1
        else:
            values = [int(p) for p in text.split(",")]
            count = len(values)
    except ValueError:
        raise ValueError(
            f"widths must be LO:HI, LO:HI:STEP (LO <= HI, STEP >= 1) or a comma list of "
            f"integers; got {text!r}"
        ) from None
    if count > MAX_GRID_VALUES:
        raise ValueError(f"a width grid holds at most {MAX_GRID_VALUES} values; got {count}")
    if not values or min(values) < 1 or max(values) > MAX_WIDTH:
        raise ValueError(f"widths must be integers from 1 to {MAX_WIDTH}; got {text!r}")
    return np.unique(np.array(values, dtype=np.int64))


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float if it is finite, > 0 and at most ``MAX_ALPHA`` (ValueError)."""
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0 or alpha > MAX_ALPHA:
        raise ValueError(f"alpha must be a finite number in (0, {MAX_ALPHA:g}]; got {alpha!r}")
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

    >>> from ce_ray.theory.spaces import CifarResNeXt29Space
    >>> primal = curve(CifarResNeXt29Space(), alpha=1.6, baseline_width=128)
    >>> space = primal.space
    >>> space.label(int(primal.optimum["m"]), int(primal.optimum["n"]))
    '56x7d'
    """
    alpha = check_alpha(alpha)
    n, baseline_width = _check_grid(formulation, metric, cost, baseline_width, widths)
    fixed, per_member, baseline_cost = _cost_model(space, n, baseline_width, metric, cost)
    fan_in_sum = space.fan_in_sum(n)
    var_member = np.expm1(alpha * fan_in_sum)
    var_baseline = math.expm1(alpha * float(space.fan_in_sum(baseline_width)))
    if formulation == "primal":  # Eq. 13: spend the baseline's budget, least variance
        m_curve = (baseline_cost - fixed) / per_member
        var_ensemble_curve = var_member / m_curve
        rho_curve = np.ones_like(m_curve)
        m = _closest_budget_m(space, n, metric, baseline_width)
    else:  # Eq. 14: match the baseline's variance, least budget
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


def _check_grid(
    formulation: str, metric: str, cost: str, baseline_width: int, widths: object
) -> tuple[np.ndarray, int]:
    """The validated width grid (int64, sorted, unique) and baseline width."""
    check_choice("formulation", formulation, FORMULATIONS)
    check_choice("metric", metric, METRICS)
    check_choice("cost", cost, COST_MODELS)
    if isinstance(baseline_width, bool) or int(baseline_width) != baseline_width:
        raise ValueError(f"baseline width must be an integer; got {baseline_width!r}")
    baseline_width = int(baseline_width)
    if not 1 <= baseline_width <= MAX_WIDTH:
        raise ValueError(f"baseline width must be from 1 to {MAX_WIDTH}; got {baseline_width}")
    n = np.arange(1, baseline_width + 1) if widths is None else np.unique(np.asarray(widths))
    if n.size == 0 or n.min() < 1 or not np.issubdtype(n.dtype, np.integer):
        raise ValueError("widths must be a non-empty grid of positive integers")
    if baseline_width not in n:
        raise ValueError(
            f"baseline width {baseline_width} is outside the width grid {n.min()}..{n.max()}"
        )
    return n.astype(np.int64), baseline_width


def _cost_model(
    space: Space, n: np.ndarray, baseline_width: int, metric: Metric, cost: CostModel
) -> tuple[float, np.ndarray, float]:
    """``(fixed, per_member(n), baseline cost)``: a network of m members at width n costs
    ``fixed + m * per_member(n)``; "block" counts one member of the fitted block only."""
    if cost == "block":
        per_member = np.asarray(space.block_cost(n, metric), dtype=np.float64)
        return 0.0, per_member, float(space.block_cost(baseline_width, metric))
    fixed, per_member = _network_cost_affine(space, n, metric)
    return fixed, per_member, float(space.network_cost(1, baseline_width, metric))


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


def select_points(result: Curve, count: int) -> pd.DataFrame:
    """``count`` rows of the curve to train: the optimum, the baseline, and widths spread
    log-uniformly over the grid (each with its integer m). Column ``role`` says which.

    >>> from ce_ray.theory.spaces import FCSpace
    >>> primal = curve(FCSpace(input_dim=64, depth=4, num_classes=10), 2.4, baseline_width=64)
    >>> select_points(primal, 3)[["n", "m", "role"]].to_dict("list")
    {'n': [8, 13, 64], 'm': [18, 10, 1], 'role': ['curve', 'optimum', 'baseline']}
    """
    if count < 2:
        raise ValueError(f"--points must be >= 2 (the optimum and the baseline); got {count}")
    widths = result.table["n"].to_numpy()
    chosen = {result.baseline_width: "baseline", int(result.optimum["n"]): "optimum"}
    spare = count - len(chosen)  # the optimum's role wins a tie with the baseline
    for target in np.geomspace(widths.min(), widths.max(), spare + 2)[1:-1] if spare > 0 else []:
        free = np.array([w for w in widths if w not in chosen])
        if free.size == 0:
            break
        chosen[int(free[np.argmin(np.abs(np.log(free) - np.log(target)))])] = "curve"
    rows = result.table[result.table["n"].isin(chosen)].copy()
    rows["role"] = rows["n"].map(chosen)
    return rows.reset_index(drop=True)


# How many rows `format_curve` prints unless asked for all.
MAX_PRINTED_ROWS = 40


def _row_record(space: Space, row: pd.Series) -> dict:
    record: dict[str, int | float | str] = {
        str(k): (int(v) if k in ("n", "m", "params", "flops") else float(v)) for k, v in row.items()
    }
    record["label"] = space.label(int(row["m"]), int(row["n"]))
    return record


def curve_to_json(result: Curve) -> dict:
    """The curve as a JSON-ready dict (fields documented in the README)."""
    return {
        "space": result.space.name,
        "options": result.space.options(),
        "formulation": result.formulation,
        "metric": result.metric,
        "cost": result.cost,
        "alpha": result.alpha,
        "baseline": _row_record(result.space, result.baseline),
        "optimum": _row_record(result.space, result.optimum),
        "table": [_row_record(result.space, row) for _, row in result.table.iterrows()],
    }


def _rows_to_print(result: Curve, all_rows: bool) -> pd.DataFrame:
    """All rows, or ~MAX_PRINTED_ROWS log-spaced widths plus the optimum and the baseline."""
    table = result.table
    if all_rows or len(table) <= MAX_PRINTED_ROWS:
        return table
    positions = np.unique(np.geomspace(1, len(table), MAX_PRINTED_ROWS).astype(int) - 1)
    keep = set(positions) | {int(result.optimum.name), int(result.baseline.name)}
    return table.iloc[sorted(keep)]


def format_curve(result: Curve, all_rows: bool = False) -> str:
    """A human-readable table of the curve with its optimum and the baseline."""
    space, optimum, baseline = result.space, result.optimum, result.baseline
    shown = _rows_to_print(result, all_rows)
    if result.formulation == "primal":
        objective, what = "var_ensemble_curve", "min Var(K_e) at the baseline's budget"
    else:
        objective, what = "rho_curve", "max efficiency at the baseline's Var(K_e)"
    columns = ["n", "m_curve", objective, "m", "params", "var_ensemble", "rho"]
    text = shown[columns].to_string(
        index=False,
        formatters={
            "m_curve": "{:.2f}".format,
            "var_ensemble_curve": "{:.6f}".format,
            "rho_curve": "{:.3f}".format,
            "params": "{:,}".format,
            "var_ensemble": "{:.6f}".format,
            "rho": "{:.3f}".format,
        },
    )
    options = ", ".join(f"{k}={v}" for k, v in space.options().items())
    lines = [
        f"{result.formulation} curve of {space.name} ({options}): alpha={result.alpha:g}, "
        f"baseline 1x{result.baseline_width}d = {int(baseline['params']):,} params, "
        f"metric={result.metric}, cost={result.cost}",
        f"objective: {what}; m_curve is the real-valued m, m the integer model",
        text,
    ]
    if len(shown) < len(result.table):
        lines.append(f"({len(shown)} of {len(result.table)} widths shown; --all shows every row)")
    lines.append(
        f"optimum: n={int(optimum['n'])}, m_curve={optimum['m_curve']:.2f} -> "
        f"{space.label(int(optimum['m']), int(optimum['n']))}: "
        f"{int(optimum['params']):,} params, rho={optimum['rho']:.3f}, "
        f"Var(K_e)={optimum['var_ensemble']:.6f} (baseline {baseline['var_ensemble']:.6f})"
    )
    return "\n".join(lines)
