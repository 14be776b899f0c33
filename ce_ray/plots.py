"""Every figure ce-ray draws, as PNG bytes (the caller stores them). Matplotlib, Agg backend.

* :func:`alpha_fit_png` -- fit-alpha: log(E[K^2]/E[K]^2) against S(n) and the fitted line.
* :func:`curves_png` -- a sweep: the primal curve (predicted Var(K_e)) and the dual curve
  (efficiency rho) over n, trained points marked (Fig. 3 style).
* :func:`test_error_png` -- a sweep: final test error against n, mean and standard error
  over seeds (Fig. 6 style).
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd

from ce_ray.alpha import AlphaFit

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend


def _png(figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def alpha_fit_png(fit: AlphaFit) -> bytes:
    frame = fit.moments
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.errorbar(
        frame["fan_in_sum"], frame["log_ratio"], yerr=1.96 * frame["se_log_ratio"],
        fmt="o", capsize=3, label="Monte Carlo (95% error bars)",
    )  # fmt: skip
    s = np.linspace(0, frame["fan_in_sum"].max() * 1.05, 100)
    axes.plot(
        s, fit.intercept + fit.alpha * s,
        label=f"alpha = {fit.alpha:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}]",
    )  # fmt: skip
    for _, row in frame.iterrows():
        axes.annotate(f"n={int(row['width'])}", (row["fan_in_sum"], row["log_ratio"]), fontsize=7)
    axes.set_xlabel("S(n) = sum of 1 / fan-in")
    axes.set_ylabel("log(E[K^2] / E[K]^2)")
    axes.set_title(f"Fit of Eq. 9, R^2 = {fit.r2:.4f}")
    axes.legend()
    return _png(figure, dpi=120)


def curves_png(curves: pd.DataFrame, trained_widths: set[int]) -> bytes:
    """``curves``: curves.parquet's long table (both formulations)."""
    figure, (primal_axes, dual_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axes, formulation, column, label in (
        (primal_axes, "primal", "var_ensemble_curve", "predicted Var(K_e) / E[K]^2"),
        (dual_axes, "dual", "rho_curve", "parameter efficiency rho"),
    ):
        table = curves[curves["formulation"] == formulation]
        axes.plot(table["n"], table[column], color="tab:blue", label=f"{formulation} curve")
        best = table[column].idxmin() if formulation == "primal" else table[column].idxmax()
        axes.plot(table.loc[best, "n"], table.loc[best, column], "*", color="tab:red",
                  markersize=14, label=f"optimum n={int(table.loc[best, 'n'])}")  # fmt: skip
        marked = table[table["n"].isin(trained_widths)]
        axes.plot(marked["n"], marked[column], "o", color="tab:orange", label="trained")
        axes.set_xscale("log")
        if formulation == "primal":
            axes.set_yscale("log")
        axes.set_xlabel("member width n")
        axes.set_ylabel(label)
        axes.set_title(f"{formulation} (alpha = {table['alpha'].iloc[0]:.3g})")
        axes.legend()
    return _png(figure)


def test_error_png(summary: pd.DataFrame, formulation: str) -> bytes:
    """``summary``: ``ce_ray.report.summary`` of the trials."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    axes.errorbar(summary["n"], summary["test_error"], yerr=summary["test_error_se"].fillna(0),
                  fmt="o-", capsize=3)  # fmt: skip
    for _, row in summary.iterrows():
        axes.annotate(row["label"], (row["n"], row["test_error"]), fontsize=8,
                      textcoords="offset points", xytext=(4, 4))  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("member width n")
    axes.set_ylabel("final test error (%)")
    axes.set_title(f"Points on the {formulation} curve (mean +- s.e. over seeds)")
    return _png(figure)
