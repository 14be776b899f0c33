"""End to end, as the README's main command runs it: a local Ray head on 127.0.0.1,
a Ray job (the Job SDK: `ray job submit --working-dir .`) of jobs/primal_curve.py on the
default preset (tiny settings), the result
table on stdout, Parquet on disk, and the head stopped afterwards."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

# Each test starts its own Ray head (a subprocess), as a user's shell would.
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def ray_daemons(wait_s: float = 15.0) -> list[int]:
    """Live raylets and GCS servers (zombies left to be reaped do not count), waiting up to
    ``wait_s`` for the last ones to exit."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [
            p.pid
            for p in psutil.process_iter(["name", "status"])
            if p.info["name"] in ("raylet", "gcs_server")
            and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def readme_output() -> list[str]:
    """The main job's output as the README shows it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("What `jobs/run_local.py` printed here", 1)[1]
    return block.split("```text\n", 1)[1].split("\n```", 1)[0].splitlines()


def line_kind(line: str) -> str:
    """What a line is, numbers and paths aside: its ``[prefix] word`` ("[sweep] trial"), or
    its first word ("results:"), or, for a time-stamped line of Ray's, its level and source
    ("INFO job_manager.py:N"); a row of the table is "row"."""
    if re.match(r"^ *\d+ +\d+ +\d+x\d+d ", line):
        return "row"
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+", "", line)
    words = re.sub(r"\d+", "N", line).split()
    two = words[0].startswith("[") or words[0] in ("INFO", "WARNING", "ERROR")
    return " ".join(words[:2] if two else words[:1])


def job_id(out: str) -> str:
    """The id run_local says it submitted."""
    match = re.search(r"^\[run_local\] submitted (\S+):", out, re.M)
    assert match, out
    return match.group(1)


def test_run_local_submits_the_default_job_and_stops_its_head(tmp_path):
    home = tmp_path / "home"  # a fresh machine: no ~/.ray, so no auth token yet
    home.mkdir()
    # A user's shell: no Ray settings (the suite's own RAY_AUTH_MODE hid, once, that the
    # Job SDK read the auth mode before run_local had set it).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    result = subprocess.run(
        [
            sys.executable,
            "jobs/run_local.py",
            "--points",
            "2",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env=env | {"HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    out = result.stdout
    assert "[run_local] starting a Ray head on 127.0.0.1" in out
    assert (home / ".ray/auth_token").stat().st_size == 64  # created the way Ray supports
    assert "[run_local] stopping the Ray head it started" in out
    directory = tmp_path / "digits-mlp-primal"
    assert f"results: {directory}/trials.parquet" in out
    assert "rank correlation of var_ensemble with the test error (Spearman, 2 points)" in out

    trials = pd.read_parquet(directory / "trials.parquet")  # plain pandas, no ce-ray needed
    assert len(trials) == 2 and set(trials["role"]) == {"optimum", "baseline"}
    assert (trials["status"] == "finished").all() and (trials["epochs_completed"] == 2).all()
    assert trials["final_test_error"].between(0, 100).all()
    # The console: ce-ray's lines, not Ray's (Train's per-epoch lines, Tune's tables, the
    # workers' logs stay in Ray's logs unless --verbose).
    for label in trials["label"]:
        assert f"[sweep] trial {label} seeds [0] started" in out
        assert f"[sweep] trial {label} seeds [0] finished: " in out
    for noise in ("Checkpoint successfully created", "Reporting training result", "Trial name"):
        assert noise not in out + result.stderr
    # Under 40 lines, all told (stdout and stderr), each of a kind the README shows.
    lines = (out + result.stderr).splitlines()
    assert len(lines) < 40, "\n".join(lines)
    shown = {line_kind(line) for line in readme_output()}
    assert {line_kind(line) for line in lines} <= shown, "\n".join(lines)
    assert f"[run_local] job {job_id(out)} succeeded" in out
    # The paper's metric: with 2 epochs, the mean of both, and the row says so.
    assert (trials["last_epochs_averaged"] == 2).all()
    assert trials["final_test_error_top5"].notna().all()  # digits has 10 classes
    assert (trials["alpha"] > 0).all() and trials["alpha"].nunique() == 1
    epochs = pd.read_parquet(directory / "epochs.parquet")
    assert len(epochs) == 4
    alpha = pd.read_parquet(directory / "fit_alpha/alpha.parquet")
    assert alpha.loc[0, "alpha"] == trials["alpha"].iloc[0]
    assert (directory / "curves.png").stat().st_size > 0
    assert not ray_daemons(), ray_daemons()
    # ... and forgotten: the next ray.init() on this machine does not try to join it.
    current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray/ray_current_cluster"
    assert not (current.exists() and current.read_text().strip() == "127.0.0.1:6379")
