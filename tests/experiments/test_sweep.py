"""The sweep on a real 2-CPU Ray cluster: Tune trials that each run a Ray Train job."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from ce_ray import cli
from ce_ray.configs import SweepConfig
from ce_ray.experiments.sweep import run_sweep
from ce_ray.presets import FIT_PRESETS, SWEEP_PRESETS
from ce_ray.theory.curves import curve, select_points
from ce_ray.theory.spaces import FCSpace
from ce_ray.worker import records
from tests.conftest import epochs_by_trial, training_workers
from tests.test_own_data import write_images

TINY = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--seeds", "2"]
#: Epochs of the shared run: enough for a worker to be hit after its trial's 3rd epoch with
#: most epochs to go (an epoch takes ~0.1-0.3 s), and for ASHA_EPOCHS to compare.
EPOCHS = 12
SHARED = [*TINY, "--pack-seeds", "--epochs", str(EPOCHS)]


@pytest.fixture(scope="module")
def shared_run(ray_cluster, tmp_path_factory) -> tuple[Path, str]:
    """One sweep that several tests read (each trial of a sweep costs seconds of Ray Train
    start-up): TINY's 2 points x 2 packed seeds, 2 trials of EPOCHS epochs, with its report.
    ``(results directory, what it printed)``; the experiment is ``s``."""
    results = tmp_path_factory.mktemp("shared")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(
            ["sweep", "primal", *SHARED, "--results", str(results), "--experiment", "s"]
        )
    assert code == 0
    return results, printed.getvalue()


def test_select_points_has_optimum_baseline_and_spread():
    result = curve(FCSpace(input_dim=64, depth=4), 2.4, 64, formulation="primal")
    points = select_points(result, 5)
    assert len(points) == len(set(points["n"])) == 5
    roles = dict(zip(points["n"], points["role"], strict=True))
    assert roles[int(result.optimum["n"])] == "optimum" and roles[64] == "baseline"
    assert points.loc[points["n"] == 64, "m"].item() == 1
    # The spread: the free widths nearest to geomspace(1, 64, 5)[1:-1] = 2.83, 8, 22.6.
    assert sorted(points.loc[points["role"] == "curve", "n"]) == [3, 8, 23]
    with pytest.raises(ValueError, match="--points must be >= 2"):
        select_points(result, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points", "1"], "argument --points: must be an integer >= 2; got '1'"),
        (["--seeds", "0"], "argument --seeds: must be an integer >= 1; got '0'"),
        (["--alpha", "-1"], "argument --alpha: must be a finite number > 0; got '-1'"),
        (
            ["--preset", "mnist-mlp", "--data-root", "/nonexistent"],
            "mnist not found: put MNIST/raw/",
        ),
        (["--alpha-from", "/nonexistent/alpha.parquet"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    base = ["--preset", "synthetic-mlp", "--results", str(tmp_path)]
    assert cli.main(["sweep", "primal", *(base + args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "settings"),
    [
        (["--alpha", "2.4"], {"alpha": 2.4}),
        (
            ["--preset", "cifar10-resnext29", "--gpus-per-worker", "1", "--cpus-per-worker", "4"],
            {"gpus_per_worker": 1.0, "cpus_per_worker": 4.0},
        ),
        (["--precision", "fp16", "--seeds", "3"], {"precision": "fp16", "seeds": 3}),
    ],
)
def test_the_command_line_and_a_python_caller_get_the_same_sweep(argv, settings):
    args = cli.build_parser().parse_args(["sweep", "dual", *argv])
    preset = args.preset
    assert cli.sweep_config(args) == SweepConfig.from_preset(preset, "dual", **settings)


def test_sweep_writes_parquet_and_resumes_without_retraining(shared_run, capsys):
    tmp_path, out = shared_run
    args = [*SHARED, "--results", str(tmp_path), "--experiment", "s"]
    trials = pd.read_parquet(tmp_path / "s/trials.parquet")
    epochs = pd.read_parquet(tmp_path / "s/epochs.parquet")
    assert len(trials) == 4 and trials.groupby(["n", "seed_index"]).size().eq(1).all()
    assert trials["trial_id"].nunique() == 2 and (trials["packed_seeds"] == 2).all()
    assert set(trials["role"]) == {"optimum", "baseline"}
    # The seeds of a point are independent runs (own initialisation and data order).
    assert trials.groupby("n")["final_train_loss"].nunique().eq(2).all()
    assert (trials["status"] == "finished").all() and (trials["retries"] == 0).all()
    assert (trials["epochs_completed"] == EPOCHS).all() and trials["final_test_error"].between(
        0, 100
    ).all()
    assert trials["final_test_error_top5"].isna().all()  # 4 classes: no top-5
    baseline = trials[trials["role"] == "baseline"].iloc[0]
    assert (baseline["m"], baseline["rho"], baseline["params"]) == (1, 1.0, 16 * 16 + 16 * 16 + 64)
    assert len(epochs) == 4 * EPOCHS and sorted(epochs["epoch"].unique()) == list(
        range(1, EPOCHS + 1)
    )
    assert {"curves.png", "test_error.png", "curves.parquet"} <= {
        p.name for p in (tmp_path / "s").iterdir()
    }
    assert "results:" in out and "1x16d" in out
    for label in ("4x6d", "1x16d"):  # ce-ray's console, not Tune's tables
        assert f"[sweep] trial {label} seeds [0, 1] started" in out
        assert f"[sweep] trial {label} seeds [0, 1] finished: " in out
    assert "Trial name" not in out and "Configuration for experiment" not in out
    # Each run's Train controller wrote its state for the stall watch.
    for trial_id in trials["trial_id"].unique():
        record = records.record_location(str(tmp_path / "s"), trial_id)
        state = records.read_controller(record)
        assert state is not None and state[0] in ("FinishedState", "ShuttingDownState"), state
    report = subprocess.run(
        [str(Path(sys.executable).parent / "ce-ray"), "report", str(tmp_path / "s"), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "1x16d" in report.stdout and "baseline" in report.stdout

    assert cli.main(["sweep", "primal", *args]) == 0
    assert "resuming" in capsys.readouterr().out
    again = pd.read_parquet(tmp_path / "s/epochs.parquet")
    pd.testing.assert_frame_equal(epochs, again)  # same timestamps: nothing retrained
    assert len(pd.read_parquet(tmp_path / "s/trials.parquet")) == 4

    # A Python caller with the same settings gets the same sweep: it resumes, trains nothing.
    config = SweepConfig.from_preset(
        "synthetic-mlp", alpha=2.0, num_points=2, seeds=2, epochs=EPOCHS, pack_seeds=True
    )
    result = run_sweep(config, str(tmp_path), "s")
    pd.testing.assert_frame_equal(epochs, result.epochs)

    changed = [*TINY, "--epochs", "3", "--results", str(tmp_path), "--experiment", "s"]
    assert cli.main(["sweep", "primal", *changed]) == 2
    assert f"different configuration (epochs: {EPOCHS} -> 3)" in capsys.readouterr().err

    # The preset's recipe, recorded per trial, its lr per epoch; another one is refused.
    recipe = SWEEP_PRESETS["synthetic-mlp"].recipe
    assert (trials["optimizer"] == recipe.optimizer).all() and (trials["lr"] == recipe.lr).all()
    assert (trials["batch_size"] == recipe.batch_size).all() and (
        trials["schedule"] == "step"
    ).all()
    assert (epochs["lr"] == recipe.lr).all()  # no milestones: constant
    other = [*SHARED, "--lr", "0.5", "--results", str(tmp_path), "--experiment", "s"]
    assert cli.main(["sweep", "primal", *other]) == 2
    assert "different configuration (lr: None -> 0.5)" in capsys.readouterr().err


def test_a_sweep_trains_with_its_own_recipe(ray_cluster, tmp_path):
    """--recipe's file and the flags over it reach every training worker: each epoch's lr
    follows the warm-up and the cosine schedule, and trials.parquet records the recipe. The
    sweep trains ResNeXt-29, sized to its data: your own image folder of PNGs (3 classes,
    resized to 8x8; docs/your-own-data.md)."""
    write_images(tmp_path / "images", {"cat": 10, "dog": 8, "owl": 8}, (12, 9))
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text('{"optimizer": "sgd", "lr": 0.2, "momentum": 0.5, "epochs": 3}')
    argv = ["--preset", "cifar10-resnext29", "--alpha", "1.6", "--baseline", "8"]
    argv += ["--points", "2", "--seeds", "1", "--recipe", str(recipe_file), "--lr", "0.1"]
    argv += ["--schedule", "cosine", "--warmup-epochs", "1", "--label-smoothing", "0.1"]
    argv += ["--data", f"imagefolder:{tmp_path / 'images'}", "--image-size", "8"]
    results = tmp_path / "results"
    assert cli.main(["sweep", "primal", *argv, "--results", str(results), "--no-report"]) == 0
    (directory,) = [p for p in results.iterdir() if p.is_dir()]
    trials = pd.read_parquet(directory / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "finished").all()
    assert set(trials["space"]) == {"cifar-resnext29"} and trials["final_val_error"].notna().all()
    summary = json.loads((directory / "sweep.json").read_text())["data_summary"]
    assert (summary["input_shape"], summary["classes"]) == ([3, 8, 8], 3)
    recorded = trials[["optimizer", "lr", "momentum", "schedule", "warmup_epochs"]]
    assert (recorded.drop_duplicates().values.tolist()) == [["sgd", 0.1, 0.5, "cosine", 1]]
    assert (trials["label_smoothing"] == 0.1).all() and (trials["epochs_planned"] == 3).all()
    epochs = pd.read_parquet(directory / "epochs.parquet")
    for _, history in epochs.groupby("n"):
        # Warm-up epoch at lr / 2, then cosine over the 2 epochs after it: 1, then 1/2.
        assert history.sort_values("epoch")["lr"].tolist() == pytest.approx([0.05, 0.1, 0.05])


@pytest.fixture
def own_cluster(ray_cluster):
    """A new 2-CPU cluster in place of the session's, for the test that runs last: the
    session's may have lost CPUs to a placement group that Ray Train's cleaner missed after an
    earlier test's trial was killed or stopped early (seen: this test's worker groups then
    never started, 0 epochs in 3 min)."""
    ray_cluster.shutdown()
    ray_cluster.init(
        num_cpus=2, dashboard_host="127.0.0.1", include_dashboard=True, log_to_driver=False
    )
    yield
    ray_cluster.shutdown()


@pytest.mark.kills_workers
def test_a_killed_and_a_stopped_worker_resume_from_their_checkpoints_with_the_same_result(
    shared_run, own_cluster, tmp_path
):
    """The shared run again, with one trial's training worker killed (SIGKILL: Train restarts
    its worker group) and the other's stopped (SIGSTOP: alive, holding its CPU, making no
    progress -- the trial stalls past its limit, fails in one line and Tune retries it). Both
    go on from their checkpoints, which hold both packed seeds' weights and optimizer states,
    and end with the uninterrupted run's numbers."""
    whole = pd.read_parquet(shared_run[0] / "s/trials.parquet").set_index(["n", "seed_index"])
    config = SweepConfig.from_preset(
        "synthetic-mlp", alpha=2.0, num_points=2, seeds=2, epochs=EPOCHS, pack_seeds=True
    )
    lines: list[str] = []
    # The stall limit must outlast the killed trial's restart by Train (a new worker process
    # importing torch and Ray Train: ~10 s on 2 busy CPUs), which no beat interrupts.
    failed: list[BaseException] = []

    def run() -> None:
        try:
            run_sweep(config, str(tmp_path), "hit", stall_timeout_s=20.0, log=lines.append)
        except BaseException as error:
            failed.append(error)
            raise

    sweep = threading.Thread(target=run)
    sweep.start()
    # Each trial's worker is hit once its trial has trained 3 epochs: the first trial's is
    # killed, the second's stopped (the trials need not overlap on 2 busy CPUs).
    hit: dict[str, int] = {}
    deadline = time.monotonic() + 180
    while len(hit) < 2:
        assert time.monotonic() < deadline and sweep.is_alive(), (
            f"the trials never got there: {failed or lines}"
        )
        trained = epochs_by_trial(tmp_path / "hit")
        # The process table only once a trial is due: a scan every 0.02 s costs the CPUs
        # that the trials need.
        if any(e >= 3 and t not in hit for t, e in trained.items()):
            for pid, trial_id in training_workers().items():
                if trial_id not in hit and trained.get(trial_id, 0) >= 3:
                    os.kill(pid, signal.SIGSTOP if hit else signal.SIGKILL)
                    hit[trial_id] = pid
        time.sleep(0.02)
    stopped = list(hit.values())[1]
    try:
        # Once the stall is reported and the trial failed, the frozen process is let go: Ray's
        # clean-up of the failed trial's placement group must not wait on a process that
        # cannot answer (a hung worker, unlike a stopped one, still does; seen once: the
        # group leaked and the retry never got its CPU).
        while not any("stalled: no progress for" in line for line in lines):
            assert time.monotonic() < deadline + 120 and sweep.is_alive(), lines
            time.sleep(0.1)
    finally:
        if psutil.pid_exists(stopped):
            os.kill(stopped, signal.SIGCONT)
    sweep.join(timeout=400)
    assert not sweep.is_alive()
    (failure,) = [line for line in lines if "failed, retrying from its checkpoint:" in line]
    assert "stalled: no progress for" in failure, failure
    trials = pd.read_parquet(tmp_path / "hit/trials.parquet").set_index(["n", "seed_index"])
    epochs = pd.read_parquet(tmp_path / "hit/epochs.parquet")
    assert (trials["status"] == "finished").all() and len(trials) == 4
    assert (trials["packed_seeds"] == 2).all()
    assert trials["retries"].sum() >= 2  # Train's restart of one, Tune's retry of the other
    # Each epoch once, in order, whoever trained it.
    by_seed = epochs.groupby(["trial_id", "seed_index"])
    assert by_seed["epoch"].apply(list).map(lambda e: e == list(range(1, EPOCHS + 1))).all()
    for _, history in by_seed:
        for attempt in sorted(set(history["attempt"]) - {0}):
            # A restart begins right after the last epoch reported before it: only the epoch
            # that was running at the kill is trained twice.
            earlier = history.loc[history["attempt"] < attempt, "epoch"].max()
            assert history.loc[history["attempt"] == attempt, "epoch"].min() == earlier + 1
            clock = history.set_index("epoch")["time_total_s"]
            print(
                f"\n[figures] restart {attempt} after epoch {earlier}: next epoch reported "
                f"{clock[earlier + 1] - clock[earlier]:.1f} s later"
            )
    # Same seed, same batches, same weights: the same result as the uninterrupted run.
    for column in ("final_test_error", "final_train_loss", "best_test_error"):
        pd.testing.assert_series_equal(trials[column], whole[column])


