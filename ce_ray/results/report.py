"""``ce-ray report RESULTS_DIR``: a sweep's table, how well the curve's prediction ranked the
trained points, and the plots (``ce_ray.results.plots``).

The table has one row per point: label, params, rho, predicted Var(K_e), the paper's test error
(each trial's mean over its last 10 epochs; mean and standard error over seeds), status and
retries. The ranking is Spearman's correlation between the predictor -- Var(K_e) on the primal
curve, rho on the dual -- and that test error, with a bootstrap interval over seeds. The plots
are ``curves.png``, ``test_error.png`` and ``error_vs_variance.png`` in the results
directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ce_ray.results import plots, storage
from ce_ray.results.tables import LAST_EPOCHS, TUNED_COLUMNS
from ce_ray.theory.seeds import derive_seed

#: The column a trial's test error is read from: the paper's last-epochs mean.
TEST_ERROR = "mean_test_error_last_epochs"
#: The recipe fields a tuned sweep's table shows where they differ between points.
TUNED_FIELDS = TUNED_COLUMNS
#: The predictor each formulation ranks the points by.
PREDICTORS = {"primal": "var_ensemble", "dual": "rho"}
# Identity of the rank-correlation bootstrap's draws (with the sweep's seed when known).
BOOTSTRAP_STREAM = 0x5EA4


def summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per point (n, m) of trials.parquet: its curve values and the test error over seeds;
    of a tuned sweep also the recipe fields its search chose where they differ between
    points, that recipe's validation error in the search and the recipes tried."""
    grouped = trials.groupby(["n", "m"], sort=True)
    tuned: dict = {}
    if "recipes_tried" in trials and trials["recipes_tried"].notna().any():
        varied = [f for f in TUNED_FIELDS if f in trials and trials[f].nunique() > 1]
        tuned = {f: (f, "first") for f in varied} | {
            "val_error": ("search_val_error", "first"),
            "tried": ("recipes_tried", "first"),
        }
    table = grouped.agg(
        label=("label", "first"),
        role=("role", "first"),
        params=("params", "first"),
        rho=("rho", "first"),
        var_ensemble=("var_ensemble", "first"),
        seeds=("seed_index", "count"),
        test_error=(TEST_ERROR, "mean"),
        test_error_se=(TEST_ERROR, lambda e: e.std(ddof=1) / np.sqrt(len(e))),
        status=("status", lambda s: ",".join(sorted(set(s)))),
        retries=("retries", "sum"),
        **tuned,
    )
    return table.reset_index()


