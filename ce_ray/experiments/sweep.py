"""Sweep a curve on Ray: Tune runs one trial per (point, seed index), or per point when the
seeds are packed into one model; each trial trains as a Ray Train ``TorchTrainer`` job
(Train V2: the trial function starts the trainer with ``TuneReportCallback``). The caller
connects to Ray (``ray.init()`` in the entry point).

Layout of ``<results>/<experiment>/``: ``sweep.json`` (the configuration; a rerun must match
it), ``fit_alpha/`` (when alpha was fitted here), ``curves.parquet``, ``tune/`` (Tune's
experiment: a rerun restores it, so finished trials are not trained again), ``train/`` (the
Train runs and their checkpoints), ``records/`` (each trial's record), ``logs/`` (each run's
whole driver log, ``console.kept_log``), ``trials.parquet``, ``epochs.parquet``, and the
report's PNGs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import ray
import ray.train
from ray import tune
from ray.tune.experiment import Trial

from ce_ray.configs import FitConfig, SweepConfig
from ce_ray.experiments import cluster, console, trackers
from ce_ray.experiments.tasks import Log, print_line
from ce_ray.results import storage, tables
from ce_ray.worker import data, records

# A trial's function only waits on its Train controller (which Ray Train V2 also runs with
# num_cpus=0), so it reserves no CPU. Reserving one deadlocks a small machine: Tune stages the
# placement groups of PENDING trials ahead of time, and a staged 1-CPU group can take the CPU
# the running trial's training worker is waiting for (seen on 2 CPUs: the worker group timed
# out after 60 s, again and again). Tune refuses an empty request, so the trial asks for
# 1 MiB of Ray's logical memory instead, which nothing else competes for.
TRIAL_FUNCTION_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 2**20}
# Train V2's controller collects reports when it polls the workers (every 2 s by default),
# and a worker's report waits for that: with short epochs the poll, not the training, sets
# the pace (0.03 s epochs took 2 s each). benchmarks/sweep_overhead.py: 15 reports with
# checkpoints took 4.3 s at 0.25 s, 1.7 s at 0.05 s. The environment may override it.
REPORT_POLL_S = "0.05"
# Train V2 starts a PreemptionWatcher actor per run (one more process importing Ray Train:
# ~2.6 CPU-s per trial, measured) to react to a node's drain notice. A ce-ray trial
# checkpoints every epoch and Tune retries a trial whose node went away from that checkpoint,
# so the watcher saves at most one epoch; on one machine it only logs an object-store error
# line per trial. Off unless the environment turns it on (RAY_TRAIN_ENABLE_PREEMPTION_WATCHER).
PREEMPTION_WATCHER = "0"
# A worker group that cannot start times out after 60 s (Train's default) and Train tries
# again -- forever, by default (``controller_failure_limit=-1``): a trial whose CPUs were
# taken by a placement group that Train's cleaner missed waited 15 minutes and more (such
# groups are now freed by FreeOrphanedGroups), and the stall watch, which starts with the
# first heartbeat, cannot tell a start that never comes from waiting for the autoscaler.
# After this many timeouts (~10 minutes) the trial fails in one line and Tune retries it
# under the sweep's retry budget.
WORKER_GROUP_START_ATTEMPTS = 10


def run_trial(trial: dict, datasets: list) -> None:
    """Tune's trial function: train one point's seed indices (one, or all of them packed) as
    a Ray Train job.

    ``trial`` holds the sweep's configuration whole (``SweepConfig.to_json``), the point
    ``{"n", "m"}``, its ``seed_indices``, the experiment directory and the retry budget.
    The Train run is named after the Tune trial id alone, which survives Tune's retries and
    ``Tuner.restore``: a new ``TorchTrainer`` with the same name and storage resumes from the
    run's latest checkpoint (Train V2 has no other resume). Inside the run, Train's own
    ``FailureConfig`` restarts a lost worker group from that checkpoint without Tune noticing.

    Tune hears of each epoch from the trial's record, not from Train's ``TuneReportCallback``
    (:func:`report_from_record`), and a trial that stops making progress fails.

    ``datasets`` is ``[reference]`` to the (train, test) datasets the driver put in Ray's
    object store once for the whole sweep (a list, so that ``tune.with_parameters`` hands
    over the reference, not the data); the training workers fetch them from there.
    """
    from ce_ray.worker.loop import train_point

    set_train_environment()
    config = SweepConfig.from_json(trial["sweep"])
    trial_id = tune.get_context().get_trial_id()
    record = records.record_location(trial["experiment_dir"], trial_id)
    gpus = config.gpus_per_worker
    trainer = torch_trainer_without_ray_data()(
        train_point,
        train_loop_config={
            "sweep": trial["sweep"],
            "point": trial["point"],
            "seed_indices": trial["seed_indices"],
            "datasets": datasets[0],
            "record": record,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers_per_trial,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": config.cpus_per_worker} | ({"GPU": gpus} if gpus else {}),
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=storage.join(trial["experiment_dir"], "train"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train V2's FailureConfig at run time; mypy resolves ray.train's to V1's.
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]
                max_failures=trial["max_failures"],
                controller_failure_limit=WORKER_GROUP_START_ATTEMPTS,
            ),
        ),
    )
    point, indices = trial["point"], trial["seed_indices"]
    label = f"{config.space.label(point['m'], point['n'])} seeds {indices}"
    report_from_record(
        trainer, record, trial["stall_timeout_s"], label, decide=config.scheduler_stops_trials
    )


def set_train_environment() -> None:
    """Train V2's settings for a trial's run (REPORT_POLL_S, PREEMPTION_WATCHER), in the
    trial's process, where its Train controller reads them; the environment may override."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", PREEMPTION_WATCHER)


