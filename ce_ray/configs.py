"""What determines an experiment's results: :class:`FitConfig` (fit-alpha) and
:class:`SweepConfig` (a sweep). Each is stored beside its results as JSON; a rerun into the
same experiment must match it to resume (``ce_ray.results.storage.check_or_write_config``).

A configuration checks the rules that involve several of its values (and, for library users,
the ranges the command line checks when it parses them); a violation is a ``ValueError`` with
one line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ce_ray.choices import (
    DTYPES,
    METHODS,
    PRECISIONS,
    READOUTS,
    SCHEDULERS,
    check_choice,
)
from ce_ray.presets import FIT_PRESETS, SWEEP_PRESETS
from ce_ray.theory.curves import parse_widths
from ce_ray.theory.spaces import FCSpace, Space

#: Draws per Ray task when ``--shard-size`` is not given, per sampler.
DEFAULT_SHARD_SIZE = {"batched": 500, "exact": 10000}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """Everything that determines fit-alpha's samples.

    >>> config = FitConfig.from_preset("digits-mlp-block", widths=(4, 8), samples=100)
    >>> config.method, config.shard_size
    ('exact', 10000)
    """

    preset: str
    widths: tuple[int, ...]
    samples: int
    shard_size: int
    seed: int = 0
    method: str
    readout: str = "pool"
    off_diagonal: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    memory_budget_mib: float = 256.0

    def __post_init__(self) -> None:
        _require(
            self.preset in FIT_PRESETS,
            f"unknown fit preset {self.preset!r}; valid: {', '.join(FIT_PRESETS)}",
        )
        _require(
            len(self.widths) >= 2, f"need at least two widths to fit alpha; got {list(self.widths)}"
        )
        _require(
            min(self.widths) >= 1, f"widths must be positive integers; got {list(self.widths)}"
        )
        _require(self.samples >= 2, f"samples must be >= 2 per width; got {self.samples}")
        _require(self.shard_size >= 1, f"shard_size must be >= 1; got {self.shard_size}")
        check_choice("--method", self.method, METHODS)
        _require(
            self.method == "batched" or isinstance(self.space.ntk_block(), FCSpace),
            f"--method exact samples MLP blocks only; {self.preset} is not one",
        )
        check_choice("--readout", self.readout, READOUTS)
        check_choice("--dtype", self.dtype, DTYPES)
        _require(
            self.device == "cpu" or self.device.startswith("cuda"),
            f"--device must be cpu or cuda[:N]; got {self.device!r}",
        )
        _require(
            math.isfinite(self.memory_budget_mib) and self.memory_budget_mib > 0,
            f"--memory-budget must be > 0 MiB; got {self.memory_budget_mib}",
        )

    @classmethod
    def from_preset(cls, preset: str, **settings) -> FitConfig:
        """The preset's widths, samples and sampler, overridden by ``settings`` that are not
        None; the shard size follows the sampler unless given."""
        defaults = FIT_PRESETS[preset] if preset in FIT_PRESETS else None
        _require(
            defaults is not None, f"unknown fit preset {preset!r}; valid: {', '.join(FIT_PRESETS)}"
        )
        given = {k: v for k, v in settings.items() if v is not None}
        given.setdefault("method", defaults.method)
        given.setdefault("widths", tuple(int(w) for w in parse_widths(defaults.widths)))
        given.setdefault("samples", defaults.samples)
        given.setdefault("shard_size", DEFAULT_SHARD_SIZE.get(given["method"], 1))
        return cls(preset=preset, **given)

    @property
    def space(self) -> Space:
        return FIT_PRESETS[self.preset].space

    @property
    def memory_budget(self) -> int:
        """The sampling chunk's budget in bytes."""
        return int(self.memory_budget_mib * 2**20)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_json(cls, data: dict) -> FitConfig:
        return cls(**{**data, "widths": tuple(data["widths"])})


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Everything that decides which trials of a sweep exist and how they train.

    ``seed`` is the experiment seed; ``seeds`` how many seed indices (0..seeds-1) each point
    trains; a trial's own seed derives from (seed, n, m, seed index).
    """

    preset: str
    formulation: str
    alpha: float
    points: tuple[tuple[int, int], ...]  # (n, m) of each trained point
    seeds: int
    epochs: int
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    scheduler: str = "fifo"
    seed: int = 0
    data_root: str = "data"
    precision: str = "fp32"  # autocast: fp32 | bf16 | fp16 (ce_ray.worker.pipeline)
    channels_last: bool = False
    compile: bool = False
    loader_workers: int = 0  # DataLoader processes per training worker
    pack_seeds: bool = False  # a point's seeds train as one model in one trial

    def __post_init__(self) -> None:
        _require(
            self.preset in SWEEP_PRESETS,
            f"unknown sweep preset {self.preset!r}; valid: {', '.join(SWEEP_PRESETS)}",
        )
        check_choice("--scheduler", self.scheduler, SCHEDULERS)
        _require(
            math.isfinite(self.alpha) and self.alpha > 0,
            f"alpha must be a finite number > 0; got {self.alpha}",
        )
        check_choice("--precision", self.precision, PRECISIONS)
        _require(
            not (self.pack_seeds and self.precision == "fp16"),
            "--pack-seeds cannot train with --precision fp16: one loss scaler would skip every "
            "seed's step when one seed overflows; use bf16 or --no-pack-seeds",
        )
        _require(
            len(self.points) >= 1 and self.seeds >= 1 and self.epochs >= 1,
            "a sweep needs at least one point, one seed and one epoch",
        )

    @property
    def trials(self) -> int:
        return len(self.points) * (1 if self.pack_seeds else self.seeds)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "points": [list(p) for p in self.points]}
