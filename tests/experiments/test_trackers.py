"""The MLflow runs of a sweep, against a real MLflow store (SQLite, in the test's directory):
a run is found again by its point, seed and sweep, whatever characters the sweep's directory
holds."""

import pytest

from ce_ray.configs import SweepConfig
from ce_ray.experiments import trackers

pytest.importorskip("mlflow")


def test_a_run_is_found_again_when_the_sweep_s_path_holds_a_quote(tmp_path):
    config = SweepConfig.from_preset("digits-mlp", alpha=2.4, num_points=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines: list[str] = []
    n, m = config.points[0]
    key = trackers.RunKey(config.space.label(m, n), n, m, 0)
    quoted = str(tmp_path / "it's results" / "digits-mlp-primal")
    first = trackers.MlflowRuns(uri, "quotes", quoted, config, lines.append)
    run_id, _ = first._run(key)
    # Another sweep's run of the same point and seed, in the same MLflow experiment.
    other = trackers.MlflowRuns(uri, "quotes", str(tmp_path / "other"), config, lines.append)
    other_id, _ = other._run(key)
    # A resumed sweep (a new driver) finds its own run, not the other sweep's.
    again = trackers.MlflowRuns(uri, "quotes", quoted, config, lines.append)
    assert again._run(key)[0] == run_id != other_id
    assert not lines  # no MLflow call failed
