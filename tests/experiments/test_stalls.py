"""A sweep never hangs: the last-report race of Ray 2.60's TuneReportCallback, reproduced
deterministically, cannot happen in ce-ray's trials; a training worker that stops making
progress (SIGSTOP) is noticed, its trial failed and retried from its checkpoint."""

import os
import signal
import sys
import threading
import time

import pandas as pd
import psutil
import pytest
import ray
import ray.train
from ray import cloudpickle, tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from ce_ray.configs import FitConfig, SweepConfig
from ce_ray.experiments import fit_alpha as fa
from ce_ray.experiments.sweep import TRIAL_FUNCTION_RESOURCES, report_from_record, run_sweep
from ce_ray.worker import records
from tests.conftest import epochs_so_far

EPOCHS = 2
# The trial actors unpickle this module's functions and classes: send them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def two_epochs(config: dict) -> None:
    """A Train loop that writes each epoch to a trial record (as ce-ray's rank 0 does) and
    reports it."""
    for epoch in range(1, EPOCHS + 1):
        if ray.train.get_context().get_world_rank() == 0:
            record = records.TrialRecord(config["record"], epoch)
            record.add({"epoch": epoch, "test_error": 1.0 / epoch, "seeds": []})
        ray.train.report({"epoch": epoch, "test_error": 1.0 / epoch})


@ray.remote(num_cpus=0)
class Mailbox:
    """Holds the last report that Train hands to Tune until the trial lets it go."""

    def __init__(self):
        self.held = None

    def hold(self, queue, item) -> None:
        self.held = (queue, item)

    def release(self) -> None:
        queue, item = self.held
        queue.put(item)


