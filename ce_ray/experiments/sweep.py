"""Sweep a curve on Ray: Tune runs one trial per (point, seed index), or per point when the
seeds are packed into one model; each trial trains as a Ray Train ``TorchTrainer`` job
(Train V2: the trial function starts the trainer with ``TuneReportCallback``). The caller
connects to Ray (``ray.init()`` in the entry point).

Layout of ``<results>/<experiment>/``: ``sweep.json`` (the configuration; a rerun must match
it), ``fit_alpha/`` (when alpha was fitted here), ``curves.parquet``, ``tune/`` (Tune's
experiment: a rerun restores it, so finished trials are not trained again), ``train/`` (the
Train runs and their checkpoints), ``records/`` (each trial's record), ``trials.parquet``,
``epochs.parquet``, and the report's PNGs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import ray
import ray.train
from ray import tune
from ray.tune.experiment import Trial

from ce_ray.configs import FitConfig, SweepConfig
from ce_ray.experiments import cluster
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


def run_trial(trial: dict, datasets: list) -> None:
    """Tune's trial function: train one point's seed indices (one, or all of them packed) as
    a Ray Train job.

    ``trial`` holds the sweep's configuration whole (``SweepConfig.to_json``), the point
    ``{"n", "m"}``, its ``seed_indices``, the experiment directory and the retry budget.
    The Train run is named after the Tune trial id alone, which survives Tune's retries and
    ``Tuner.restore``: a new ``TorchTrainer`` with the same name and storage resumes from the
    run's latest checkpoint (Train V2 has no other resume). Inside the run, Train's own
    ``FailureConfig`` restarts a lost worker group from that checkpoint without Tune noticing.

    ``datasets`` is ``[reference]`` to the (train, test) datasets the driver put in Ray's
    object store once for the whole sweep (a list, so that ``tune.with_parameters`` hands
    over the reference, not the data); the training workers fetch them from there.
    """
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ce_ray.worker.loop import train_point

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)
    config = SweepConfig.from_json(trial["sweep"])
    trial_id = tune.get_context().get_trial_id()
    gpus = config.gpus_per_worker
    trainer = TorchTrainer(
        train_point,
        train_loop_config={
            "sweep": trial["sweep"],
            "point": trial["point"],
            "seed_indices": trial["seed_indices"],
            "datasets": datasets[0],
            "record": records.record_location(trial["experiment_dir"], trial_id),
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
            failure_config=ray.train.FailureConfig(max_failures=trial["max_failures"]),
            # Ray types RunConfig.callbacks with Train V1's Callback; V2's is what it takes.
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
    )
    trainer.fit()


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
    label = SweepConfig.from_json(trial.config["sweep"]).spec.space.label(point["m"], point["n"])
    return f"{label}-{seeds}-{trial.trial_id}"


def _new_tuner(
    trainable: Callable,
    config: SweepConfig,
    directory: str,
    concurrency: int,
    max_failures: int,
    verbose: int,
) -> tune.Tuner:
    scheduler = None
    if config.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch",
            max_t=config.epochs,
            grace_period=max(1, config.epochs // 4),
            reduction_factor=2,
        )
    param_space = {
        "point": tune.grid_search([{"n": n, "m": m} for n, m in config.points]),
        "seed_indices": tune.grid_search(seed_groups(config.seeds, config.pack_seeds)),
        "sweep": config.to_json(),
        "experiment_dir": directory,
        "max_failures": max_failures,
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
            verbose=verbose,
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
    verbose: int = 1,
    datasets: tuple | None = None,
    log: Log = print_line,
) -> SweepResult:
    """Run (or resume) the sweep into ``<results>/<experiment>`` (default experiment:
    ``PRESET-FORMULATION``) and write its tables; the caller connects to Ray.

    Fits alpha first when ``config.alpha`` is None (into ``<experiment>/fit_alpha``), then
    writes sweep.json (a rerun must match it) and curves.parquet, runs one Tune trial per
    (point, seed group), and writes trials.parquet and epochs.parquet. ``datasets``: the
    preset's (train, test) datasets if the caller has them (else loaded here from
    ``config.data_root``); they go to Ray's object store once and every trial's workers read
    them from there. ``max_failures``: restarts per trial (Tune's and Train's).
    """
    experiment = experiment or default_experiment(config)
    directory = storage.join(results, experiment)
    if config.alpha is None:
        alpha = _fit_alpha_first(config, results, experiment, log)
        config = dataclasses.replace(config, alpha=alpha)
    storage.check_or_write_config(directory, config.to_json(), "sweep.json")
    log(
        f"[sweep] {config.preset} {config.formulation}: alpha={config.alpha:.4f}, points "
        f"{', '.join(config.spec.space.label(m, n) for n, m in config.points)} x "
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
    if tune.Tuner.can_restore(tune_path):
        log(f"[sweep] resuming {tune_path}: finished trials are kept")
        # Same trial ids for unfinished and errored trials: their Train runs resume from
        # their checkpoints (restart_errored would start them over under new ids).
        tuner = tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        concurrency = max_concurrent_trials or default_concurrency(config)
        tuner = _new_tuner(trainable, config, directory, concurrency, max_failures, verbose)
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
    """``PRESET-FORMULATION``, the experiment name when none is given."""
    return f"{config.preset}-{config.formulation}"


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
    fit = fit_alpha(fit_config, results, experiment, workers, bootstrap=200, log=log)
    log(f"[sweep] alpha = {fit.alpha:.4f} (95% CI {fit.ci_low:.4f}..{fit.ci_high:.4f})")
    return fit.alpha


def write_curves(frame: pd.DataFrame, directory: str) -> None:
    """curves.parquet from ``ce_ray.results.tables.curves_frame``."""
    storage.write_parquet(
        pa.Table.from_pandas(frame, preserve_index=False),
        storage.join(directory, "curves.parquet"),
        storage.CURVES_SCHEMA,
    )
