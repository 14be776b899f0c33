"""A user's own member: loading it by name, the checks that refuse it in one line, and
``ce-ray inspect``'s table (no Ray)."""

import json
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ce_ray import cli
from ce_ray.theory.alpha import fit_eq9
from ce_ray.theory.by_name import make_space
from ce_ray.theory.curves import curve
from ce_ray.theory.member import MemberSpace, inspect_member, load_member
from ce_ray.theory.spaces import FCSpace

SHARED = nn.Parameter(torch.randn(4, 4))


def shares_a_parameter(n: int) -> nn.Module:
    layer = nn.Linear(4, n)
    layer.register_parameter("tied", SHARED)
    return layer


def with_dropout(n: int) -> nn.Module:
    return nn.Sequential(nn.Linear(4, n), nn.Dropout(0.1), nn.Linear(n, 1))


def fixed_size(n: int) -> nn.Module:
    return nn.Linear(4, 3)


def one_member_network(m: int, n: int) -> nn.Module:
    """A network(m, n) that forgets m."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, n), nn.Linear(n, 10))


def network_with_dropout(m: int, n: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, m * n), nn.Dropout(0.1), nn.Linear(m * n, 10))


def with_batch_norm(n: int) -> nn.Module:
    return nn.Sequential(nn.Linear(4, n), nn.BatchNorm1d(n), nn.Linear(n, 1))


def not_a_module(n: int) -> int:
    return n


def half_the_fan_in_sum(n: int) -> float:
    return 0.5 * (1 / 8 + 1 / n)


def negative_fan_in_sum(n: int) -> float:
    return -1.0


class ScaleOnly(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x.repeat(1, len(self.scale) // x.shape[1]) * self.scale


def no_contraction(n: int) -> nn.Module:
    return ScaleOnly(n)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_colon_here", "must be MODULE:CALLABLE"),
        ("ce_ray_no_such_module:member", "cannot import 'ce_ray_no_such_module'"),
        ("tests.theory.test_member:nothing", "has no 'nothing'"),
        ("tests.theory.test_member:SHARED", "is a Parameter, not a callable"),
    ],
)
def test_a_bad_name_is_one_line(name, message):
    with pytest.raises(ValueError, match=message):
        load_member(name)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (shares_a_parameter, "share parameter 'tied'"),
        (with_dropout, r"dropout \(1, p=0.1\)"),
        (fixed_size, "do not grow with n: 15 at n=8, 15 at n=16"),
        (not_a_module, "returned a int, not a torch.nn.Module"),
    ],
)
def test_a_member_that_cannot_be_designed_is_refused(member, message):
    with pytest.raises(ValueError, match=message):
        inspect_member(member, (8, 16), (4,))


def test_no_contraction_means_nothing_to_fit():
    with pytest.raises(ValueError, match="S\\(n\\) would be 0"):
        inspect_member(no_contraction, (8, 16), (8,))


def test_batch_norm_is_a_warning():
    found = inspect_member(with_batch_norm, (8, 16), (4,))
    assert found.warnings == (
        "member has BatchNorm (1): its NTK is sampled in eval mode, with running statistics",
    )


def test_inspect_prints_layers_and_sizes_of_the_example(capsys, monkeypatch):
    argv = ["inspect", "examples.transformer_mlp:member", "--input-shape", "8,8"]
    assert cli.main([*argv, "--widths", "8,16"]) == 0
    out = capsys.readouterr().out
    assert "norm.weight" in out and "w1" in out and "(8, 8)" in out
    assert cli.main([*argv, "--widths", "8,16", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [layer["fan_in"] for layer in found["layers"]] == [8, 8, None, None]
    # Two products per token, 8 tokens; S(n) = 1/8 + 1/n.
    assert [(w["n"], w["macs"], w["fan_in_sum"]) for w in found["widths"]] == [
        (8, 8 * 2 * 8 * 8, 1 / 8 + 1 / 8),
        (16, 8 * 2 * 8 * 16, 1 / 8 + 1 / 16),
    ]
    assert [w["params"] for w in found["widths"]] == [16 + 2 * 8 * 8, 16 + 2 * 8 * 16]


def test_a_member_is_imported_from_the_current_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_blocks.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def member(n):
                return nn.Sequential(nn.Linear(3, n, bias=False), nn.ReLU(), nn.Linear(n, 1))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_blocks", raising=False)
    assert cli.main(["inspect", "my_blocks:member", "--input-shape", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["widths"][0]["fan_in_sum"] == pytest.approx(1 / 3 + 1 / 8)
    assert cli.main(["inspect", "my_blocks:missing", "--input-shape", "3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def fc_member(n: int) -> nn.Module:
    """The fc space's member (L = 4, n0 = 64, 10 classes), as a user would name it."""
    return FCSpace(input_dim=64, depth=4).build(1, n)


