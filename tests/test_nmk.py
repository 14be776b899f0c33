"""Fig. 2 / Lemma 1: the member kernels, their convergence statistics, and the Ray job."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ce_ray import cli
from ce_ray.experiments.nmk import NMKConfig, run_nmk
from ce_ray.theory import nmk
from ce_ray.theory.ntk import member_ntk_matrix, mlp_member_kernels
from ce_ray.theory.spaces import FCSpace
from tests.conftest import damage_one_file


@pytest.mark.parametrize(("depth", "width", "members"), [(2, 3, 2), (4, 5, 3), (5, 7, 4)])
def test_hand_written_member_kernels_equal_autograd(depth, width, members):
    torch.manual_seed(depth)
    module = FCSpace(input_dim=2, depth=depth, num_classes=1).build(members, width).double()
    inputs = nmk.circle_inputs(np.array([0.0, 0.4, 2.5, -3.0]))
    torch.testing.assert_close(
        mlp_member_kernels(module, inputs), member_ntk_matrix(module, inputs).detach()
    )


def test_the_nmk_diagonal_is_L_over_2_on_the_unit_circle():
    kernels = nmk.member_kernels_on_circle(4, 32, 4000, np.array([0.3, 2.0]), seed=7)
    diagonal = kernels["diagonal"]
    se = diagonal.std(axis=0, ddof=1) / np.sqrt(len(diagonal))
    assert np.all(np.abs(diagonal.mean(axis=0) - nmk.diagonal_mean(4)) < 4 * se)


def test_members_differ_and_blocks_reproduce():
    gammas = np.linspace(-np.pi, np.pi, 5)
    first = nmk.member_kernels_on_circle(3, 16, 8, gammas, seed=1)
    again = nmk.member_kernels_on_circle(3, 16, 8, gammas, seed=1)
    other = nmk.member_kernels_on_circle(3, 16, 8, gammas, seed=2)
    np.testing.assert_array_equal(first["off_diagonal"], again["off_diagonal"])
    assert not np.allclose(first["off_diagonal"], other["off_diagonal"])
    assert len(np.unique(first["off_diagonal"][:, 1])) == 8


def test_distance_to_the_mean_falls_as_one_over_m():
    """Lemma 1's rate, from real member kernels: slope -1 within its bootstrap interval."""
    gammas = np.linspace(-np.pi, np.pi, 9)
    members = nmk.member_kernels_on_circle(4, 32, 4096, gammas, seed=3)["off_diagonal"]
    rows = []
    for m in (1, 2, 4, 8, 16, 32):
        distance = nmk.distance_to_nmk(members, m)
        rows.append(
            pd.DataFrame(
                {
                    "n": 32,
                    "m": m,
                    "entry": "off_diagonal",
                    "draw": np.arange(len(distance)),
                    "squared_distance": distance,
                }
            )
        )
    fit = nmk.convergence_summary(pd.concat(rows), 300, np.random.default_rng(0)).iloc[0]
    assert fit["ci_low"] < -1 < fit["ci_high"] and -1.25 < fit["slope_m"] < -0.75


def test_the_distance_to_the_nmk_is_unbiased_when_the_ensembles_are_among_the_members():
    """N = 64 unit-variance 'members', ensembles of 16: E||K_e - NMK||^2 = 1/16, though the
    NMK estimate contains the ensemble (uncorrected, the mean would be 0.75/16)."""
    rng = np.random.default_rng(0)
    distances = [nmk.distance_to_nmk(rng.standard_normal((64, 50)), 16) for _ in range(400)]
    assert abs(np.mean(distances) * 16 - 1) < 0.05


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
