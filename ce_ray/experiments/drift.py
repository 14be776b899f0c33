"""Theorem 1 as a Ray job: collegial ensembles over a grid of (m, n), each (m, n, seed index)
trained as a Ray task (``ce_ray.theory.drift.measure_drift``); then the fit of the drift's
exponents.

Every run's weights derive from (experiment seed, m, n, seed index), the task from the
experiment seed alone, so a rerun skips runs already on storage. Layout of
``<results>/<experiment>/drift/``: ``config.json``, ``runs/`` (one file per run),
``drift.parquet``, ``drift_fit.parquet`` (per time: exponents with intervals) and
``drift.png``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from ce_ray import limits
from ce_ray.experiments import cluster
from ce_ray.experiments.tasks import (
    Log,
    WorkItem,
    print_line,
    run_missing,
)
from ce_ray.limits import DEFAULT_STALL_TIMEOUT_S
from ce_ray.results import plots, storage
from ce_ray.theory import drift
from ce_ray.theory.seeds import derive_seed


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """Everything that determines the runs.

    Attributes:
        multiplicities, widths: the grid of m and n.
        depth: L, weight layers of each member MLP.
        seeds: runs per (m, n).
        train_points, input_dim, probe_points: the task's N training inputs in n0
            dimensions, and the P inputs where the kernel is measured.
        step: the learning rate times N L (at most the top-eigenvalue product; small follows
            gradient flow).
        flow_times: when to measure, as gradient-flow time in units of 1 / (N L) (the
            ``time`` column holds the time itself, learning rate x steps).
    """

    multiplicities: tuple[int, ...] = (1, 2, 4, 8, 16)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    depth: int = 3
    seeds: int = 3
    train_points: int = 32
    input_dim: int = 8
    probe_points: int = 8
    step: float = 0.1
    flow_times: tuple[float, ...] = (2.0, 8.0, 32.0)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "at least two multiplicities and two widths": len(self.multiplicities) >= 2
            and len(self.widths) >= 2,
            "multiplicities and widths >= 1": min(*self.multiplicities, *self.widths) >= 1,
            "depth >= 2": self.depth >= 2,
            "seeds, train_points, input_dim and probe_points >= 1": min(
                self.seeds, self.train_points, self.input_dim, self.probe_points
            )
            >= 1,
            "0 < step <= 1": 0 < self.step <= 1,
            "flow_times > 0": min(self.flow_times) > 0,
            f"widths at most {limits.MAX_WIDTH} and multiplicities at most "
            f"{limits.MAX_MULTIPLICITY}": max(self.widths) <= limits.MAX_WIDTH
            and max(self.multiplicities) <= limits.MAX_MULTIPLICITY,
            f"at most {limits.MAX_TASKS:,} runs (multiplicities x widths x seeds)": len(
                self.multiplicities
            )
            * len(self.widths)
            * self.seeds
            <= limits.MAX_TASKS,
        }
        for message, holds in checks.items():
            if not holds:
                raise ValueError(f"drift settings need {message}; got {self.to_json()}")
        # A run holds m members of L weight layers of width n, with their gradients.
        largest = max(self.multiplicities) * max(self.widths) ** 2 * self.depth * 4 * 4
        half = limits.machine_memory_bytes() / 2
        if largest > half:
            raise ValueError(
                f"drift settings: the largest ensemble needs about {largest / 2**30:.1f} GiB; "
                f"at most half this machine's memory ({half / 2**30:.1f} GiB)"
            )

    @property
    def learning_rate(self) -> float:
        return drift.learning_rate(self.train_points, self.depth, self.step)

    @property
    def record_steps(self) -> list[int]:
        return [0, *sorted({max(1, round(t / self.step)) for t in self.flow_times})]

    def runs(self) -> list[tuple[int, int, int]]:
        return [
            (m, n, s) for m in self.multiplicities for n in self.widths for s in range(self.seeds)
        ]

    def to_json(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def _run_file(m: int, n: int, seed_index: int) -> str:
    return f"m{m:05d}-n{n:06d}-s{seed_index:03d}.parquet"


def run_one(
    config: DriftConfig,
    m: int,
    n: int,
    seed_index: int,
    runs_dir: str,
    metadata: dict | None = None,
) -> tuple[int, int, int, float]:
    """Train one ensemble and write its rows; returns (m, n, seed index, final drift)."""
    task = drift.make_task(config.train_points, config.input_dim, config.probe_points, config.seed)
    rows = drift.measure_drift(
        m,
        n,
        config.depth,
        task,
        config.learning_rate,
        config.record_steps,
        derive_seed(config.seed, m, n, seed_index),
    ).assign(m=m, n=n, seed_index=seed_index)
    storage.write_parquet(
        pa.Table.from_pandas(rows, preserve_index=False),
        storage.join(runs_dir, _run_file(m, n, seed_index)),
        storage.DRIFT_SCHEMA,
        metadata,
    )
    return m, n, seed_index, float(rows["drift"].iloc[-1])


def _run_task(
    config: DriftConfig, m: int, n: int, seed_index: int, runs_dir: str
) -> tuple[int, int, int, float]:
    """The Ray task: :func:`run_one`, recording in the file which node computed it."""
    return run_one(config, m, n, seed_index, runs_dir, metadata={"node_id": cluster.node_id()})


@dataclass(frozen=True)
class DriftResult:
    runs: pd.DataFrame
    fit: pd.DataFrame
    directory: str

    def headline(self) -> dict:
        """The exponents at the last time, their intervals, and every time's fit."""
        last = self.fit.iloc[-1]
        return {
            "exponent_m": float(last["exponent_m"]),
            "exponent_m_ci": [float(last["exponent_m_low"]), float(last["exponent_m_high"])],
            "exponent_n": float(last["exponent_n"]),
            "exponent_n_ci": [float(last["exponent_n_low"]), float(last["exponent_n_high"])],
            "time": float(last["time"]),
            "theorem": {"exponent_m": -1.0, "exponent_n": -1.0},
            "fits": self.fit.to_dict(orient="records"),
            "directory": self.directory,
        }


