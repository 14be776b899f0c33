"""The sweep's fixed overhead per trial on this machine: wall time minus the trials' own
training time (the epoch loop inside the Ray Train worker).

    python benchmarks/sweep_overhead.py

Runs the tiny synthetic-mlp preset (2 points x 2 seeds x 5 epochs, alpha given) on a 2-CPU
local Ray cluster bound to 127.0.0.1, one trial at a time, as the 2-core default does.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to loopback only

import pandas as pd
import ray

from ce_ray import cli


def main() -> None:
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as results:
            args = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--seeds",
                    "2", "--epochs", "5", "--results", results, "--experiment", "overhead",
                    "--no-report"]  # fmt: skip
            start = time.perf_counter()
            assert cli.main(["sweep", "primal", *args]) == 0
            wall = time.perf_counter() - start
            epochs = pd.read_parquet(os.path.join(results, "overhead", "epochs.parquet"))
            trials = pd.read_parquet(os.path.join(results, "overhead", "trials.parquet"))
    finally:
        ray.shutdown()
    training = epochs.groupby("trial_id")["train_time_s"].max()
    in_trial = trials.set_index("trial_id")["wall_time_s"] - training
    figures = {
        "trials": len(trials),
        "sweep_wall_s": wall,
        "training_s_total": float(training.sum()),
        "overhead_per_trial_s": float((wall - training.sum()) / len(trials)),
        "trial_start_overhead_s_mean": float(in_trial.mean()),
        "training_share": float(training.sum() / wall),
    }
    print(
        f"{'trials':>8}{'wall s':>9}{'training s':>12}{'overhead/trial s':>18}"
        f"{'in-trial start s':>18}"
    )
    print(
        f"{figures['trials']:>8}{wall:>9.1f}{figures['training_s_total']:>12.2f}"
        f"{figures['overhead_per_trial_s']:>18.2f}{figures['trial_start_overhead_s_mean']:>18.2f}"
    )
    print(json.dumps({"benchmark": "sweep_overhead", **figures}))


if __name__ == "__main__":
    main()
