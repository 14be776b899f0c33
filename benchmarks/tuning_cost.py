"""A tuned sweep against the untuned one: what a fair comparison costs on digits-mlp.

    python benchmarks/tuning_cost.py [--points P] [--seeds S] [--recipes K] [--epochs E]

Runs ``ce-ray sweep primal --preset digits-mlp`` (5 points x 2 seeds, the recipe's 15 epochs,
alpha given so that only the sweep is timed) twice on one 2-CPU local Ray cluster bound to
127.0.0.1, as the main job runs it: untuned (the preset's recipe; a point's seeds packed, 5
trials), and tuned with ``--tune-trials 8 --tune lr=1e-3..3e-2:log --tune
weight-decay=0..1e-3`` (a search trial per point, its 8 candidate recipes packed into one
model and judged on the validation split; then the chosen recipe's seeds, 5 more trials).
With ``--asha``, a third sweep tuned with ``--scheduler asha`` (each point's candidates
halved at the rungs). Reports each sweep's wall time and its ratio to the untuned one, where
the tuned sweep's time goes (search, seeds), the training time inside the trials, and the
tuned sweep's table (does the optimum still beat the baseline when every point is tuned?).
Same run, same machine;
prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
from ce_ray.results.report import optimum_against_baseline, summary

ALPHA = "2.4112"  # the main job's fitted alpha (README)
SEARCH = ["--tune", "lr=1e-3..3e-2:log", "--tune", "weight-decay=0..1e-3"]


def sweep(results: str, name: str, extra: list[str], points: int, seeds: int, epochs: int) -> dict:
    args = ["--preset", "digits-mlp", "--alpha", ALPHA, "--points", str(points)]
    args += ["--seeds", str(seeds), "--epochs", str(epochs), "--no-report"]
    printed = io.StringIO()
    started, started_at = time.perf_counter(), time.time()
    with contextlib.redirect_stdout(printed):
        code = cli.main(
            ["sweep", "primal", *args, *extra, "--results", results, "--experiment", name]
        )
    wall = time.perf_counter() - started
    assert code == 0, printed.getvalue()[-3000:]
    directory = Path(results, name)
    trials = pd.read_parquet(directory / "trials.parquet")
    epochs_frame = pd.read_parquet(directory / "epochs.parquet")
    training = epochs_frame.groupby("trial_id")["train_time_s"].max().sum()
    searched = epochs_frame["candidate"].notna()
    search_training = epochs_frame[searched].groupby("trial_id")["train_time_s"].max().sum()
    # The search stage ends when candidates.parquet is written (its seeds' trials start then).
    candidates = directory / "candidates.parquet"
    search_stage = candidates.stat().st_mtime - started_at if candidates.exists() else 0.0
    table = summary(trials)
    return {
        "wall_s": wall,
        "training_s": float(training),
        "search_training_s": float(search_training),
        "search_stage_s": search_stage,
        "trials": int(epochs_frame["trial_id"].nunique()),
        "table": table,
        "against": optimum_against_baseline(table),
        "printed": printed.getvalue(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--recipes", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument(
        "--asha", action="store_true", help="also tuned with --scheduler asha (halving)"
    )
    args = parser.parse_args()
    tuned = ["--tune-trials", str(args.recipes), *SEARCH]
    variants = [("untuned", []), ("tuned", tuned)]
    if args.asha:
        variants.append(("tuned-asha", [*tuned, "--scheduler", "asha"]))
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as results:
            runs = {
                name: sweep(results, name, extra, args.points, args.seeds, args.epochs)
                for name, extra in variants
            }
    finally:
        ray.shutdown()
    base = runs["untuned"]
    print(
        f"digits-mlp primal, {args.points} points x {args.seeds} seeds x {args.epochs} epochs; "
        f"tuned: {args.recipes} recipes per point ({' '.join(SEARCH)}), 2 CPUs, same run"
    )
    print(
        f"{'':<11}{'trials':>7}{'wall s':>9}{'x untuned':>11}{'search stage s':>16}"
        f"{'training s':>12}{'of it search':>14}"
    )
    for name, run in runs.items():
        print(
            f"{name:<11}{run['trials']:>7}{run['wall_s']:>9.1f}"
            f"{run['wall_s'] / base['wall_s']:>11.2f}{run['search_stage_s']:>16.1f}"
            f"{run['training_s']:>12.1f}{run['search_training_s']:>14.1f}"
        )
    for name, run in runs.items():
        columns = ["label", "role", "test_error", "test_error_se"]
        columns += [c for c in ("lr", "weight_decay", "val_error") if c in run["table"]]
        print(f"\n{name}:\n{run['table'][columns].to_string(index=False)}\n{run['against']}")
    print(
        json.dumps(
            {
                "benchmark": "tuning_cost",
                "points": args.points,
                "seeds": args.seeds,
                "recipes": args.recipes,
                "epochs": args.epochs,
                **{
                    name: {k: v for k, v in run.items() if k not in ("table", "printed")}
                    | {
                        "test_error": run["table"]
                        .set_index("label")["test_error"]
                        .round(2)
                        .to_dict()
                    }
                    for name, run in runs.items()
                },
                "wall_ratio": runs["tuned"]["wall_s"] / base["wall_s"],
                "training_ratio": runs["tuned"]["training_s"] / base["training_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
