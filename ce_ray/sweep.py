"""Sweep a primal or dual curve: Ray Tune runs one trial per (point, seed); each trial trains
its point as a Ray Train ``TorchTrainer`` job (Train V2: the trial function starts the trainer
with ``TuneReportCallback``). Results go to ``trials.parquet`` and ``epochs.parquet``.

Layout of ``<results>/<experiment>/``: ``sweep.json`` (the configuration; a rerun must match
it), ``fit_alpha/`` (when alpha was fitted here), ``curves.parquet``, ``tune/`` (Tune's
experiment: a rerun restores it, so finished trials are not trained again), ``train/`` (the
Train runs), ``trials.parquet``, ``epochs.parquet``, and the report's PNGs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ce_ray import cluster, io
from ce_ray.curves import CURVE_COLUMNS, Curve, curve
from ce_ray.ntk import derive_seed
from ce_ray.presets import DEFAULT_PRESET, PRESETS, Preset

SCHEDULERS = ("fifo", "asha")


def select_points(result: Curve, count: int) -> pd.DataFrame:
    """``count`` rows of the curve to train: the optimum, the baseline, and widths spread
    log-uniformly over the grid (each with its integer m). Column ``role`` says which."""
    if count < 2:
        raise ValueError(f"--points must be >= 2 (the optimum and the baseline); got {count}")
    table = result.table
    widths = table["n"].to_numpy()
    optimum, baseline = int(result.optimum["n"]), result.baseline_width
    chosen = {baseline: "baseline", optimum: "optimum"}  # the optimum's role wins a tie
    spare = count - len(chosen)
    for target in np.geomspace(widths.min(), widths.max(), spare + 2)[1:-1] if spare > 0 else []:
        free = np.array([w for w in widths if w not in chosen])
        if free.size == 0:
            break
        nearest = int(free[np.argmin(np.abs(np.log(free) - np.log(target)))])
        chosen[nearest] = "curve"
    rows = table[table["n"].isin(chosen)].copy()
    rows["role"] = rows["n"].map(chosen)
    return rows.reset_index(drop=True)


@dataclass(frozen=True)
class SweepConfig:
    """Everything that decides which trials exist and how they train."""

    preset: str
    formulation: str
    alpha: float
    points: tuple[tuple[int, int], ...]  # (n, m)
    seeds: int
    epochs: int
    workers_per_trial: int
    gpus_per_worker: float
    cpus_per_worker: float
    scheduler: str
    seed: int
    data_root: str

    def to_json(self) -> dict:
        record = dict(self.__dict__)
        record["points"] = [list(p) for p in self.points]
        return record


def run_trial(config: dict) -> None:
    """Tune's trial function: train one (point, seed) as a Ray Train job.

    The Train run is named after the Tune trial id alone, which survives Tune's retries and
    ``Tuner.restore``: a new ``TorchTrainer`` with the same name and storage resumes from the
    run's latest checkpoint (Train V2 has no other resume). Inside the run, Train's own
    ``FailureConfig`` restarts a lost worker group from that checkpoint without Tune noticing.
    """
    import ray.train  # noqa: PLC0415
    import ray.tune  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415
    from ray.tune.integration.ray_train import TuneReportCallback  # noqa: PLC0415

    from ce_ray.training import train_point  # noqa: PLC0415

    # Train V2's controller collects reports when it polls the workers (every 2 s by
    # default), and a worker's report waits for that: with short epochs the poll, not the
    # training, sets the pace. 0.25 s measured ~0.03 s epochs at ~0.3 s instead of ~2 s.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    trial_id = ray.tune.get_context().get_trial_id()
    point, seed_index = config["point"], config["seed"]
    gpus = config["gpus_per_worker"]
    resources = {"CPU": config["cpus_per_worker"]} | ({"GPU": gpus} if gpus else {})
    trainer = TorchTrainer(
        train_point,
        train_loop_config={
            "preset": config["preset"],
            "m": point["m"],
            "n": point["n"],
            "seed": derive_seed(config["experiment_seed"], point["n"], point["m"], seed_index),
            "epochs": config["epochs"],
            "data_root": config["data_root"],
            "record": record_location(config["records_storage"], trial_id),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config["workers_per_trial"],
            use_gpu=gpus > 0,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=config["train_storage"],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=config["max_failures"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def record_location(records: str, trial_id: str) -> str:
    return io.join(records, f"{trial_id}.json")


def _history(directory: str, trial_id: str) -> pd.DataFrame:
    """The trial's epochs from its TrialRecord (one row per epoch, the latest training)."""
    location = record_location(io.join(directory, "records"), trial_id)
    rows = json.loads(io.read_text(location))["epochs"] if io.exists(location) else []
    columns = ["epoch", "train_loss", "test_error", "attempt"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def _rows(results, points: pd.DataFrame, config: SweepConfig, experiment: str, space_name: str,
          directory: str):  # fmt: skip
    """trials and epochs DataFrames: status and errors from Tune's ResultGrid, epochs from
    each trial's record."""
    by_width = points.set_index("n")
    trials, epochs = [], []
    for result in results:
        point, seed = result.config["point"], result.config["seed"]
        row = by_width.loc[point["n"]]
        # The trial directory is named by _trial_name: "<m>x<n>d-seed<s>-<trial id>".
        trial_id = os.path.basename(str(result.path).rstrip("/")).rsplit("-", 1)[-1]
        history = _history(directory, trial_id)
        wall_time = float(history["time_total_s"].iloc[-1]) if len(history) else math.nan
        done = int(history["epoch"].max()) if len(history) else 0
        status = "error" if result.error else (
            "finished" if done >= config.epochs else "stopped_early"
        )  # fmt: skip
        top5 = history["test_error_top5"] if "test_error_top5" in history else None
        trials.append(
            {
                "experiment": experiment,
                "formulation": config.formulation,
                "space": space_name,
                "label": f"{int(point['m'])}x{int(point['n'])}d",
                "n": int(point["n"]),
                "m": int(point["m"]),
                "params": int(row["params"]),
                "flops": int(row["flops"]),
                "rho": float(row["rho"]),
                "var_ensemble": float(row["var_ensemble"]),
                "alpha": config.alpha,
                "role": row["role"],
                "seed": int(seed),
                "final_test_error": float(history["test_error"].iloc[-1]) if done else math.nan,
                "best_test_error": float(history["test_error"].min()) if done else math.nan,
                "final_test_error_top5": float(top5.iloc[-1])
                if done and top5 is not None
                else None,
                "final_train_loss": float(history["train_loss"].iloc[-1]) if done else math.nan,
                "epochs": done,
                "epochs_planned": config.epochs,
                "wall_time_s": wall_time,
                "status": status,
                "retries": int(history["attempt"].max()) if "attempt" in history else 0,
                "trial_id": trial_id,
                "error": str(result.error).strip().splitlines()[-1] if result.error else None,
            }
        )
        for _, epoch in history.iterrows():
            epochs.append(
                {
                    "experiment": experiment,
                    "trial_id": trial_id,
                    "n": int(point["n"]),
                    "m": int(point["m"]),
                    "seed": int(seed),
                    "epoch": int(epoch["epoch"]),
                    "train_loss": float(epoch["train_loss"]),
                    "test_error": float(epoch["test_error"]),
                    "test_error_top5": float(epoch["test_error_top5"])
                    if "test_error_top5" in epoch and pd.notna(epoch["test_error_top5"])
                    else None,
                    "time_total_s": float(epoch.get("time_total_s", math.nan)),
                    "train_time_s": float(epoch.get("train_time_s", math.nan)),
                    "attempt": int(epoch.get("attempt", 0)),
                    "node_id": epoch.get("node_id"),
                }
            )
    trials_frame = pd.DataFrame(trials, columns=io.TRIALS_SCHEMA.names)
    epochs_frame = pd.DataFrame(epochs, columns=io.EPOCHS_SCHEMA.names)
    trials_frame = trials_frame.sort_values(["n", "seed"]).reset_index(drop=True)
    return trials_frame, epochs_frame.sort_values(["n", "seed", "epoch"]).reset_index(drop=True)


# A trial's function only waits on its Train controller (which Ray Train V2 also runs with
# num_cpus=0), so it reserves no CPU. Reserving one deadlocks a small machine: Tune stages the
# placement groups of PENDING trials ahead of time, and a staged 1-CPU group can take the CPU
# the running trial's training worker is waiting for (seen on 2 CPUs: the worker group timed
# out after 60 s, again and again). Tune refuses an empty request, so the trial asks for
# 1 MiB of Ray's logical memory instead, which nothing else competes for.
TRIAL_FUNCTION_RESOURCES = {"cpu": 0, "memory": 2**20}


def _default_concurrency(config: SweepConfig, trials: int) -> int:
    """Trials whose training workers fit in the cluster at its largest: on an autoscaling
    cluster its node types at their max_workers (so that pending trials ask it to grow), on
    a fixed one what it holds now; at least 1, at most the number of trials."""
    resources = cluster.max_resources()
    per_trial_cpu = config.workers_per_trial * config.cpus_per_worker
    fits = int(resources.get("CPU", 0) // per_trial_cpu)
    if config.gpus_per_worker:
        per_trial_gpu = config.workers_per_trial * config.gpus_per_worker
        fits = min(fits, int(resources.get("GPU", 0) // per_trial_gpu))
    return max(1, min(fits, trials))


def run_sweep(
    config: SweepConfig,
    points: pd.DataFrame,
    results: str,
    experiment: str,
    space_name: str,
    max_concurrent_trials: int | None = None,
    max_failures: int = 2,
    verbose: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or resume) the Tune experiment and write trials.parquet and epochs.parquet."""
    from ray import tune  # noqa: PLC0415

    cluster.init_ray()
    directory = io.join(results, experiment)
    io.check_or_write_config(directory, config.to_json(), "sweep.json")
    trainable = tune.with_resources(run_trial, TRIAL_FUNCTION_RESOURCES)
    tune_path = io.join(directory, "tune")
    if tune.Tuner.can_restore(tune_path):
        print(f"[sweep] resuming {tune_path}: finished trials are kept", flush=True)
        # Same trial ids for unfinished and errored trials: their Train runs resume from
        # their checkpoints (restart_errored would start them over under new ids).
        tuner = tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        scheduler = None
        if config.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(
                time_attr="epoch", max_t=config.epochs,
                grace_period=max(1, config.epochs // 4), reduction_factor=2,
            )  # fmt: skip
        param_space = {
            "point": tune.grid_search(
                [{"n": int(n), "m": int(m)} for n, m in zip(points["n"], points["m"], strict=True)]
            ),
            "seed": tune.grid_search(list(range(config.seeds))),
            "preset": config.preset,
            "epochs": config.epochs,
            "experiment_seed": config.seed,
            "data_root": config.data_root,
            "workers_per_trial": config.workers_per_trial,
            "gpus_per_worker": config.gpus_per_worker,
            "cpus_per_worker": config.cpus_per_worker,
            "train_storage": io.join(directory, "train"),
            "records_storage": io.join(directory, "records"),
            "max_failures": max_failures,
        }
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="test_error",
                mode="min",
                scheduler=scheduler,
                max_concurrent_trials=max_concurrent_trials
                or _default_concurrency(config, len(points) * config.seeds),
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
    grid = tuner.fit()
    trials, epochs = _rows(grid, points, config, experiment, space_name, directory)
    io.write_parquet(pa.Table.from_pandas(trials), io.join(directory, "trials.parquet"),
                     io.TRIALS_SCHEMA)  # fmt: skip
    io.write_parquet(pa.Table.from_pandas(epochs), io.join(directory, "epochs.parquet"),
                     io.EPOCHS_SCHEMA)  # fmt: skip
    return trials, epochs


def _trial_name(trial) -> str:
    point = trial.config["point"]
    return f"{point['m']}x{point['n']}d-seed{trial.config['seed']}-{trial.trial_id}"


def write_curves(preset: Preset, alpha: float, directory: str) -> pd.DataFrame:
    """Both curves of the preset (for the report), as curves.parquet."""
    frames = []
    for formulation in ("primal", "dual"):
        table = curve(preset.space, alpha, preset.baseline, formulation=formulation).table
        frames.append(table.assign(formulation=formulation, alpha=alpha, baseline=preset.baseline))
    frame = pd.concat(frames, ignore_index=True)
    schema = pa.Table.from_pandas(frame[list(CURVE_COLUMNS)], preserve_index=False).schema
    for field in io.CURVES_EXTRA:
        schema = schema.append(field)
    io.write_parquet(pa.Table.from_pandas(frame, preserve_index=False),
                     io.join(directory, "curves.parquet"), schema)  # fmt: skip
    return frame


def known_alpha(args: argparse.Namespace, preset: Preset) -> float | None:
    """--alpha, else --alpha-from (an alpha.parquet), else the preset's; None: fit it."""
    if args.alpha is not None:
        return args.alpha
    if args.alpha_from:
        path = args.alpha_from
        if not io.exists(path):
            raise ValueError(f"--alpha-from {path}: no such file (an alpha.parquet of fit-alpha)")
        table = io.read_parquet(path)
        if "alpha" not in table.column_names or table.num_rows != 1:
            raise ValueError(f"--alpha-from {path}: not an alpha.parquet written by fit-alpha")
        return float(table.column("alpha")[0].as_py())
    return preset.alpha


def fit_alpha_first(args: argparse.Namespace, preset: Preset, results: str) -> float:
    """Fit alpha with the preset's fit-alpha preset into ``<results>/<experiment>/fit_alpha``."""
    from ce_ray import fit_alpha  # noqa: PLC0415

    print(f"[sweep] fitting alpha first (fit-alpha preset {preset.fit_preset})", flush=True)
    fit_args = argparse.Namespace(
        preset=preset.fit_preset, widths=None, samples=None, method=None, shard_size=None,
        seed=args.seed, off_diagonal=False, device="cpu", dtype="float32", readout="pool",
        memory_budget=256.0,
    )  # fmt: skip
    config = fit_alpha.config_from_args(fit_args)
    workers = cluster.default_workers()
    result = fit_alpha.fit_alpha(config, results, args.experiment, workers, bootstrap=200)
    print(
        f"[sweep] alpha = {result.alpha:.4f} (95% CI {result.ci_low:.4f}..{result.ci_high:.4f})",
        flush=True,
    )
    return result.alpha


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--experiment", help="experiment name (default: PRESET-FORMULATION)")
    parser.add_argument(
        "--results",
        default=os.environ.get("CE_RAY_RESULTS", "results"),
        help="results directory or URI; shared storage (e.g. s3://...) on a multi-node "
        "cluster (default: $CE_RAY_RESULTS or ./results)",
    )
    parser.add_argument("--points", type=int, default=5, help="points K on the curve (5)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds S per point (2)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the preset's recipe)")
    parser.add_argument("--workers-per-trial", type=int, default=1, help="Train workers (1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")
    alpha = parser.add_mutually_exclusive_group()
    alpha.add_argument("--alpha", type=float, help="alpha of Eq. 9")
    alpha.add_argument("--alpha-from", help="alpha.parquet of an earlier fit-alpha run")
    parser.add_argument("--max-concurrent-trials", type=int, help="default: what fits now")
    parser.add_argument("--max-failures", type=int, default=2, help="retries per trial (2)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="fifo")
    parser.add_argument("--seed", type=int, default=0, help="experiment seed (0)")
    parser.add_argument(
        "--data-root", default=os.environ.get("CE_RAY_DATA", "data"), help="dataset root"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the PNGs")


def _validate(args: argparse.Namespace) -> None:
    checks = [
        (args.points is not None and args.points < 2, f"--points must be >= 2; got {args.points}"),
        (args.seeds < 1, f"--seeds must be >= 1; got {args.seeds}"),
        (args.epochs is not None and args.epochs < 1, f"--epochs must be >= 1; got {args.epochs}"),
        (args.workers_per_trial < 1,
         f"--workers-per-trial must be >= 1; got {args.workers_per_trial}"),
        (args.gpus_per_worker < 0, f"--gpus-per-worker must be >= 0; got {args.gpus_per_worker}"),
        (args.cpus_per_worker <= 0, f"--cpus-per-worker must be > 0; got {args.cpus_per_worker}"),
        (args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha > 0),
         f"--alpha must be a finite number > 0; got {args.alpha}"),
        (args.max_concurrent_trials is not None and args.max_concurrent_trials < 1,
         f"--max-concurrent-trials must be >= 1; got {args.max_concurrent_trials}"),
        (args.max_failures < 0, f"--max-failures must be >= 0; got {args.max_failures}"),
    ]  # fmt: skip
    for failed, message in checks:
        if failed:
            raise ValueError(message)


def main(formulation: str, argv: list[str] | None = None) -> int:
    """The primal_curve / dual_curve job."""
    from ce_ray import data  # noqa: PLC0415
    from ce_ray.report import report  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=f"Sweep the {formulation} curve of a preset.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        _validate(args)
        preset = PRESETS[args.preset]
        args.experiment = args.experiment or f"{preset.name}-{formulation}"
        results = io.resolve(args.results)
        io.check_writable(results)
        # Kept as given: a relative root names the same data in every job's working-dir copy.
        data_root = args.data_root
        data.load(preset.dataset, data.resolve_root(data_root))  # missing data: one line, now
        alpha = known_alpha(args, preset)
        cluster.init_ray()
        if alpha is None:
            alpha = fit_alpha_first(args, preset, results)
        directory = io.join(results, args.experiment)
        chosen = curve(preset.space, alpha, preset.baseline, formulation=formulation)
        points = select_points(chosen, args.points)
        config = SweepConfig(
            preset=preset.name, formulation=formulation, alpha=alpha,
            points=tuple((int(n), int(m)) for n, m in zip(points["n"], points["m"], strict=True)),
            seeds=args.seeds, epochs=args.epochs or preset.recipe.epochs,
            workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker, scheduler=args.scheduler, seed=args.seed,
            data_root=data_root,
        )  # fmt: skip
        print(
            f"[sweep] {preset.name} {formulation}: alpha={alpha:.4f}, points "
            f"{', '.join(f'{m}x{n}d' for n, m in config.points)} x {config.seeds} seeds, "
            f"{config.epochs} epochs -> {directory}",
            flush=True,
        )
        write_curves(preset, alpha, directory)
        run_sweep(
            config, points, results, args.experiment, preset.space.name,
            args.max_concurrent_trials, args.max_failures,
        )  # fmt: skip
    except ValueError as error:
        print(f"{formulation}_curve: error: {error}", file=sys.stderr)
        return 2
    print(report(directory, write_plots=not args.no_report))
    return 0
