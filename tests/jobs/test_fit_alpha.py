"""jobs/fit_alpha.py as a plain script that starts its own cluster, and `ce-ray fit-alpha`'s
one-line errors (`ray job submit` of it: tests/jobs/test_submitted_jobs.py)."""

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import leaks

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


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=ROOT, env=env or ENV, timeout=timeout
    )


def test_plain_script_starts_its_own_cluster_writes_to_s3_and_leaks_no_credential(
    s3_server, ray_tmpdir
):
    """From a shell holding AWS credentials (as a user's does), with results on a real S3
    API: the script starts a local cluster of its own and prints JSON (progress on stderr;
    resuming from S3: tests/experiments/test_cluster.py, tests/jobs/test_submitted_jobs.py).
    The secret key and session token appear on no process's command line, in no file of that
    cluster's session directory, and in no result object. Ray's record of this node's cluster
    names a listener of another user's: the script joins no such cluster (nothing connects to
    the listener) and says so in one line."""
    bucket = f"ce-ray-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    env = ENV | leaks.secret_shell(s3_server.endpoint) | {"RAY_TMPDIR": ray_tmpdir}
    env.pop("RAY_ADDRESS", None)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    record = Path(ray_tmpdir) / "ray" / "ray_current_cluster"
    record.parent.mkdir(mode=0o777)
    record.write_text(f"127.0.0.1:{listener.getsockname()[1]}")
    if os.getuid() == 0:  # root can give it away: another user's record
        os.chown(record, 65534, 65534)
    else:  # else one that other users may write
        record.chmod(0o666)
    command = [
        sys.executable,
        "jobs/fit_alpha.py",
        *SMALL,
        "--workers",
        "2",
        "--results",
        f"s3://{bucket}/r",
        "--experiment",
        "plain",
        "--json",
    ]
    watch = leaks.CommandLineWatch()
    first = run(*command, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    data = json.loads(first.stdout)
    assert {"alpha", "ci_low", "ci_high", "r2", "moments"} <= set(data)
    assert data["ci_low"] < data["alpha"] < data["ci_high"]
    assert [row["width"] for row in data["moments"]] == [8, 16, 32]
    assert "[fit-alpha] 3/3 shards" in first.stderr  # progress goes to stderr with --json
    assert f"alpha = {data['alpha']:.4f}" in first.stderr
    assert not watch.stop()
    assert "[cluster] starting a Ray cluster of its own on 127.0.0.1; not joining" in first.stderr
    with pytest.raises(BlockingIOError):  # no connection came
        listener.accept()
    listener.close()
    assert not leaks.files_holding_a_secret(ray_tmpdir)
    client = s3_server.client()
    keys = {k.removeprefix("r/plain/fit_alpha/") for k in s3_server.keys(bucket)}
    assert {"alpha.png", "config.json", "moments.parquet", "alpha.parquet"} <= keys
    assert not leaks.s3_objects_holding_a_secret(client, bucket)


def test_the_console_script_says_a_bad_value_in_one_line(tmp_path):
    """The installed `ce-ray` (the table of tests/test_bad_input.py runs in-process)."""
    result = run(
        str(BIN / "ce-ray"),
        "fit-alpha",
        *SMALL,
        "--workers",
        "1",
        "--results",
        str(tmp_path),
        "--memory-budget",
        "0.01",
        "--method",
        "batched",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ce-ray fit-alpha: error: "), lines
    assert "too small for one sample" in lines[0]
    assert not any(tmp_path.iterdir())
