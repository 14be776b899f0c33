"""Fig. 2 / Lemma 1 as a Ray job: member kernels on the unit circle sampled as Ray tasks, one
per (width, block of members), then the ensemble kernels, their distance to the NMK against m,
and the NMK's dependence on the width.

Each block's weights derive from (experiment seed, width, block index) alone, so a rerun skips
blocks already on storage and a retried task rewrites identical bytes. Layout of
``<results>/<experiment>/nmk/``: ``config.json``, ``shards/``, ``nmk.parquet`` (one row per
(n, m, draw, gamma, entry)), ``nmk_summary.parquet`` (per (n, m, entry)), ``nmk_fit.parquet``
(per (n, entry): the slope against m and the gap to the wide model's NMK) and ``nmk.png``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
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
from ce_ray.theory import nmk
from ce_ray.theory.seeds import derive_seed

# Identities of the draws: member weights (with width and block) and the bootstrap.
MEMBERS_STREAM, BOOTSTRAP_STREAM = 0x4E4D4B, 0xB007
# The width at which a task holds ``block_members`` members.
BLOCK_REFERENCE_WIDTH = 256


@dataclass(frozen=True, kw_only=True)
class NMKConfig:
    """Everything that determines the samples and the summary.

    Attributes:
        depth: L, weight layers of the MLP (Fig. 2: 4).
        widths: member widths n whose ensembles are studied (Fig. 2: 1000).
        wide_width: the much wider model whose NMK is the reference (Fig. 2: 100x wider).
        multiplicities: the m of the ensembles; ``max(multiplicities) * draws`` members are
            drawn per width and cut into ensembles of each m.
        draws: ensembles at the largest m.
        wide_members: members drawn at ``wide_width`` (its NMK is their mean).
        gammas: points on [-pi, pi].
        block_members: members per Ray task at width 256; a task's weights grow as
            members x n^2, so width n takes blocks of ``block_members * (256 / n)^2`` members
            (at least 1): about 270 MB of float32 weights per task at L = 4 by default.
    """

    depth: int = 4
    widths: tuple[int, ...] = (16, 64, 256)
    wide_width: int = 2048
    multiplicities: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    draws: int = 32
    wide_members: int = 256
    gammas: int = 33
    block_members: int = 512
    seed: int = 0
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "depth must be >= 2": self.depth >= 2,
            "widths must be positive": min(self.widths) >= 1,
            "wide_width must exceed every width": self.wide_width > max(self.widths),
            "multiplicities must be at least two values >= 1": len(self.multiplicities) >= 2
            and min(self.multiplicities) >= 1,
            "draws must be >= 2": self.draws >= 2,
            "gammas must be >= 2": self.gammas >= 2,
            "block_members and wide_members must be >= 1": min(
                self.block_members, self.wide_members
            )
            >= 1,
            "bootstrap must be >= 1": self.bootstrap >= 1,
            f"widths and wide_width must be at most {limits.MAX_WIDTH}": max(
                *self.widths, self.wide_width
            )
            <= limits.MAX_WIDTH,
            f"gammas must be at most {limits.MAX_GAMMAS}": self.gammas <= limits.MAX_GAMMAS,
            f"members per width (max multiplicity x draws, wide_members) must be at most "
            f"{limits.MAX_MEMBERS:,}": max(self.members(w) for w in (*self.widths, self.wide_width))
            <= limits.MAX_MEMBERS,
        }
        for message, holds in checks.items():
            if not holds:
                raise ValueError(f"nmk settings: {message}; got {self.to_json()}")
        tasks = len(self.blocks())
        if tasks > limits.MAX_TASKS:
            raise ValueError(
                f"nmk settings plan {tasks:,} Ray tasks; at most {limits.MAX_TASKS:,} "
                "(raise --block-members)"
            )

    @property
    def gamma_grid(self) -> np.ndarray:
        return np.linspace(-math.pi, math.pi, self.gammas)

    def members(self, width: int) -> int:
        return (
            self.wide_members if width == self.wide_width else max(self.multiplicities) * self.draws
        )

    def block_size(self, width: int) -> int:
        return max(1, self.block_members * BLOCK_REFERENCE_WIDTH**2 // width**2)

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """(width, block index, first member, members) of every task."""
        plan = []
        for width in (*self.widths, self.wide_width):
            size, total = self.block_size(width), self.members(width)
            for index, start in enumerate(range(0, total, size)):
                plan.append((width, index, start, min(size, total - start)))
        return plan

    def to_json(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def _block_file(width: int, index: int) -> str:
    return f"w{width:06d}-b{index:05d}.parquet"


def sample_block(
    config: NMKConfig,
    width: int,
    index: int,
    start: int,
    members: int,
    shard_dir: str,
    metadata: dict | None = None,
) -> tuple[int, int, int]:
    """``members`` member kernels at ``width`` (members ``start``, ...), written as one Parquet
    file with ``metadata``. Pure PyTorch and storage; Ray runs it through :func:`_block_task`."""
    seed = derive_seed(config.seed, width, index, MEMBERS_STREAM)
    kernels = nmk.member_kernels_on_circle(config.depth, width, members, config.gamma_grid, seed)
    gammas = config.gamma_grid
    frames = [
        pd.DataFrame(
            {
                "width": width,
                "member": np.repeat(np.arange(start, start + members), len(gammas)),
                "gamma": np.tile(gammas, members),
                "entry": entry,
                "k": values.ravel(),
            }
        )
        for entry, values in kernels.items()
    ]
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    storage.write_parquet(
        table,
        storage.join(shard_dir, _block_file(width, index)),
        storage.NMK_SHARD_SCHEMA,
        metadata,
    )
    return width, index, members


def _block_task(
    config: NMKConfig, width: int, index: int, start: int, members: int, shard_dir: str
) -> tuple[int, int, int]:
    """The Ray task: :func:`sample_block`, recording in the file which node computed it."""
    metadata = {"node_id": cluster.node_id()}
    return sample_block(config, width, index, start, members, shard_dir, metadata)


def sample_all_blocks(
    config: NMKConfig,
    directory: str,
    workers: int,
    log: Log = print_line,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> int:
    """Every block not yet whole on storage, as Ray tasks; returns how many ran."""
    shard_dir = storage.join(directory, "shards")
    # A block's file: one row per (member, gamma, entry), two entries.
    items = [
        WorkItem((config, *block, shard_dir), _block_file(*block[:2]), block[3] * config.gammas * 2)
        for block in config.blocks()
    ]

    def describe(item: tuple, result: Any) -> str:
        width, index, members = result
        return f"width {width} block {index} ({members} members)"

    ran = run_missing(
        _block_task,
        items,
        shard_dir,
        workers,
        describe,
        log,
        prefix="[nmk]",
        unit="blocks",
        stall_timeout_s=stall_timeout_s,
    )
    return len(ran)


def _member_kernels(shard_dir: str, width: int, gammas: int) -> dict[str, np.ndarray]:
    """``{entry: (members, G)}`` of one width, members in order."""
    names = [n for n in storage.list_files(shard_dir, ".parquet") if n.startswith(f"w{width:06d}-")]
    frame = pa.concat_tables(
        [storage.read_parquet(storage.join(shard_dir, n)) for n in names]
    ).to_pandas()
    frame = frame.sort_values(["entry", "member", "gamma"])
    return {
        entry: group["k"].to_numpy().reshape(-1, gammas)
        for entry, group in frame.groupby("entry", sort=True)
    }


@dataclass(frozen=True)
class NMKResult:
    """The three tables (see the module docstring) and where they are."""

    kernels: pd.DataFrame
    summary: pd.DataFrame
    fit: pd.DataFrame
    directory: str

    def headline(self) -> dict:
        """The Fig. 2 figures: the slope at the largest width for K(x_0, x_gamma), its
        interval, and the largest relative gap between an NMK and the wide model's."""
        widest = self.fit[
            (self.fit["n"] == self.fit["n"].max()) & (self.fit["entry"] == "off_diagonal")
        ].iloc[0]
        worst = self.fit.loc[self.fit["width_gap"].idxmax()]
        return {
            "slope_m": float(widest["slope_m"]),
            "slope_m_ci": [float(widest["ci_low"]), float(widest["ci_high"])],
            "slope_m_at_width": int(widest["n"]),
            "width_gap": float(worst["width_gap"]),
            "width_gap_se": float(worst["width_gap_se"]),
            "width_gap_at": [int(worst["n"]), str(worst["entry"])],
            "fits": self.fit.to_dict(orient="records"),
            "directory": self.directory,
        }


