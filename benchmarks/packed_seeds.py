"""Seeds packed into one model against one trial per seed: the digits main job's sweep.

    python benchmarks/packed_seeds.py [--points P] [--seeds S] [--epochs E]

Runs ``ce-ray sweep primal --preset digits-mlp`` (5 points x 4 seeds, the recipe's 15 epochs,
alpha given so that only the sweep is timed) twice on one 2-CPU local Ray cluster bound to
127.0.0.1, as the main job runs it (trials at once: what the cluster holds): with
``--no-pack-seeds`` (P x S trials) and with ``--pack-seeds`` (P trials). Reports the wall time
of each sweep, the training time inside the trials (the epoch loops, summed over trials) and
the largest difference of any (point, seed, epoch)'s train loss and test error between the
two. Same run, same machine; prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
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

from ce_ray import cli

ALPHA = "2.4112"  # the main job's fitted alpha (README)


def sweep(results: str, name: str, pack: bool, points: int, seeds: int, epochs: int) -> dict:
    args = [
        "--preset",
        "digits-mlp",
        "--alpha",
        ALPHA,
        "--points",
        str(points),
        "--seeds",
        str(seeds),
        "--epochs",
        str(epochs),
        "--results",
        results,
        "--experiment",
        name,
        "--no-report",
        "--pack-seeds" if pack else "--no-pack-seeds",
    ]
    started = time.perf_counter()
    assert cli.main(["sweep", "primal", *args]) == 0
    wall = time.perf_counter() - started
    trials = pd.read_parquet(Path(results, name, "trials.parquet"))
    epochs_frame = pd.read_parquet(Path(results, name, "epochs.parquet"))
    training = epochs_frame.groupby("trial_id")["train_time_s"].max().sum()
    return {
        "wall_s": wall,
        "training_s": float(training),
        "trials": trials["trial_id"].nunique(),
        "rows": len(trials),
        "epochs": epochs_frame,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as results:
            runs = {
                name: sweep(results, name, pack, args.points, args.seeds, args.epochs)
                for name, pack in (("unpacked", False), ("packed", True))
            }
    finally:
        ray.shutdown()
    key = ["n", "seed_index", "epoch"]
    alone, packed = (runs[name].pop("epochs").set_index(key).sort_index() for name in runs)
    loss_rel = ((packed["train_loss"] - alone["train_loss"]).abs() / alone["train_loss"]).max()
    error_abs = (packed["test_error"] - alone["test_error"]).abs().max()
    base = runs["unpacked"]
    print(
        f"digits-mlp primal, {args.points} points x {args.seeds} seeds x {args.epochs} "
        "epochs, 2 CPUs, same run"
    )
    print(
        f"{'':<10}{'trials':>8}{'rows':>6}{'wall s':>9}{'x unpacked':>12}{'training s':>12}"
        f"{'x unpacked':>12}"
    )
    for name, run in runs.items():
        print(
            f"{name:<10}{run['trials']:>8}{run['rows']:>6}{run['wall_s']:>9.1f}"
            f"{base['wall_s'] / run['wall_s']:>12.2f}{run['training_s']:>12.2f}"
            f"{base['training_s'] / run['training_s']:>12.2f}"
        )
    print(
        f"largest difference packed vs unpacked: train loss {loss_rel:.2e} (relative), "
        f"test error {error_abs:.3g} points"
    )
    print(
        json.dumps(
            {
                "benchmark": "packed_seeds",
                "points": args.points,
                "seeds": args.seeds,
                "epochs": args.epochs,
                **{name: run for name, run in runs.items()},
                "wall_speedup": base["wall_s"] / runs["packed"]["wall_s"],
                "training_speedup": base["training_s"] / runs["packed"]["training_s"],
                "max_train_loss_rel_diff": float(loss_rel),
                "max_test_error_diff": float(error_abs),
            }
        )
    )


if __name__ == "__main__":
    main()
