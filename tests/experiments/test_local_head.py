"""Sweeps submitted with `ray job submit` to real heads: a job stopped mid-sweep and
submitted again, and a cluster that starts with no worker nodes and grows (Ray's fake
autoscaler). Each head runs in its own process group and RAY_TMPDIR and is stopped by that
group; storage variables reach the job only through its runtime environment."""

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

from ce_ray.experiments import local_head
from tests.conftest import epochs_so_far

# Each test starts its own Ray head (a subprocess), as a user's shell would.
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
RAY = str(local_head.BIN / "ray")


def submit(
    address: str,
    env: dict,
    *job_args: str,
    job_id: str | None = None,
    wait: bool = True,
    timeout: int = 600,
):
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT)]
    if job_id:
        command += ["--submission-id", job_id]
    if not wait:
        command += ["--no-wait"]
    command += ["--", "python", "jobs/primal_curve.py", *job_args]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def head(ray_tmpdir):
    env = local_head.head_env({"RAY_TMPDIR": ray_tmpdir})
    dashboard = local_head.free_port()
    process = local_head.start_head(
        local_head.free_port(),
        dashboard,
        env,
        ["--num-cpus=2"],
        log_path=f"{ray_tmpdir}/head.log",
    )
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        local_head.stop_head(process)


def test_a_stopped_job_submitted_again_keeps_finished_trials_and_resumes_the_rest(head, tmp_path):
    address, env = head
    epochs = 60
    job = [
        "--preset",
        "synthetic-mlp",
        "--alpha",
        "2.0",
        "--points",
        "2",
        "--seeds",
        "1",
        "--epochs",
        str(epochs),
        "--max-concurrent-trials",
        "1",
        "--results",
        str(tmp_path),
        "--experiment",
        "stop",
        "--no-report",
    ]
    job_id = f"ce-ray-stop-{uuid.uuid4().hex[:8]}"
    first = submit(address, env, *job, job_id=job_id, wait=False)
    assert first.returncode == 0, first.stderr[-2000:]
    deadline = time.monotonic() + 300

    def one_finished_and_the_next_begun() -> bool:
        lines = sorted(epochs_so_far(tmp_path / "stop"))
        return len(lines) == 2 and lines[0] >= 5 and lines[1] >= epochs

    # One trial at a time: stop once the first has finished and the second is under way
    # (with most of its epochs still to go: the stop takes a few seconds to land).
    while not one_finished_and_the_next_begun():
        assert time.monotonic() < deadline, "the sweep never got there"
        time.sleep(0.05)
    subprocess.run(
        [RAY, "job", "stop", "--address", address, job_id],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )

    started = time.monotonic()
    again = submit(address, env, *job)
    resumed_in = time.monotonic() - started
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "resuming" in again.stdout
    trials = pd.read_parquet(tmp_path / "stop/trials.parquet")
    history = pd.read_parquet(tmp_path / "stop/epochs.parquet")
    assert len(trials) == 2 and trials.groupby(["n", "seed_index"]).size().eq(1).all()
    assert (trials["status"] == "finished").all()
    assert (
        history.groupby("trial_id")["epoch"]
        .apply(list)
        .map(lambda e: e == list(range(1, epochs + 1)))
        .all()
    )
    restarted = trials[trials["retries"] > 0]
    assert len(restarted) >= 1  # the trial that was running when the job stopped
    for trial_id in restarted["trial_id"]:
        epochs_of = history[history["trial_id"] == trial_id]
        before = epochs_of.loc[epochs_of["attempt"] == 0, "epoch"].max()
        assert before >= 5  # it kept what it had trained ...
        assert (
            epochs_of.loc[epochs_of["attempt"] == 1, "epoch"].min() == before + 1
        )  # ... and went on
    done_first = trials[trials["retries"] == 0]
    assert len(done_first) >= 1  # the trial that had finished was not trained again
    print(f"\n[figures] resubmitted sweep finished in {resumed_in:.1f} s")


def fake_autoscaler_config(gcs_port: int, max_workers: int) -> dict:
    """Ray's fake multi-node provider: worker nodes are raylets started on this machine."""
    empty = {
        k: []
        for k in (
            "cluster_synced_files",
            "rsync_exclude",
            "rsync_filter",
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
    }
    return empty | {
        "cluster_name": "ce-ray-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": {"CPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
    }


def test_a_sweep_grows_a_cluster_that_starts_with_no_workers(ray_tmpdir, tmp_path):
    gcs, dashboard = local_head.free_port(), local_head.free_port()
    config = Path(ray_tmpdir) / "autoscaler.json"
    config.write_text(json.dumps(fake_autoscaler_config(gcs, max_workers=2)))
    env = local_head.head_env(
        {"RAY_TMPDIR": ray_tmpdir, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    )
    head = local_head.start_head(
        gcs,
        dashboard,
        env,
        ["--num-cpus=0", f"--autoscaling-config={config}"],
        log_path=f"{ray_tmpdir}/head.log",
    )
    try:
        job = [
            "--preset",
            "synthetic-mlp",
            "--alpha",
            "2.0",
            "--points",
            "2",
            "--seeds",
            "1",
            "--epochs",
            "3",
            "--results",
            str(tmp_path),
            "--no-report",
        ]
        # The driver joins as a plain script on the head's machine (RAY_ADDRESS), not through
        # `ray job submit`: on the fake provider every node shares this machine's session
        # directory, and a node's runtime-env agent deletes a job's working-dir copy that
        # the driver of another node still runs in (seen: FileNotFoundError from getcwd).
        run = subprocess.run(
            [str(local_head.BIN / "python"), "jobs/primal_curve.py", *job],
            env=env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        trials = pd.read_parquet(tmp_path / "synthetic-mlp-primal/trials.parquet")
        epochs = pd.read_parquet(tmp_path / "synthetic-mlp-primal/epochs.parquet")
        assert len(trials) == 2 and (trials["status"] == "finished").all()
        added = set(epochs["node_id"])
        assert len(added) == 2  # no concurrency flag: both trials at once, one new node each
        print(f"\n[figures] the autoscaler added {len(added)} nodes: {sorted(added)}")
    finally:
        local_head.stop_head(head)
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(ray_tmpdir in part for part in (p.info["cmdline"] or []))
    ]
    assert not leftovers


def test_the_auth_token_is_private_whoever_made_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)
    local_head.ensure_auth_token(env)  # made here, under a private umask
    token = tmp_path / ".ray/auth_token"
    assert len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    token.chmod(0o644)  # as `ray get-auth-token --generate` or ray.init() leave it
    token.parent.chmod(0o755)
    local_head.ensure_auth_token(env)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