@functools.cache  # one class per process, not one per trial
def torch_trainer_without_ray_data() -> type:
    """``TorchTrainer`` less the Ray Data set-up of Train V2 2.60, which ce-ray does not use.

    Its ``DatasetsCallback`` starts a ``DatasetManager`` actor for every run, with or without
    datasets (``ray/train/v2/_internal/callbacks/datasets.py``): one more Python process per
    trial that imports Ray Data (~3 CPU-seconds here, ~10 % of a trial's start-up). ce-ray's
    workers read their data from the object store, not through ``ray.train.get_dataset_shard``,
    which is the only reader of what that callback provides.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    class TorchTrainerWithoutRayData(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            # Train V2's method; mypy resolves ray.train.torch's TorchTrainer to V1's.
            callbacks = super()._create_default_callbacks()  # type: ignore[misc]
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return TorchTrainerWithoutRayData


def default_concurrency(config: SweepConfig) -> int:
    """Trials whose training workers fit in the cluster at its largest: on an autoscaling
    cluster its node types at their max_workers (so that pending trials ask it to grow), on
    a fixed one what it holds now; at least 1, at most the number of trials."""
    resources = cluster.max_resources()
    fits = int(resources.get("CPU", 0) // (config.workers_per_trial * config.cpus_per_worker))
    if config.gpus_per_worker:
        per_trial_gpu = config.workers_per_trial * config.gpus_per_worker
        fits = min(fits, int(resources.get("GPU", 0) // per_trial_gpu))
    return max(1, min(fits, config.trials))


#: What Tune 2.60 copies from the driver's environment into every trial actor's runtime
#: environment (``ray/tune/execution/class_cache.py``, ``ENV_VARS_TO_PROPAGATE``), from where
#: it reaches the command line of Ray's ``setup_worker.py`` and the runtime-env agent's log.
TUNE_PROPAGATED_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_SESSION_TOKEN",
)


def keep_credentials_out_of_trials() -> None:
    """Stop Tune from copying the driver's AWS keys into its trials' runtime environments.

    A trial's node has credentials of its own (the shell that started the local head, or an
    instance profile), as every fit-alpha task does; a runtime environment is readable by any
    local user (a process's command line) and logged on every node.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(TUNE_PROPAGATED_SECRETS)


#: How often a trial function reads its record and heartbeat (seconds).
PROGRESS_POLL_S = 1.0
#: A trial stalls after this many times its longest pause between signs of progress so far,
#: and never before its floor (``--stall-timeout``).
STALL_FACTOR = 5.0
#: The default floor: a couple of minutes, far above a heartbeat's interval.
DEFAULT_STALL_TIMEOUT_S = 120.0


class TrialStalled(RuntimeError):
    """A trial's training made no progress for longer than its limit."""


class Progress:
    """One trial's signs of life, read from its record and its heartbeat by the trial
    function: the epochs it reported and rank 0's beats. The stall clock starts with this
    start's first beat (until then the worker group may be waiting for a node) and runs from
    the last change seen, against ``max(floor, STALL_FACTOR x the longest pause so far)``."""

    def __init__(self, record: str, floor_s: float):
        self.record, self.floor_s = record, floor_s
        self.first_beat = records.read_heartbeat(record)  # left by an earlier start, if any
        self.state: tuple | None = None
        self.changed_at: float | None = None
        self.longest_pause = 0.0

    def read(self) -> list[dict]:
        """The record's epochs now; notes whether anything moved."""
        epochs = records.read_reports(self.record)
        beat = records.read_heartbeat(self.record)
        state = (len(epochs), epochs[-1]["epoch"] if epochs else 0, beat)
        now = time.monotonic()
        if state != self.state:
            if self.changed_at is not None:
                self.longest_pause = max(self.longest_pause, now - self.changed_at)
            if self.changed_at is not None or beat != self.first_beat:
                self.changed_at = now
            self.state = state
        return epochs

    @property
    def limit_s(self) -> float:
        return max(self.floor_s, STALL_FACTOR * self.longest_pause)

    def idle_s(self) -> float:
        """Seconds since the last sign of progress (0 before this start's first beat)."""
        return 0.0 if self.changed_at is None else time.monotonic() - self.changed_at


def report_from_record(
    trainer: Any, record: str, stall_timeout_s: float, label: str, decide: bool = False
) -> None:
    """Run ``trainer.fit()`` in a thread and report each epoch to Tune from the trial's
    record, in this (the trial function's) thread; fail the trial when it stalls.

    Why not Train's ``TuneReportCallback``: in Ray 2.60 it puts each report into a one-slot
    Ray queue that the trial actor's main thread moves into a one-slot thread queue; when the
    trial function returns before the main thread has moved the last report, Tune's "done"
    marker fills the thread queue first and the main thread blocks forever on the late report
    (``ray/train/_internal/session.py``, ``_get_result_from_queues``). Reporting from this
    thread is Tune's ordinary function-trainable path, which has no second queue. Rank 0
    writes each epoch to the record before it reports it to Train, so nothing is lost.

    With ``decide`` (a scheduler that stops trials early), each epoch that Tune takes and
    goes on from is written to ``<record>.go``, which the training worker waits for
    (:func:`ce_ray.worker.records.wait_for_decision`): Tune's ``report`` returns only when
    Tune asks for the next result (``synchronous_result_reporting``), never after a stop.

    Epochs already in the record when this start began were reported by an earlier one;
    if this start reports nothing (every epoch was trained before a stop landed), it reports
    the last recorded epoch again, so that the trial ends with its result.
    """
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # handed to the trial function's thread
            outcome["error"] = error

    progress = Progress(record, stall_timeout_s)
    epochs = progress.read()
    reported = epochs[-1]["epoch"] if epochs else 0
    reported_now = False
    if decide:  # Tune took the epochs an earlier start reported and went on
        records.write_decision(record, reported)
    thread = threading.Thread(target=fit, name=f"fit-{label}", daemon=True)
    thread.start()
    while True:
        thread.join(timeout=PROGRESS_POLL_S)
        done = not thread.is_alive()
        epochs = progress.read()
        for metrics in (e for e in epochs if e["epoch"] > reported):
            tune.report(metrics)  # returns when Tune wants the next epoch, not when it stops
            reported, reported_now = metrics["epoch"], True
            if decide:
                records.write_decision(record, reported)
        if done:
            break
        if progress.idle_s() > progress.limit_s:
            message = (
                f"[sweep] trial {label} stalled: no progress for {progress.idle_s():.0f} s "
                f"(limit {progress.limit_s:.0f} s); failing it, to retry from its checkpoint"
            )
            print(message, flush=True)
            raise TrialStalled(message)
    if "error" in outcome:
        raise outcome["error"]
    if not reported_now and epochs:
        tune.report(epochs[-1])


def check_schedulable(config: SweepConfig) -> None:
    """Refuse, in one line, a trial that the cluster can never hold (Tune would wait for it
    forever): its workers' CPUs and GPUs against the cluster at its largest (autoscaling
    included), and one worker against the largest node there is or can be."""
    resources = cluster.max_resources()
    per_worker = {"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker}
    largest = cluster.largest_node()
    for name, amount in per_worker.items():
        need = amount * config.workers_per_trial
        if need > resources.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"a trial needs {config.workers_per_trial} worker(s) x {amount:g} {name} = "
                f"{need:g} {name}; the cluster holds at most {resources.get(name, 0.0):g} "
                "(--workers-per-trial, --cpus-per-worker, --gpus-per-worker)"
            )
        if largest and amount > largest.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"a worker needs {amount:g} {name}; no node has more than "
                f"{largest.get(name, 0.0):g} (--cpus-per-worker, --gpus-per-worker)"
            )


