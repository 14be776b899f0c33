"""Fit alpha (Algorithm 1) with the NTK sampling sharded as Ray tasks.

The (width, sample range) grid is cut into shards of ``shard_size`` draws. A shard's weights
come from a seed derived from (experiment seed, width, shard index) alone, so the samples do
not depend on how many workers run, in which order, or how often a task is retried. Each
task writes its shard to ``shards/w<width>-s<shard>.parquet`` atomically; a rerun of the same
experiment skips shards already on disk, and a retried task rewrites identical bytes. Ray's
task retries (``max_retries``) handle a worker that dies.

Layout of ``<results>/<experiment>/fit_alpha/``: ``config.json``, ``shards/``,
``moments.parquet``, ``alpha.parquet`` (configuration, seed and library versions in its
metadata) and ``alpha.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ce_ray import cluster, io
from ce_ray.alpha import bootstrap_interval, bootstrap_log_ratios, fit_line, width_moments
from ce_ray.curves import parse_widths
from ce_ray.ntk import METHODS, READOUTS, chunk_size, derive_seed, ntk_inputs, sample_ntk
from ce_ray.spaces import BottleneckSpace, FCSpace, Space

# Fit presets: the block whose alpha is fitted, default widths, sampler and samples per width.
FIT_PRESETS: dict[str, dict] = {
    "bottleneck": {
        "space": BottleneckSpace(in_channels=256, out_channels=256, spatial=8),
        "widths": "2,4,8,16,32,64,128",
        "method": "batched",
        "samples": 2000,
        "description": "the Fig. 5 bottleneck, n_in = n_out = 256 on 8x8 inputs",
    },
    "mlp": {
        "space": FCSpace(input_dim=784, depth=6, num_classes=1),
        "widths": "8,16,32,64,128,256,512",
        "method": "exact",
        "samples": 20000,
        "description": "the Fig. 3 MLP, L = 6, n0 = 784",
    },
    "digits-mlp": {
        "space": FCSpace(input_dim=64, depth=4, num_classes=1),
        "widths": "4,8,16,32,64,128",
        "method": "exact",
        "samples": 20000,
        "description": "the digits-mlp sweep's MLP, L = 4, n0 = 64",
    },
    "synthetic-mlp": {
        "space": FCSpace(input_dim=16, depth=3, num_classes=1),
        "widths": "4,8,16,32",
        "method": "exact",
        "samples": 4000,
        "description": "the synthetic-mlp test sweep's MLP, L = 3, n0 = 16",
    },
}
DEFAULT_SHARD_SIZE = {"batched": 500, "exact": 10000}
DTYPES = {"float32": 4, "float64": 8}


@dataclass(frozen=True)
class FitConfig:
    """Everything that determines the samples; a rerun must match it to resume."""

    preset: str
    widths: tuple[int, ...]
    samples: int
    shard_size: int
    seed: int
    method: str
    readout: str
    off_diagonal: bool
    device: str
    dtype: str
    memory_budget_mib: float

    def __post_init__(self) -> None:
        if self.preset not in FIT_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(FIT_PRESETS)}")
        if len(self.widths) < 2:
            raise ValueError(f"need at least two widths to fit alpha; got {list(self.widths)}")
        if min(self.widths) < 1:
            raise ValueError(f"widths must be positive integers; got {list(self.widths)}")
        if self.samples < 2:
            raise ValueError(f"--samples must be >= 2 per width; got {self.samples}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1; got {self.shard_size}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method == "exact" and not isinstance(self.space.ntk_block(), FCSpace):
            raise ValueError(f"--method exact supports the mlp preset only; got {self.preset}")
        if self.readout not in READOUTS:
            raise ValueError(
                f"--readout must be one of {', '.join(READOUTS)}; got {self.readout!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be cpu or cuda[:N]; got {self.device!r}")
        if not (math.isfinite(self.memory_budget_mib) and self.memory_budget_mib > 0):
            raise ValueError(f"--memory-budget must be > 0 MiB; got {self.memory_budget_mib}")

    @property
    def space(self) -> Space:
        return FIT_PRESETS[self.preset]["space"]

    @property
    def memory_budget(self) -> int:
        return int(self.memory_budget_mib * 2**20)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_json(cls, data: dict) -> FitConfig:
        return cls(**{**data, "widths": tuple(data["widths"])})


@dataclass(frozen=True)
class Shard:
    width: int
    index: int
    start: int  # first sample index within the width
    stop: int

    @property
    def filename(self) -> str:
        return f"w{self.width:06d}-s{self.index:05d}.parquet"


def plan_shards(config: FitConfig) -> list[Shard]:
    return [
        Shard(width, i, start, min(start + config.shard_size, config.samples))
        for width in config.widths
        for i, start in enumerate(range(0, config.samples, config.shard_size))
    ]


def run_shard(
    config: FitConfig, shard: Shard, shard_dir: str, metadata: dict | None = None
) -> tuple[Shard, float]:
    """Sample one shard and write it (atomically), with ``metadata`` in the file's schema
    metadata. Pure PyTorch + Parquet; Ray calls it through :func:`_shard_task`."""
    import torch  # noqa: PLC0415 -- keeps the driver's import light

    started = time.perf_counter()
    dtype = getattr(torch, config.dtype)
    block = config.space.ntk_block()
    inputs = ntk_inputs(block, config.seed, config.off_diagonal, config.device, dtype)
    seed = derive_seed(config.seed, shard.width, shard.index)
    k = sample_ntk(
        config.space,
        shard.width,
        shard.stop - shard.start,
        seed,
        inputs,
        config.method,
        config.memory_budget,
        config.readout,
    )
    if not np.all(np.isfinite(k)):
        raise ValueError(f"non-finite NTK entry at width {shard.width}, shard {shard.index}")
    table = pa.table(
        {
            "width": np.full(k.size, shard.width),
            "shard": np.full(k.size, shard.index),
            "sample": np.arange(shard.start, shard.stop),
            "k": k,
        }
    )
    io.write_parquet(table, io.join(shard_dir, shard.filename), io.SHARD_SCHEMA, metadata)
    return shard, time.perf_counter() - started


def _shard_task(config: FitConfig, shard: Shard, shard_dir: str) -> tuple[Shard, float]:
    """The Ray task: :func:`run_shard`, recording in the file which node computed it."""
    return run_shard(config, shard, shard_dir, {"node_id": cluster.node_id()})


@dataclass(frozen=True)
class FitResult:
    alpha: float
    alpha_se: float
    ci_low: float
    ci_high: float
    ci_level: float
    intercept: float
    r2: float
    moments: pd.DataFrame
    directory: str

    def to_json(self) -> dict:
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "moments"}
        record["moments"] = self.moments.to_dict(orient="records")
        return record


def _whole(shard_dir: str, shard: Shard, present: set[str], log) -> bool:
    """Whether the shard's file is on disk and whole; a damaged one is deleted (recomputed)."""
    if shard.filename not in present:
        return False
    location = io.join(shard_dir, shard.filename)
    if io.parquet_rows(location) == shard.stop - shard.start:
        return True
    log(f"[fit-alpha] {shard.filename} is damaged (not a whole shard): recomputing it")
    io.delete(location)
    return False