def fit_by_time(runs: pd.DataFrame) -> pd.DataFrame:
    """One exponent fit per recorded time after 0."""
    rows = []
    for time, group in runs[runs["steps"] > 0].groupby("time", sort=True):
        fit = drift.fit_exponents(group["m"], group["n"], group["drift"])
        rows.append(
            {
                "time": time,
                "exponent_m": fit.exponent_m,
                "exponent_m_low": fit.exponent_m_ci[0],
                "exponent_m_high": fit.exponent_m_ci[1],
                "exponent_n": fit.exponent_n,
                "exponent_n_low": fit.exponent_n_ci[0],
                "exponent_n_high": fit.exponent_n_ci[1],
                "intercept": fit.intercept,
                "r2": fit.r2,
                "runs": fit.runs,
            }
        )
    return pd.DataFrame(rows)


def run_drift(
    config: DriftConfig,
    results: str,
    experiment: str,
    workers: int,
    log: Log = print_line,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> DriftResult:
    """Theorem 1 end to end into ``<results>/<experiment>/drift``: train (resuming), fit."""
    directory = storage.join(results, experiment, "drift")
    storage.check_or_write_config(directory, config.to_json())
    runs_dir = storage.join(directory, "runs")
    # A run's file: one row per recorded step.
    steps = len(config.record_steps)
    items = [WorkItem((config, *run, runs_dir), _run_file(*run), steps) for run in config.runs()]

    def describe(item: tuple, result: Any) -> str:
        m, n, seed_index, last = result
        return f"m={m} n={n} seed {seed_index}: drift {last:.4g}"

    run_missing(
        _run_task,
        items,
        runs_dir,
        workers,
        describe,
        log,
        prefix="[drift]",
        unit="runs",
        stall_timeout_s=stall_timeout_s,
    )
    runs = pd.concat(
        [
            storage.read_parquet(storage.join(runs_dir, _run_file(*run))).to_pandas()
            for run in config.runs()
        ],
        ignore_index=True,
    ).sort_values(["m", "n", "seed_index", "steps"], ignore_index=True)
    fit = fit_by_time(runs)
    metadata = {"config": config.to_json()}
    for frame, name, schema in (
        (runs, "drift", storage.DRIFT_SCHEMA),
        (fit, "drift_fit", storage.DRIFT_FIT_SCHEMA),
    ):
        location = storage.join(directory, f"{name}.parquet")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        storage.write_parquet(table, location, schema, metadata)
    storage.write_bytes(plots.drift_png(runs, fit), storage.join(directory, "drift.png"))
    return DriftResult(runs, fit, directory)
