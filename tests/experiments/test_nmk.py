"""Fig. 2 / Lemma 1 as a Ray job: the tables, resume and repair, the command."""

import json

import pandas as pd
import pytest

from ce_ray import cli
from ce_ray.experiments.nmk import NMKConfig, run_nmk
from tests.conftest import damage_one_file

TINY = NMKConfig(
    widths=(8, 16),
    wide_width=64,
    multiplicities=(1, 2, 4, 8),
    draws=8,
    wide_members=64,
    gammas=9,
    block_members=16,
    bootstrap=100,
)


@pytest.mark.usefixtures("ray_cluster")
def test_the_job_writes_its_tables_and_resumes_without_sampling_again(tmp_path):
    lines: list[str] = []
    first = run_nmk(TINY, str(tmp_path), "tiny", workers=2, log=lines.append)
    directory = tmp_path / "tiny" / "nmk"
    kernels = pd.read_parquet(directory / "nmk.parquet")
    # One row per (n, m, draw, gamma, entry): 64 members cut into 64/m ensembles of each m.
    assert len(kernels) == 2 * (64 + 32 + 16 + 8) * 9 * 2
    assert set(kernels["entry"]) == {"diagonal", "off_diagonal"}
    summary = pd.read_parquet(directory / "nmk_summary.parquet")
    assert len(summary) == 2 * 4 * 2 and (summary["mean_squared_distance"] > 0).all()
    fit = pd.read_parquet(directory / "nmk_fit.parquet")
    assert len(fit) == 4 and fit["width_gap"].between(0, 1).all()
    assert (directory / "nmk.png").read_bytes()[:4] == b"\x89PNG"
    assert any("[nmk] " in line and "blocks: width 64" in line for line in lines)

    lines.clear()
    again = run_nmk(TINY, str(tmp_path), "tiny", workers=2, log=lines.append)
    assert lines == [
        f"[nmk] resuming: {len(TINY.blocks())}/{len(TINY.blocks())} blocks already on storage"
    ]
    pd.testing.assert_frame_equal(first.fit, again.fit)

    lines.clear()
    damaged = damage_one_file(directory / "shards")
    repaired = run_nmk(TINY, str(tmp_path), "tiny", workers=2, log=lines.append)
    assert "[nmk] removed 1 unfinished write(s)" in lines[0]
    assert f"[nmk] {damaged} is damaged (not a whole file): recomputing it" in lines
    blocks = len(TINY.blocks())
    assert f"[nmk] resuming: {blocks - 1}/{blocks} blocks already on storage" in lines
    assert not list((directory / "shards").glob(".tmp-*"))
    pd.testing.assert_frame_equal(first.kernels, repaired.kernels)
    pd.testing.assert_frame_equal(first.fit, repaired.fit)
    with pytest.raises(ValueError, match="different configuration"):
        run_nmk(NMKConfig(**{**TINY.__dict__, "draws": 4}), str(tmp_path), "tiny", 2)


@pytest.mark.usefixtures("ray_cluster")
def test_the_command_prints_the_slope_and_the_width_gap_as_json(tmp_path, capsys):
    args = [
        "nmk",
        "--widths",
        "8,16",
        "--wide-width",
        "64",
        "--multiplicities",
        "1,2,4,8",
        "--draws",
        "8",
        "--wide-members",
        "64",
        "--gammas",
        "9",
        "--block-members",
        "16",
        "--bootstrap",
        "100",
        "--results",
        str(tmp_path),
        "--json",
    ]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    headline = json.loads(captured.out)
    assert {"slope_m", "slope_m_ci", "width_gap", "width_gap_se", "fits"} <= set(headline)
    assert headline["slope_m_ci"][0] <= headline["slope_m"] <= headline["slope_m_ci"][1]
    assert "slope of ||K_e - NMK||^2 against m" in captured.err
