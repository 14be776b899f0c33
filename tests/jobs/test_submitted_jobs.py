"""Jobs submitted with `ray job submit` to real heads: a cluster that starts with no worker nodes
and grows (Ray's fake autoscaler); and, on one head started from a shell that holds AWS
credentials (as a user's does), fit-alpha of your own member (examples/transformer_mlp.py,
imported by name from the submitted working directory) with its results on a real S3 API, a
sweep job of that member stopped mid-sweep and submitted again, logging to a real MLflow
tracking server and to TensorBoard -- after which the secret key, session token and MLflow
token are in no job of Ray's job table, no file of the head's session directory, no process's
command line, no result and nothing MLflow stored. Each head runs in its own process group and
RAY_TMPDIR and is stopped by that group; storage settings reach a job only through its runtime
environment, and never a secret."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ce_ray.configs import FitConfig
from ce_ray.experiments import fit_alpha as fa
from ce_ray.experiments import local_head, shards
from ce_ray.results import storage
from ce_ray.theory.by_name import make_space
from ce_ray.worker import records
from tests import leaks
from tests.conftest import epochs_so_far, short_tmpdir, training_worker_pids

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
    command += ["--", "python", *job_args]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


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


@pytest.fixture(scope="module")
def shell(s3_server) -> dict:
    """The user's shell: fake AWS keys, the S3 API's endpoint, and a new bucket in it."""
    bucket = f"ce-ray-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return {"env": leaks.secret_shell(s3_server.endpoint), "bucket": bucket, "s3": s3_server}


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and an artifact directory in
    ``directory``, in a process group of its own. It takes 10-30 s to start: the fixture
    starts it before the head and a test waits for it only when it needs it."""

    def __init__(self, directory: Path):
        self.directory, port = directory, local_head.free_port()
        self.uri = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{directory}/mlflow.db"]
        command += ["--default-artifact-root", str(directory / "artifacts")]
        with open(directory / "server.log", "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self, timeout_s: float = 180.0) -> str:
        """The server's URI, once it answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, (self.directory / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                    if response.status == 200:
                        return self.uri
            except OSError:
                pass
            assert time.monotonic() < deadline, "the MLflow server never answered"
            time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def head(shell, mlflow_server, tmp_path_factory):
    """A 2-CPU head started from ``shell``, a watch on every command line from before it
    starts, and a results directory for the jobs submitted to it."""
    tmpdir = short_tmpdir()
    env = local_head.head_env({"RAY_TMPDIR": tmpdir} | shell["env"])
    env.pop("RAY_ADDRESS", None)
    watch = leaks.CommandLineWatch()
    dashboard = local_head.free_port()
    process = local_head.start_head(
        local_head.free_port(), dashboard, env, ["--num-cpus=2"], log_path=f"{tmpdir}/head.log"
    )
    try:
        yield {
            "address": f"http://127.0.0.1:{dashboard}",
            "env": env,
            "tmpdir": tmpdir,
            "watch": watch,
            "results": tmp_path_factory.mktemp("submitted"),
        }
    finally:
        local_head.stop_head(process)
        watch.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


#: Your own member, named on the command line: the job's tasks import it on the head's workers
#: from the submitted working directory.
MEMBER = "examples.transformer_mlp:member"
FIT = ["--space", MEMBER, "--input-shape", "8,8", "--widths", "4,8,16", "--samples", "300"]


def test_fit_alpha_of_your_member_submitted_writes_to_s3_as_in_one_process(head, shell):
    """(A sweep of the member through a submitted job: the stopped-job test below.)"""
    results = f"s3://{shell['bucket']}/fits"
    job = ["jobs/fit_alpha.py", *FIT, "--shard-size", "300", "--seed", "3", "--workers", "1"]
    first = submit(head["address"], head["env"], *job, "--bootstrap", "50", "--results", results)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert "succeeded" in first.stdout + first.stderr
    key = "fits/examples-transformer_mlp-member/fit_alpha/alpha.parquet"
    stored = shell["s3"].client().get_object(Bucket=shell["bucket"], Key=key)
    row = pq.read_table(pa.BufferReader(stored["Body"].read())).to_pylist()[0]
    assert row["member"] == MEMBER and f"alpha = {row['alpha']:.4f}" in first.stdout
    # The alpha that sampling and fitting every shard in this process gives, to the last bit.
    config = FitConfig.for_member(
        make_space(MEMBER, input_shape=(8, 8)),
        widths=(4, 8, 16),
        samples=300,
        shard_size=300,
        seed=3,
    )
    here = str(head["results"] / "member-here")
    for shard in shards.plan_shards(config):
        shards.sample_shard(config, shard, storage.join(here, "shards"))
    assert fa.fit_from_shards(config, here, bootstrap=50).alpha == row["alpha"]
    # (A rerun resumes from S3: experiments/test_cluster.py, on two nodes.)


def test_a_stopped_job_submitted_again_keeps_finished_trials_and_resumes_the_rest(
    head, mlflow_server
):
    """A sweep of your own member (the example's transformer MLP blocks, with its
    network(m, n), on the digits: trials import both by name from the submitted working
    directory). Each trial trains two packed seeds on two DDP workers (gloo), so the trials
    run one at a time on the head's 2 CPUs; the job is stopped once the first has finished and
    the second is under way (its workers frozen meanwhile, so that the stop lands mid-trial
    however long it takes), and the resubmitted job, whose member's architecture is unchanged,
    resumes. Every test example counts once in each seed's test error. Each (point, seed) is
    one MLflow run, which the resubmitted job continues, and one curve in TensorBoard."""
    address, env, tmp_path = head["address"], head["env"], head["results"]
    epochs = 6
    job = [
        "jobs/primal_curve.py",
        *FIT[:4],
        "--network",
        "examples.transformer_mlp:network",
        "--alpha",
        "2.0",
        "--points",
        "2",
        "--seeds",
        "2",
        "--pack-seeds",
        "--workers-per-trial",
        "2",
        "--epochs",
        str(epochs),
        "--results",
        str(tmp_path),
        "--experiment",
        "stop",
        "--no-report",
        "--mlflow",
        mlflow_server.wait(),
    ]
    job_id = f"ce-ray-stop-{uuid.uuid4().hex[:8]}"
    first = submit(address, env, *job, job_id=job_id, wait=False)
    assert first.returncode == 0, first.stderr[-2000:]
    deadline = time.monotonic() + 300

    def one_finished_and_the_next_begun() -> bool:
        lines = sorted(epochs_so_far(tmp_path / "stop"))
        return len(lines) == 2 and lines[0] >= 3 and lines[1] >= epochs

    # One trial at a time: stop once the first has finished and the second is under way.
    # The stop takes seconds to land, an epoch ~0.5 s: the second trial's workers are
    # stopped (SIGSTOP) until then, or it could finish first.
    while not one_finished_and_the_next_begun():
        assert time.monotonic() < deadline, "the sweep never got there"
        time.sleep(0.05)
    frozen = training_worker_pids()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        subprocess.run(
            [RAY, "job", "stop", "--address", address, job_id],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        for pid in filter(psutil.pid_exists, frozen):
            os.kill(pid, signal.SIGCONT)

    started = time.monotonic()
    again = submit(address, env, *job)
    resumed_in = time.monotonic() - started
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "resuming" in again.stdout
    trials = pd.read_parquet(tmp_path / "stop/trials.parquet")
    history = pd.read_parquet(tmp_path / "stop/epochs.parquet")
    assert len(trials) == 4 and trials.groupby(["n", "seed_index"]).size().eq(1).all()
    assert trials["trial_id"].nunique() == 2 and (trials["packed_seeds"] == 2).all()
    assert (trials["status"] == "finished").all()
    assert set(trials["member"]) == {MEMBER} and trials["architecture"].nunique() == 1
    assert trials.groupby("n")["final_train_loss"].nunique().eq(2).all()  # seeds differ
    assert (
        history.groupby(["trial_id", "seed_index"])["epoch"]
        .apply(list)
        .map(lambda e: e == list(range(1, epochs + 1)))
        .all()
    )
    for record in (tmp_path / "stop/records").glob("*.json"):
        # gloo all-reduce of both ranks' counts: the 360 test digits, each once.
        rows = records.read_epochs(str(record))
        assert len(rows) == 2 * epochs and all(e["test_examples"] == 360 for e in rows)
        assert all(abs((e["test_error"] * 360 / 100 + 0.5) % 1 - 0.5) < 1e-6 for e in rows)
    restarted = trials[trials["retries"] > 0]
    assert len(restarted) >= 1  # the trial that was running when the job stopped
    for trial_id in restarted["trial_id"]:
        epochs_of = history[history["trial_id"] == trial_id]
        before = epochs_of.loc[epochs_of["attempt"] == 0, "epoch"].max()
        assert before >= 2  # it kept what it had trained ...
        assert (
            epochs_of.loc[epochs_of["attempt"] == 1, "epoch"].min() == before + 1
        )  # ... and went on
    done_first = trials[trials["retries"] == 0]
    assert len(done_first) >= 1  # the trial that had finished was not trained again
    print(f"\n[figures] resubmitted sweep finished in {resumed_in:.1f} s")
    check_mlflow_runs(mlflow_server.uri, "stop", trials, history, epochs)
    check_tensorboard(tmp_path / "stop/tune", trials, history)


def check_mlflow_runs(
    uri: str, experiment: str, trials: pd.DataFrame, history: pd.DataFrame, epochs: int
) -> None:
    """One finished run per (point, seed), with the point's parameters, and each epoch's
    figures of epochs.parquet once -- the resumed trial's runs continued, not started again."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == len(trials) == 4
    for run in runs:
        params, tags = run.data.params, run.data.tags
        row = trials[
            (trials["n"] == int(params["n"])) & (trials["seed_index"] == int(params["seed_index"]))
        ]
        assert len(row) == 1 and tags["ce_ray.point"] == row["label"].iloc[0]
        assert run.info.status == "FINISHED"
        for name in ("m", "params", "alpha", "rho", "var_ensemble"):
            assert float(params[name]) == pytest.approx(float(row[name].iloc[0]))
        assert params["preset"] == "digits-mlp" and params["member"] == MEMBER
        assert int(params["seed"]) > 0
        logged = client.get_metric_history(run.info.run_id, "test_error")
        assert sorted(m.step for m in logged) == list(range(1, epochs + 1))
        seed = history[
            (history["trial_id"] == row["trial_id"].iloc[0])
            & (history["seed_index"] == row["seed_index"].iloc[0])
        ]
        expected = dict(zip(seed["epoch"], seed["test_error"], strict=True))
        assert {m.step: m.value for m in logged} == pytest.approx(expected)


def check_tensorboard(tune_dir: Path, trials: pd.DataFrame, history: pd.DataFrame) -> None:
    """``tensorboard --logdir <experiment>/tune``: each trial's directory names its point and
    seeds, and holds a per-epoch curve for each packed seed (``ray/tune/seed/<i>/...``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    finished = trials[trials["retries"] == 0]  # trained in one go: one curve, no restart
    trial_id = finished["trial_id"].iloc[0]
    (directory,) = [d for d in tune_dir.iterdir() if d.name.endswith(trial_id)]
    assert directory.name.startswith(f"{finished['label'].iloc[0]}-seeds0-1-")
    events = EventAccumulator(str(directory))
    events.Reload()
    for seed_index in (0, 1):
        curve = events.Scalars(f"ray/tune/seed/{seed_index}/test_error")
        seed = history[(history["trial_id"] == trial_id) & (history["seed_index"] == seed_index)]
        assert [point.value for point in curve] == pytest.approx(list(seed["test_error"]))


def test_no_credential_reached_the_job_table_session_files_command_lines_or_results(
    head, shell, mlflow_server
):
    """After the jobs above (run alone, it checks a head that ran none)."""
    from ray.job_submission import JobSubmissionClient

    token = (Path(head["env"]["HOME"]) / ".ray/auth_token").read_text().strip()
    client = JobSubmissionClient(head["address"], headers={"Authorization": f"Bearer {token}"})
    table = json.dumps([vars(job) for job in client.list_jobs()], default=str)
    assert not leaks.holds_a_secret(table)
    assert not leaks.files_holding_a_secret(head["tmpdir"])
    assert not head["watch"].leaks
    assert not leaks.files_holding_a_secret(head["results"])
    assert not leaks.files_holding_a_secret(mlflow_server.directory)
    assert not leaks.s3_objects_holding_a_secret(shell["s3"].client(), shell["bucket"])
