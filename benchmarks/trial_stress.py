"""Many short trials: does any sweep hang?

Runs sweeps of one-epoch trials (synthetic-mlp, one seed per point, ``--sweep-size`` points)
on a local 2-CPU Ray cluster, two trials at a time, until ``--trials`` trials have run. A
sweep that has not finished ``--hang-after`` seconds after it started counts as hung: its
trials are counted as hung and the benchmark moves on (the process is left to exit with the
cluster). Before ce-ray fed Tune from its trial records, Ray 2.60's TuneReportCallback could
deadlock a trial whose last report arrived after the trial function had returned.

    python benchmarks/trial_stress.py [--trials 200] [--sweep-size 16] [--hang-after 300]

Prints a table and, last, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray

from ce_ray import cli


def one_sweep(results: str, name: str, points: int, seed: int) -> int:
    argv = [
        "sweep",
        "primal",
        *("--preset", "synthetic-mlp", "--alpha", "2.0", "--points", str(points)),
        *("--seeds", "1", "--epochs", "1", "--max-concurrent-trials", "2", "--no-report"),
        *("--seed", str(seed), "--results", results, "--experiment", name),
    ]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        return cli.main(argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--sweep-size", type=int, default=16)
    parser.add_argument("--hang-after", type=float, default=300.0)
    args = parser.parse_args()
    # A session directory of its own: a second local cluster in the default /tmp/ray (a test
    # run beside it) took this one's driver down once.
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ce-stress-", dir="/tmp"))
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1")
    results = tempfile.mkdtemp(prefix="ce-ray-stress-")
    rows, trials, hung, started = [], 0, 0, time.perf_counter()
    print(f"{'sweep':>5} {'trials':>6} {'seconds':>8}  outcome")
    for index in range(-(-args.trials // args.sweep_size)):
        outcome: dict = {}
        began = time.perf_counter()
        thread = threading.Thread(
            target=lambda i=index, into=outcome: into.setdefault(
                "rc", one_sweep(results, f"s{i}", args.sweep_size, i)
            ),
            daemon=True,
        )
        thread.start()
        thread.join(timeout=args.hang_after)
        seconds = time.perf_counter() - began
        if thread.is_alive():
            hung += args.sweep_size
            verdict = "HUNG"
        else:
            trials += args.sweep_size
            verdict = "ok" if outcome.get("rc") == 0 else f"exit {outcome.get('rc')}"
        rows.append({"sweep": index, "seconds": round(seconds, 1), "outcome": verdict})
        print(f"{index:>5} {args.sweep_size:>6} {seconds:>8.1f}  {verdict}", flush=True)
        if verdict == "HUNG":
            break  # a hung trial holds the cluster; the figures so far stand
    total = time.perf_counter() - started
    print(f"trials finished: {trials}, trials in hung sweeps: {hung}, {total:.0f} s")
    print(
        json.dumps(
            {
                "benchmark": "trial_stress",
                "trials_finished": trials,
                "trials_in_hung_sweeps": hung,
                "sweeps": rows,
                "seconds": round(total, 1),
            }
        )
    )
    os._exit(0)  # a hung trial's threads would keep the interpreter alive


if __name__ == "__main__":
    main()
