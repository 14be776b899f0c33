"""``ce-ray report RESULTS_DIR``: the sweep's plots and a short table.

* ``curves.png`` -- the primal curve (predicted Var(K_e)) and the dual curve (efficiency rho)
  over n, with the trained points marked (Fig. 3 style);
* ``test_error.png`` -- final test error against n, mean and standard error over seeds
  (Fig. 6 style).
"""

from __future__ import annotations

import io as stdio

import numpy as np
import pandas as pd

from ce_ray import io


def summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per point: label, params, rho, predicted Var(K_e), test error mean and standard error."""
    grouped = trials.groupby(["n", "m"], sort=True)
    table = grouped.agg(
        label=("label", "first"),
        role=("role", "first"),
        params=("params", "first"),
        rho=("rho", "first"),
        var_ensemble=("var_ensemble", "first"),
        seeds=("seed", "count"),
        test_error=("final_test_error", "mean"),
        test_error_se=("final_test_error", lambda e: e.std(ddof=1) / np.sqrt(len(e))),
        status=("status", lambda s: ",".join(sorted(set(s)))),
        retries=("retries", "sum"),
    )
    return table.reset_index()


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    buffer = stdio.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def plot_curves(curves: pd.DataFrame, trials: pd.DataFrame) -> bytes:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (primal_axes, dual_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    trained = set(trials["n"])
    for axes, formulation, column, label in (
        (primal_axes, "primal", "var_ensemble_curve", "predicted Var(K_e) / E[K]^2"),
        (dual_axes, "dual", "rho_curve", "parameter efficiency rho"),
    ):
        table = curves[curves["formulation"] == formulation]
        axes.plot(table["n"], table[column], color="tab:blue", label=f"{formulation} curve")
        best = table[column].idxmin() if formulation == "primal" else table[column].idxmax()
        axes.plot(table.loc[best, "n"], table.loc[best, column], "*", color="tab:red",
                  markersize=14, label=f"optimum n={int(table.loc[best, 'n'])}")  # fmt: skip
        marked = table[table["n"].isin(trained)]
        axes.plot(marked["n"], marked[column], "o", color="tab:orange", label="trained")
        axes.set_xscale("log")
        if formulation == "primal":
            axes.set_yscale("log")
        axes.set_xlabel("member width n")
        axes.set_ylabel(label)
        axes.set_title(f"{formulation} (alpha = {table['alpha'].iloc[0]:.3g})")
        axes.legend()
    return _png(figure)


def plot_test_error(table: pd.DataFrame, formulation: str) -> bytes:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    axes.errorbar(table["n"], table["test_error"], yerr=table["test_error_se"].fillna(0),
                  fmt="o-", capsize=3)  # fmt: skip
    for _, row in table.iterrows():
        axes.annotate(row["label"], (row["n"], row["test_error"]), fontsize=8,
                      textcoords="offset points", xytext=(4, 4))  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("member width n")
    axes.set_ylabel("final test error (%)")
    axes.set_title(f"Points on the {formulation} curve (mean +- s.e. over seeds)")
    return _png(figure)


def report(directory: str, write_plots: bool = True) -> str:
    """Write the PNGs into ``directory`` and return the table as text."""
    trials_path = io.join(directory, "trials.parquet")
    if not io.exists(trials_path):
        raise ValueError(f"{directory} has no trials.parquet (not a sweep's results directory)")
    trials = io.read_parquet(trials_path).to_pandas()
    table = summary(trials)
    lines = []
    if write_plots:
        formulation = trials["formulation"].iloc[0] if len(trials) else "primal"
        curves_path = io.join(directory, "curves.parquet")
        if io.exists(curves_path):
            curves = io.read_parquet(curves_path).to_pandas()
            io.write_bytes(plot_curves(curves, trials), io.join(directory, "curves.png"))
        io.write_bytes(plot_test_error(table, formulation), io.join(directory, "test_error.png"))
        lines.append(f"plots: {directory}/curves.png, {directory}/test_error.png")
    text = table.to_string(
        index=False,
        formatters={
            "params": "{:,}".format,
            "rho": "{:.2f}".format,
            "var_ensemble": "{:.4f}".format,
            "test_error": "{:.2f}".format,
            "test_error_se": "{:.2f}".format,
        },
    )
    lines = [text, f"results: {directory}/trials.parquet, {directory}/epochs.parquet", *lines]
    return "\n".join(lines)
