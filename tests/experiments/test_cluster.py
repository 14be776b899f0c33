"""Several nodes: a 0-CPU head and two 1-CPU workers (separate raylets) on 127.0.0.1, results
on a real S3 API, and worker nodes removed mid-run. The nodes are started with S3 credentials
of their own (as an instance profile gives them) but without the endpoint: the driver passes
only that, non-secret, to its tasks and workers.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from ce_ray import cli
from ce_ray.configs import FitConfig
from ce_ray.experiments import fit_alpha as fa
from ce_ray.results import storage
from tests.conftest import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
FIT = [
    "--preset",
    "mnist-mlp-block",
    "--widths",
    "8,16,32",
    "--samples",
    "2000",
    "--shard-size",
    "250",
    "--bootstrap",
    "50",
    "--seed",
    "3",
]
SWEEP = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--seeds", "1"]

pytestmark = pytest.mark.usefixtures("multi_node")


@pytest.fixture(scope="module")
def single_node_alpha(tmp_path_factory):
    """The same fit as a plain script on its own one-node cluster (another RAY_TMPDIR)."""
    results = tmp_path_factory.mktemp("single")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = short_tmpdir()
    run = subprocess.run(
        [
            sys.executable,
            "jobs/fit_alpha.py",
            *FIT,
            "--workers",
            "2",
            "--results",
            str(results),
            "--experiment",
            "single",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return pd.read_parquet(results / "single/fit_alpha/alpha.parquet").loc[0, "alpha"]


def shard_nodes(directory: str) -> set[str]:
    shard_dir = storage.join(directory, "shards")
    names = storage.list_files(shard_dir, ".parquet")
    return {storage.read_metadata(storage.join(shard_dir, name))["node_id"] for name in names}


def worker_ids(multi_node) -> set[str]:
    return {node.node_id for node in multi_node[1]}


def fit(results: str, experiment: str) -> fa.FitResult:
    """FIT's settings, through the library."""
    config = FitConfig.from_preset(
        "mnist-mlp-block", widths=(8, 16, 32), samples=2000, shard_size=250, seed=3
    )
    return fa.fit_alpha(config, results, experiment, workers=2, bootstrap=50, log=lambda _: None)


def test_fit_alpha_shards_run_on_both_workers_and_alpha_matches_one_node(
    multi_node, s3, single_node_alpha
):
    server, bucket = s3
    from ce_ray.experiments import cluster

    cluster.init_ray(f"s3://{bucket}/fits")
    result = fit(f"s3://{bucket}/fits", "multi")
    assert result.alpha == single_node_alpha  # to the last bit
    assert shard_nodes(result.directory) == worker_ids(multi_node)  # both workers, not the head
    alpha = pd.read_parquet(f"s3://{bucket}/fits/multi/fit_alpha/alpha.parquet")  # pandas alone
    assert alpha.loc[0, "alpha"] == single_node_alpha


def test_sweep_trains_on_the_workers_and_writes_to_s3(multi_node, s3):
    server, bucket = s3
    results = f"s3://{bucket}/sweeps"
    args = [*SWEEP, "--epochs", "3", "--results", results, "--experiment", "s3"]
    assert cli.main(["sweep", "primal", *args]) == 0
    trials = pd.read_parquet(f"{results}/s3/trials.parquet")
    epochs = pd.read_parquet(f"{results}/s3/epochs.parquet")
    assert len(trials) == 2 and (trials["status"] == "finished").all()
    assert len(epochs) == 6 and set(epochs["node_id"]) <= worker_ids(multi_node)
    keys = server.keys(bucket)
    for name in (
        "trials.parquet",
        "epochs.parquet",
        "curves.parquet",
        "curves.png",
        "test_error.png",
        "sweep.json",
    ):
        assert f"sweeps/s3/{name}" in keys
    assert any(k.startswith("sweeps/s3/tune/") for k in keys)
    assert any(k.startswith("sweeps/s3/train/") and "checkpoint" in k for k in keys)
    # A rerun resumes from S3: nothing is trained again.
    assert cli.main(["sweep", "primal", *args]) == 0
    pd.testing.assert_frame_equal(epochs, pd.read_parquet(f"{results}/s3/epochs.parquet"))


def _remove_a_worker_once(multi_node, choose) -> str:
    """In the main thread (Ray's requirement): wait until ``choose()`` names a worker node
    that is doing the work, remove it, and add a fresh node for the tests after. Returns the
    removed node's id."""
    cluster, workers = multi_node
    deadline = time.monotonic() + 180
    while (victim_id := choose()) is None:
        assert time.monotonic() < deadline, "the run never reached the point of the kill"
        time.sleep(0.05)
    victim = next(node for node in workers if node.node_id == victim_id)
    workers.remove(victim)
    cluster.remove_node(victim)
    workers.append(cluster.add_node(num_cpus=1))
    return victim_id


def _training_node(experiment_dir: Path, after_epochs: int) -> str | None:
    """The node training a trial that has trained ``after_epochs`` epochs, from its record."""
    for record in experiment_dir.glob("records/*.json"):
        try:
            epochs = json.loads(record.read_text())["epochs"]
        except (OSError, ValueError):
            continue
        if len(epochs) >= after_epochs:
            return epochs[-1]["node_id"]
    return None


def test_a_lost_node_mid_sweep_continues_from_checkpoints(multi_node, tmp_path):
    args = [*SWEEP, "--epochs", "40", "--results", str(tmp_path), "--experiment", "lost"]
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("rc", cli.main(["sweep", "dual", *args]))
    )
    thread.start()

    removed = _remove_a_worker_once(multi_node, lambda: _training_node(tmp_path / "lost", 5))
    thread.join(timeout=600)
    assert outcome.get("rc") == 0
    trials = pd.read_parquet(tmp_path / "lost/trials.parquet")
    epochs = pd.read_parquet(tmp_path / "lost/epochs.parquet")
    assert len(trials) == 2 and trials.groupby(["n", "seed_index"]).size().eq(1).all()
    assert (trials["status"] == "finished").all()
    assert (
        epochs.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == list(range(1, 41))).all()
    )
    lost = epochs[epochs["node_id"] == removed]
    assert len(lost), "no trial trained on the removed node"
    for trial_id, history in epochs.groupby("trial_id"):
        if removed in set(history["node_id"]):
            # It went on elsewhere, from its checkpoint: later epochs by a later start.
            after = history[
                history["epoch"] > history.loc[history["node_id"] == removed, "epoch"].max()
            ]
            assert (
                len(after)
                and (after["attempt"] >= 1).all()
                and removed not in set(after["node_id"])
            )
            assert trials.set_index("trial_id").loc[trial_id, "retries"] >= 1


def test_a_lost_node_mid_fit_alpha_gives_the_same_alpha(multi_node, tmp_path, single_node_alpha):
    from ce_ray.experiments import cluster

    cluster.init_ray(str(tmp_path))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("r", fit(str(tmp_path), "lost")))
    thread.start()
    shard_dir = tmp_path / "lost/fit_alpha/shards"

    def a_node_with_shards() -> str | None:
        if len(list(shard_dir.glob("w*.parquet"))) < 3:
            return None
        return sorted(shard_nodes(str(tmp_path / "lost/fit_alpha")))[0]

    removed = _remove_a_worker_once(multi_node, a_node_with_shards)
    thread.join(timeout=600)
    assert outcome["r"].alpha == single_node_alpha
    assert removed in shard_nodes(str(tmp_path / "lost/fit_alpha"))