def test_each_preset_fits_alpha_on_the_block_its_curve_uses():
    widths = np.arange(1, 300)
    for preset in SWEEP_PRESETS.values():
        fitted = FIT_PRESETS[preset.fit_preset].space
        assert fitted.ntk_block() == preset.space.ntk_block(), preset.name
        # ... so alpha means the same thing in the fit (Eq. 9) and in the curve (Eq. 12, 14).
        np.testing.assert_array_equal(fitted.fan_in_sum(widths), preset.space.fan_in_sum(widths))
        assert preset.recipe.epochs >= 1 and preset.recipe.optimizer in ("adam", "sgd")


ASHA_EPOCHS = 8


def test_packed_seeds_and_loader_processes_change_no_number_and_asha_stops_losers_early(
    shared_run, tmp_path
):
    """The shared run's seeds packed into one model per point, read by the training process
    alone, against one trial per seed read by 2 DataLoader processes each: the same per-seed
    losses and errors every epoch (ce_ray.worker.pipeline's seeding), one row per (point,
    seed) either way. The unpacked run is also an ASHA sweep (it has four trials to rank):
    its stops land although an epoch takes milliseconds and a trial's driver reports about
    once a second -- training waits for Tune's decision on its epoch before last."""
    args = [
        *TINY,
        "--epochs",
        str(ASHA_EPOCHS),
        "--results",
        str(tmp_path),
        "--no-report",
        "--experiment",
        "alone",
        "--no-pack-seeds",
        "--loader-workers",
        "2",
        "--scheduler",
        "asha",
    ]
    assert cli.main(["sweep", "primal", *args]) == 0
    config = json.loads((tmp_path / "alone/sweep.json").read_text())
    assert (config["loader_workers"], config["precision"]) == (2, "fp32")
    trials = pd.read_parquet(tmp_path / "alone/trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].nunique() == 4
    assert (trials["packed_seeds"] == 1).all()
    stopped = trials[trials["status"] == "stopped_early"]
    finished = trials[trials["status"] == "finished"]
    assert len(stopped) >= 1 and len(finished) >= 1
    # Rungs at epochs 2 and 4; training runs at most one epoch ahead of Tune's decisions.
    assert set(stopped["epochs_completed"]) <= {2, 3, 4, 5}
    assert (finished["epochs_completed"] == ASHA_EPOCHS).all()
    # ASHA keeps the better half at each rung: no stopped trial beat every finished one.
    assert stopped["final_test_error"].min() >= finished["final_test_error"].min()

    packed_trials = pd.read_parquet(shared_run[0] / "s/trials.parquet")
    assert packed_trials["trial_id"].nunique() == 2 and (packed_trials["packed_seeds"] == 2).all()
    index = ["n", "seed_index", "epoch"]
    alone = pd.read_parquet(tmp_path / "alone/epochs.parquet").set_index(index).sort_index()
    packed = pd.read_parquet(shared_run[0] / "s/epochs.parquet").set_index(index).sort_index()
    assert len(alone) == trials["epochs_completed"].sum()
    # The seeds differ from one another, and each matches itself trained alone (the epochs
    # it trained before any stop); float rounding of the packed model's batched products may
    # grow over many epochs: the first three are compared to the last bit of the error, all
    # of them closely.
    assert packed.groupby(["n", "epoch"])["train_loss"].nunique().eq(2).all()
    packed = packed.loc[alone.index]
    early = packed.index.get_level_values("epoch") <= 3
    np.testing.assert_allclose(packed["train_loss"][early], alone["train_loss"][early], rtol=1e-5)
    np.testing.assert_allclose(packed["test_error"][early], alone["test_error"][early], atol=1e-9)
    np.testing.assert_allclose(packed["train_loss"], alone["train_loss"], rtol=1e-2)


def test_the_driver_frees_placement_groups_that_dead_actors_left(ray_cluster):
    """Ray keeps a placement group whose creator actor died while its job lives on -- as a
    Train worker group outlives its controller (dead with its trial's actor, which Tune
    stopped) when Train's cleaner misses it, and holds its CPUs from the trials after it. The
    sweep's driver frees this job's such groups, and only those: not one whose creator lives,
    not the driver's own (Tune's trials')."""
    from ray.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )

    from ce_ray.experiments.sweep import FreeOrphanedGroups, _callbacks

    config = SweepConfig.from_preset("synthetic-mlp", alpha=2.0, num_points=2)
    watching = _callbacks(config, "results", "e", None, print)
    assert sum(isinstance(c, FreeOrphanedGroups) for c in watching) == 1  # every sweep's
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Controller:
        def start_worker_group(self, cpus: float):
            group = placement_group([{"CPU": cpus}])
            ray.get(group.ready(), timeout=60)
            return group

    @ray.remote(num_cpus=0)
    class Trial:
        def start(self, cpus: float):
            self.controller = Controller.remote()  # owned by the trial: dies with it
            return ray.get(self.controller.start_worker_group.remote(cpus), timeout=60)

    # Another job on the same cluster, with a group whose creator died: not this sweep's.
    other_job = subprocess.Popen(
        [sys.executable, "-c", OTHER_JOB_WITH_AN_ORPHANED_GROUP],
        env=os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other_job.stdout is not None and other_job.stdout.readline().strip() == "ready"
    stopped, alive = Trial.remote(), Controller.remote()
    orphan = ray.get(stopped.start.remote(0.5), timeout=90)
    kept = ray.get(alive.start_worker_group.remote(0.25), timeout=90)
    tunes = placement_group([{"CPU": 0.25}])
    ray.get(tunes.ready(), timeout=60)
    lines: list[str] = []
    sweeper = FreeOrphanedGroups(lines.append, every_s=3600)
    try:
        ray.kill(stopped)  # as Tune stops a trial: its controller dies with it
        deadline = time.monotonic() + 30
        while placement_group_table(orphan)["state"] != "REMOVED" and time.monotonic() < deadline:
            sweeper.looked_at = float("-inf")  # as if every_s had passed
            sweeper.on_step_begin(0, [])
            time.sleep(0.2)
        states = {g: placement_group_table(g)["state"] for g in (orphan, kept, tunes)}
        assert states == {orphan: "REMOVED", kept: "CREATED", tunes: "CREATED"}, states
        others = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
        held = [bundle.get("CPU") for g in others for bundle in g["bundles"].values()]
        assert 0.125 in held  # the other job's orphan: not this sweep's to free
        assert lines == [
            "[sweep] freed a placement group (CPU 0.5) that a stopped trial's Train controller "
            "left behind (Ray Train's cleaner missed it)"
        ]
        sweeper.on_step_begin(1, [])  # within every_s: does not look again
        assert len(lines) == 1
    finally:
        other_job.communicate(timeout=60)  # stdin closed: it ends, and Ray frees its groups
        for group in (kept, tunes):
            remove_placement_group(group)
        ray.kill(alive)


#: A second driver: a trial-like actor's controller makes a group, the trial is killed, and
#: the driver waits until told to end (its group is an orphan of a job that lives on).
OTHER_JOB_WITH_AN_ORPHANED_GROUP = """
import sys
import ray
from ray.util.placement_group import placement_group

ray.init()

@ray.remote(num_cpus=0)
class Controller:
    def start_worker_group(self):
        group = placement_group([{"CPU": 0.125}])
        ray.get(group.ready(), timeout=60)
        return group

@ray.remote(num_cpus=0)
class Trial:
    def start(self):
        self.controller = Controller.remote()
        return ray.get(self.controller.start_worker_group.remote(), timeout=60)

trial = Trial.remote()
ray.get(trial.start.remote(), timeout=90)
ray.kill(trial)
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_failed_look_for_orphaned_groups_is_one_line_and_the_sweep_goes_on(monkeypatch):
    from ce_ray.experiments import cluster
    from ce_ray.experiments.sweep import FreeOrphanedGroups

    def unreachable() -> list:
        raise ConnectionError("GCS unreachable\nmore detail")

    monkeypatch.setattr(cluster, "free_orphaned_placement_groups", unreachable)
    lines: list[str] = []
    sweeper = FreeOrphanedGroups(lines.append, every_s=0)
    for step in range(3):
        sweeper.on_step_begin(step, [])
    assert lines == [
        "[sweep] could not look for placement groups that stopped trials left behind "
        "(ConnectionError: GCS unreachable); going on"
    ]
