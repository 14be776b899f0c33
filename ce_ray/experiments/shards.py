"""fit-alpha's unit of work: a shard of NTK draws at one width, and its Parquet file.

The (width, sample range) grid is cut into shards of ``shard_size`` draws. A shard's weights
come from ``derive_seed(experiment seed, width, shard index)`` alone, so its samples do not
depend on how many workers run, in which order, or how often a task is retried; its file,
``shards/w<width>-s<shard>.parquet``, is written atomically. Pure PyTorch and storage: the Ray
layer (``ce_ray.experiments.fit_alpha``) only schedules :func:`sample_shard`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from ce_ray.configs import FitConfig
from ce_ray.results import storage
from ce_ray.theory.seeds import derive_seed


@dataclass(frozen=True)
class Shard:
    """Draws ``start..stop-1`` of width ``width``; ``index`` numbers it within the width."""

    width: int
    index: int
    start: int
    stop: int

    @property
    def filename(self) -> str:
        return f"w{self.width:06d}-s{self.index:05d}.parquet"


def plan_shards(config: FitConfig) -> list[Shard]:
    """Every shard of the experiment, width by width.

    >>> config = FitConfig.from_preset("digits-mlp-block", widths=(4, 8), samples=5, shard_size=2)
    >>> [(s.width, s.start, s.stop) for s in plan_shards(config)][:3]
    [(4, 0, 2), (4, 2, 4), (4, 4, 5)]
    """
    return [
        Shard(width, i, start, min(start + config.shard_size, config.samples))
        for width in config.widths
        for i, start in enumerate(range(0, config.samples, config.shard_size))
    ]


def sample_shard(
    config: FitConfig, shard: Shard, shard_dir: str, metadata: dict | None = None
) -> float:
    """Sample one shard and write its file (atomically), with ``metadata`` in the file's
    schema metadata. Returns the seconds it took."""
    started = time.perf_counter()
    dtype = getattr(torch, config.dtype)
    seed = derive_seed(config.seed, shard.width, shard.index)
    space = config.space
    inputs = space.ntk_inputs(config.seed, config.off_diagonal, config.device, dtype)
    k = space.sample_ntk(
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
    location = storage.join(shard_dir, shard.filename)
    storage.write_parquet(table, location, storage.SHARD_SCHEMA, metadata)
    return time.perf_counter() - started


def read_width(shard_dir: str, width: int) -> np.ndarray:
    """All samples of one width, in sample order."""
    prefix = f"w{width:06d}-"
    names = [n for n in storage.list_files(shard_dir, ".parquet") if n.startswith(prefix)]
    tables = [storage.read_parquet(storage.join(shard_dir, n)) for n in names]
    if not tables:
        return np.empty(0)
    return pa.concat_tables(tables).to_pandas().sort_values("sample")["k"].to_numpy()