def sample_all_shards(
    config: FitConfig, directory: str, workers: int, log=print, max_retries: int = 3
) -> list[tuple[Shard, float]]:
    """Run every shard not yet on disk as a Ray task, at most ``workers`` at a time.

    Returns the shards this call ran, each with the seconds its task spent in
    :func:`run_shard`.
    """
    import ray  # noqa: PLC0415

    cluster.init_ray()
    shard_dir = io.join(directory, "shards")
    if removed := io.remove_temporaries(shard_dir):  # writes killed half-way, before a resume
        log(f"[fit-alpha] removed {removed} unfinished write(s) in {shard_dir}")
    present = set(io.list_files(shard_dir, ".parquet"))
    todo = [s for s in plan_shards(config) if not _whole(shard_dir, s, present, log)]
    total = len(plan_shards(config))
    if total > len(todo):
        log(f"[fit-alpha] resuming: {total - len(todo)}/{total} shards already on disk")
    resources = {"num_cpus": 1, "num_gpus": 1 if config.device.startswith("cuda") else 0}
    task = ray.remote(_shard_task).options(max_retries=max_retries, **resources)
    pending, queue, finished = [], list(todo), total - len(todo)
    ran: list[tuple[Shard, float]] = []
    started = time.perf_counter()
    while queue or pending:
        while queue and len(pending) < workers:
            pending.append(task.remote(config, queue.pop(0), shard_dir))
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            shard, seconds = ray.get(ready[0])
        except ray.exceptions.RayTaskError as error:
            for ref in pending:
                ray.cancel(ref)
            cause = error.cause if isinstance(error.cause, ValueError) else error
            raise ValueError(str(cause).strip().splitlines()[-1]) from None
        finished += 1
        ran.append((shard, seconds))
        log(
            f"[fit-alpha] {finished}/{total} shards: width {shard.width} shard {shard.index} "
            f"({shard.stop - shard.start} samples, {seconds:.2f}s; "
            f"{time.perf_counter() - started:.1f}s elapsed)"
        )
    return ran


