"""The ce-ray command line, run as a real process."""

import argparse
import json
import subprocess
import sys

import pytest

from ce_ray import cli
from ce_ray.theory.curves import CURVE_COLUMNS


def ce_ray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ce_ray.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_params_prints_exact_count():
    result = ce_ray("params", "--space", "cifar-resnext29", "--m", "37", "--n", "10")
    assert result.returncode == 0, result.stderr
    assert "13,743,646" in result.stdout


def test_params_json_and_space_options():
    result = ce_ray(
        "params",
        "--space",
        "fc",
        "--m",
        "30",
        "--n",
        "48",
        "--input-dim",
        "748",
        "--depth",
        "6",
        "--classes",
        "1",
        "--json",
    )
    record = json.loads(result.stdout)
    assert record["params"] == 30 * (748 * 48 + 4 * 48 * 48 + 48)
    assert record["options"] == {"input_dim": 748, "depth": 6, "num_classes": 1}
    assert record["label"] == "30x48d"
    assert set(record) == {"space", "options", "m", "n", "label", "params", "flops", "fan_in_sum"}
    block = json.loads(
        ce_ray(
            "params",
            "--space",
            "resnext-block",
            "--m",
            "2",
            "--n",
            "3",
            "--in-channels",
            "16",
            "--out-channels",
            "8",
            "--json",
        ).stdout
    )
    assert block["params"] == 2 * (16 * 3 + 9 * 3 * 3 + 3 * 8)


def test_curve_table_and_optimum():
    result = ce_ray(
        "curve",
        "--space",
        "cifar-resnext29",
        "--baseline",
        "128",
        "--alpha",
        "1.6",
        "--formulation",
        "dual",
    )
    assert result.returncode == 0, result.stderr
    assert "optimum: n=7" in result.stdout
    assert "15x7d" in result.stdout
    assert "--all shows every row" in result.stdout
    assert len(ce_ray(*result.args[3:], "--all").stdout.splitlines()) > 128


