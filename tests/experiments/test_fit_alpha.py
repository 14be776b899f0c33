"""fit-alpha on a real 2-CPU Ray cluster: determinism, resume, retries, outputs, errors."""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from ce_ray import cli
from ce_ray.configs import FitConfig
from ce_ray.experiments import fit_alpha as fa
from ce_ray.experiments import shards
from ce_ray.results import storage
from ce_ray.theory.alpha import check_law
from ce_ray.theory.by_name import make_space
from examples import transformer_mlp
from tests.theory.zoo import ZOO

pytestmark = pytest.mark.usefixtures("ray_cluster")


def config(**overrides) -> FitConfig:
    settings = dict(
        preset="mnist-mlp-block",
        widths=(8, 16, 32),
        samples=600,
        shard_size=200,
        seed=5,
        method="exact",
        readout="pool",
        off_diagonal=False,
        device="cpu",
        dtype="float32",
        memory_budget_mib=64.0,
    )
    return FitConfig(**(settings | overrides))


def shard_tables(directory: str) -> dict[str, pd.DataFrame]:
    shard_dir = storage.join(directory, "shards")
    return {
        name: storage.read_parquet(storage.join(shard_dir, name)).to_pandas()
        for name in storage.list_files(shard_dir, ".parquet")
    }


def assert_same_shards(a: str, b: str) -> None:
    first, second = shard_tables(a), shard_tables(b)
    assert first.keys() == second.keys() and first
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])


@pytest.mark.parametrize(
    "cfg",
    [
        config(),
        config(preset="resnext-block", widths=(2, 4), samples=60, shard_size=20, method="batched"),
    ],
    ids=["mlp-exact", "bottleneck-batched"],
)
def test_one_and_two_workers_give_bit_identical_samples(tmp_path, cfg):
    one = fa.fit_alpha(cfg, str(tmp_path), "one", workers=1, bootstrap=50, log=lambda _: None)
    two = fa.fit_alpha(cfg, str(tmp_path), "two", workers=2, bootstrap=50, log=lambda _: None)
    assert_same_shards(one.directory, two.directory)
    assert one.alpha == two.alpha and (one.ci_low, one.ci_high) == (two.ci_low, two.ci_high)
    pd.testing.assert_frame_equal(one.moments, two.moments)


def test_outputs_are_plain_parquet_and_png(tmp_path):
    result = fa.fit_alpha(config(), str(tmp_path), "out", workers=2, bootstrap=100)
    moments = pd.read_parquet(f"{result.directory}/moments.parquet")
    assert moments["width"].tolist() == [8, 16, 32]
    assert (moments["count"] == 600).all()
    assert np.allclose(moments["mean"], 6.0, rtol=0.15)  # E[K(x, x)] = L for |x|^2 = n0
    alpha = pd.read_parquet(f"{result.directory}/alpha.parquet")
    assert len(alpha) == 1 and alpha.loc[0, "alpha"] == result.alpha
    assert alpha.loc[0, "ci_low"] < result.alpha < alpha.loc[0, "ci_high"]
    metadata = storage.read_metadata(f"{result.directory}/alpha.parquet")
    assert metadata["config"] == config().to_json() and metadata["seed"] == 5
    assert set(metadata["versions"]) >= {"torch", "ray", "pyarrow"}
    with open(f"{result.directory}/alpha.png", "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (
        pq.read_schema(f"{result.directory}/moments.parquet").names == storage.MOMENTS_SCHEMA.names
    )


