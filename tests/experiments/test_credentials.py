"""Credentials never travel through Ray. A shell holds recognisable fake AWS keys and results
go to a real S3 API (moto on 127.0.0.1): fit-alpha and a sweep through `ray job submit` to a
head started from that shell, and fit-alpha as a plain script that starts its own cluster.
The secret key and session token then appear in no job of Ray's job table (read with the job
SDK), no file under either Ray session directory, no process's command line, and no object
of the results."""

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ce_ray.experiments import local_head
from tests.conftest import short_tmpdir

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
SECRET = f"ce-ray-secret-{uuid.uuid4().hex}"
SESSION = f"ce-ray-session-{uuid.uuid4().hex}"
FIT = ["--preset", "digits-mlp-block", "--widths", "4,8", "--samples", "200", "--bootstrap", "20"]
SWEEP = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--seeds", "1"]


class CommandLineWatch:
    """Every process's command line, read every 0.1 s while the jobs run."""

    def __init__(self):
        self.leaks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                line = " ".join(process.info["cmdline"] or [])
                if SECRET in line or SESSION in line:
                    at = max(line.find(SECRET), line.find(SESSION))
                    self.leaks.append(line[max(0, at - 300) : at + 80])
            time.sleep(0.1)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return self.leaks


def files_holding_the_secret(directory: str) -> list[str]:
    found = []
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_socket():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if SECRET.encode() in data or SESSION.encode() in data:
                found.append(str(path))
    return found


def test_credentials_reach_no_job_table_file_command_line_or_result(s3_server):
    bucket = f"ce-ray-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    shell = {
        "AWS_ACCESS_KEY_ID": "AKIACERAYTESTKEY",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SESSION,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": s3_server.endpoint,
    }
    head_tmp, script_tmp = short_tmpdir(), short_tmpdir()
    env = local_head.head_env({"RAY_TMPDIR": head_tmp} | shell)
    env.pop("RAY_ADDRESS", None)
    watch = CommandLineWatch()
    dashboard = local_head.free_port()
    head = local_head.start_head(
        local_head.free_port(), dashboard, env, log_path=f"{head_tmp}/head.log"
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        for job in (
            ["jobs/fit_alpha.py", *FIT, "--results", f"s3://{bucket}/fits"],
            ["jobs/primal_curve.py", *SWEEP, "--epochs", "1", "--results", f"s3://{bucket}/sw"],
        ):
            submitted = subprocess.run(
                [str(local_head.BIN / "ray"), "job", "submit", "--address", address]
                + ["--working-dir", str(ROOT), "--", "python", *job],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
        from ray.job_submission import JobSubmissionClient

        token = (Path(env["HOME"]) / ".ray/auth_token").read_text().strip()
        client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
        jobs = client.list_jobs()
        assert len(jobs) == 2
        table = json.dumps([vars(job) for job in jobs], default=str)
        assert SECRET not in table and SESSION not in table
    finally:
        local_head.stop_head(head)

    plain = subprocess.run(
        [sys.executable, "jobs/fit_alpha.py", *FIT, "--results", f"s3://{bucket}/plain"],
        env=env | {"RAY_TMPDIR": script_tmp},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert not watch.stop()
    for directory in (head_tmp, script_tmp):
        assert not files_holding_the_secret(directory)
    client = s3_server.client()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(key.endswith("alpha.parquet") for key in keys)
    assert any(key.endswith("trials.parquet") for key in keys)
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert SECRET.encode() not in body and SESSION.encode() not in body, key
    for directory in (head_tmp, script_tmp):
        shutil.rmtree(directory, ignore_errors=True)
