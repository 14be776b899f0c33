"""Fig. 2 / Lemma 1: the member kernels and their convergence statistics."""

import numpy as np
import pandas as pd
import pytest
import torch

from ce_ray.theory import nmk
from ce_ray.theory.ntk import member_ntk_matrix, mlp_member_kernels
from ce_ray.theory.spaces import FCSpace


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