def seed_groups(seeds: int, pack: bool) -> list[list[int]]:
    """The seed indices each trial of a point trains: all in one, or one each.

    >>> seed_groups(3, pack=True), seed_groups(3, pack=False)
    ([[0, 1, 2]], [[0], [1], [2]])
    """
    return [list(range(seeds))] if pack else [[index] for index in range(seeds)]


def _trial_name(trial: Trial) -> str:
    """``<m>x<n>d-seed<s>-<trial id>`` (or ``seeds<a>-<b>`` when packed)."""
    point, indices = trial.config["point"], trial.config["seed_indices"]
    seeds = f"seed{indices[0]}" if len(indices) == 1 else f"seeds{indices[0]}-{indices[-1]}"
    label = SweepConfig.from_json(trial.config["sweep"]).space.label(point["m"], point["n"])
    return f"{label}-{seeds}-{trial.trial_id}"


def _trial_label(trial: Trial) -> str:
    """``4x6d seeds [0, 1]``: the point and the seed indices a trial trains."""
    point, indices = trial.config["point"], trial.config["seed_indices"]
    label = SweepConfig.from_json(trial.config["sweep"]).space.label(point["m"], point["n"])
    return f"{label} seeds {indices}"


#: How often the sweep's driver looks for placement groups that dead Train controllers left.
FREE_ORPHANS_EVERY_S = 5.0


