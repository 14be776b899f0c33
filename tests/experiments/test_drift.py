"""Theorem 1 as a Ray job: the tables, resume and repair, the command."""

import json

import pandas as pd
import pytest

from ce_ray import cli
from ce_ray.experiments.drift import DriftConfig, run_drift
from tests.conftest import damage_one_file

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
