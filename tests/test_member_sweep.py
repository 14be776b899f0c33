"""A sweep of your own member, without Ray: its points come from the traced curve, its
trials' networks read the preset's data and give its classes, and sweep.json names the member
and fingerprints its architecture, so that a resumed sweep refuses an edited member. (Through
``ray job submit``: jobs/test_submitted_jobs.py.)"""

import sys
import textwrap

import pytest
import torch

from ce_ray.configs import SweepConfig
from ce_ray.results import storage
from ce_ray.theory.by_name import make_space
from ce_ray.theory.member import MemberSpace
from ce_ray.theory.models import CollegialMLP, MemberEnsemble
from tests.theory.ensembles import split_members

EXAMPLE = {
    "member": "examples.transformer_mlp:member",
    "input_shape": (8, 8),
    "network_from": "examples.transformer_mlp:network",
}


def example() -> MemberSpace:
    """The guide's member with its network, as ``--space ... --network ...`` name it."""
    space = make_space(EXAMPLE["member"], **EXAMPLE)  # type: ignore[arg-type]
    assert isinstance(space, MemberSpace)
    return space


def test_the_built_in_mlp_named_as_a_member_sweeps_the_preset_s_points():
    """The digits preset's MLP given as member(n): the same points, the same parameter
    counts, and the default network (the members' ensemble) is the preset's network."""
    preset = SweepConfig.from_preset("digits-mlp", alpha=2.4, num_points=4)
    member = SweepConfig.from_preset(
        "digits-mlp",
        alpha=2.4,
        num_points=4,
        member=make_space("tests.theory.test_member:fc_member", input_shape=(64,)),
    )
    assert member.points == preset.points
    assert member.point_rows["params"].tolist() == preset.point_rows["params"].tolist()
    assert member.classes == 10 and member.baseline_width == 64
    n, m = member.points[0]
    network = member.space.network(m, n)
    assert sum(p.numel() for p in network.parameters()) == preset.space.num_params(m, n)
    x = torch.randn(5, 64)
    assert network(x).shape == (5, 10)
    # With the preset's hand-written CollegialMLP's weights, its outputs.
    reference = preset.space.network(m, n)
    assert isinstance(reference, CollegialMLP)
    network.network.load_state_dict(MemberEnsemble(split_members(reference)).state_dict())
    torch.testing.assert_close(network(x), reference(x), rtol=1e-5, atol=1e-5)


def test_the_example_sweeps_points_of_its_traced_curve_with_its_network():
    space = example()
    config = SweepConfig.from_preset("digits-mlp", alpha=1.0, num_points=3, member=space)
    assert config.space == space
    assert config.points == ((4, 13), (8, 7), (64, 1))  # the optimum, the curve, 1 x 64d
    for n, m in config.points:
        network = config.space.network(m, n)
        head = 64 * 10 + 10  # network(m, n)'s linear head, the same at every point
        assert sum(p.numel() for p in network.parameters()) == space.num_params(m, n) + head
        assert network(torch.rand(3, 64)).shape == (3, 10)
    record = config.to_json()
    assert record["member"] == EXAMPLE["member"] and record["input_shape"] == [8, 8]
    assert len(record["architecture"]) == 12
    assert SweepConfig.from_json(record) == config
    # A preset's sweep.json is as before members existed (so its resume is not refused).
    preset = SweepConfig.from_preset("digits-mlp", alpha=1.0).to_json()
    assert not {"member", "input_shape", "network_from", "baseline", "architecture"} & set(preset)


def test_a_resumed_sweep_refuses_a_member_edited_under_the_same_name(tmp_path, monkeypatch):
    blocks = tmp_path / "my_blocks.py"
    source = """
        from torch import nn

        def member(n):
            return nn.Sequential(
                nn.Flatten(), nn.Linear(64, n, bias=False), nn.ReLU(), nn.Linear(n, 10)
            )
        """
    blocks.write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_blocks", raising=False)
    first = SweepConfig.from_preset(
        "digits-mlp", alpha=1.5, member=make_space("my_blocks:member", input_shape=(64,))
    )
    directory = str(tmp_path / "results" / "sweep")
    storage.check_or_write_config(directory, first.to_json(), "sweep.json")
    # The same member, the same widths: resumed.
    storage.check_or_write_config(directory, first.to_json(), "sweep.json")
    blocks.write_text(textwrap.dedent(source.replace("bias=False", "bias=True")))
    monkeypatch.delitem(sys.modules, "my_blocks")
    edited = SweepConfig.from_preset(
        "digits-mlp", alpha=1.5, member=make_space("my_blocks:member", input_shape=(64,))
    )
    with pytest.raises(ValueError, match="different configuration.*architecture"):
        storage.check_or_write_config(directory, edited.to_json(), "sweep.json")


def test_a_trial_trains_the_member_s_network_once_per_seed():
    from ce_ray.theory.models import PackedSeeds, Reshaped
    from ce_ray.worker.loop import trial_network

    config = SweepConfig.from_preset("digits-mlp", alpha=1.0, num_points=3, member=example())
    n, m = config.points[0]
    alone = trial_network(config, m, n, [7])
    assert isinstance(alone, Reshaped) and isinstance(alone.network[0], MemberEnsemble)
    assert len(alone.network[0].members) == m
    packed = trial_network(config, m, n, [7, 8])
    assert isinstance(packed, PackedSeeds)
    # Each seed's network from its own seed: the first is the lone one's; the second differs.
    first, second = (dict(network.named_parameters()) for network in packed.seeds)
    for name, parameter in alone.named_parameters():
        torch.testing.assert_close(first[name], parameter, rtol=0, atol=0)
        assert not torch.equal(second[name], parameter) or parameter.eq(parameter[0]).all()


def test_a_stored_sweep_is_read_back_as_stored_not_derived_again():
    """Every trial and worker reads the driver's sweep.json: its points and fingerprint as the
    driver chose them (no curve, no trace, no memory check on the reading machine)."""
    config = SweepConfig.from_preset("digits-mlp", alpha=1.0, num_points=3, member=example())
    record = config.to_json()
    record["points"] = [[8, 7], [64, 1]]  # not what the curve would give at this alpha
    record["architecture"] = "0123456789ab"
    read = SweepConfig.from_json(record)
    assert read.points == ((8, 7), (64, 1)) and read.architecture == "0123456789ab"
    assert read.to_json() == record
    assert "curves" not in read.__dict__ and "point_rows" not in read.__dict__


def test_the_guide_s_python_example_prints_what_it_says(capsys):
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parent.parent / "docs" / "your-own-member.md").read_text()
    [code] = re.findall(r"## From Python\n.*?```python\n(.*?)```", guide, re.S)
    exec(compile(code, "your-own-member.md", "exec"), {})
    printed = re.search(r"print\(.*\)  # (.*)", code)
    assert printed and capsys.readouterr().out.strip() == printed[1]


def test_a_fit_stores_the_member_s_fields_a_fit_has_not_the_network_a_sweep_trains():
    from ce_ray.configs import FitConfig

    record = FitConfig.for_member(example(), widths=(4, 8)).to_json()
    assert record["member"] == EXAMPLE["member"] and "network_from" not in record
    assert FitConfig.from_json(record).to_json() == record
