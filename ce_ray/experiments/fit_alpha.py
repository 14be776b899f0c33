"""Fit alpha (Algorithm 1) with the NTK sampling sharded as Ray tasks.

The caller connects to Ray (``ray.init()`` in the entry point); this module schedules one
task per shard (``ce_ray.experiments.shards``), at most ``workers`` at a time, with Ray's task
retries for a worker that dies; then fits Eq. 9 (``ce_ray.theory.alpha.fit_eq9``) and writes
the outputs. A rerun of the same experiment skips shards already whole on storage.

Layout of ``<results>/<experiment>/fit_alpha/``: ``config.json``, ``shards/``,
``moments.parquet``, ``alpha.parquet`` (configuration, seed and library versions in its
metadata) and ``alpha.png``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ce_ray.configs import FIT_MEMBER_FIELDS, FitConfig
from ce_ray.experiments import cluster
from ce_ray.experiments.shards import Shard, plan_shards, read_width, sample_shard
from ce_ray.experiments.tasks import (
    Log,
    WorkItem,
    print_line,
    run_missing,
)
from ce_ray.limits import DEFAULT_STALL_TIMEOUT_S
from ce_ray.results import plots, storage
from ce_ray.theory.alpha import AlphaFit, check_law, fit_eq9
from ce_ray.theory.curves import check_alpha
from ce_ray.theory.member_ntk import SlowSampling


@dataclass(frozen=True)
class FitResult(AlphaFit):
    """A fit-alpha run: the fit and the directory its files are in."""

    directory: str = ""

    def to_json(self) -> dict:
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "moments"}
        return record | {"moments": self.moments.to_dict(orient="records")}


def check_fits_in_memory(config: FitConfig) -> tuple[str, ...]:
    """A chunk of the sampler must hold one sample at every width, and your member must pass
    its checks (ValueError if not): ``Space.check_sampling``. Returns its warnings."""
    return config.space.check_sampling(
        config.widths,
        config.inputs,
        config.method,
        config.memory_budget,
        getattr(torch, config.dtype).itemsize,
    )


def _shard_task(
    config: FitConfig, shard: Shard, shard_dir: str
) -> tuple[Shard, float, tuple[str, ...]]:
    """The Ray task: :func:`sample_shard`, recording in the file which node computed it, and
    its :class:`~ce_ray.theory.member_ntk.SlowSampling` notes (printed once by the driver,
    not by every task)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SlowSampling)
        seconds = sample_shard(config, shard, shard_dir, {"node_id": cluster.node_id()})
    notes = []
    for warning in caught:
        if issubclass(warning.category, SlowSampling):
            notes.append(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return shard, seconds, tuple(dict.fromkeys(notes))


def sample_all_shards(
    config: FitConfig,
    directory: str,
    workers: int,
    log: Log = print_line,
    max_retries: int = 3,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> list[tuple[Shard, float]]:
    """Run every shard not yet whole on storage as a Ray task, at most ``workers`` at a time.

    Returns the shards this call ran, each with the seconds its task spent sampling.
    """
    shard_dir = storage.join(directory, "shards")
    items = [
        WorkItem((config, shard, shard_dir), shard.filename, shard.stop - shard.start)
        for shard in plan_shards(config)
    ]

    noted: set[str] = set()

    def describe(item: tuple, result: Any) -> str:
        shard, seconds, notes = result
        for note in notes:
            if note not in noted:  # one line per fit, not per task
                noted.add(note)
                log(f"[fit-alpha] note: {note}")
        samples = shard.stop - shard.start
        return f"width {shard.width} shard {shard.index} ({samples} samples, {seconds:.2f}s)"

    ran = run_missing(
        _shard_task,
        items,
        shard_dir,
        workers,
        describe,
        log,
        prefix="[fit-alpha]",
        unit="shards",
        max_retries=max_retries,
        num_gpus=1 if config.device.startswith("cuda") else 0,
        stall_timeout_s=stall_timeout_s,
    )
    return [(shard, seconds) for shard, seconds, _ in ran]


def fit_from_shards(
    config: FitConfig,
    directory: str,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    intercept: bool = False,
) -> AlphaFit:
    """Eq. 9 fitted to the shards on storage, one width in memory at a time."""
    shard_dir = storage.join(directory, "shards")

    def samples_of(width: int) -> np.ndarray:
        k = read_width(shard_dir, width)
        if k.size != config.samples:
            raise ValueError(
                f"width {width} has {k.size} samples on disk; {config.samples} expected"
            )
        return k

    return fit_eq9(
        config.widths,
        config.space.fan_in_sum,
        samples_of,
        config.seed,
        bootstrap,
        ci_level,
        intercept,
    )


def architecture(config: FitConfig) -> dict[str, str]:
    """``{"architecture": fingerprint}`` of your own member at the fitted widths (nothing for a
    preset, whose block is ce-ray's): recorded with the fit, and a rerun under the same name
    whose member changed is refused."""
    fingerprint = config.space.fingerprint(config.widths)
    return {"architecture": fingerprint} if fingerprint else {}


def write_outputs(
    config: FitConfig, fit: AlphaFit, directory: str, experiment: str, bootstrap: int
) -> None:
    """moments.parquet, alpha.parquet (configuration and versions in its metadata), alpha.png."""
    metadata = {
        "config": config.to_json(),
        "seed": config.seed,
        "space": {"name": config.space.name, **config.space.options()},
        "bootstrap": bootstrap,
        "versions": storage.library_versions(),
    }
    storage.write_parquet(
        pa.Table.from_pandas(fit.moments),
        storage.join(directory, "moments.parquet"),
        storage.MOMENTS_SCHEMA,
    )
    law = check_law(fit.moments, fit.r2)
    row = {
        "experiment": experiment,
        "space": config.space.name,
        "member": config.space.member_name,
        "parameterisation": config.space.sampled_parameterisation,
        "architecture": config.space.fingerprint(config.widths),
        "alpha": fit.alpha,
        "alpha_se": fit.alpha_se,
        "ci_low": fit.ci_low,
        "ci_high": fit.ci_high,
        "ci_level": fit.ci_level,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "num_widths": len(config.widths),
        "samples_per_width": config.samples,
        "seed": config.seed,
        "r2_intercept": law.r2_intercept,
        "mean_slope": law.mean_slope,
        "mean_slope_se": law.mean_slope_se,
        "log_ratio_positive": law.log_ratio_positive,
        "log_ratio_falls": law.log_ratio_falls,
        "law_warnings": list(law.warnings),
    }
    storage.write_parquet(
        pa.Table.from_pylist([row]),
        storage.join(directory, "alpha.parquet"),
        storage.ALPHA_SCHEMA,
        metadata,
    )
    storage.write_bytes(plots.alpha_fit_png(fit), storage.join(directory, "alpha.png"))


def fit_alpha(
    config: FitConfig,
    results: str,
    experiment: str,
    workers: int,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    intercept: bool = False,
    log: Log = print_line,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> FitResult:
    """Algorithm 1 end to end into ``<results>/<experiment>/fit_alpha``: sample (resuming),
    fit, write the outputs. Settings that cannot run fail before anything is written."""
    check_fits_in_memory(config)
    directory = storage.join(results, experiment, "fit_alpha")
    # "parameterisation" is stored only when "standard": a rerun without it is a change.
    storage.check_or_write_config(
        directory, config.to_json() | architecture(config), omitted=FIT_MEMBER_FIELDS
    )
    sample_all_shards(config, directory, workers, log, stall_timeout_s=stall_timeout_s)
    fit = fit_from_shards(config, directory, bootstrap, ci_level, intercept)
    write_outputs(config, fit, directory, experiment, bootstrap)
    return FitResult(**vars(fit), directory=directory)


def read_alpha(location: str, accept_law_warnings: bool = False, member: str = "") -> float:
    """The alpha of an ``alpha.parquet`` written by fit-alpha (ValueError if it is not one,
    its alpha is not a usable one, its fit broke a check of the law (``law_warnings``) and
    ``accept_law_warnings`` is not given, or ``member`` is given and the fit is not of it)."""
    if not storage.exists(location):
        raise ValueError(f"--alpha-from {location}: no such file (an alpha.parquet of fit-alpha)")
    if storage.is_directory(location):
        raise ValueError(f"--alpha-from {location}: a directory, not an alpha.parquet")
    try:
        table = storage.read_parquet(location)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"--alpha-from {location}: not a Parquet file ({error})") from None
    if "alpha" not in table.column_names or table.num_rows != 1:
        raise ValueError(f"--alpha-from {location}: not an alpha.parquet written by fit-alpha")
    alpha = table.column("alpha")[0].as_py()
    fitted = table.column("member")[0].as_py() if "member" in table.column_names else ""
    if member and fitted != member:
        raise ValueError(
            f"--alpha-from {location}: fitted for {fitted or 'a preset block'}, not for {member}"
        )
    warned = table.column("law_warnings")[0].as_py() if "law_warnings" in table.column_names else []
    if warned and not accept_law_warnings:
        raise ValueError(
            f"--alpha-from {location}: its fit warned ({'; '.join(warned)}); pass "
            "--accept-law-warnings to use it anyway"
        )
    try:
        return check_alpha(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"--alpha-from {location}: its alpha {alpha!r} cannot be used") from None