def summarise(config: NMKConfig, directory: str) -> NMKResult:
    """Ensembles of every m from each width's members; distances to that width's NMK; the
    slope against m and the gap to the wide model's NMK. Writes the tables and the plot."""
    shard_dir = storage.join(directory, "shards")
    gammas = config.gamma_grid
    wide = _member_kernels(shard_dir, config.wide_width, len(gammas))
    rows, distances, gaps = [], [], []
    for width in config.widths:
        members = _member_kernels(shard_dir, width, len(gammas))
        for entry, kernels in members.items():
            mean_kernel = kernels.mean(axis=0)
            gaps.append(_gap_row(width, entry, kernels, wide[entry]))
            for m in config.multiplicities:
                ensembles = nmk.ensemble_kernels(kernels, m)
                draws = np.arange(len(ensembles))
                rows.append(
                    pd.DataFrame(
                        {
                            "n": width,
                            "m": m,
                            "draw": np.repeat(draws, len(gammas)),
                            "gamma": np.tile(gammas, len(draws)),
                            "entry": entry,
                            "kernel": ensembles.ravel(),
                            "nmk": np.tile(mean_kernel, len(draws)),
                        }
                    )
                )
                distances.append(
                    pd.DataFrame(
                        {
                            "n": width,
                            "m": m,
                            "entry": entry,
                            "draw": draws,
                            "squared_distance": nmk.distance_to_nmk(kernels, m),
                        }
                    )
                )
    kernels_frame = pd.concat(rows, ignore_index=True)
    distance_frame = pd.concat(distances, ignore_index=True)
    summary = (
        distance_frame.groupby(["n", "m", "entry"], sort=True)["squared_distance"]
        .agg(mean_squared_distance="mean", se="sem", draws="count")
        .reset_index()
    )
    rng = np.random.default_rng(derive_seed(config.seed, BOOTSTRAP_STREAM))
    fit = nmk.convergence_summary(distance_frame, config.bootstrap, rng)
    fit = fit.merge(pd.DataFrame(gaps), on=["n", "entry"])
    _write(directory, kernels_frame, summary, fit, config, wide)
    return NMKResult(kernels_frame, summary, fit, directory)


