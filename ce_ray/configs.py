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
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from ce_ray import limits
from ce_ray.choices import (
    DTYPES,
    FORMULATIONS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    READOUTS,
    SCHEDULERS,
    SCHEDULES,
    Dtype,
    Formulation,
    Method,
    Optimizer,
    Precision,
    Readout,
    Schedule,
    Scheduler,
    check_choice,
)
from ce_ray.own_data import DEFAULT_VALIDATION_FRACTION, DataSpec
from ce_ray.presets import (
    DATASET_EXAMPLES,
    FIT_PRESETS,
    RECIPE_FIELDS,
    SWEEP_PRESETS,
    Recipe,
    SweepPreset,
)
from ce_ray.theory.by_name import your_member
from ce_ray.theory.curves import Curve, check_alpha, curve, parse_widths, select_points
from ce_ray.theory.spaces import CifarResNeXt29Space, FCSpace, Space

#: Draws per Ray task when ``--shard-size`` is not given, per sampler.
DEFAULT_SHARD_SIZE = {"batched": 500, "exact": 10000}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


#: fit-alpha's defaults for your own member (a preset's come from the preset).
MEMBER_FIT_DEFAULTS: dict[str, Any] = {
    "widths": (4, 8, 16, 32, 64),
    "samples": 2000,
    "shard_size": 500,
    "method": "batched",
}


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
    method: Method
    readout: Readout = "pool"
    off_diagonal: bool = False
    device: str = "cpu"
    dtype: Dtype = "float32"
    memory_budget_mib: float = 256.0
    #: Your own member's space (``ce_ray.theory.by_name.make_space``) instead of the preset's
    #: block; then ``preset`` is "".
    member: Space | None = None

    def __post_init__(self) -> None:
        _require(
            self.member is not None or self.preset in FIT_PRESETS,
            f"unknown fit preset {self.preset!r}; valid: {', '.join(FIT_PRESETS)}",
        )
        _require(
            len(self.widths) >= 2, f"need at least two widths to fit alpha; got {list(self.widths)}"
        )
        _require(
            min(self.widths) >= 1 and max(self.widths) <= limits.MAX_WIDTH,
            f"widths must be integers from 1 to {limits.MAX_WIDTH}; got {list(self.widths)}",
        )
        _require(
            2 <= self.samples <= limits.MAX_SAMPLES,
            f"--samples must be from 2 to {limits.MAX_SAMPLES:,} per width; got {self.samples}",
        )
        _require(self.shard_size >= 1, f"--shard-size must be >= 1; got {self.shard_size}")
        _require(
            self.tasks <= limits.MAX_TASKS,
            f"--samples {self.samples} in shards of --shard-size {self.shard_size} at "
            f"{len(self.widths)} widths plan {self.tasks:,} Ray tasks; at most "
            f"{limits.MAX_TASKS:,} (raise --shard-size)",
        )
        check_choice("--method", self.method, METHODS)
        _require(
            self.method in self.space.ntk_methods,
            f"--method {self.method} samples MLP blocks only; "
            f"{self.preset or self.space.member_name} is not one",
        )
        check_choice("--readout", self.readout, READOUTS)
        check_choice("--dtype", self.dtype, DTYPES)
        _require(
            re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device) is not None,
            f"--device must be cpu, cuda or cuda:N; got {self.device!r}",
        )
        half_memory_mib = limits.machine_memory_bytes() / 2**21
        _require(
            math.isfinite(self.memory_budget_mib) and 0 < self.memory_budget_mib <= half_memory_mib,
            f"--memory-budget must be > 0 and at most half this machine's memory "
            f"({half_memory_mib:,.0f} MiB); got {self.memory_budget_mib:g}",
        )

    @classmethod
    def from_preset(cls, preset: str, **settings: Any) -> FitConfig:
        """The preset's widths, samples and sampler, overridden by ``settings`` that are not
        None; the shard size follows the sampler unless given."""
        _require(
            preset in FIT_PRESETS, f"unknown fit preset {preset!r}; valid: {', '.join(FIT_PRESETS)}"
        )
        defaults = FIT_PRESETS[preset]
        given = {k: v for k, v in settings.items() if v is not None}
        given.setdefault("method", defaults.method)
        given.setdefault("widths", tuple(int(w) for w in parse_widths(defaults.widths)))
        given.setdefault("samples", defaults.samples)
        given.setdefault("shard_size", DEFAULT_SHARD_SIZE.get(given["method"], 1))
        return cls(preset=preset, **given)

    @classmethod
    def for_member(cls, member: Space, **settings: Any) -> FitConfig:
        """Fit alpha for your own member's space: :data:`MEMBER_FIT_DEFAULTS`, overridden by
        ``settings`` that are not None."""
        given = MEMBER_FIT_DEFAULTS | {k: v for k, v in settings.items() if v is not None}
        return cls(preset="", member=member, **given)

    @property
    def space(self) -> Space:
        """The space whose block is sampled: your member's, or the preset's."""
        return self.member or FIT_PRESETS[self.preset].space

    @property
    def description(self) -> str:
        """What is fitted, in a line: the preset and its block, or your member."""
        if self.preset:
            return f"{self.preset}: {FIT_PRESETS[self.preset].description}"
        return self.space.describe()

    @property
    def experiment(self) -> str:
        """The experiment's name when none is given: the preset's, or your member's."""
        return self.space.experiment_name(self.preset)

    @property
    def inputs(self) -> int:
        """Inputs of each sampled entry: 1 (K(x, x)), or 2 (off the diagonal)."""
        return 2 if self.off_diagonal else 1

    @property
    def tasks(self) -> int:
        """Ray tasks (shards) the run plans."""
        return len(self.widths) * -(-self.samples // self.shard_size)

    def check_bootstrap(self, replicates: int) -> None:
        """Refuse a bootstrap that would not end in reasonable time (ValueError)."""
        _require(
            1 <= replicates <= limits.MAX_BOOTSTRAP,
            f"--bootstrap must be from 1 to {limits.MAX_BOOTSTRAP:,}; got {replicates}",
        )
        work = replicates * self.samples * len(self.widths)
        _require(
            work <= limits.MAX_BOOTSTRAP_WORK,
            f"--bootstrap {replicates} x --samples {self.samples} x {len(self.widths)} widths "
            f"resamples {work:.2g} draws; at most {limits.MAX_BOOTSTRAP_WORK:.0g}",
        )

    @property
    def memory_budget(self) -> int:
        """The sampling chunk's budget in bytes."""
        return int(self.memory_budget_mib * 2**20)

    def to_json(self) -> dict:
        """The fields, with your member's (``Space.stored``) in place of ``member``; a
        preset's fit stores ``member`` "" and ``input_shape`` [], as it always has."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del record["member"]
        member = {k: v for k, v in self.space.stored().items() if k in FIT_MEMBER_FIELDS}
        empty = {"member": "", "input_shape": []}
        return record | {"widths": list(self.widths)} | empty | member

    @classmethod
    def from_json(cls, data: dict) -> FitConfig:
        """The configuration ``to_json`` wrote."""
        settings = {k: v for k, v in data.items() if k not in FIT_MEMBER_FIELDS}
        member = your_member(
            data.get("member") or None,
            data.get("input_shape") or None,
            data.get("fan_in_sum_from") or None,
            parameterisation=data.get("parameterisation") or None,
        )
        return cls(**settings | {"widths": tuple(data["widths"]), "member": member})


#: What a fit of your own member stores of it (``MemberSpace.stored``).
FIT_MEMBER_FIELDS = ("member", "input_shape", "fan_in_sum_from", "parameterisation")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Everything that decides which trials of a sweep exist and how they train.

    Build it with :meth:`from_preset`, which holds the defaults the command line uses. The
    trained points derive from (preset, formulation, alpha, num_points); ``alpha`` None means
    "fit it first" with the preset's fit preset (``ce_ray.experiments.sweep.run_sweep`` does).
    ``seed`` is the experiment seed; ``seeds`` how many seed indices (0..seeds-1) each point
    trains; a trial's own seed derives from (seed, n, m, seed index).

    >>> config = SweepConfig.from_preset("digits-mlp", alpha=2.4, num_points=3)
    >>> config.points, config.pack_seeds, config.precision
    (((8, 18), (13, 10), (64, 1)), True, 'fp32')
    """

    preset: str
    formulation: Formulation
    alpha: float | None
    num_points: int
    seeds: int
    epochs: int
    workers_per_trial: int
    gpus_per_worker: float
    cpus_per_worker: float
    scheduler: Scheduler
    seed: int
    data_root: str  # relative: under the project, so it names the same data in every job copy
    precision: Precision  # autocast of the training workers (ce_ray.worker.pipeline)
    channels_last: bool
    compile: bool
    loader_workers: int  # DataLoader processes per training worker
    pack_seeds: bool  # a point's seeds train as one model in one trial
    #: Your own member's space (``ce_ray.theory.by_name.make_space``) instead of the preset's;
    #: the preset gives the data and the recipe.
    member: Space | None = None
    baseline: int = 0  # n~ of the baseline 1 x n~; 0: the preset's
    #: The recipe's fields given (:data:`RECIPE_FIELDS`; None: the preset's), with ``epochs``
    #: above: what :attr:`recipe` trains with.
    optimizer: Optimizer | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    batch_size: int | None = None
    schedule: Schedule | None = None
    warmup_epochs: int | None = None
    label_smoothing: float | None = None
    #: Your own data (:data:`DATA_FIELDS`; ``ce_ray.own_data``) in place of the preset's, and
    #: the validation split held out of the training split (None: 0.1 of your own data; none
    #: of a preset's, whose sweep trains on its whole training split as the paper's did).
    data: str | None = None
    label_column: str | None = None
    image_size: int | None = None
    test_fraction: float | None = None
    validation_fraction: float | None = None
    #: What the driver read of ``data`` (``Splits.summary``: rows per split, input shape,
    #: classes, fingerprint); filled in by :meth:`from_preset`.
    data_summary: dict | None = None
    #: Tuning (:data:`TUNE_FIELDS`): ``tune_trials`` recipes drawn from the ranges ``tune``
    #: (``{field: [low, high, "linear" | "log"]}``) are tried on every point, judged on the
    #: validation split; the best trains the point's seeds (None: the one recipe, untuned).
    tune_trials: int | None = None
    tune: dict | None = None

    def __post_init__(self) -> None:
        _require(
            self.preset in SWEEP_PRESETS,
            f"unknown sweep preset {self.preset!r}; valid: {', '.join(SWEEP_PRESETS)}",
        )
        _require(
            0 <= self.baseline <= limits.MAX_WIDTH,
            f"--baseline must be from 1 to {limits.MAX_WIDTH}; got {self.baseline}",
        )
        name = self.space.member_name
        _require(
            self.alpha is not None or self.member is None,
            f"a sweep of {name} needs --alpha or --alpha-from (fit it first: ce-ray "
            f"fit-alpha --space {name} --input-shape ...)",
        )
        check_choice("formulation", self.formulation, FORMULATIONS)
        check_choice("--scheduler", self.scheduler, SCHEDULERS)
        check_choice("--precision", self.precision, PRECISIONS)
        if self.alpha is not None:
            check_alpha(self.alpha)
        for name, value, low, high in (
            ("--points", self.num_points, 2, limits.MAX_POINTS),
            ("--seeds", self.seeds, 1, limits.MAX_SEEDS),
            ("--epochs", self.epochs, 1, limits.MAX_EPOCHS),
            ("--workers-per-trial", self.workers_per_trial, 1, limits.MAX_WORKERS_PER_TRIAL),
        ):
            _require(low <= value <= high, f"{name} must be from {low} to {high}; got {value}")
        _require(
            limits.MIN_CPUS_PER_WORKER <= self.cpus_per_worker <= limits.MAX_CPUS_PER_WORKER,
            f"--cpus-per-worker must be from {limits.MIN_CPUS_PER_WORKER} to "
            f"{limits.MAX_CPUS_PER_WORKER:g}; got {self.cpus_per_worker:g}",
        )
        gpus = self.gpus_per_worker
        _require(
            0 <= gpus <= limits.MAX_GPUS_PER_WORKER and (gpus < 1 or gpus == int(gpus)),
            f"--gpus-per-worker must be a fraction below 1 or a whole number up to "
            f"{limits.MAX_GPUS_PER_WORKER} (Ray gives no 1.5 GPUs); got {gpus:g}",
        )
        most_loaders = limits.MAX_LOADER_WORKERS_PER_CPU * max(1, math.ceil(self.cpus_per_worker))
        _require(
            0 <= self.loader_workers <= most_loaders,
            f"--loader-workers must be from 0 to {most_loaders} "
            f"({limits.MAX_LOADER_WORKERS_PER_CPU} per CPU of --cpus-per-worker); "
            f"got {self.loader_workers}",
        )
        self._check_recipe()
        self._check_data()
        self._check_tune()
        _require(
            not (self.pack_seeds and self.precision == "fp16"),
            "--pack-seeds cannot train with --precision fp16: one loss scaler would skip every "
            "seed's step when one seed overflows; use bf16 or --no-pack-seeds",
        )

    def _check_recipe(self) -> None:
        """One line for each recipe field given out of its range."""
        if self.optimizer is not None:
            check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule is not None:
            check_choice("--schedule", self.schedule, SCHEDULES)
        for name, value, low, high, low_open in (
            ("--lr", self.lr, 0.0, limits.MAX_LR, True),
            ("--weight-decay", self.weight_decay, 0.0, limits.MAX_WEIGHT_DECAY, False),
            ("--momentum", self.momentum, 0.0, 0.999, False),
            ("--label-smoothing", self.label_smoothing, 0.0, 0.999, False),
        ):
            if value is None:
                continue
            inside = math.isfinite(value) and (value > low if low_open else value >= low)
            _require(
                inside and value <= high,
                f"{name} must be a finite number {'>' if low_open else '>='} {low:g} and <= "
                f"{high:g}; got {value!r}",
            )
        if self.batch_size is not None:
            _require(
                1 <= self.batch_size <= limits.MAX_BATCH_SIZE,
                f"--batch-size must be from 1 to {limits.MAX_BATCH_SIZE}; got {self.batch_size}",
            )
        if self.warmup_epochs is not None:
            _require(
                0 <= self.warmup_epochs < self.epochs,
                f"--warmup-epochs must be from 0 to --epochs - 1 ({self.epochs - 1}); got "
                f"{self.warmup_epochs}",
            )

    def _check_data(self) -> None:
        """One line for data options that do not go together (``DataSpec``'s checks)."""
        if self.data is not None:
            self.data_spec  # noqa: B018  # its checks
            return
        for name in ("label_column", "image_size", "test_fraction"):
            _require(
                getattr(self, name) is None,
                f"--{name.replace('_', '-')} is for --data (your own data) only",
            )
        if self.validation_fraction is not None:
            fraction = self.validation_fraction
            _require(
                math.isfinite(fraction) and 0 < fraction < 1,
                f"--validation-fraction must be a number above 0 and below 1; got {fraction!r}",
            )

    def _check_tune(self) -> None:
        """One line for a search space that cannot be drawn from or packed."""
        if self.tune_trials is None:
            _require(not self.tune, "--tune needs --tune-trials K (the recipes tried per point)")
            return
        _require(
            1 <= self.tune_trials <= limits.MAX_TUNE_TRIALS,
            f"--tune-trials must be from 1 to {limits.MAX_TUNE_TRIALS}; got {self.tune_trials}",
        )
        _require(
            self.tune_trials == 1 or bool(self.tune),
            f"--tune-trials {self.tune_trials} needs a search space: --tune FIELD=LOW..HIGH[:log] "
            f"({', '.join(TUNABLE)})",
        )
        _require(
            self.precision != "fp16",
            "--tune-trials trains a point's candidates packed in one model: use bf16 or fp32, "
            "not --precision fp16 (one loss scaler would skip every candidate's step)",
        )
        for field, (low, high, scale) in (self.tune or {}).items():
            check_tune_range(field, low, high, scale)
        _require(
            "momentum" not in (self.tune or {}) or self.recipe.optimizer == "sgd",
            f"--tune momentum is SGD's; this recipe's optimizer is {self.recipe.optimizer}",
        )

    @cached_property
    def candidates(self) -> tuple[dict, ...]:
        """The recipes every point tries (their fields drawn from ``tune``; the others the
        sweep's recipe's): the same ``tune_trials`` draws for every point, from the experiment
        seed alone. Empty when the sweep is not tuned."""
        if self.tune_trials is None:
            return ()
        return draw_candidates(self.tune or {}, self.tune_trials, self.seed)

    @property
    def data_spec(self) -> DataSpec:
        """``data`` and its options (ValueError when ``data`` is None)."""
        if self.data is None:
            raise ValueError("this sweep trains on its preset's data")
        return DataSpec.given(
            self.data,
            label_column=self.label_column,
            image_size=self.image_size,
            test_fraction=self.test_fraction,
            validation_fraction=self.validation_fraction,
        )

    @property
    def validation(self) -> float:
        """The share of the training split held out for validation (0: none)."""
        if self.validation_fraction is not None:
            return self.validation_fraction
        chooses = self.data is not None or self.tune_trials is not None
        return DEFAULT_VALIDATION_FRACTION if chooses else 0.0

    @property
    def example_shape(self) -> tuple[int, ...]:
        """One example's shape, as the data gives it."""
        if self.data_summary:
            return tuple(self.data_summary["input_shape"])
        return DATASET_EXAMPLES[self.spec.dataset][0]

    @property
    def recipe(self) -> Recipe:
        """What every trial trains with: the preset's recipe, ``epochs`` and the recipe's
        fields given here in place of its own."""
        given = {f: getattr(self, f) for f in RECIPE_FIELDS if getattr(self, f) is not None}
        return dataclasses.replace(self.spec.recipe, epochs=self.epochs, **given)

    def check_on_this_machine(self) -> None:
        """The checks that build networks or read this machine, run where the sweep starts
        (``from_preset``), not where a stored configuration is read back: the network trains
        on the preset's data (your member's, built on the meta device), and the largest
        trial's model state fits in memory."""
        if self.data is None:
            data = f"{self.spec.dataset}'s examples ({self.preset}'s data)"
        else:
            data = f"the examples of --data {self.data}"
        self.space.check_trains_on(self.example_shape, self.classes, self.baseline_width, data)
        if self.alpha is not None:
            self.check_trial_memory()

    @property
    def space(self) -> Space:
        """The architecture family whose points are trained: your member's, or the preset's
        (sized to your own data's examples and classes)."""
        if self.member is not None:
            return self.member
        if self.data_summary:
            return sized_for_data(self.spec.space, self.example_shape, self.classes, self.data)
        return self.spec.space

    @property
    def baseline_width(self) -> int:
        """n~: ``baseline``, or the preset's."""
        return self.baseline or self.spec.baseline

    @property
    def classes(self) -> int:
        if self.data_summary:
            return int(self.data_summary["classes"])
        return DATASET_EXAMPLES[self.spec.dataset][1]

    @property
    def scheduler_stops_trials(self) -> bool:
        """Whether Tune may stop a trial before its last epoch: then a trial's training waits
        for Tune's decision on its epoch before last (ce_ray.worker.records.wait_for_decision)."""
        return self.scheduler == "asha" and self.tune_trials is None

    def check_trial_memory(self) -> None:
        """Refuse a trial whose model state alone would not fit in half this machine's memory:
        fp32 weights, gradients and two optimizer moments (16 bytes a parameter) of the
        largest point, times the seeds packed into one trial."""
        copies = max(self.seeds if self.pack_seeds else 1, self.tune_trials or 1)
        largest = max(int(self.space.num_params(m, n)) for n, m in self.points)
        need, half = 16 * largest * copies, limits.machine_memory_bytes() / 2
        _require(
            need <= half,
            f"a trial's {copies} packed seed(s) of {largest:,} parameters need about "
            f"{need / 2**30:.1f} GiB of model state; at most half this machine's memory "
            f"({half / 2**30:.1f} GiB): use fewer --seeds or --no-pack-seeds",
        )

    @classmethod
    def from_preset(
        cls, preset: str, formulation: Formulation = "primal", **settings: object
    ) -> SweepConfig:
        """The sweep of ``preset`` along ``formulation``'s curve with the command line's
        defaults, overridden by ``settings`` that are not None (any field above).

        Defaults: alpha from the preset (None: fit it first), 5 points, 2 seeds, the recipe's
        epochs, 1 worker per trial with 1 CPU and no GPU, FIFO, seed 0, data root
        ``$CE_RAY_DATA`` or ``data``, and execution chosen for the device: bf16 with GPUs
        (fp32 on CPUs), channels-last for convolutional presets on GPUs, the worker's CPUs
        beyond the first as loader processes, and packed seeds for the MLP presets unless
        fp16 (small models: Ray's fixed cost per trial outweighs their training;
        a convolutional seed fills a device, and more trials spread over a big cluster).
        """
        _require(
            preset in SWEEP_PRESETS,
            f"unknown sweep preset {preset!r}; valid: {', '.join(SWEEP_PRESETS)}",
        )
        spec = SWEEP_PRESETS[preset]
        given = {key: value for key, value in settings.items() if value is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
        _require(not unknown, f"SweepConfig has no setting {', '.join(unknown)}")
        on_gpu = float(given.get("gpus_per_worker", 0.0)) > 0  # type: ignore[arg-type]
        convolutional = spec.space.name != "fc"
        cpus = float(given.get("cpus_per_worker", 1.0))  # type: ignore[arg-type]
        precision = given.get("precision", "bf16" if on_gpu else "fp32")
        defaults: dict[str, object] = {
            "alpha": spec.alpha,
            "num_points": 5,
            "seeds": 2,
            "epochs": spec.recipe.epochs,
            "workers_per_trial": 1,
            "gpus_per_worker": 0.0,
            "cpus_per_worker": 1.0,
            "scheduler": "fifo",
            "seed": 0,
            "data_root": os.environ.get("CE_RAY_DATA", "data"),
            "precision": precision,
            "channels_last": on_gpu and convolutional,
            "compile": False,
            "loader_workers": default_loader_workers(cpus),
            "pack_seeds": not convolutional and precision != "fp16",
        }
        config = cls(preset=preset, formulation=formulation, **(defaults | given))  # type: ignore[arg-type]
        if config.data is not None and config.data_summary is None:
            from ce_ray import own_data

            summary = own_data.load(config.data_spec, config.seed).summary()
            config = dataclasses.replace(config, data_summary=summary)
        config.check_on_this_machine()
        return config

    @property
    def spec(self) -> SweepPreset:
        """The preset: space, baseline, dataset, recipe."""
        return SWEEP_PRESETS[self.preset]

    @cached_property
    def curves(self) -> dict[Formulation, Curve]:
        """Both curves around the preset's baseline (computed once)."""
        if self.alpha is None:
            raise ValueError("alpha is not known yet: fit it first (ce-ray fit-alpha)")
        space, alpha, baseline = self.space, self.alpha, self.baseline_width
        return {f: curve(space, alpha, baseline, formulation=f) for f in FORMULATIONS}

    @cached_property
    def point_rows(self) -> pd.DataFrame:
        """The curve's rows of the trained points (``ce_ray.theory.curves.select_points``)."""
        return select_points(self.curves[self.formulation], self.num_points)

    @cached_property
    def points(self) -> tuple[tuple[int, int], ...]:
        """``(n, m)`` of each trained point, by width."""
        rows = self.point_rows
        return tuple((int(n), int(m)) for n, m in zip(rows["n"], rows["m"], strict=True))

    @cached_property
    def architecture(self) -> str:
        """The fingerprint of your member at the trained widths and the baseline's
        (``Space.fingerprint``; empty for a preset's space)."""
        return self.space.fingerprint(sorted({n for n, _ in self.points} | {self.baseline_width}))

    @property
    def trials(self) -> int:
        return len(self.points) * (1 if self.pack_seeds else self.seeds)

    def to_json(self) -> dict:
        """The fields, your member's in place of ``member`` (``Space.stored``), and when alpha
        is known the trained points; for a member its architecture's fingerprint (so that a
        resumed sweep whose member changed under the same name is refused). A preset's sweep
        stores no member field and no ``baseline`` of 0, as configurations written before
        they existed read."""
        record = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("member", "baseline", *OPTIONAL_SWEEP_FIELDS)
        }
        # The recipe's and the data's fields given, only: a sweep on the preset's recipe and
        # data stores what it always has, and resumes.
        record |= {
            f: getattr(self, f) for f in OPTIONAL_SWEEP_FIELDS if getattr(self, f) is not None
        }
        record |= self.space.stored() | ({"baseline": self.baseline} if self.baseline else {})
        record |= {"architecture": self.architecture} if self.architecture else {}
        return record | ({"points": [list(p) for p in self.points]} if self.alpha else {})

    @classmethod
    def from_json(cls, data: dict) -> SweepConfig:
        """The configuration ``to_json`` wrote, read back as stored: its points and
        fingerprint are not derived again (no curve, no trace, no check of this machine), so
        every trial and worker that reads it trains what the driver chose (ValueError if
        ``data`` is not one)."""
        required = {f.name for f in dataclasses.fields(cls)} - {"member", "baseline"}
        required -= set(OPTIONAL_SWEEP_FIELDS)
        if not isinstance(data, dict) or not required <= set(data):
            raise ValueError("not a sweep configuration written by ce-ray")
        member = your_member(
            data.get("member"),
            data.get("input_shape"),
            data.get("fan_in_sum_from"),
            data.get("network_from"),
        )
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        config = cls(**fields | {"member": member})
        # The derived values as the driver stored them (cached_property's own slots).
        if "points" in data:
            config.__dict__["points"] = tuple((int(n), int(m)) for n, m in data["points"])
        config.__dict__["architecture"] = data.get("architecture", "")
        return config


#: What a sweep on your own data stores of it (only when given).
DATA_FIELDS = (
    "data",
    "label_column",
    "image_size",
    "test_fraction",
    "validation_fraction",
    "data_summary",
)
#: What a tuned sweep stores of its search (only when given).
TUNE_FIELDS = ("tune_trials", "tune")
#: The sweep's fields stored only when given (``check_or_write_config``'s ``omitted``).
OPTIONAL_SWEEP_FIELDS = (*RECIPE_FIELDS, *DATA_FIELDS, *TUNE_FIELDS)

#: The recipe's fields a search may draw (a point's candidates train packed in one model, so
#: each may have its own value; the optimizer, batches and epochs are shared).
TUNABLE = ("lr", "weight_decay", "momentum", "label_smoothing")
#: Each tunable field's range: (lowest, highest).
TUNABLE_RANGES = {
    "lr": (0.0, limits.MAX_LR),
    "weight_decay": (0.0, limits.MAX_WEIGHT_DECAY),
    "momentum": (0.0, 0.999),
    "label_smoothing": (0.0, 0.999),
}
# The key of the candidates' draws, beside the experiment seed.
CANDIDATES_KEY = 7_101


def parse_tune_range(text: str) -> tuple[str, list]:
    """``FIELD=LOW..HIGH`` or ``FIELD=LOW..HIGH:log`` -> ``(field, [low, high, scale])``
    (``--tune``; ``weight-decay`` or ``weight_decay``), checked.

    >>> parse_tune_range("lr=1e-4..1e-1:log")
    ('lr', [0.0001, 0.1, 'log'])
    >>> parse_tune_range("weight-decay=0..1e-3")
    ('weight_decay', [0.0, 0.001, 'linear'])
    """
    field, equals, span = text.partition("=")
    field = field.strip().replace("-", "_")
    bounds, _, scale = span.partition(":")
    low, dots, high = bounds.partition("..")
    shape = f"--tune {text!r}: must be FIELD=LOW..HIGH or FIELD=LOW..HIGH:log"
    _require(bool(equals and dots), shape)
    try:
        values = [float(low), float(high)]
    except ValueError:
        raise ValueError(shape) from None
    check_tune_range(field, values[0], values[1], scale or "linear")
    return field, [*values, scale or "linear"]


def check_tune_range(field: str, low: float, high: float, scale: str) -> None:
    """One line for a range that is not a tunable field's, empty, or not on its scale."""
    _require(
        field in TUNABLE,
        f"--tune {field!r}: not a field a search can draw; allowed: {', '.join(TUNABLE)}",
    )
    _require(scale in ("linear", "log"), f"--tune {field}: scale must be log; got {scale!r}")
    lowest, highest = TUNABLE_RANGES[field]
    name = f"--tune {field}={low!r}..{high!r}"
    _require(
        math.isfinite(low) and math.isfinite(high) and lowest <= low < high <= highest,
        f"{name}: must be LOW < HIGH within {lowest:g}..{highest:g}",
    )
    _require(
        scale != "log" or low > 0,
        f"{name}:log: a log scale needs LOW > 0",
    )


def draw_candidates(space: dict, count: int, seed: int) -> tuple[dict, ...]:
    """``count`` recipes' drawn fields: each field of ``space`` uniform on its range (its
    log on a log scale), fields in sorted order, from a generator seeded by (seed,
    :data:`CANDIDATES_KEY`) -- a resumed or retried sweep draws the same ones.

    >>> draw_candidates({"lr": [0.01, 1.0, "log"]}, 2, seed=0) == draw_candidates(
    ...     {"lr": [0.01, 1.0, "log"]}, 2, seed=0)
    True
    >>> draw_candidates({}, 1, seed=0)
    ({},)
    """
    import numpy as np

    from ce_ray.theory.seeds import derive_seed

    generator = np.random.default_rng(derive_seed(seed, CANDIDATES_KEY))
    candidates = []
    for _ in range(count):
        drawn = {}
        for field in sorted(space):
            low, high, scale = space[field]
            if scale == "log":
                drawn[field] = float(math.exp(generator.uniform(math.log(low), math.log(high))))
            else:
                drawn[field] = float(generator.uniform(low, high))
        candidates.append(drawn)
    return tuple(candidates)


def sized_for_data(space: Space, shape: tuple[int, ...], classes: int, data: str | None) -> Space:
    """A preset's family sized to your data: the MLP to its features and classes (examples
    of one dimension: a table's rows), ResNeXt-29 to its classes and image side (3-channel
    square images)."""
    if isinstance(space, FCSpace) and len(shape) == 1:
        return dataclasses.replace(space, input_dim=shape[0], num_classes=classes)
    images = len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]
    _require(
        isinstance(space, CifarResNeXt29Space) and images,
        f"--data {data}: examples of shape {list(shape)} do not suit the {space.name} preset "
        f"(tables and vectors: an MLP preset such as digits-mlp; 3-channel square images: "
        f"cifar10-resnext29; anything else: your own --space)",
    )
    assert isinstance(space, CifarResNeXt29Space)  # for the type checker: _require above
    return dataclasses.replace(space, num_classes=classes, image_size=shape[1])


def default_loader_workers(cpus_per_worker: float) -> int:
    """Loader processes for a training worker holding ``cpus_per_worker`` CPUs: the CPUs
    beyond the one the training process itself uses.

    >>> default_loader_workers(1), default_loader_workers(4), default_loader_workers(2.5)
    (0, 3, 1)
    """
    return max(0, math.floor(cpus_per_worker) - 1)
