"""The report's paper metric and its rank correlation, on hand-made trial tables."""

import numpy as np
import pandas as pd
import pytest

from ce_ray.results import plots
from ce_ray.results.report import TEST_ERROR, rank_correlation, summary
from ce_ray.results.tables import last_epochs_mean


def trials(formulation, predicted, errors_per_point):
    rows = []
    for n, (value, errors) in enumerate(zip(predicted, errors_per_point, strict=True), start=1):
        for seed_index, error in enumerate(errors):
            rows.append(
                {
                    "formulation": formulation,
                    "n": n,
                    "m": 1,
                    "label": f"1x{n}d",
                    "role": "curve",
                    "params": 10,
                    "rho": value,
                    "var_ensemble": value,
                    "seed_index": seed_index,
                    TEST_ERROR: error,
                    "status": "finished",
                    "retries": 0,
                }
            )
    return pd.DataFrame(rows)


def test_the_paper_metric_averages_the_last_ten_epochs():
    errors = pd.Series(np.arange(1.0, 26.0))
    assert last_epochs_mean(errors) == np.mean(np.arange(16.0, 26.0))
    assert last_epochs_mean(errors.iloc[:4]) == 2.5  # fewer than 10: all of them


def test_a_reversed_ranking_is_minus_one_and_the_interval_holds_it():
    table = trials("primal", [0.1, 0.2, 0.3, 0.4], [[9, 8.5], [7, 7.5], [5, 5.2], [3, 3.1]])
    result = rank_correlation(table, replicates=200)
    assert result.predictor == "var_ensemble" and result.points == 4
    assert result.spearman == -1.0 and result.ci_low <= -1.0 <= result.ci_high


def test_the_dual_curve_is_ranked_by_rho_and_the_bootstrap_is_seeded():
    table = trials("dual", [1.0, 2.0, 3.0], [[5, 6, 4], [5.5, 4.5, 6], [6, 5, 4.8]])
    first, again = rank_correlation(table, seed=3), rank_correlation(table, seed=3)
    assert first.predictor == "rho" and first == again
    assert first.ci_low < first.spearman < first.ci_high or np.isnan(first.spearman)


def test_equal_predictions_have_no_rank_correlation():
    table = trials("dual", [1.0, 1.0], [[5, 6], [4, 7]])
    assert np.isnan(rank_correlation(table, replicates=10).spearman)


@pytest.mark.parametrize("column", ["test_error", "test_error_se"])
def test_summary_uses_the_paper_metric(column):
    table = summary(trials("primal", [0.1, 0.2], [[2.0, 4.0], [6.0, 6.0]]))
    expected = {"test_error": [3.0, 6.0], "test_error_se": [1.0, 0.0]}[column]
    np.testing.assert_allclose(table[column], expected)


def test_the_test_error_plot_labels_the_trained_widths_only():
    table = summary(trials("primal", [0.1, 0.2, 0.3], [[5.0, 6.0], [4.0, 4.5], [3.0, 3.5]]))
    figure = plots.test_error_figure(table, "primal")
    axis = figure.axes[0].xaxis
    figure.canvas.draw()
    assert [label.get_text() for label in axis.get_ticklabels()] == ["1", "2", "3"]
    assert len(axis.get_minor_ticks()) == 0 or not any(
        label.get_text() for label in axis.get_ticklabels(minor=True)
    )


def test_the_variance_plot_labels_every_point_at_its_predicted_variance():
    table = summary(trials("primal", [0.1, 0.2, 0.3], [[5.0, 6.0], [4.0, 4.5], [3.0, 3.5]]))
    figure = plots.error_against_variance_figure(table, "primal")
    axes = figure.axes[0]
    labelled = {text.get_text(): text.xy for text in axes.texts}
    columns = (table["n"], table["var_ensemble"], table["test_error"])
    assert labelled == {f"1x{n}d": (v, e) for n, v, e in zip(*columns, strict=True)}
    assert plots.error_against_variance_png(table, "primal").startswith(b"\x89PNG")


def test_reading_results_runs_no_code_they_name(tmp_path, monkeypatch, capsys):
    """A colleague's (or a shared bucket's) results whose sweep.json names a module placed
    beside them: ``ce-ray report`` prints the table, and the module never runs."""
    import json
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ce_ray import cli
    from ce_ray.results import storage

    values = {pa.string(): "x", pa.int64(): 1, pa.float64(): 1.0}
    row = {field.name: values[field.type] for field in storage.TRIALS_SCHEMA}
    row |= {"formulation": "primal", "status": "finished", "role": "baseline", "label": "1x1d"}
    pq.write_table(
        pa.Table.from_pylist([row], schema=storage.TRIALS_SCHEMA), tmp_path / "trials.parquet"
    )
    marker = tmp_path / "planted-code-ran"
    (tmp_path / "planted_member.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef member(n):\n    raise SystemExit\n"
    )
    from ce_ray.configs import SweepConfig
    from ce_ray.theory.by_name import make_space

    member = make_space("tests.theory.test_member:fc_member", input_shape=(64,))
    sweep = SweepConfig.from_preset("digits-mlp", alpha=1.0, member=member).to_json()
    (tmp_path / "sweep.json").write_text(json.dumps(sweep | {"member": "planted_member:member"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["report", ".", "--no-plots"]) == 0
    assert "1x1d" in capsys.readouterr().out
    assert not marker.exists() and "planted_member" not in sys.modules