def optimum_against_baseline(table: pd.DataFrame) -> str | None:
    """Whether the curve's optimum erred less than the baseline beyond the seeds' standard
    error (of the difference of the two means); None without both points.

    >>> table = pd.DataFrame({"label": ["4x8d", "1x16d"], "role": ["optimum", "baseline"],
    ...     "test_error": [5.0, 7.0], "test_error_se": [0.3, 0.4]})
    >>> print(optimum_against_baseline(table))  # doctest: +NORMALIZE_WHITESPACE
    optimum 4x8d 5.00 % vs baseline 1x16d 7.00 %: -2.00 +- 0.50 (standard error over seeds):
    the optimum erred less, beyond the seeds' standard error
    """
    roles = table.set_index("role")
    if not {"optimum", "baseline"} <= set(roles.index):
        return None
    best, base = roles.loc["optimum"], roles.loc["baseline"]
    difference = float(best["test_error"] - base["test_error"])
    se = float(np.hypot(best["test_error_se"], base["test_error_se"]))
    if not np.isfinite(se):
        verdict = "one seed per point: no standard error to judge by"
    elif difference < -se:
        verdict = "the optimum erred less, beyond the seeds' standard error"
    elif difference > se:
        verdict = "the optimum erred MORE, beyond the seeds' standard error"
    else:
        verdict = "within the seeds' standard error: no difference shown"
    return (
        f"optimum {best['label']} {best['test_error']:.2f} % vs baseline {base['label']} "
        f"{base['test_error']:.2f} %: {difference:+.2f} +- {se:.2f} (standard error over seeds): "
        f"{verdict}"
    )


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's correlation of ``predictor`` with the test error over ``points`` points, and
    its percentile bootstrap interval over seeds (NaN when it is undefined)."""

    predictor: str
    spearman: float
    ci_low: float
    ci_high: float
    ci_level: float
    points: int

    def describe(self) -> str:
        expected = {
            "var_ensemble": "positive: points with a larger predicted Var(K_e) erred more",
            "rho": "the dual curve predicts equal errors, so near 0; positive: the more "
            "compact points erred more",
        }[self.predictor]
        return (
            f"rank correlation of {self.predictor} with the test error (Spearman, "
            f"{self.points} points): {self.spearman:.2f} ({self.ci_level:.0%} CI "
            f"{self.ci_low:.2f}..{self.ci_high:.2f}, bootstrap over seeds); {expected}"
        )


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def rank_correlation(
    trials: pd.DataFrame, replicates: int = 1000, level: float = 0.95, seed: int = 0
) -> RankCorrelation:
    """How well the curve's predictor ranked the trained points by test error.

    Each bootstrap replicate resamples every point's seeds with replacement and recomputes
    the per-point mean errors; its draws derive from ``seed``.

    >>> trials = pd.DataFrame({"formulation": "primal", "n": [1, 1, 2, 2, 3, 3],
    ...     "m": 1, "var_ensemble": [0.3, 0.3, 0.2, 0.2, 0.1, 0.1],
    ...     TEST_ERROR: [9.0, 8.0, 6.0, 7.0, 5.0, 4.0]})
    >>> rank_correlation(trials, replicates=200).spearman
    1.0
    """
    predictor = PREDICTORS[trials["formulation"].iloc[0]]
    points = [group for _, group in trials.dropna(subset=[TEST_ERROR]).groupby(["n", "m"])]
    predicted = np.array([group[predictor].iloc[0] for group in points])
    errors = [group[TEST_ERROR].to_numpy() for group in points]
    observed = _spearman(predicted, np.array([e.mean() for e in errors]))
    rng = np.random.default_rng(derive_seed(seed, BOOTSTRAP_STREAM))
    resampled = [
        _spearman(predicted, np.array([rng.choice(e, e.size).mean() for e in errors]))
        for _ in range(replicates)
    ]
    tail = (1 - level) / 2
    low, high = (
        np.nanquantile(resampled, [tail, 1 - tail])
        if np.isfinite(resampled).any()
        else (np.nan,) * 2
    )
    return RankCorrelation(predictor, observed, float(low), float(high), level, len(points))


def format_summary(table: pd.DataFrame) -> str:
    return table.to_string(
        index=False,
        formatters={
            "params": "{:,}".format,
            "rho": "{:.2f}".format,
            "var_ensemble": "{:.4f}".format,
            "test_error": "{:.2f}".format,
            "test_error_se": "{:.2f}".format,
            "val_error": "{:.2f}".format,
            **{f: "{:.3g}".format for f in TUNED_FIELDS},
        },
    )


def write_plots(directory: str, trials: pd.DataFrame, table: pd.DataFrame) -> None:
    formulation = trials["formulation"].iloc[0] if len(trials) else "primal"
    curves_path = storage.join(directory, "curves.parquet")
    if storage.exists(curves_path):
        curves = storage.read_parquet(curves_path).to_pandas()
        png = plots.curves_png(curves, set(trials["n"]))
        storage.write_bytes(png, storage.join(directory, "curves.png"))
    png = plots.test_error_png(table, formulation)
    storage.write_bytes(png, storage.join(directory, "test_error.png"))
    png = plots.error_against_variance_png(table, formulation)
    storage.write_bytes(png, storage.join(directory, "error_vs_variance.png"))


def _sweep_seed(directory: str) -> int:
    """The experiment seed in the sweep's configuration (0 when there is none), read as data:
    reading results imports nothing they name (a member's ``sweep.json`` names its module)."""
    location = storage.join(directory, "sweep.json")
    if not storage.exists(location):
        return 0
    try:
        record = storage.read_json(location)
    except ValueError:  # not JSON
        record = None
    seed = record.get("seed") if isinstance(record, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{location}: not a sweep configuration written by ce-ray")
    return seed


def report(directory: str, with_plots: bool = True) -> str:
    """The table as text (and, unless told not to, the PNGs written into ``directory``)."""
    trials_path = storage.join(directory, "trials.parquet")
    if not storage.exists(trials_path):
        raise ValueError(f"{directory} has no trials.parquet (not a sweep's results directory)")
    try:
        columns = storage.read_parquet(trials_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{trials_path}: not a Parquet file ({error})") from None
    required = set(storage.TRIALS_SCHEMA.names) - set(storage.LATER_TRIALS_COLUMNS)
    if missing := sorted(required - set(columns.column_names)):
        raise ValueError(
            f"{trials_path}: not a trials.parquet of ce-ray sweep (no {', '.join(missing[:3])})"
        )
    trials = columns.to_pandas()
    if unknown := sorted({str(value) for value in trials["formulation"]} - set(PREDICTORS)):
        raise ValueError(
            f"{trials_path}: formulation {unknown[0]!r} is not one ce-ray writes "
            f"(allowed: {', '.join(PREDICTORS)})"
        )
    table = summary(trials)
    lines = [
        f"test_error: each trial's mean top-1 error (%) over its last {LAST_EPOCHS} epochs; "
        "mean and standard error over seeds",
        format_summary(table),
        f"results: {directory}/trials.parquet, {directory}/epochs.parquet",
    ]
    if len(trials):
        ranking = rank_correlation(trials, seed=_sweep_seed(directory))
        lines.insert(2, ranking.describe())
        if against := optimum_against_baseline(table):
            lines.insert(3, against)
        if "val_error" in table:
            lines.insert(
                2,
                "tuned: each point's recipe chosen by its search on the validation split "
                "(val_error; tried: recipes per point; candidates.parquet)",
            )
    if with_plots and len(trials):
        write_plots(directory, trials, table)
        names = ("curves.png", "test_error.png", "error_vs_variance.png")
        lines.append("plots: " + ", ".join(f"{directory}/{name}" for name in names))
    elif with_plots:
        lines.append("plots: none (no trial has finished yet)")
    return "\n".join(lines)
