"""Theorem 1: the ensemble NTK's drift under gradient descent, its exponents, and the Ray job."""

import json

import numpy as np
import pandas as pd
import pytest

from ce_ray import cli
from ce_ray.experiments.drift import DriftConfig, run_drift
from ce_ray.theory import drift
from tests.conftest import damage_one_file

TASK = drift.make_task(16, 4, 4, seed=0)
LR = drift.learning_rate(16, 3, 0.1)


def final_drift(m, n, seed, lr=LR, steps=40):
    return drift.measure_drift(m, n, 3, TASK, lr, [0, steps], seed)["drift"].iloc[-1]


def test_the_kernel_starts_still_and_training_lowers_the_loss():
    rows = drift.measure_drift(2, 16, 3, TASK, LR, [0, 10, 40], seed=1)
    assert rows["drift"].iloc[0] == 0.0 and (rows["drift"].iloc[1:] > 0).all()
    assert rows["train_loss"].is_monotonic_decreasing
    np.testing.assert_allclose(rows["time"], LR * rows["steps"])


def test_larger_ensembles_and_wider_members_drift_less():
    one = np.mean([final_drift(1, 16, s) for s in range(3)])
    sixteen = np.mean([final_drift(16, 16, s) for s in range(3)])
    wide = np.mean([final_drift(1, 256, s) for s in range(3)])
    assert sixteen < one / 4 and wide < one / 4


def test_the_step_is_small_enough_to_follow_gradient_flow():
    """Half the step, twice the steps: the same flow time, nearly the same kernel."""
    coarse = final_drift(2, 32, 5, LR, 40)
    fine = final_drift(2, 32, 5, LR / 2, 80)
    assert abs(coarse - fine) < 0.05 * fine


TINY = DriftConfig(
    multiplicities=(1, 4),
    widths=(8, 32),
    seeds=2,
    train_points=8,
    input_dim=4,
    probe_points=4,
    flow_times=(1.0, 4.0),
)


@pytest.mark.usefixtures("ray_cluster")
def test_the_job_writes_runs_and_fits_and_resumes(tmp_path):
    lines: list[str] = []
    first = run_drift(TINY, str(tmp_path), "tiny", workers=2, log=lines.append)
    directory = tmp_path / "tiny" / "drift"
    runs = pd.read_parquet(directory / "drift.parquet")
    assert len(runs) == 2 * 2 * 2 * 3  # (m, n, seed) x recorded steps 0, 10, 40
    fit = pd.read_parquet(directory / "drift_fit.parquet")
    assert list(fit["time"]) == sorted(runs.loc[runs["steps"] > 0, "time"].unique())
    assert (fit["exponent_m_low"] <= fit["exponent_m"]).all() and (fit["runs"] == 8).all()
    assert (directory / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert sum("[drift] " in line and "runs: m=" in line for line in lines) == 8

    lines.clear()
    again = run_drift(TINY, str(tmp_path), "tiny", workers=2, log=lines.append)
    assert lines == ["[drift] resuming: 8/8 runs already on storage"]
    pd.testing.assert_frame_equal(first.runs, again.runs)

    lines.clear()
    damaged = damage_one_file(directory / "runs")
    repaired = run_drift(TINY, str(tmp_path), "tiny", workers=2, log=lines.append)
    assert "[drift] removed 1 unfinished write(s)" in lines[0]
    assert f"[drift] {damaged} is damaged (not a whole file): recomputing it" in lines
    assert "[drift] resuming: 7/8 runs already on storage" in lines
    assert not list((directory / "runs").glob(".tmp-*"))
    pd.testing.assert_frame_equal(first.runs, repaired.runs)


@pytest.mark.usefixtures("ray_cluster")
def test_the_command_prints_the_exponents_as_json(tmp_path, capsys):
    args = [
        "drift",
        "--multiplicities",
        "1,4",
        "--widths",
        "8,32",
        "--seeds",
        "2",
        "--train-points",
        "8",
        "--input-dim",
        "4",
        "--probe-points",
        "4",
        "--flow-times",
        "1,4",
        "--results",
        str(tmp_path),
        "--json",
    ]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    headline = json.loads(captured.out)
    assert {"exponent_m", "exponent_m_ci", "exponent_n", "exponent_n_ci", "theorem"} <= set(
        headline
    )
    assert "(Theorem 1: m^-1 n^-1)" in captured.err
