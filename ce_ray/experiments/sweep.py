"""Sweep a curve on Ray: Tune runs one trial per (point, seed index), or per point when the
seeds are packed into one model; each trial trains as a Ray Train ``TorchTrainer`` job
(``ce_ray.experiments.trial``). The caller connects to Ray (``ray.init()`` in the entry
point).

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import ray
from ray import tune
from ray.tune.experiment import Trial

from ce_ray.configs import OPTIONAL_SWEEP_FIELDS, FitConfig, SweepConfig
from ce_ray.experiments import cluster, console, ray_compat, trackers
from ce_ray.experiments.tasks import Log, print_line
from ce_ray.experiments.trial import point_key, run_trial, trial_histories, trial_outcomes
from ce_ray.limits import DEFAULT_STALL_TIMEOUT_S
from ce_ray.results import storage, tables
from ce_ray.theory.spaces import ensemble_label
from ce_ray.worker import data


def seed_groups(seeds: int, pack: bool) -> list[list[int]]:
    """The seed indices each trial of a point trains: all in one, or one each.

    >>> seed_groups(3, pack=True), seed_groups(3, pack=False)
    ([[0, 1, 2]], [[0], [1], [2]])
    """
    return [list(range(seeds))] if pack else [[index] for index in range(seeds)]


def _trial_label(trial: Trial) -> str:
    """``4x6d seeds [0, 1]``: the point and the seed indices a trial trains (``4x6d search
    of 8 recipes``: a tuned sweep's search of a point)."""
    point, indices = trial.config["point"], trial.config["seed_indices"]
    if trial.config.get("candidates"):
        recipes = len(trial.config["candidates"])
        return f"{ensemble_label(point['m'], point['n'])} search of {recipes} recipes"
    return f"{ensemble_label(point['m'], point['n'])} seeds {indices}"


def _trial_name(trial: Trial) -> str:
    """``<m>x<n>d-seed<s>-<trial id>`` (or ``seeds<a>-<b>`` when packed, ``search`` for a
    tuned sweep's search of the point)."""
    point, indices = trial.config["point"], trial.config["seed_indices"]
    seeds = f"seed{indices[0]}" if len(indices) == 1 else f"seeds{indices[0]}-{indices[-1]}"
    if trial.config.get("candidates"):
        seeds = "search"
    return f"{ensemble_label(point['m'], point['n'])}-{seeds}-{trial.trial_id}"


#: How often the sweep's driver looks for placement groups that dead Train controllers left.
FREE_ORPHANS_EVERY_S = 5.0


class FreeOrphanedGroups(tune.Callback):
    """Every ``every_s`` of Tune's loop, :func:`cluster.free_orphaned_placement_groups`:
    a trial stopped early must not keep its workers' CPUs from the trials after it. One line
    per group freed."""

    def __init__(self, log: Log, every_s: float = FREE_ORPHANS_EVERY_S):
        self.log, self.every_s = log, every_s
        self.looked_at = float("-inf")
        self.said_it_failed = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.looked_at < self.every_s:
            return
        self.looked_at = time.monotonic()
        try:
            freed = cluster.free_orphaned_placement_groups()
        except Exception as error:  # an RPC that failed, a changed private API: the sweep goes on
            if not self.said_it_failed:
                self.said_it_failed = True
                self.log(
                    "[sweep] could not look for placement groups that stopped trials left "
                    f"behind ({type(error).__name__}: {storage.first_line(error)}); going on"
                )
            return
        for held in freed:
            resources = ", ".join(f"{k} {v:g}" for k, v in sorted(held.items()))
            self.log(
                f"[sweep] freed a placement group ({resources}) that a stopped trial's Train "
                "controller left behind (Ray Train's cleaner missed it)"
            )


def _callbacks(
    config: SweepConfig,
    directory: str,
    experiment: str,
    mlflow: str | None,
    log: Log,
    trials: int | None = None,
) -> list[tune.Callback]:
    """The console (counting ``trials``, default the sweep's), the freeing of orphaned
    placement groups, and MLflow's runs when ``mlflow`` names a tracking URI."""
    callbacks: list[tune.Callback] = [
        console.SweepConsole(log, _trial_label, config.epochs, trials or config.trials),
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
    recipes: dict[str, dict] | None = None,
    search: bool = False,
) -> tune.Tuner:
    """The Tune run of the sweep's trials (``tune/``): one per (point, seed group), each point
    with its chosen recipe when the sweep is tuned (``recipes``: point key -> fields); or, with
    ``search``, of a tuned sweep's search (``search/``): one trial per point training its
    candidate recipes packed."""
    scheduler = None
    # Tuned, ASHA halves each point's candidates inside its search trial (the worker loop);
    # every point's seeds then train to the end, to be compared.
    if config.scheduler == "asha" and not config.tune_trials:
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch",
            max_t=config.epochs,
            grace_period=max(1, config.epochs // 4),
            reduction_factor=2,
        )
    groups = [[0]] if search else seed_groups(config.seeds, config.pack_seeds)
    param_space = {
        "point": tune.grid_search([{"n": n, "m": m} for n, m in config.points]),
        "seed_indices": tune.grid_search(groups),
        "sweep": config.to_json(),
        "experiment_dir": directory,
        "max_failures": max_failures,
        "stall_timeout_s": stall_timeout_s,
    }
    param_space |= {"candidates": list(config.candidates)} if search else {}
    param_space |= {"recipes": recipes} if recipes else {}
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            # What a scheduler judges by: the validation error when one is held out (the test
            # split chooses nothing), else the test error, as the paper's sweeps did.
            metric="val_error" if config.validation else "test_error",
            mode="min",
            scheduler=scheduler,
            max_concurrent_trials=concurrency,
            trial_dirname_creator=_trial_name,
            trial_name_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name="search" if search else "tune",
            storage_path=directory,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            verbose=1 if verbose else 0,
            # Each trial actor's stdout and stderr, kept in its Tune directory.
            log_to_file=True,
        ),
    )


