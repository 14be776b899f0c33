"""Several nodes: a 0-CPU head and two 1-CPU workers (separate raylets) on 127.0.0.1, results
(and a sweep's own data, a Parquet table) on a real S3 API, and worker nodes removed
mid-run. The nodes are started with S3 credentials of their own (as an instance profile gives
them) but without the endpoint: the driver passes only that, non-secret, to its tasks and
workers.
"""

import json
import threading
import time

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ce_ray import cli
from ce_ray.configs import FitConfig
from ce_ray.experiments import fit_alpha as fa
from ce_ray.experiments.shards import plan_shards, sample_shard
from ce_ray.results import storage
from ce_ray.worker import records
from tests import data_callables

SWEEP = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--seeds", "1"]
#: Epochs of the sweep that loses a node after its 5th: each writes a checkpoint to S3.
LOST_EPOCHS = 12

pytestmark = pytest.mark.usefixtures("multi_node")


@pytest.fixture(scope="module")
def one_process_alpha(tmp_path_factory) -> float:
    """FIT's alpha computed in this process, shard after shard, with no Ray at all: what the
    cluster's tasks must reproduce to the last bit, wherever they ran."""
    config = fit_config()
    directory = str(tmp_path_factory.mktemp("one-process"))
    for shard in plan_shards(config):
        sample_shard(config, shard, storage.join(directory, "shards"))
    return fa.fit_from_shards(config, directory, bootstrap=50).alpha


def shard_nodes(directory: str) -> set[str]:
    shard_dir = storage.join(directory, "shards")
    names = storage.list_files(shard_dir, ".parquet")
    return {storage.read_metadata(storage.join(shard_dir, name))["node_id"] for name in names}


def worker_ids(multi_node) -> set[str]:
    return {node.node_id for node in multi_node[1]}


def fit_config() -> FitConfig:
    return FitConfig.from_preset(
        "mnist-mlp-block", widths=(8, 16, 32), samples=2000, shard_size=250, seed=3
    )


def fit(results: str, experiment: str) -> fa.FitResult:
    return fa.fit_alpha(
        fit_config(), results, experiment, workers=2, bootstrap=50, log=lambda _: None
    )


def test_fit_alpha_shards_run_on_both_workers_and_alpha_matches_one_process(
    multi_node, s3, one_process_alpha
):
    server, bucket = s3
    from ce_ray.experiments import cluster

    cluster.init_ray(f"s3://{bucket}/fits")
    result = fit(f"s3://{bucket}/fits", "multi")
    assert result.alpha == one_process_alpha  # to the last bit
    assert shard_nodes(result.directory) == worker_ids(multi_node)  # both workers, not the head
    alpha = pd.read_parquet(f"s3://{bucket}/fits/multi/fit_alpha/alpha.parquet")  # pandas alone
    assert alpha.loc[0, "alpha"] == one_process_alpha
    keys = {k.removeprefix("fits/multi/fit_alpha/") for k in server.keys(bucket)}
    assert {"alpha.png", "config.json", "moments.parquet", "alpha.parquet"} <= keys
    assert len([k for k in keys if k.startswith("shards/w")]) == len(plan_shards(fit_config()))
    # A rerun resumes from S3: every shard is there, none is sampled again.
    lines: list[str] = []
    config = fit_config()
    again = fa.fit_alpha(config, f"s3://{bucket}/fits", "multi", 2, bootstrap=50, log=lines.append)
    assert again.alpha == one_process_alpha
    shards = len(plan_shards(config))
    assert f"[fit-alpha] resuming: {shards}/{shards} shards already on storage" in lines, lines


def _remove_a_worker_once(multi_node, choose, poll_s: float = 0.05) -> str:
    """In the main thread (Ray's requirement): wait until ``choose()`` names a worker node
    that is doing the work, remove it, and add a fresh node for the tests after. Returns the
    removed node's id."""
    cluster, workers = multi_node
    deadline = time.monotonic() + 180
    while (victim_id := choose()) is None:
        assert time.monotonic() < deadline, "the run never reached the point of the kill"
        time.sleep(poll_s)
    victim = next(node for node in workers if node.node_id == victim_id)
    workers.remove(victim)
    cluster.remove_node(victim)
    workers.append(cluster.add_node(num_cpus=1))
    return victim_id


