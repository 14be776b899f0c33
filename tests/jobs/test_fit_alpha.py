"""jobs/fit_alpha.py as a plain script, as `ce-ray fit-alpha`, and through `ray job submit`
against a real local head. No other Ray cluster runs during this module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ce_ray.experiments import local_head

# Each test starts its own Ray head (a subprocess), as a user's shell would.
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The head's workers and the job's `python` must be this environment's.
ENV = os.environ | {
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
}
SMALL = [
    "--preset",
    "mnist-mlp-block",
    "--widths",
    "8,16,32",
    "--samples",
    "1000",
    "--bootstrap",
    "100",
]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout
    )


def test_plain_script_starts_its_own_cluster_and_prints_json(tmp_path):
    result = run(
        sys.executable,
        "jobs/fit_alpha.py",
        *SMALL,
        "--workers",
        "2",
        "--results",
        str(tmp_path),
        "--experiment",
        "plain",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert {"alpha", "ci_low", "ci_high", "r2", "moments"} <= set(data)
    assert data["ci_low"] < data["alpha"] < data["ci_high"]
    assert [row["width"] for row in data["moments"]] == [8, 16, 32]
    assert "[fit-alpha] 3/3 shards" in result.stderr  # progress goes to stderr with --json
    assert f"alpha = {data['alpha']:.4f}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "1"], "argument --samples: must be an integer >= 2; got '1'"),
        (["--widths", "16"], "need at least two widths to fit alpha; got [16]"),
        (["--widths", "0,8"], "widths must be integers from 1 to"),
        (["--workers", "0"], "argument --workers: must be an integer >= 1; got '0'"),
        (["--memory-budget", "0.01", "--method", "batched"], "too small for one sample"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    result = run(
        str(BIN / "ce-ray"),
        "fit-alpha",
        *SMALL,
        "--workers",
        "1",
        "--results",
        str(tmp_path),
        *args,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ce-ray fit-alpha: error: "), lines
    assert message in lines[0]
    assert not any(tmp_path.iterdir())


@pytest.fixture
def ray_head(ray_tmpdir):
    """A real head (`ray start --head --block`) in its own process group and RAY_TMPDIR,
    stopped by that group: never `ray stop`, which stops every Ray process on the machine."""
    tmp = Path(ray_tmpdir)
    dashboard = local_head.free_port()
    env = local_head.head_env({"RAY_TMPDIR": str(tmp)})
    head = local_head.start_head(
        local_head.free_port(), dashboard, env, ["--num-cpus=2"], log_path=str(tmp / "head.log")
    )
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        local_head.stop_head(head)


def test_ray_job_submit_against_a_local_head(ray_head, tmp_path):
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", "."]
    job = [*SMALL, "--results", str(tmp_path), "--experiment", "submitted"]
    first = run(*submit, "--", "python", "jobs/fit_alpha.py", *job)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert "succeeded" in first.stdout + first.stderr
    assert "alpha = " in first.stdout
    alpha = pd.read_parquet(tmp_path / "submitted/fit_alpha/alpha.parquet")
    assert f"alpha = {alpha.loc[0, 'alpha']:.4f}" in first.stdout

    again = run(*submit, "--", "python", "jobs/fit_alpha.py", *job)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "resuming: 3/3 shards already on storage" in again.stdout
    assert f"alpha = {alpha.loc[0, 'alpha']:.4f}" in again.stdout