def _gap_row(width: int, entry: str, kernels: np.ndarray, wide: np.ndarray) -> dict:
    """The relative gap between the NMK at ``width`` and the wide model's, and its Monte-Carlo
    standard error (delta method: the two means' standard errors over gamma, combined)."""
    nmk_n, nmk_wide = kernels.mean(axis=0), wide.mean(axis=0)
    variance = kernels.var(axis=0, ddof=1) / len(kernels) + wide.var(axis=0, ddof=1) / len(wide)
    se = math.sqrt(variance.sum()) / np.linalg.norm(nmk_wide)
    return {
        "n": width,
        "entry": entry,
        "width_gap": nmk.relative_gap(nmk_n, nmk_wide),
        "width_gap_se": se,
    }


def _write(
    directory: str,
    kernels_frame: pd.DataFrame,
    summary: pd.DataFrame,
    fit: pd.DataFrame,
    config: NMKConfig,
    wide: dict[str, np.ndarray],
) -> None:
    for frame, name, schema in (
        (kernels_frame, "nmk", storage.NMK_SCHEMA),
        (summary, "nmk_summary", storage.NMK_SUMMARY_SCHEMA),
        (fit, "nmk_fit", storage.NMK_FIT_SCHEMA),
    ):
        location = storage.join(directory, f"{name}.parquet")
        storage.write_parquet(
            pa.Table.from_pandas(frame, preserve_index=False),
            location,
            schema,
            {"config": config.to_json()},
        )
    wide_nmk = {entry: values.mean(axis=0) for entry, values in wide.items()}
    png = plots.nmk_png(kernels_frame, summary, fit, wide_nmk, config.gamma_grid, config.wide_width)
    storage.write_bytes(png, storage.join(directory, "nmk.png"))


def run_nmk(
    config: NMKConfig,
    results: str,
    experiment: str,
    workers: int,
    log: Log = print_line,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> NMKResult:
    """Fig. 2 end to end into ``<results>/<experiment>/nmk``: sample (resuming), summarise."""
    directory = storage.join(results, experiment, "nmk")
    storage.check_or_write_config(directory, config.to_json())
    sample_all_blocks(config, directory, workers, log, stall_timeout_s)
    return summarise(config, directory)