def _training_node(experiment_dir: str, after_epochs: int) -> str | None:
    """The node training a trial that has trained ``after_epochs`` epochs, from its record
    (on S3: the records live with the results)."""
    directory = storage.join(experiment_dir, "records")
    try:
        names = storage.list_files(directory, ".json")
    except OSError:  # not written yet
        return None
    for name in names:
        try:
            epochs = records.read_reports(storage.join(directory, name))
        except (OSError, ValueError):  # replaced while being read
            continue
        if len(epochs) >= after_epochs:
            return epochs[-1]["node_id"]
    return None


def test_a_sweep_trains_on_the_workers_writes_to_s3_and_outlives_a_lost_node(
    multi_node, s3, capsys
):
    """Results on S3; a worker node is removed while it trains, a fresh one joins. The trial
    goes on elsewhere from its checkpoint, which the console says in one line; a rerun resumes
    from S3 and trains nothing."""
    server, bucket = s3
    results = f"s3://{bucket}/sweeps"
    experiment = f"{results}/lost"
    # Its data is a Parquet table on S3 too (a list column): each training worker reads it.
    x, y = data_callables.table_arrays()
    table = pa.table({"x": pa.array(list(x), pa.list_(pa.float32())), "label": y})
    fs, path = pafs.FileSystem.from_uri(f"s3://{bucket}/data/table.parquet")
    pq.write_table(table, path, filesystem=fs)
    data = ["--data", f"parquet:s3://{bucket}/data/table.parquet", "--label-column", "label"]
    args = [*SWEEP, "--epochs", str(LOST_EPOCHS), "--results", results, "--experiment", "lost"]
    args += data
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("rc", cli.main(["sweep", "dual", *args]))
    )
    thread.start()
    # Each look reads S3 (a list and the records): every 0.2 s, not to take the CPUs it needs.
    removed = _remove_a_worker_once(multi_node, lambda: _training_node(experiment, 5), 0.2)
    thread.join(timeout=600)
    assert outcome.get("rc") == 0
    printed = capsys.readouterr().out.splitlines()
    # Ray Train restarts the worker group (or, had the trial's actor been on that node, Tune
    # retries the trial): either way one line, no traceback.
    retried = [
        line
        for line in printed
        if "restarted by Ray Train from its checkpoint" in line
        or "failed, retrying from its checkpoint" in line
    ]
    assert retried, "\n".join(printed)
    assert not any("Traceback" in line for line in printed)
    trials = pd.read_parquet(f"{experiment}/trials.parquet")  # pandas alone reads S3
    epochs = pd.read_parquet(f"{experiment}/epochs.parquet")
    assert len(trials) == 2 and trials.groupby(["n", "seed_index"]).size().eq(1).all()
    stored = json.loads(
        server.client().get_object(Bucket=bucket, Key="sweeps/lost/sweep.json")["Body"].read()
    )
    assert stored["data_summary"]["rows"] == {"train": 230, "validation": 26, "test": 64}
    assert trials["final_val_error"].notna().all()  # held out of the table, on every worker
    assert (trials["status"] == "finished").all() and set(trials["formulation"]) == {"dual"}
    assert (
        epochs.groupby("trial_id")["epoch"]
        .apply(list)
        .map(lambda e: e == list(range(1, LOST_EPOCHS + 1)))
        .all()
    )
    # On the worker nodes only (the one removed, the two there now), never on the head.
    assert set(epochs["node_id"]) <= worker_ids(multi_node) | {removed}
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
    keys = server.keys(bucket)
    for name in (
        "trials.parquet",
        "epochs.parquet",
        "curves.parquet",
        "curves.png",
        "test_error.png",
        "sweep.json",
    ):
        assert f"sweeps/lost/{name}" in keys
    assert any(k.startswith("sweeps/lost/tune/") for k in keys)
    assert any(k.startswith("sweeps/lost/train/") and "checkpoint" in k for k in keys)
    # A rerun resumes from S3: nothing is trained again.
    assert cli.main(["sweep", "dual", *args]) == 0
    pd.testing.assert_frame_equal(epochs, pd.read_parquet(f"{experiment}/epochs.parquet"))


def test_a_lost_node_mid_fit_alpha_gives_the_same_alpha(multi_node, tmp_path, one_process_alpha):
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
    assert outcome["r"].alpha == one_process_alpha
    assert removed in shard_nodes(str(tmp_path / "lost/fit_alpha"))