def test_rerun_resumes_and_recomputes_only_missing_shards(tmp_path):
    lines: list[str] = []
    first = fa.fit_alpha(config(), str(tmp_path), "resume", workers=2, bootstrap=50)
    before = shard_tables(first.directory)
    again = fa.fit_alpha(config(), str(tmp_path), "resume", 2, bootstrap=50, log=lines.append)
    assert lines == ["[fit-alpha] resuming: 9/9 shards already on storage"]
    assert again.alpha == first.alpha

    missing = "w000016-s00001.parquet"
    (tmp_path / "resume/fit_alpha/shards" / missing).unlink()
    lines.clear()
    fa.fit_alpha(config(), str(tmp_path), "resume", 2, bootstrap=50, log=lines.append)
    assert lines[0] == "[fit-alpha] resuming: 8/9 shards already on storage"
    assert [line for line in lines if "width" in line] == [
        "[fit-alpha] 9/9 shards: width 16 shard 1 " + lines[1].split("shard 1 ")[1]
    ]
    after = shard_tables(first.directory)
    pd.testing.assert_frame_equal(before[missing], after[missing])
    moments = pd.read_parquet(f"{first.directory}/moments.parquet")
    assert moments["count"].tolist() == [600, 600, 600]


def test_killed_worker_is_retried_and_alpha_is_unchanged(tmp_path):
    cfg = config(widths=(128, 256), samples=800, shard_size=100, method="batched")
    reference = fa.fit_alpha(cfg, str(tmp_path), "reference", 2, bootstrap=50, log=lambda _: None)

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fa.fit_alpha(cfg, str(tmp_path), "killed", 2, bootstrap=50)
        except BaseException as error:  # surfaced by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for process in psutil.process_iter(["cmdline"]):
            if (process.info["cmdline"] or [""])[0].startswith("ray::_shard_task"):
                process.kill()
                killed = process.pid
                break
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None, "no shard task was running to kill"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].alpha == reference.alpha
    assert_same_shards(reference.directory, outcome["result"].directory)


def test_a_different_configuration_is_refused_and_nothing_is_written(tmp_path):
    fa.fit_alpha(config(), str(tmp_path), "same", workers=2, bootstrap=20)
    files = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"different configuration \(samples: 600 -> 800\)"):
        fa.fit_alpha(config(samples=800), str(tmp_path), "same", workers=2)
    assert sorted(p for p in tmp_path.rglob("*")) == files


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"samples": 1}, "--samples must be from 2 to"),
        ({"widths": (8,)}, "need at least two widths"),
        ({"widths": (0, 8)}, "widths must be integers from 1 to"),
        (
            {"preset": "resnext-block"},
            "--method exact samples MLP blocks only; resnext-block is not one",
        ),
        ({"readout": "max"}, "--readout must be one of pool, centre"),
        ({"device": "tpu"}, "--device must be cpu, cuda or cuda:N"),
    ],
)
def test_bad_configuration(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_budget_too_small_fails_before_writing(tmp_path):
    cfg = config(method="batched", widths=(8, 512), memory_budget_mib=1.0)
    with pytest.raises(ValueError, match="too small for one sample at width 512"):
        fa.fit_alpha(cfg, str(tmp_path), "tiny", workers=1)
    assert not any(tmp_path.iterdir())


def test_every_shard_of_a_width_draws_its_own_weights(tmp_path):
    cfg = config()
    for index in (0, 1):
        shards.sample_shard(
            cfg,
            shards.Shard(width=16, index=index, start=200 * index, stop=200 * (index + 1)),
            str(tmp_path),
        )
    first, second = (
        pd.read_parquet(tmp_path / f"w000016-s0000{i}.parquet")["k"].to_numpy() for i in (0, 1)
    )
    assert len(np.unique(np.concatenate([first, second]))) == 400  # no draw repeated


def test_non_finite_samples_name_the_width_and_shard(tmp_path, monkeypatch):
    from ce_ray.theory import ntk  # what the preset's space samples with

    monkeypatch.setattr(ntk, "sample_ntk", lambda *args, **kwargs: np.array([1.0, np.nan]))
    shard = shards.Shard(width=16, index=3, start=6, stop=8)
    with pytest.raises(ValueError, match="non-finite NTK entry at width 16, shard 3"):
        shards.sample_shard(config(), shard, str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_a_killed_writer_and_a_truncated_shard_are_repaired_on_resume(tmp_path):
    first = fa.fit_alpha(config(), str(tmp_path), "repair", workers=2, bootstrap=50)
    shard_dir = Path(first.directory) / "shards"
    before = shard_tables(first.directory)
    # A writer SIGKILLed half-way through replacing a shard: the shard is untouched and its
    # temporary file stays behind.
    victim = shard_dir / "w000008-s00000.parquet"
    original = victim.read_bytes()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from ce_ray.results import storage\n"
                "def half(stream):\n"
                "    stream.write(b'PAR1' + bytes(1000)); stream.flush(); time.sleep(120)\n"
                f"storage._atomic_write({str(victim)!r}, half)\n"
            ),
        ]
    )
    deadline = time.monotonic() + 60
    while not list(shard_dir.glob(".tmp-*")):
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.05)
    writer.kill()
    writer.wait()
    assert victim.read_bytes() == original and len(list(shard_dir.glob(".tmp-*"))) == 1
    # A shard cut short (e.g. copied by hand from a failed upload).
    truncated = shard_dir / "w000032-s00002.parquet"
    truncated.write_bytes(truncated.read_bytes()[:200])

    lines: list[str] = []
    again = fa.fit_alpha(config(), str(tmp_path), "repair", 2, bootstrap=50, log=lines.append)
    assert "[fit-alpha] removed 1 unfinished write(s)" in lines[0]
    assert any("w000032-s00002.parquet is damaged" in line for line in lines)
    assert "[fit-alpha] resuming: 8/9 shards already on storage" in lines
    assert not list(shard_dir.glob(".tmp-*"))
    assert_same_shards(first.directory, again.directory)
    for name, table in before.items():
        pd.testing.assert_frame_equal(table, shard_tables(again.directory)[name])
    assert again.alpha == first.alpha