def _fit(
    tune_path: str,
    trainable: Callable,
    callbacks: list[tune.Callback],
    new_tuner: Callable[[], tune.Tuner],
    log: Log,
) -> tune.ResultGrid:
    """Resume the Tune run at ``tune_path`` (finished trials kept) or start ``new_tuner()``."""
    if tune.Tuner.can_restore(tune_path):
        log(f"[sweep] resuming {tune_path}: finished trials are kept")
        # Same trial ids for unfinished and errored trials: their Train runs resume from
        # their checkpoints (restart_errored would start them over under new ids).
        tuner = tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        ray_compat.use_callbacks_on_restore(tuner, callbacks)
    else:
        tuner = new_tuner()
    return tuner.fit()


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
        ray_compat.quiet_tune_output()
    experiment = experiment or default_experiment(config)
    directory = storage.join(results, experiment)
    if config.alpha is None:
        alpha = _fit_alpha_first(config, results, experiment, log)
        config = dataclasses.replace(config, alpha=alpha)
    storage.check_or_write_config(directory, config.to_json(), "sweep.json", OPTIONAL_SWEEP_FIELDS)
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
        if datasets is None and config.data is None:  # your own data: each worker reads it
            datasets = data.load(config.spec.dataset, data.resolve_root(config.data_root))
        # Loaded once here instead of once per trial: ~0.8 s of every digits trial (importing
        # scikit-learn and reading the data; benchmarks/sweep_overhead.py), and the read and
        # unpickling of the downsampled ImageNet files (each worker still holds its own copy:
        # torch tensors are not read zero-copy from the object store).
        cluster.check_schedulable(config)
        ray_compat.keep_credentials_out_of_trials()
        trainable = tune.with_parameters(run_trial, datasets=[ray.put(datasets)])
        trainable = tune.with_resources(trainable, ray_compat.TRIAL_FUNCTION_RESOURCES)
        concurrency = max_concurrent_trials or cluster.default_concurrency(config)
        stage = functools.partial(
            _new_tuner,
            trainable,
            config,
            directory,
            concurrency,
            max_failures,
            verbose,
            stall_timeout_s,
        )
        chosen: dict[tuple[int, int], tables.Chosen] | None = None
        searched: list[tables.TrialOutcome] = []
        searched_histories: tables.Histories = {}
        if config.tune_trials:
            search = functools.partial(stage, search=True)
            chosen, searched, searched_histories = _search_recipes(
                config, directory, experiment, trainable, search, log
            )
        recipes = {point_key({"n": n, "m": m}): c.recipe for (n, m), c in (chosen or {}).items()}
        callbacks = _callbacks(config, directory, experiment, mlflow, log)
        grid = _fit(
            storage.join(directory, "tune"),
            trainable,
            callbacks,
            lambda: stage(callbacks, recipes=recipes),
            log,
        )
        outcomes = trial_outcomes(grid)
        histories = trial_histories(directory, outcomes) | searched_histories
        trials = tables.trials_frame(outcomes, histories, config, experiment, chosen)
        # Stopped (Ctrl+C: Tune saves its state and returns) before every trial ended: rows
        # missing, or short without an error and without ASHA's stop.
        short = (trials["status"] == "stopped_early").any() and config.scheduler != "asha"
        if len(trials) < len(config.points) * config.seeds or short:
            log(
                "[sweep] stopped before every trial ended; run the same command again to "
                "resume (finished trials are kept, unfinished ones go on from their checkpoints)"
            )
        epochs = tables.epochs_frame(outcomes, histories, experiment, searched)
        for frame, name, schema in (
            (trials, "trials", storage.TRIALS_SCHEMA),
            (epochs, "epochs", storage.EPOCHS_SCHEMA),
        ):
            location = storage.join(directory, f"{name}.parquet")
            storage.write_parquet(pa.Table.from_pandas(frame), location, schema)
        return SweepResult(config, trials, epochs, directory)