class FreeOrphanedGroups(tune.Callback):
    """Every ``every_s`` of Tune's loop, :func:`cluster.free_orphaned_placement_groups`:
    a trial stopped early must not keep its workers' CPUs from the trials after it. One line
    per group freed."""

    def __init__(self, log: Log, every_s: float = FREE_ORPHANS_EVERY_S):
        self.log, self.every_s = log, every_s
        self.looked_at = float("-inf")

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.looked_at < self.every_s:
            return
        self.looked_at = time.monotonic()
        for held in cluster.free_orphaned_placement_groups():
            resources = ", ".join(f"{k} {v:g}" for k, v in sorted(held.items()))
            self.log(
                f"[sweep] freed a placement group ({resources}) that a stopped trial's Train "
                "controller left behind (Ray Train's cleaner missed it)"
            )


def _callbacks(
    config: SweepConfig, directory: str, experiment: str, mlflow: str | None, log: Log
) -> list[tune.Callback]:
    """The console, the freeing of orphaned placement groups, and MLflow's runs when
    ``mlflow`` names a tracking URI."""
    total_trials = len(config.points) * len(seed_groups(config.seeds, config.pack_seeds))
    callbacks: list[tune.Callback] = [
        console.SweepConsole(log, _trial_label, config.epochs, total_trials),
        FreeOrphanedGroups(log),
    ]
    if mlflow:
        callbacks.append(trackers.MlflowRuns(mlflow, experiment, directory, config, log))
    return callbacks