def read_width(directory: str, width: int) -> np.ndarray:
    """All samples of one width, in sample order."""
    shard_dir = io.join(directory, "shards")
    names = io.list_files(shard_dir, ".parquet")
    tables = [
        io.read_parquet(io.join(shard_dir, n)) for n in names if n.startswith(f"w{width:06d}-")
    ]
    frame = pa.concat_tables(tables).to_pandas().sort_values("sample")
    return frame["k"].to_numpy()


def summarise(
    config: FitConfig,
    directory: str,
    experiment: str,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    intercept: bool = False,
) -> FitResult:
    """Moments per width, the WLS fit and its bootstrap interval; writes the output files.

    Holds one width's samples at a time.
    """
    rows, replicates = [], []
    for width in config.widths:
        k = read_width(directory, width)
        if k.size != config.samples:
            raise ValueError(
                f"width {width} has {k.size} samples on disk; {config.samples} expected"
            )
        moments = width_moments(k)
        if not (moments.mean > 0 and np.isfinite(moments.log_ratio)):
            raise ValueError(f"width {width}: mean NTK entry {moments.mean} gives no log-ratio")
        rows.append({"width": width, **dataclasses.asdict(moments)})
        rng = np.random.default_rng(derive_seed(config.seed, width, 0xB007))
        replicates.append(bootstrap_log_ratios(k, bootstrap, rng))
    frame = pd.DataFrame(rows)
    frame.insert(1, "fan_in_sum", config.space.fan_in_sum(frame["width"].to_numpy()))
    se = frame["se_log_ratio"].to_numpy()
    weights = 1.0 / np.maximum(se, 1e-12) ** 2
    fit = fit_line(frame["fan_in_sum"], frame["log_ratio"], weights, intercept)
    frame["fitted_log_ratio"] = fit.fitted
    frame["residual"] = fit.residuals
    low, high = bootstrap_interval(
        frame["fan_in_sum"].to_numpy(), np.stack(replicates, axis=1), weights, intercept, ci_level
    )
    result = FitResult(
        fit.alpha, fit.alpha_se, low, high, ci_level, fit.intercept, fit.r2, frame, directory
    )
    metadata = {
        "config": config.to_json(),
        "seed": config.seed,
        "space": {"name": config.space.name, **config.space.options()},
        "bootstrap": bootstrap,
        "versions": io.library_versions(),
    }
    io.write_parquet(
        pa.Table.from_pandas(frame), io.join(directory, "moments.parquet"), io.MOMENTS_SCHEMA
    )
    alpha_row = {
        "experiment": experiment,
        "space": config.space.name,
        "alpha": fit.alpha,
        "alpha_se": fit.alpha_se,
        "ci_low": low,
        "ci_high": high,
        "ci_level": ci_level,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "widths": len(config.widths),
        "samples_per_width": config.samples,
        "seed": config.seed,
    }
    io.write_parquet(
        pa.Table.from_pylist([alpha_row]),
        io.join(directory, "alpha.parquet"),
        io.ALPHA_SCHEMA,
        metadata,
    )
    io.write_bytes(plot_fit(result), io.join(directory, "alpha.png"))
    return result


