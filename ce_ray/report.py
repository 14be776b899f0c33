"""``ce-ray report RESULTS_DIR``: a sweep's table and plots (``ce_ray.plots``).

The table has one row per point: label, params, rho, predicted Var(K_e), final test error
(mean and standard error over seeds), status and retries. The plots are ``curves.png`` and
``test_error.png`` in the results directory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ce_ray import plots, storage


def summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per point (n, m) of trials.parquet: its curve values and the test error over seeds."""
    grouped = trials.groupby(["n", "m"], sort=True)
    table = grouped.agg(
        label=("label", "first"),
        role=("role", "first"),
        params=("params", "first"),
        rho=("rho", "first"),
        var_ensemble=("var_ensemble", "first"),
        seeds=("seed_index", "count"),
        test_error=("final_test_error", "mean"),
        test_error_se=("final_test_error", lambda e: e.std(ddof=1) / np.sqrt(len(e))),
        status=("status", lambda s: ",".join(sorted(set(s)))),
        retries=("retries", "sum"),
    )
    return table.reset_index()


def format_summary(table: pd.DataFrame) -> str:
    return table.to_string(
        index=False,
        formatters={
            "params": "{:,}".format,
            "rho": "{:.2f}".format,
            "var_ensemble": "{:.4f}".format,
            "test_error": "{:.2f}".format,
            "test_error_se": "{:.2f}".format,
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


def report(directory: str, with_plots: bool = True) -> str:
    """The table as text (and, unless told not to, the PNGs written into ``directory``)."""
    trials_path = storage.join(directory, "trials.parquet")
    if not storage.exists(trials_path):
        raise ValueError(f"{directory} has no trials.parquet (not a sweep's results directory)")
    trials = storage.read_parquet(trials_path).to_pandas()
    table = summary(trials)
    lines = [
        format_summary(table),
        f"results: {directory}/trials.parquet, {directory}/epochs.parquet",
    ]
    if with_plots:
        write_plots(directory, trials, table)
        lines.append(f"plots: {directory}/curves.png, {directory}/test_error.png")
    return "\n".join(lines)