def _new_tuner(
    trainable: Callable,
    config: SweepConfig,
    directory: str,
    concurrency: int,
    max_failures: int,
    verbose: bool,
    stall_timeout_s: float,
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    scheduler = None
    if config.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch",
            max_t=config.epochs,
            grace_period=max(1, config.epochs // 4),
            reduction_factor=2,
        )
    groups = seed_groups(config.seeds, config.pack_seeds)
    param_space = {
        "point": tune.grid_search([{"n": n, "m": m} for n, m in config.points]),
        "seed_indices": tune.grid_search(groups),
        "sweep": config.to_json(),
        "experiment_dir": directory,
        "max_failures": max_failures,
        "stall_timeout_s": stall_timeout_s,
    }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="test_error",
            mode="min",
            scheduler=scheduler,
            max_concurrent_trials=concurrency,
            trial_dirname_creator=_trial_name,
            trial_name_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=directory,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            verbose=1 if verbose else 0,
            # Each trial actor's stdout and stderr, kept in its Tune directory.
            log_to_file=True,
        ),
    )


def _outcomes(grid: tune.ResultGrid) -> list[tables.TrialOutcome]:
    """One outcome per (trial, seed index it trained)."""
    outcomes = []
    for result in (grid[i] for i in range(len(grid))):
        # The trial directory is named by _trial_name: "<m>x<n>d-seed<s>-<trial id>".
        trial_id = os.path.basename(str(result.path).rstrip("/")).rsplit("-", 1)[-1]
        config = result.config or {}  # Tune always records a trial's config
        point, indices = config["point"], config["seed_indices"]
        error = str(result.error).strip().splitlines()[-1] if result.error else None
        outcomes += [
            tables.TrialOutcome(
                trial_id, int(point["n"]), int(point["m"]), int(index), error, len(indices)
            )
            for index in indices
        ]
    return outcomes


def _histories(
    directory: str, outcomes: list[tables.TrialOutcome]
) -> dict[tuple[str, int], pd.DataFrame]:
    """(trial id, seed index) -> that seed's epochs, from the trial's record."""
    histories = {}
    for trial_id in {o.trial_id for o in outcomes}:
        rows = records.read_epochs(records.record_location(directory, trial_id))
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["epoch", "seed_index"])
        for outcome in (o for o in outcomes if o.trial_id == trial_id):
            seed = frame[frame["seed_index"] == outcome.seed_index]
            histories[trial_id, outcome.seed_index] = seed.reset_index(drop=True)
    return histories