def plot_fit(result: FitResult) -> bytes:
    """PNG of log(E[K^2]/E[K]^2) against S(n) with error bars and the fitted line."""
    import io as stdio  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    frame = result.moments
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.errorbar(
        frame["fan_in_sum"], frame["log_ratio"], yerr=1.96 * frame["se_log_ratio"],
        fmt="o", capsize=3, label="Monte Carlo (95% error bars)",
    )  # fmt: skip
    s = np.linspace(0, frame["fan_in_sum"].max() * 1.05, 100)
    axes.plot(
        s, result.intercept + result.alpha * s,
        label=f"alpha = {result.alpha:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}]",
    )  # fmt: skip
    for _, row in frame.iterrows():
        axes.annotate(f"n={int(row['width'])}", (row["fan_in_sum"], row["log_ratio"]), fontsize=7)
    axes.set_xlabel("S(n) = sum of 1 / fan-in")
    axes.set_ylabel("log(E[K^2] / E[K]^2)")
    axes.set_title(f"Fit of Eq. 9, R^2 = {result.r2:.4f}")
    axes.legend()
    buffer = stdio.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def check_settings(config: FitConfig, workers: int | None, bootstrap: int) -> None:
    """Reject settings that cannot run, before anything is written or any Ray work starts."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1; got {workers}")
    if bootstrap < 1:
        raise ValueError(f"--bootstrap must be >= 1; got {bootstrap}")
    for width in config.widths:  # a chunk must hold one sample at every width
        chunk_size(
            config.space.ntk_block(),
            width,
            2 if config.off_diagonal else 1,
            config.method,
            config.memory_budget,
            DTYPES[config.dtype],
        )


def fit_alpha(
    config: FitConfig,
    results: str,
    experiment: str,
    workers: int,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    intercept: bool = False,
    log=print,
) -> FitResult:
    """Algorithm 1 end to end: sample (resuming), then fit and write the outputs."""
    check_settings(config, workers, bootstrap)
    directory = io.join(results, experiment, "fit_alpha")
    io.check_or_write_config(directory, config.to_json())
    sample_all_shards(config, directory, workers, log)
    return summarise(config, directory, experiment, bootstrap, ci_level, intercept)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(FIT_PRESETS), default="bottleneck")
    parser.add_argument("--widths", help="LO:HI[:STEP] or a comma list (default: the preset's)")
    parser.add_argument("--samples", type=int, help="T, draws per width (default: the preset's)")
    parser.add_argument("--workers", type=int, help="concurrent tasks (default: cluster CPUs)")
    parser.add_argument("--experiment", help="experiment name (default: the preset)")
    parser.add_argument(
        "--results",
        default=os.environ.get("CE_RAY_RESULTS", "results"),
        help="results directory or URI; shared storage on a multi-node cluster "
        "(default: $CE_RAY_RESULTS or ./results)",
    )
    parser.add_argument("--seed", type=int, default=0, help="experiment seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--method", choices=METHODS, help="sampler (default: the preset's)")
    parser.add_argument(
        "--readout", choices=READOUTS, default="pool", help="conv read-out (default pool)"
    )
    parser.add_argument("--off-diagonal", action="store_true", help="sample K(x1, x2)")
    parser.add_argument("--shard-size", type=int, help="draws per Ray task")
    parser.add_argument("--memory-budget", type=float, default=256.0, help="MiB per chunk")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--intercept", action="store_true", help="fit an intercept too")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def config_from_args(args: argparse.Namespace) -> FitConfig:
    preset = FIT_PRESETS[args.preset]
    method = args.method or preset["method"]
    return FitConfig(
        preset=args.preset,
        widths=tuple(int(w) for w in parse_widths(args.widths or preset["widths"])),
        samples=args.samples if args.samples is not None else preset["samples"],
        shard_size=args.shard_size or DEFAULT_SHARD_SIZE[method],
        seed=args.seed,
        method=method,
        readout=args.readout,
        off_diagonal=args.off_diagonal,
        device=args.device,
        dtype=args.dtype,
        memory_budget_mib=args.memory_budget,
    )


def run(args: argparse.Namespace) -> int:
    """The fit-alpha command: ``jobs/fit_alpha.py`` and ``ce-ray fit-alpha`` both call it."""
    config = config_from_args(args)
    experiment = args.experiment or args.preset
    results = io.resolve(args.results)
    check_settings(config, args.workers, args.bootstrap)
    io.check_writable(results)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    cluster.init_ray()
    workers = args.workers
    if workers is None:
        workers = cluster.default_workers()
    log(
        f"[fit-alpha] {args.preset}: {FIT_PRESETS[args.preset]['description']}; "
        f"widths {list(config.widths)}, {config.samples} samples each, {config.method} sampler, "
        f"{workers} workers -> {io.join(results, experiment, 'fit_alpha')}"
    )
    result = fit_alpha(
        config, results, experiment, workers, args.bootstrap, intercept=args.intercept, log=log
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.moments.to_string(index=False, float_format="{:.5g}".format))
    summary = (
        f"alpha = {result.alpha:.4f} ({result.ci_level:.0%} CI {result.ci_low:.4f}..."
        f"{result.ci_high:.4f}), R^2 = {result.r2:.4f}, {len(config.widths)} widths x "
        f"{config.samples} samples -> {result.directory}"
    )
    log(summary)
    return 0