@pytest.mark.parametrize("formulation", ["primal", "dual"])
def test_a_member_space_draws_the_built_in_curve(formulation):
    built_in = curve(FCSpace(input_dim=64, depth=4), 2.4, 64, formulation=formulation)
    traced = curve(
        make_space("tests.theory.test_member:fc_member", input_shape=(64,)),
        2.4,
        64,
        formulation=formulation,
    )
    pd.testing.assert_frame_equal(traced.table, built_in.table)


def test_params_and_curve_take_your_member(capsys):
    space = ["--space", "examples.transformer_mlp:member", "--input-shape", "8,8"]
    assert cli.main(["params", *space, "--m", "4", "--n", "16", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["params"], record["flops"]) == (4 * (16 + 2 * 8 * 16), 4 * 8 * 2 * 8 * 16)
    assert record["fan_in_sum"] == pytest.approx(1 / 8 + 1 / 16)
    assert cli.main(["curve", *space, "--baseline", "32", "--alpha", "1.5"]) == 0
    assert "optimum: n=" in capsys.readouterr().out
    assert (
        cli.main(["params", "--space", "examples.transformer_mlp:member", "--m", "1", "--n", "2"])
        == 2
    )
    assert "needs the shape of one example (--input-shape)" in capsys.readouterr().err


EXAMPLE = "examples.transformer_mlp:member"


def test_your_s_of_n_replaces_the_traced_one():
    """--fan-in-sum: the example's S(n) by hand equals the traced one; half of it draws the
    curve of half the alpha (Eq. 12 reads alpha * S(n)), and fits twice the alpha from the
    same samples."""
    widths = np.arange(1, 65)
    traced = MemberSpace(EXAMPLE, (8, 8))
    by_hand = MemberSpace(EXAMPLE, (8, 8), "examples.transformer_mlp:fan_in_sum")
    np.testing.assert_allclose(by_hand.fan_in_sum(widths), traced.fan_in_sum(widths), rtol=1e-12)
    half = MemberSpace(EXAMPLE, (8, 8), "tests.theory.test_member:half_the_fan_in_sum")
    assert half.options()["fan_in_sum_from"] == "tests.theory.test_member:half_the_fan_in_sum"
    pd.testing.assert_frame_equal(
        curve(half, 2.0, 64).table.drop(columns="fan_in_sum"),
        curve(traced, 1.0, 64).table.drop(columns="fan_in_sum"),
    )
    rng = np.random.default_rng(0)
    samples = {n: rng.lognormal(0.0, np.sqrt(traced.fan_in_sum(n)), 2000) for n in (4, 8, 16)}
    fits = [
        fit_eq9((4, 8, 16), space.fan_in_sum, samples.__getitem__, 0, bootstrap=1)
        for space in (traced, half)
    ]
    assert fits[1].alpha == pytest.approx(2 * fits[0].alpha, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "tests.theory.test_member:negative_fan_in_sum",
            "gave -1.0 at n=4; it must give a positive",
        ),
        (
            "tests.theory.test_member:SHARED",
            r"SHARED is a Parameter, not a callable S\(n\) -> float",
        ),
    ],
)
def test_a_bad_s_of_n_is_one_line(name, message):
    with pytest.raises(ValueError, match=message):
        MemberSpace(EXAMPLE, (8, 8), name).fan_in_sum(np.array([4, 8]))