def test_your_member_is_fitted_by_ray_tasks_as_in_one_process(tmp_path, capsys, monkeypatch):
    """fit-alpha of a member the package does not know, named on the command line: its shards
    run as Ray tasks that import the member by name, and give the alpha that sampling and
    fitting every shard in this process gives."""
    argv = ["fit-alpha", "--space", "examples.transformer_mlp:member", "--input-shape", "8,8"]
    settings = ["--widths", "4,8,16", "--samples", "300", "--shard-size", "150", "--seed", "3"]
    code = cli.main([*argv, *settings, "--bootstrap", "50", "--results", str(tmp_path), "--json"])
    assert code == 0
    fitted = json.loads(capsys.readouterr().out)
    config = FitConfig.for_member(
        make_space("examples.transformer_mlp:member", input_shape=(8, 8)),
        widths=(4, 8, 16),
        samples=300,
        shard_size=150,
        seed=3,
    )
    here = str(tmp_path / "here")
    for shard in shards.plan_shards(config):
        shards.sample_shard(config, shard, storage.join(here, "shards"))
    assert fa.fit_from_shards(config, here, bootstrap=50).alpha == fitted["alpha"]
    directory = tmp_path / "examples-transformer_mlp-member" / "fit_alpha"
    metadata = storage.read_metadata(str(directory / "alpha.parquet"))
    assert metadata["space"] == {
        "name": "member",
        "member": "examples.transformer_mlp:member",
        "input_shape": [8, 8],
    }
    assert FitConfig.from_json(metadata["config"]) == config
    # The row names the member, its architecture and the checks of the law.
    (row,) = pd.read_parquet(directory / "alpha.parquet").to_dict("records")
    fingerprint = fa.architecture(config)["architecture"]
    assert row["member"] == "examples.transformer_mlp:member"
    assert re.fullmatch("[0-9a-f]{12}", fingerprint) and row["architecture"] == fingerprint
    law = check_law(pd.DataFrame(fitted["moments"]), fitted["r2"])
    assert list(row["law_warnings"]) == list(law.warnings)
    assert (row["r2_intercept"], row["mean_slope"]) == (law.r2_intercept, law.mean_slope)

    # The same name, another architecture (the user edited the member): refused in one line
    # before anything is sampled or written.
    monkeypatch.setattr(
        transformer_mlp, "member", lambda n: transformer_mlp.TransformerMLP(8, 2 * n)
    )
    before = sorted(p.name for p in directory.rglob("*"))
    code = cli.main([*argv, *settings, "--bootstrap", "50", "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"different configuration (architecture: {fingerprint} -> " in err
    assert sorted(p.name for p in directory.rglob("*")) == before


#: How each zoo member is written: PyTorch's blocks in its default parameterisation.
ZOO_PARAMETERISATION = {
    name: "standard"
    if name in ("kaiming_mlp", "torchvision_mlp", "bottleneck", "encoder_layer", "sdpa_block")
    else "ntk"
    for name in ZOO
}


@pytest.mark.parametrize("name", list(ZOO))
def test_fit_alpha_runs_on_every_zoo_member(tmp_path, capsys, name):
    """``ce-ray fit-alpha`` of each member of tests/theory/zoo.py, a few hundred draws, its
    shards Ray tasks that import the member by name; alpha.parquet says how it was sampled."""
    entry, parameterisation = ZOO[name], ZOO_PARAMETERISATION[name]
    shape = ",".join(map(str, entry.input_shape))
    argv = ["fit-alpha", "--space", entry.name, "--input-shape", shape, "--widths", "8,16"]
    argv += ["--samples", "200", "--shard-size", "100", "--bootstrap", "20"]
    argv += ["--parameterisation", parameterisation, "--results", str(tmp_path)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "alpha = " in err + out
    directory = next(tmp_path.glob("*/fit_alpha"))
    (row,) = pd.read_parquet(directory / "alpha.parquet").to_dict("records")
    assert row["parameterisation"] == parameterisation and np.isfinite(row["alpha"])
    stored = json.loads((directory / "config.json").read_text())
    stored.pop("architecture")
    assert stored.get("parameterisation", "ntk") == parameterisation
    assert FitConfig.from_json(stored).space.sampled_parameterisation == parameterisation
    notes = [line for line in (err + out).splitlines() if "note: PyTorch has no vectorised" in line]
    # The member's own warnings are printed before the fit, as inspect prints them.
    assert ("warning: member has BatchNorm" in err + out) == (name in ("bottleneck", "conv_bn"))
    attention = ("pre_ln_block", "encoder_layer", "sdpa_block")
    assert len(notes) == (1 if name in attention else 0), notes
    if parameterisation == "standard":  # the twin's samples are not the block's as written
        without = [a for a in argv if a not in ("--parameterisation", "standard")]
        assert cli.main(without) == 2
        assert "(parameterisation: standard -> None)" in capsys.readouterr().err


def test_a_member_whose_mean_kernel_grows_is_pointed_to_its_twin(tmp_path, capsys):
    """torchvision's ops.MLP sampled as written: E[K] grows with n, the warning says so and
    a hint names --parameterisation standard; as its twin, neither is printed."""
    argv = ["fit-alpha", "--space", ZOO["torchvision_mlp"].name, "--input-shape", "64"]
    argv += ["--widths", "8,32,128", "--samples", "200", "--bootstrap", "20"]
    assert cli.main([*argv, "--results", str(tmp_path / "as-written")]) == 0
    printed = "".join(capsys.readouterr())
    assert "warning: E[K] grows with n" in printed
    assert "hint: a member in PyTorch's default parameterisation" in printed
    twin = [*argv, "--parameterisation", "standard", "--results", str(tmp_path / "twin")]
    assert cli.main(twin) == 0
    printed = "".join(capsys.readouterr())
    assert "E[K] grows" not in printed and "hint:" not in printed
    assert "(your member, its NTK twin, inputs of shape (64,))" in printed