def _search_recipes(
    config: SweepConfig,
    directory: str,
    experiment: str,
    trainable: Callable,
    new_tuner: Callable[..., tune.Tuner],
    log: Log,
) -> tuple[dict[tuple[int, int], tables.Chosen], list[tables.TrialOutcome], tables.Histories]:
    """A tuned sweep's search (``search/``): one trial per point trains its candidate recipes
    packed; writes candidates.parquet and returns each point's choice, the candidates'
    outcomes and their epochs. A search stopped before it ended is :class:`SweepStopped`."""
    log(
        f"[sweep] searching {config.tune_trials} recipe(s) per point on the validation "
        f"split ({', '.join(sorted(config.tune or {})) or 'the recipe as given'})"
    )
    callbacks = _callbacks(config, directory, experiment, None, log, trials=len(config.points))
    grid = _fit(
        storage.join(directory, "search"), trainable, callbacks, lambda: new_tuner(callbacks), log
    )
    searched = trial_outcomes(grid)
    histories = trial_histories(directory, searched)
    candidates = tables.candidates_frame(searched, histories, config, experiment)
    if (
        len(candidates) < len(config.points) * len(config.candidates)
        or (candidates["status"] == "stopped").any()
    ):
        raise SweepStopped(
            "the sweep was stopped during its search; run the same command again to "
            "resume (finished searches are kept)"
        )
    location = storage.join(directory, "candidates.parquet")
    table = pa.Table.from_pandas(candidates, preserve_index=False)
    storage.write_parquet(table, location, storage.CANDIDATES_SCHEMA)
    chosen = tables.chosen_recipes(candidates, config)
    if missing := [f"{m}x{n}d" for n, m in config.points if (n, m) not in chosen]:
        raise RuntimeError(f"the search of {', '.join(missing)} finished no candidate ({location})")
    _say_chosen(config, chosen, log)
    return chosen, searched, histories


class SweepStopped(RuntimeError):
    """The sweep was stopped (Ctrl+C, a stop signal) before its search ended."""


def _say_chosen(
    config: SweepConfig, chosen: dict[tuple[int, int], tables.Chosen], log: Log
) -> None:
    """One line per point: the recipe its search chose and that recipe's validation error."""
    for (n, m), choice in sorted(chosen.items()):
        fields = ", ".join(f"{k}={v:.3g}" for k, v in sorted(choice.recipe.items()))
        log(
            f"[sweep] {config.space.label(m, n)}: candidate {choice.candidate} "
            f"({fields or 'the recipe as given'}), validation error {choice.val_error:.2f} %"
        )


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
