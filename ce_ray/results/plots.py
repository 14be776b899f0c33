"""Every figure ce-ray draws, as PNG bytes (the caller stores them). Matplotlib, Agg backend.

* :func:`alpha_fit_png` -- fit-alpha: log(E[K^2]/E[K]^2) against S(n) and the fitted line.
* :func:`curves_png` -- a sweep: the primal curve (predicted Var(K_e)) and the dual curve
  (efficiency rho) over n, trained points marked (Fig. 3 style).
* :func:`nmk_png`, :func:`drift_png` -- Fig. 2 (Lemma 1) and Theorem 1.
* :func:`test_error_png` -- a sweep: test error (mean of the last 10 epochs) against n, mean
  and standard error over seeds (Fig. 6 style), ticks at the trained widths.
* :func:`error_against_variance_png` -- a sweep: test error against each point's predicted
  Var(K_e), points labelled (Fig. 4/6 view).
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd

from ce_ray.theory.alpha import AlphaFit

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator


def _png(figure: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def alpha_fit_png(fit: AlphaFit) -> bytes:
    frame = fit.moments
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.errorbar(
        frame["fan_in_sum"],
        frame["log_ratio"],
        yerr=1.96 * frame["se_log_ratio"],
        fmt="o",
        capsize=3,
        label="Monte Carlo (95% error bars)",
    )
    s = np.linspace(0, frame["fan_in_sum"].max() * 1.05, 100)
    axes.plot(
        s,
        fit.intercept + fit.alpha * s,
        label=f"alpha = {fit.alpha:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}]",
    )
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
        axes.plot(
            table.loc[best, "n"],
            table.loc[best, column],
            "*",
            color="tab:red",
            markersize=14,
            label=f"optimum n={int(table.loc[best, 'n'])}",
        )
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


def _labelled_errors(axes: Axes, summary: pd.DataFrame, x: str, fmt: str) -> None:
    """Each point's test error (+- its standard error over seeds) against column ``x``,
    labelled ``MxNd``."""
    axes.errorbar(
        summary[x],
        summary["test_error"],
        yerr=summary["test_error_se"].fillna(0),
        fmt=fmt,
        capsize=3,
    )
    for _, row in summary.iterrows():
        axes.annotate(
            row["label"],
            (row[x], row["test_error"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(4, 4),
        )


def test_error_figure(summary: pd.DataFrame, formulation: str) -> Figure:
    """Test error against n on a log axis whose ticks are the trained widths (no minor
    ticks: on a short log range matplotlib's ``3x10^0`` labels overlap). ``summary``:
    ``ce_ray.results.report.summary`` of the trials."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    _labelled_errors(axes, summary, "n", "o-")
    axes.set_xscale("log")
    widths = sorted(int(n) for n in summary["n"])
    axes.xaxis.set_major_locator(FixedLocator(widths))
    axes.xaxis.set_major_formatter(FixedFormatter([str(n) for n in widths]))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("member width n")
    axes.set_ylabel("test error (%), mean of the last 10 epochs")
    axes.set_title(f"Points on the {formulation} curve (mean +- s.e. over seeds)")
    return figure


def test_error_png(summary: pd.DataFrame, formulation: str) -> bytes:
    return _png(test_error_figure(summary, formulation))


def error_against_variance_figure(summary: pd.DataFrame, formulation: str) -> Figure:
    """The paper's Fig. 4/6 view: each point's test error against its predicted Var(K_e)
    (Eq. 12), labelled ``MxNd``; the primal curve's claim is that error grows with it."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    _labelled_errors(axes, summary, "var_ensemble", "o")
    axes.set_xlabel("predicted Var(K_e) (Eq. 12)")
    axes.set_ylabel("test error (%), mean of the last 10 epochs")
    axes.set_title(f"Test error against the predicted variance ({formulation} points)")
    return figure


def error_against_variance_png(summary: pd.DataFrame, formulation: str) -> bytes:
    return _png(error_against_variance_figure(summary, formulation))


def nmk_png(
    kernels: pd.DataFrame,
    summary: pd.DataFrame,
    fit: pd.DataFrame,
    wide_nmk: dict[str, np.ndarray],
    gammas: np.ndarray,
    wide_width: int,
) -> bytes:
    """Fig. 2 style: (a) ensembles' K(x_0, x_gamma) at the largest width for a small, a middle
    and the largest m, against the NMK; (b) the mean squared distance to the NMK against m;
    (c) the NMK of each width against the wide model's."""
    figure, (curves_axes, distance_axes, width_axes) = plt.subplots(1, 3, figsize=(16, 4.4))
    widest = kernels[(kernels["n"] == kernels["n"].max()) & (kernels["entry"] == "off_diagonal")]
    ms = sorted(widest["m"].unique())
    for m in (ms[0], ms[len(ms) // 2], ms[-1]):
        draw = widest[(widest["m"] == m) & (widest["draw"] == 0)]
        curves_axes.plot(draw["gamma"], draw["kernel"], lw=1, label=f"one ensemble, m={m}")
    first = widest[(widest["m"] == ms[0]) & (widest["draw"] == 0)]
    curves_axes.plot(first["gamma"], first["nmk"], "k", lw=2, label="NMK estimate")
    curves_axes.set_xlabel("gamma")
    curves_axes.set_ylabel("K(x_0, x_gamma)")
    curves_axes.set_title(f"(a) n = {int(kernels['n'].max())}")
    curves_axes.legend(fontsize=7)
    for (n, entry), group in summary.groupby(["n", "entry"], sort=True):
        slope = fit[(fit["n"] == n) & (fit["entry"] == entry)]["slope_m"].iloc[0]
        distance_axes.loglog(
            group["m"],
            group["mean_squared_distance"],
            "o-",
            ms=3,
            label=f"n={n} {entry}: slope {slope:.2f}",
        )
    reference = summary[summary["m"] == summary["m"].min()]["mean_squared_distance"].max()
    m_range = np.array([summary["m"].min(), summary["m"].max()], dtype=float)
    distance_axes.loglog(m_range, reference * m_range[0] / m_range, "k--", label="slope -1")
    distance_axes.set_xlabel("m")
    distance_axes.set_ylabel("mean over gamma of (K_e - NMK)^2")
    distance_axes.set_title("(b) Lemma 1: K_e -> NMK")
    distance_axes.legend(fontsize=6)
    for entry, style in (("off_diagonal", "-"), ("diagonal", ":")):
        nmks = kernels[(kernels["entry"] == entry) & (kernels["draw"] == 0)]
        for n, group in nmks[nmks["m"] == nmks["m"].min()].groupby("n", sort=True):
            width_axes.plot(group["gamma"], group["nmk"], style, lw=1, label=f"n={n} {entry}")
        width_axes.plot(gammas, wide_nmk[entry], "k" + style, lw=2, label=f"n={wide_width} {entry}")
    width_axes.set_xlabel("gamma")
    width_axes.set_ylabel("NMK")
    width_axes.set_title("(c) the NMK hardly depends on n")
    width_axes.legend(fontsize=6)
    return _png(figure)


def drift_png(runs: pd.DataFrame, fit: pd.DataFrame) -> bytes:
    """Theorem 1: the ensemble NTK's relative drift at the last recorded time against m n."""
    last = runs[runs["time"] == runs["time"].max()]
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for n, group in last.groupby("n", sort=True):
        axes.loglog(group["m"] * group["n"], group["drift"], "o", ms=4, label=f"n={n}")
    product = (last["m"] * last["n"]).to_numpy(dtype=float)
    span = np.array([product.min(), product.max()])
    anchor = last["drift"].max() * span[0]
    axes.loglog(span, anchor / span, "k--", label="slope -1 (Theorem 1)")
    row = fit.iloc[-1]
    axes.set_title(
        f"t = {row['time']:.3g}: drift ~ m^{row['exponent_m']:.2f} n^{row['exponent_n']:.2f}"
    )
    axes.set_xlabel("m n")
    axes.set_ylabel("||K_e(t) - K_e(0)||_F / ||K_e(0)||_F")
    axes.legend(fontsize=7)
    return _png(figure)
