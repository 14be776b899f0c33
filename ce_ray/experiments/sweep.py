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

import os

import pandas as pd
import pyarrow as pa
import ray
import ray.train
from ray import tune

from ce_ray.configs import SweepConfig
from ce_ray.experiments import cluster
from ce_ray.presets import SWEEP_PRESETS
from ce_ray.results import storage, tables
from ce_ray.theory.seeds import derive_seed
from ce_ray.worker import data, records

# A trial's function only waits on its Train controller (which Ray Train V2 also runs with
# num_cpus=0), so it reserves no CPU. Reserving one deadlocks a small machine: Tune stages the
# placement groups of PENDING trials ahead of time, and a staged 1-CPU group can take the CPU
# the running trial's training worker is waiting for (seen on 2 CPUs: the worker group timed
# out after 60 s, again and again). Tune refuses an empty request, so the trial asks for
# 1 MiB of Ray's logical memory instead, which nothing else competes for.
TRIAL_FUNCTION_RESOURCES = {"cpu": 0, "memory": 2**20}
# Train V2's controller collects reports when it polls the workers (every 2 s by default),
# and a worker's report waits for that: with short epochs the poll, not the training, sets
# the pace (0.03 s epochs took 2 s each). benchmarks/sweep_overhead.py: 15 reports with
# checkpoints took 4.3 s at 0.25 s, 1.7 s at 0.05 s. The environment may override it.
REPORT_POLL_S = "0.05"
# How a trial's workers run (ce_ray.worker.pipeline), passed from the SweepConfig to the loop.
EXECUTION_KEYS = ("precision", "channels_last", "compile", "loader_workers")


def run_trial(config: dict, datasets: list) -> None:
    """Tune's trial function: train one point's seed indices (one, or all of them packed) as
    a Ray Train job.

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
    trial_id = tune.get_context().get_trial_id()
    point, seed_indices = config["point"], config["seed_indices"]
    gpus = config["gpus_per_worker"]
    trainer = TorchTrainer(
        train_point,
        train_loop_config={
            "preset": config["preset"],
            "m": point["m"],
            "n": point["n"],
            "seed_indices": seed_indices,
            "seeds": [
                derive_seed(config["experiment_seed"], point["n"], point["m"], index)
                for index in seed_indices
            ],
            "epochs": config["epochs"],
            "datasets": datasets[0],
            "record": records.record_location(config["experiment_dir"], trial_id),
            **{key: config[key] for key in EXECUTION_KEYS},
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config["workers_per_trial"],
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": config["cpus_per_worker"]}
            | ({"GPU": gpus} if gpus else {}),
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=storage.join(config["experiment_dir"], "train"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=config["max_failures"]),
            callbacks=[TuneReportCallback()],
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


def seed_groups(seeds: int, pack: bool) -> list[list[int]]:
    """The seed indices each trial of a point trains: all in one, or one each.

    >>> seed_groups(3, pack=True), seed_groups(3, pack=False)
    ([[0, 1, 2]], [[0], [1], [2]])
    """
    return [list(range(seeds))] if pack else [[index] for index in range(seeds)]


def _trial_name(trial) -> str:
    point, indices = trial.config["point"], trial.config["seed_indices"]
    seeds = f"seed{indices[0]}" if len(indices) == 1 else f"seeds{indices[0]}-{indices[-1]}"
    return f"{point['m']}x{point['n']}d-{seeds}-{trial.trial_id}"


def _new_tuner(
    trainable,
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
        "preset": config.preset,
        "epochs": config.epochs,
        "experiment_seed": config.seed,
        "data_root": config.data_root,
        "workers_per_trial": config.workers_per_trial,
        "gpus_per_worker": config.gpus_per_worker,
        "cpus_per_worker": config.cpus_per_worker,
        "experiment_dir": directory,
        "max_failures": max_failures,
        **{key: getattr(config, key) for key in EXECUTION_KEYS},
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


def _outcomes(grid) -> list[tables.TrialOutcome]:
    """One outcome per (trial, seed index it trained)."""
    outcomes = []
    for result in grid:
        # The trial directory is named by _trial_name: "<m>x<n>d-seed<s>-<trial id>".
        trial_id = os.path.basename(str(result.path).rstrip("/")).rsplit("-", 1)[-1]
        point, indices = result.config["point"], result.config["seed_indices"]
        error = str(result.error).strip().splitlines()[-1] if result.error else None
        outcomes += [
            tables.TrialOutcome(
                trial_id, int(point["n"]), int(point["m"]), int(index), error, len(indices)
            )
            for index in indices
        ]
    return outcomes


def _histories(directory: str, outcomes) -> dict[tuple[str, int], pd.DataFrame]:
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
    points: pd.DataFrame,
    results: str,
    experiment: str,
    space_name: str,
    max_concurrent_trials: int | None = None,
    max_failures: int = 2,
    verbose: int = 1,
    curves: pd.DataFrame | None = None,
    datasets: tuple | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or resume) the Tune experiment; write and return trials.parquet and
    epochs.parquet. ``points``: the curve rows being trained (``ce_ray.theory.curves.select_points``);
    ``curves`` (``tables.curves_frame``), when given, is written as curves.parquet once
    the configuration is known to match. ``datasets``: the preset's (train, test) datasets if
    the caller has them (else loaded here from ``config.data_root``); they go to Ray's object
    store once and every trial's workers read them from there."""
    directory = storage.join(results, experiment)
    storage.check_or_write_config(directory, config.to_json(), "sweep.json")
    if curves is not None:
        write_curves(curves, directory)
    if datasets is None:
        preset = SWEEP_PRESETS[config.preset]
        datasets = data.load(preset.dataset, data.resolve_root(config.data_root))
    # Loaded once here instead of once per trial: ~0.8 s of every digits trial (importing
    # scikit-learn and reading the data; benchmarks/sweep_overhead.py), and the read and
    # unpickling of the downsampled ImageNet files (each worker still holds its own copy:
    # torch tensors are not read zero-copy from the object store).
    trainable = tune.with_parameters(run_trial, datasets=[ray.put(datasets)])
    trainable = tune.with_resources(trainable, TRIAL_FUNCTION_RESOURCES)
    tune_path = storage.join(directory, "tune")
    if tune.Tuner.can_restore(tune_path):
        print(f"[sweep] resuming {tune_path}: finished trials are kept", flush=True)
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
    trials = tables.trials_frame(outcomes, histories, points, config, experiment, space_name)
    epochs = tables.epochs_frame(outcomes, histories, experiment)
    for frame, name, schema in (
        (trials, "trials", storage.TRIALS_SCHEMA),
        (epochs, "epochs", storage.EPOCHS_SCHEMA),
    ):
        location = storage.join(directory, f"{name}.parquet")
        storage.write_parquet(pa.Table.from_pandas(frame), location, schema)
    return trials, epochs


def write_curves(frame: pd.DataFrame, directory: str) -> None:
    """curves.parquet from ``tables.curves_frame``."""
    storage.write_parquet(
        pa.Table.from_pandas(frame, preserve_index=False),
        storage.join(directory, "curves.parquet"),
        storage.CURVES_SCHEMA,
    )
