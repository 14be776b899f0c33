"""Where a sweep trial's fixed seconds go, on this machine, one trial at a time.

    python benchmarks/sweep_overhead.py [--trials N] [--epochs E] [--rows ROW,ROW]

Builds the trial up one piece at a time on a 2-CPU local Ray cluster bound to 127.0.0.1 (the
2-core default), ``N`` trials of each, one at a time, as ce-ray runs them (same trial
resources, same Train settings, same storage layout):

1. ``tune``        -- a Tune function trial that only reports: Tune's own cost per trial;
2. ``train``       -- + a ``TorchTrainer`` whose one worker only reports: the Train controller,
                      the worker group and its torch process group (the floor of ANY
                      Tune-over-Train trial);
   ``train-data``  -- the same with ce-ray's trainer, less Train's Ray Data set-up (its
                      ``DatasetManager`` actor, one more process per run);
3. ``train+data``  -- + the worker loads the preset's data and builds the baseline model;
4. ``train+reports`` -- + ``E`` reports, each with a checkpoint, as an epoch loop makes them,
                      without training;
5. ``ce-ray``      -- ce-ray's own sweep (``E`` epochs per trial, seeds unpacked), per trial;
6. ``ce-ray packed`` -- the same sweep with its seeds packed, per (point, seed).

The Train controller's report poll is ce-ray's (``ce_ray.experiments.ray_compat.REPORT_POLL_S``)
unless ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` is set (0.25 reproduces the figures before it was cut).
ce-ray rows are the sweep's wall time per (point, seed), its set-up and tables included.

Inside each trial it stamps the trial function's start and end and the training loop's start
and end, so each row splits into: between trials (Tune's scheduling), trial function start ->
training loop start (controller, worker group, process group), the loop (data, training,
reports) and loop end -> trial function end (shutting the run down). Prints a table and, last,
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to loopback only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import ray
import ray.train
from ray import tune

from ce_ray import cli
from ce_ray.experiments.ray_compat import (
    REPORT_POLL_S,
    TRIAL_FUNCTION_RESOURCES,
    torch_trainer_without_ray_data,
)
from ce_ray.presets import SWEEP_PRESETS
from ce_ray.worker import data

PRESET = "digits-mlp"


def stamp(directory: str, trial: str, event: str) -> None:
    with open(os.path.join(directory, f"{trial}.{event}"), "w") as file:
        file.write(repr(time.time()))


def loop(config: dict) -> None:
    """The training loop of rows 2-4: report once, or load data and/or report E times."""
    import ray.train

    stamp(config["stamps"], config["trial"], "loop_start")
    if config["data"]:
        preset = SWEEP_PRESETS[PRESET]
        data.load(preset.dataset, data.resolve_root("data"))
        preset.space.build(1, preset.baseline)
    for epoch in range(1, config["reports"] + 1):
        if config["reports"] == 1:
            ray.train.report({"epoch": epoch})
            continue
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "state.pt").write_bytes(b"\0" * 100_000)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({"epoch": epoch}, checkpoint=checkpoint)
    stamp(config["stamps"], config["trial"], "loop_end")


def trial(config: dict) -> None:
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)  # as ce-ray's
    trial_id = tune.get_context().get_trial_id()
    stamp(config["stamps"], trial_id, "fn_start")
    if config["kind"] == "tune":
        tune.report({"epoch": 1})
    else:
        lean = config["kind"] == "train-data"
        trainer = torch_trainer_without_ray_data() if lean else TorchTrainer
        trainer(
            loop,
            train_loop_config={
                "stamps": config["stamps"],
                "trial": trial_id,
                "data": config["kind"] not in ("train", "train-data"),
                "reports": config["reports"],
            },
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(
                name=trial_id,
                storage_path=os.path.join(config["storage"], "train"),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=[TuneReportCallback()],
            ),
        ).fit()
    stamp(config["stamps"], trial_id, "fn_end")


def run_pieces(kind: str, trials: int, reports: int, storage: str) -> dict:
    stamps = tempfile.mkdtemp(dir=storage)
    tuner = tune.Tuner(
        tune.with_resources(trial, TRIAL_FUNCTION_RESOURCES),
        param_space={
            "index": tune.grid_search(list(range(trials))),
            "kind": kind,
            "reports": reports,
            "stamps": stamps,
            "storage": storage,
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name=f"pieces-{kind}", storage_path=storage, verbose=0),
    )
    started = time.time()
    grid = tuner.fit()
    wall = time.time() - started
    assert not grid.errors, grid.errors
    return phases(stamps, wall, trials)


def phases(stamps: str, wall: float, trials: int, training: float = 0.0) -> dict:
    times: dict[str, dict[str, float]] = {}
    for path in Path(stamps).iterdir():
        name, event = path.name.rsplit(".", 1)
        times.setdefault(name, {})[event] = float(path.read_text())
    frame = pd.DataFrame(times.values())
    in_function = (frame["fn_end"] - frame["fn_start"]).sum()
    row = {"per_trial_s": wall / trials, "between_trials_s": (wall - in_function) / trials}
    if "loop_start" in frame:
        row["start_s"] = (frame["loop_start"] - frame["fn_start"]).mean()
        row["loop_s"] = (frame["loop_end"] - frame["loop_start"]).mean()
        row["stop_s"] = (frame["fn_end"] - frame["loop_end"]).mean()
    else:
        row["loop_s"] = (frame["fn_end"] - frame["fn_start"]).mean()
    row["training_s"] = training
    return row


def run_ce_ray(seeds: int, epochs: int, pack: bool, storage: str) -> dict:
    """ce-ray's sweep; its trial function and loop stamped from the record and Tune's files."""
    name = "packed" if pack else "unpacked"
    args = [
        "--preset",
        PRESET,
        "--alpha",
        "2.4",
        "--points",
        "2",
        "--seeds",
        str(seeds),
        "--epochs",
        str(epochs),
        "--results",
        storage,
        "--experiment",
        name,
        "--no-report",
        "--max-concurrent-trials",
        "1",
        "--pack-seeds" if pack else "--no-pack-seeds",
    ]
    started = time.time()
    assert cli.main(["sweep", "primal", *args]) == 0
    wall = time.time() - started
    directory = Path(storage, name)
    epochs_frame = pd.read_parquet(directory / "epochs.parquet")
    trials_frame = pd.read_parquet(directory / "trials.parquet")
    training = epochs_frame.groupby("trial_id")["train_time_s"].max().sum()
    per_trial = wall / len(trials_frame)  # per (point, seed)
    return {
        "per_trial_s": per_trial,
        "training_s": training / len(trials_frame),
        "trials": trials_frame["trial_id"].nunique(),
    }


ROWS = {
    "tune": lambda trials, epochs, storage: run_pieces("tune", trials, 1, storage),
    "train": lambda trials, epochs, storage: run_pieces("train", trials, 1, storage),
    "train-data": lambda trials, epochs, storage: run_pieces("train-data", trials, 1, storage),
    "train+data": lambda trials, epochs, storage: run_pieces("train+data", trials, 1, storage),
    "train+reports": lambda trials, epochs, storage: run_pieces(
        "train+data", trials, epochs, storage
    ),
    "ce-ray": lambda trials, epochs, storage: run_ce_ray(trials // 2, epochs, False, storage),
    "ce-ray packed": lambda trials, epochs, storage: run_ce_ray(trials // 2, epochs, True, storage),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15, help="the digits-mlp recipe's")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows (default: all)")
    args = parser.parse_args()
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", log_to_driver=False)
    rows = {}
    try:
        with tempfile.TemporaryDirectory() as storage:
            for name in args.rows.split(","):
                rows[name] = ROWS[name](args.trials, args.epochs, storage)
    finally:
        ray.shutdown()
    floor = rows["train"]["per_trial_s"] if "train" in rows else math.nan
    columns = ["per_trial_s", "between_trials_s", "start_s", "loop_s", "stop_s", "training_s"]
    print(
        f"{PRESET}, {args.epochs} epochs, one trial at a time, 2 CPUs; seconds per trial "
        f"(ce-ray rows: per (point, seed)); x floor = per trial / the `train` row's"
    )
    print(f"{'row':<15}" + "".join(f"{c:>18}" for c in columns) + f"{'x floor':>9}")
    for name, row in rows.items():
        cells = "".join(f"{row[c]:>18.2f}" if c in row else f"{'':>18}" for c in columns)
        print(f"{name:<15}{cells}{row['per_trial_s'] / floor:>9.2f}")
    figures = {name.replace(" ", "_").replace("+", "_"): row for name, row in rows.items()}
    print(
        json.dumps(
            {"benchmark": "sweep_overhead", "epochs": args.epochs, "trials": args.trials, **figures}
        )
    )


if __name__ == "__main__":
    main()