def run_sweep(
    config: SweepConfig,
    results: str,
    experiment: str | None = None,
    *,
    max_concurrent_trials: int | None = None,
    max_failures: int = 2,
    verbose: bool | None = None,
    datasets: tuple | None = None,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    mlflow: str | None = None,
    log: Log = print_line,
) -> SweepResult:
    """Run (or resume) the sweep into ``<results>/<experiment>`` (default experiment:
    ``PRESET-FORMULATION``) and write its tables; the caller connects to Ray.

    Fits alpha first when ``config.alpha`` is None (into ``<experiment>/fit_alpha``), then
    writes sweep.json (a rerun must match it) and curves.parquet, runs one Tune trial per
    (point, seed group), and writes trials.parquet and epochs.parquet. ``datasets``: the
    preset's (train, test) datasets if the caller has them (else loaded here from
    ``config.data_root``); they go to Ray's object store once and every trial's workers read
    them from there. ``max_failures``: restarts per trial (Tune's and Train's);
    ``stall_timeout_s``: the least time without progress after which a trial fails (and is
    retried from its checkpoint while restarts remain). ``verbose``: Tune's status tables as
    well as ce-ray's lines (default: ``CE_RAY_VERBOSE``; the caller's ``ray.init`` decides
    whether the workers' output reaches this process). ``mlflow``: a tracking URI to which
    each (point, seed index) is logged as a run (``ce_ray.experiments.trackers``).
    """
    verbose = console.verbose_from_env(bool(verbose))
    if not verbose:
        console.quiet_tune()
    experiment = experiment or default_experiment(config)
    directory = storage.join(results, experiment)
    if config.alpha is None:
        alpha = _fit_alpha_first(config, results, experiment, log)
        config = dataclasses.replace(config, alpha=alpha)
    storage.check_or_write_config(directory, config.to_json(), "sweep.json")
    # The whole log -- ce-ray's lines, and Ray's and Tune's records that the quiet console
    # leaves out -- kept with the results, one file per run of the sweep.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with console.kept_log(storage.join(directory, "logs", f"sweep-{stamp}.log"), log) as log:
        log(
            f"[sweep] {config.preset} {config.formulation}: alpha={config.alpha:.4f}, points "
            f"{', '.join(config.space.label(m, n) for n, m in config.points)} x "
            f"{config.seeds} seeds{' (packed: one trial per point)' if config.pack_seeds else ''}, "
            f"{config.epochs} epochs -> {directory}"
        )
        write_curves(tables.curves_frame(config), directory)
        if datasets is None:
            datasets = data.load(config.spec.dataset, data.resolve_root(config.data_root))
        # Loaded once here instead of once per trial: ~0.8 s of every digits trial (importing
        # scikit-learn and reading the data; benchmarks/sweep_overhead.py), and the read and
        # unpickling of the downsampled ImageNet files (each worker still holds its own copy:
        # torch tensors are not read zero-copy from the object store).
        check_schedulable(config)
        keep_credentials_out_of_trials()
        trainable = tune.with_parameters(run_trial, datasets=[ray.put(datasets)])
        trainable = tune.with_resources(trainable, TRIAL_FUNCTION_RESOURCES)
        tune_path = storage.join(directory, "tune")
        callbacks = _callbacks(config, directory, experiment, mlflow, log)
        if tune.Tuner.can_restore(tune_path):
            log(f"[sweep] resuming {tune_path}: finished trials are kept")
            # Same trial ids for unfinished and errored trials: their Train runs resume from
            # their checkpoints (restart_errored would start them over under new ids).
            tuner = tune.Tuner.restore(
                tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
            # Tune would use the callbacks it pickled at the first run: this run's console and
            # MLflow URI instead (Ray 2.60 has no public way; the version is pinned).
            tuner._local_tuner.get_run_config().callbacks = callbacks  # type: ignore[union-attr]
        else:
            concurrency = max_concurrent_trials or default_concurrency(config)
            tuner = _new_tuner(
                trainable,
                config,
                directory,
                concurrency,
                max_failures,
                verbose,
                stall_timeout_s,
                callbacks,
            )
        outcomes = _outcomes(tuner.fit())
        histories = _histories(directory, outcomes)
        trials = tables.trials_frame(outcomes, histories, config, experiment)
        epochs = tables.epochs_frame(outcomes, histories, experiment)
        for frame, name, schema in (
            (trials, "trials", storage.TRIALS_SCHEMA),
            (epochs, "epochs", storage.EPOCHS_SCHEMA),
        ):
            location = storage.join(directory, f"{name}.parquet")
            storage.write_parquet(pa.Table.from_pandas(frame), location, schema)
        return SweepResult(config, trials, epochs, directory)


def default_experiment(config: SweepConfig) -> str:
    """``PRESET-FORMULATION`` (``MODULE-CALLABLE-FORMULATION`` for your own member), the
    experiment name when none is given."""
    return f"{config.space.experiment_name(config.preset)}-{config.formulation}"


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its configuration (alpha known), its tables and their directory."""

    config: SweepConfig
    trials: pd.DataFrame
    epochs: pd.DataFrame
    directory: str


def _fit_alpha_first(config: SweepConfig, results: str, experiment: str, log: Log) -> float:
    """Fit alpha with the preset's fit preset into ``<results>/<experiment>/fit_alpha``."""
    from ce_ray.experiments.fit_alpha import fit_alpha

    fit_preset = config.spec.fit_preset
    log(f"[sweep] fitting alpha first (fit preset {fit_preset})")
    fit_config = FitConfig.from_preset(fit_preset, seed=config.seed)
    workers = cluster.default_workers()
    fit = fit_alpha(
        fit_config, results, experiment, workers, bootstrap=200, log=console.sparse_progress(log)
    )
    log(f"[sweep] alpha = {fit.alpha:.4f} (95% CI {fit.ci_low:.4f}..{fit.ci_high:.4f})")
    return fit.alpha


def write_curves(frame: pd.DataFrame, directory: str) -> None:
    """curves.parquet from ``ce_ray.results.tables.curves_frame``."""
    storage.write_parquet(
        pa.Table.from_pandas(frame, preserve_index=False),
        storage.join(directory, "curves.parquet"),
        storage.CURVES_SCHEMA,
    )