class LastReportHeld(TuneReportCallback):
    """Ray's callback, except that the last report goes to the mailbox, not to Tune."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics[0]["epoch"] < EPOCHS:
            return super().after_report(run_context, metrics, checkpoint)
        mailbox = ray.get_actor("ce-ray-test-mailbox")
        ray.get(mailbox.hold.remote(self._training_actor_item_queue, metrics[0].copy()))


def return_before_the_last_report_is_moved() -> None:
    """In the trial actor, just before the trial function returns: the order the race takes
    under load, made certain. The actor's main thread is held where it moves reports until
    Tune's "done" marker fills the one-slot thread queue and the late report is back in the
    inter-actor queue -- then it moves the report and blocks on the full thread queue. With
    no inter-actor queue (nothing reports through it) there is nothing to hold."""
    from ray.train._internal.session import get_session

    session = get_session()
    queue = session._inter_actor_queue
    if queue is None:
        return
    entered = threading.Event()
    original = session._get_result_from_queues

    def gated(block: bool):
        entered.set()
        while not (session.result_queue.full() and queue.qsize() > 0):
            time.sleep(0.01)
        return original(block)

    session._get_result_from_queues = gated
    assert entered.wait(timeout=30)
    ray.get(ray.get_actor("ce-ray-test-mailbox").release.remote())


def trial(config: dict) -> None:
    record = os.path.join(config["directory"], f"{tune.get_context().get_trial_id()}.json")
    callbacks = [LastReportHeld()] if config["wiring"] == "tune-report-callback" else []
    trainer = TorchTrainer(
        two_epochs,
        train_loop_config={"record": record},
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(),
            storage_path=config["directory"],
            callbacks=callbacks,
        ),
    )
    if config["wiring"] == "tune-report-callback":  # ce-ray before this change
        trainer.fit()
    else:
        report_from_record(trainer, record, 120.0, "race")
    return_before_the_last_report_is_moved()


@pytest.mark.parametrize(
    ("wiring", "hangs"), [("tune-report-callback", True), ("ce-ray record", False)]
)
def test_the_last_report_after_the_trial_returns_hangs_only_ray_s_callback(
    ray_cluster, tmp_path, wiring, hangs
):
    mailbox = Mailbox.options(name="ce-ray-test-mailbox", get_if_exists=True).remote()
    tuner = tune.Tuner(
        tune.with_resources(trial, TRIAL_FUNCTION_RESOURCES),
        param_space={"wiring": wiring, "directory": str(tmp_path)},
        tune_config=tune.TuneConfig(metric="test_error", mode="min"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    outcome: dict = {}
    fit = threading.Thread(target=lambda: outcome.setdefault("grid", tuner.fit()), daemon=True)
    fit.start()
    fit.join(timeout=60 if not hangs else 40)
    del mailbox  # kept alive until here: the trial looks it up by name
    if hangs:
        assert fit.is_alive(), "the race did not deadlock Ray's callback path"
        # End the stuck trial, so that no Tune thread outlives this test: a driver thread left
        # running into the next module's cluster re-initialises Ray there (seen in CI).
        for pid in trial_actor_pids():
            os.kill(pid, signal.SIGKILL)
        fit.join(timeout=120)
        assert not fit.is_alive(), "the stuck trial's Tune run did not end"
        return
    assert not fit.is_alive(), "ce-ray's trial hung"
    (result,) = list(outcome["grid"])
    assert result.error is None and result.metrics["epoch"] == EPOCHS


def trial_actor_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith("ray::ImplicitFunc")
    ]


def training_worker_pids() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
    ]


@pytest.mark.usefixtures("ray_cluster")
def test_a_stopped_training_worker_is_noticed_failed_and_retried(tmp_path):
    """SIGSTOP, not a kill: the worker is alive and holds its resources, but makes no
    progress. The trial stalls past its limit, fails in one line, and Tune retries it from its
    checkpoint; the sweep ends with every epoch trained once."""
    config = SweepConfig.from_preset("synthetic-mlp", alpha=2.0, num_points=2, seeds=1, epochs=20)
    lines: list[str] = []
    sweep = threading.Thread(
        target=lambda: run_sweep(
            config,
            str(tmp_path),
            "stall",
            max_concurrent_trials=1,
            stall_timeout_s=8.0,
            log=lines.append,
        )
    )
    sweep.start()
    deadline = time.monotonic() + 300
    while not any(count >= 3 for count in epochs_so_far(tmp_path / "stall")):
        assert time.monotonic() < deadline and sweep.is_alive(), "no epochs"
        time.sleep(0.1)
    stopped = training_worker_pids()
    assert stopped
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        sweep.join(timeout=400)
    finally:
        for pid in stopped:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
    assert not sweep.is_alive()
    (failure,) = [line for line in lines if "failed, retrying from its checkpoint:" in line]
    assert "stalled: no progress for" in failure, failure
    trials = pd.read_parquet(tmp_path / "stall/trials.parquet")
    assert (trials["status"] == "finished").all() and (trials["epochs_completed"] == 20).all()
    assert trials["retries"].max() >= 1
    epochs = pd.read_parquet(tmp_path / "stall/epochs.parquet")
    assert (
        epochs.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == list(range(1, 21))).all()
    )


@pytest.mark.usefixtures("ray_cluster")
def test_a_stopped_task_is_killed_and_run_again_with_the_same_result(tmp_path):
    """fit-alpha's tasks: a worker SIGSTOPped mid-task is noticed after the stall limit, its
    task killed and run again; the samples, and so alpha, are those of an undisturbed run."""
    config = FitConfig.from_preset(
        "mnist-mlp-block", widths=(8, 16, 32), samples=12000, shard_size=1000, seed=5
    )
    lines: list[str] = []
    outcome: dict = {}

    def fit(experiment: str, log) -> None:
        outcome[experiment] = fa.fit_alpha(
            config, str(tmp_path), experiment, 2, bootstrap=50, log=log, stall_timeout_s=6.0
        )

    run = threading.Thread(target=fit, args=("stopped", lines.append))
    run.start()
    deadline = time.monotonic() + 120
    stopped: list[int] = []
    while not stopped:
        assert time.monotonic() < deadline and run.is_alive(), "no task ran"
        stopped = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any("_shard_task" in part for part in (p.info["cmdline"] or []))
        ][:1]
        time.sleep(0.05)
    os.kill(stopped[0], signal.SIGSTOP)
    try:
        run.join(timeout=300)
    finally:
        if psutil.pid_exists(stopped[0]):
            os.kill(stopped[0], signal.SIGCONT)
    assert not run.is_alive()
    assert any("a task stalled: running" in line for line in lines), lines
    fit("undisturbed", lambda line: None)
    assert outcome["stopped"].alpha == outcome["undisturbed"].alpha