def test_curve_json_fields():
    result = ce_ray(
        "curve",
        "--space",
        "resnext-block",
        "--baseline",
        "64",
        "--alpha",
        "1.6",
        "--widths",
        "4:64:4",
        "--metric",
        "flops",
        "--json",
    )
    data = json.loads(result.stdout)
    assert {"space", "options", "formulation", "metric", "cost", "alpha"} <= set(data)
    assert data["metric"] == "flops" and data["formulation"] == "primal"
    assert [row["n"] for row in data["table"]] == list(range(4, 65, 4))
    assert set(data["optimum"]) == set(CURVE_COLUMNS) | {"label"}
    assert data["baseline"]["n"] == 64 and data["baseline"]["m"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["params", "--space", "fc", "--m", "0", "--n", "4"], "--m: must be an integer >= 1"),
        (["params", "--space", "fc", "--m", "2", "--n", "1.5"], "--n: must be an integer >= 1"),
        (["params", "--space", "fc", "--m", "2", "--n", "-3"], "argument --n"),
        (["params", "--space", "vgg", "--m", "1", "--n", "2"], "choose from 'fc', 'resnext-block'"),
        (["params", "--space", "fc", "--m", "1", "--n", "2", "--depth", "1"], "depth must be >= 2"),
        (
            ["params", "--space", "cifar-resnext29", "--m", "1", "--n", "2", "--depth", "3"],
            "space 'cifar-resnext29' does not take --depth (it takes: --classes, --image-size)",
        ),
        (["curve", "--space", "fc", "--baseline", "50", "--alpha", "0"], "--alpha: must be a"),
        (["curve", "--space", "fc", "--baseline", "50", "--alpha", "-2"], "--alpha: must be a"),
        (["curve", "--space", "fc", "--baseline", "50", "--alpha", "inf"], "--alpha: must be a"),
        (["curve", "--space", "fc", "--baseline", "50", "--alpha", "x"], "--alpha: must be a"),
        (
            ["curve", "--space", "fc", "--baseline", "50", "--alpha", "2", "--widths", "1:40"],
            "baseline width 50 is outside the width grid 1..40",
        ),
        (
            ["curve", "--space", "fc", "--baseline", "5", "--alpha", "2", "--widths", "0:9"],
            "widths must be integers from 1 to",
        ),
        (
            ["curve", "--space", "fc", "--baseline", "5", "--alpha", "2", "--formulation", "x"],
            "argument --formulation: invalid choice",
        ),
        (["curve", "--space", "fc", "--alpha", "2"], "the following arguments are required"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, message):
    result = ce_ray(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["params", "--space", "cifar-resnext29", "--m", "37", "--n", "10"],
        ["curve", "--space", "fc", "--baseline", "64", "--alpha", "2.4"],
    ],
)
def test_params_and_curve_start_without_torch_or_ray(argv):
    probe = (
        "import sys; from ce_ray.cli import main; status = main(sys.argv[1:]); "
        "loaded = sorted({'torch', 'torchvision', 'ray'} & set(sys.modules)); "
        "print('LOADED', loaded, file=sys.stderr); sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stderr, done.stderr[-2000:]


def test_a_curve_from_a_fit_that_breaks_the_law_needs_a_flag(tmp_path, capsys):
    """--alpha-from reads alpha.parquet; a fit whose checks of Eq. 9 warned is refused in one
    line, unless --accept-law-warnings says the user has seen it."""
    import dataclasses

    import numpy as np

    from ce_ray import cli
    from ce_ray.configs import FitConfig
    from ce_ray.experiments.fit_alpha import write_outputs
    from ce_ray.theory.alpha import fit_eq9
    from ce_ray.theory.by_name import make_space

    example = make_space("examples.transformer_mlp:member", input_shape=(8, 8))
    config = FitConfig.for_member(example, widths=(4, 8, 16))
    rng = np.random.default_rng(0)
    fit = fit_eq9(
        config.widths,
        config.space.fan_in_sum,
        lambda n: rng.lognormal(0.0, np.sqrt(1.0 * config.space.fan_in_sum(n)), 4000),
        seed=0,
        bootstrap=20,
    )
    good, weak = tmp_path / "good", tmp_path / "weak"
    write_outputs(config, fit, str(good), "good", 20)
    write_outputs(config, dataclasses.replace(fit, r2=0.5), str(weak), "weak", 20)
    curve = ["curve", "--space", "examples.transformer_mlp:member", "--input-shape", "8,8"]
    curve += ["--baseline", "16"]

    assert cli.main([*curve, "--alpha-from", str(good / "alpha.parquet"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alpha"] == fit.alpha
    assert cli.main([*curve, "--alpha-from", str(weak / "alpha.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weak fit of Eq. 9" in err, err
    assert "pass --accept-law-warnings to use it anyway" in err
    accepted = ["--alpha-from", str(weak / "alpha.parquet"), "--accept-law-warnings", "--json"]
    assert cli.main([*curve, *accepted]) == 0
    assert json.loads(capsys.readouterr().out)["alpha"] == fit.alpha


def test_every_default_a_help_string_states_is_the_one_the_command_uses():
    """``--seeds ... (2)``, ``(default cpu)``: each default a help string names is the value
    the command takes when the option is not given -- argparse's default, or else the
    configuration's or the space's that the command builds."""
    import argparse
    import dataclasses
    import re

    from ce_ray.cli import build_parser
    from ce_ray.configs import SweepConfig
    from ce_ray.experiments.drift import DriftConfig
    from ce_ray.experiments.nmk import NMKConfig
    from ce_ray.presets import DEFAULT_FIT_PRESET, DEFAULT_SWEEP_PRESET
    from ce_ray.theory.spaces import SPACES

    def fields(value: object) -> dict:
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]

    space_defaults: dict = {}
    for cls in SPACES.values():
        for f in dataclasses.fields(cls):
            space_defaults.setdefault(f.name, f.default)
    sweep = fields(SweepConfig.from_preset(DEFAULT_SWEEP_PRESET, alpha=1.0))
    used = {
        "params": space_defaults,
        "curve": space_defaults,
        "fit-alpha": {"preset": DEFAULT_FIT_PRESET},
        "sweep": sweep,
        "nmk": fields(NMKConfig()),
        "drift": fields(DriftConfig()),
    }

    def spelled(value: object) -> str:
        if isinstance(value, tuple | list):
            return ",".join(spelled(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    checked = 0
    for name, command in commands.choices.items():
        for action in command._actions:
            help_text = action.help or ""
            stated = re.search(r"\((?:[^()]*; )?([0-9][0-9.,]*)\)$", help_text) or re.search(
                r"\(default ([\w-]+)\)$", help_text
            )
            if not stated:
                continue
            default = action.default
            if default is None:
                default = used.get(name, {}).get(action.dest)
            assert spelled(default) == stated[1], f"{name} --{action.dest}: {help_text!r}"
            checked += 1
    assert checked >= 40, checked


def test_no_command_takes_a_prefix_of_an_option():
    """argparse's prefix matching is off in every command: ``--data X`` must never be taken
    as ``--data-root X`` (nor an option added later change what an old prefix meant)."""
    from ce_ray.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert not parser.allow_abbrev
    assert not [name for name, sub in subparsers.choices.items() if sub.allow_abbrev]
    code = cli.main(["sweep", "primal", "--data", "elsewhere"])
    assert code == 2
    code = cli.main(["params", "--space", "fc", "--m", "1", "--n", "4", "--dep", "3"])
    assert code == 2
