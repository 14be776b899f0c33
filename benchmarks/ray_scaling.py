"""Ray speed-up of 2 workers over 1 for fit-alpha's sharded sampling, and per-task overhead.

    python benchmarks/ray_scaling.py

Starts a 2-CPU local Ray cluster on 127.0.0.1, samples the same experiment with 1 and then
2 concurrent tasks (fresh directories, so nothing is resumed) and reports wall times, the
speed-up, and the share of worker time not spent inside the shard function (scheduling,
serialisation, worker start-up), i.e. 1 - sum(task seconds) / (workers x wall).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to loopback only

import ray

from ce_ray.configs import FitConfig
from ce_ray.experiments import fit_alpha as fa

CONFIG = FitConfig(
    preset="resnext-block",
    widths=(32, 64, 128),
    samples=4000,
    shard_size=500,
    seed=0,
    method="batched",
    readout="pool",
    off_diagonal=False,
    device="cpu",
    dtype="float32",
    memory_budget_mib=256.0,
)


def timed_run(workers: int, results: str) -> dict:
    start = time.perf_counter()
    ran = fa.sample_all_shards(CONFIG, os.path.join(results, f"w{workers}"), workers, print)
    wall = time.perf_counter() - start
    busy = sum(seconds for _, seconds in ran)
    return {
        "workers": workers,
        "wall_s": wall,
        "task_s": busy,
        "tasks": len(ran),
        "overhead_fraction": 1 - busy / (workers * wall),
    }


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as results:
            timed_run(2, os.path.join(results, "warm-up"))  # start both workers, import torch
            one = timed_run(1, results)
            two = timed_run(2, results)
    finally:
        ray.shutdown()
    speedup = one["wall_s"] / two["wall_s"]
    print(f"{'workers':>8}{'wall s':>9}{'task s':>9}{'tasks':>7}{'overhead':>10}")
    for row in (one, two):
        print(
            f"{row['workers']:>8}{row['wall_s']:>9.2f}{row['task_s']:>9.2f}{row['tasks']:>7}"
            f"{row['overhead_fraction']:>10.1%}"
        )
    print(f"speed-up of 2 workers over 1: {speedup:.2f}x")
    print(json.dumps({"benchmark": "ray_scaling", "one": one, "two": two, "speedup": speedup}))


if __name__ == "__main__":
    main()
