"""Where results live: every Parquet file's schema, atomic writes, local paths or URIs.

A results location is a local directory or any URI pyarrow understands (``s3://``,
``gs://``, ...). Writes go to a temporary name beside the target and are then moved onto it, so
a reader never sees half a file; on a local disk the move is an atomic rename. Files are plain
Parquet: ``pandas.read_parquet`` reads them without ce-ray installed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ce_ray.presets import RECIPE_FIELDS

#: Raw NTK samples of one shard: one row per weight draw.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("width", pa.int64()),
        pa.field("shard", pa.int64()),
        pa.field("sample", pa.int64()),  # index of the draw within its width, 0..T-1
        pa.field("k", pa.float64()),  # the NTK entry K(x, x) or K(x1, x2)
    ]
)

#: Per-width moments of the samples (fit-alpha's moments.parquet).
MOMENTS_SCHEMA = pa.schema(
    [
        pa.field("width", pa.int64()),
        pa.field("fan_in_sum", pa.float64()),  # S(n)
        pa.field("count", pa.int64()),
        pa.field("mean", pa.float64()),  # E[K]
        pa.field("second_moment", pa.float64()),  # E[K^2]
        pa.field("variance", pa.float64()),  # Var(K), unbiased
        pa.field("se_mean", pa.float64()),
        pa.field("se_second_moment", pa.float64()),
        pa.field("log_ratio", pa.float64()),  # log(E[K^2] / E[K]^2)
        pa.field("se_log_ratio", pa.float64()),  # delta method
        pa.field("fitted_log_ratio", pa.float64()),
        pa.field("residual", pa.float64()),  # log_ratio - fitted_log_ratio
    ]
)

#: The fit (fit-alpha's alpha.parquet): one row.
ALPHA_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("space", pa.string()),
        pa.field("alpha", pa.float64()),
        pa.field("alpha_se", pa.float64()),  # standard error from weighted least squares
        pa.field("ci_low", pa.float64()),  # bootstrap percentile interval
        pa.field("ci_high", pa.float64()),
        pa.field("ci_level", pa.float64()),
        pa.field("intercept", pa.float64()),  # 0 when fitted through the origin (Eq. 9)
        pa.field("r2", pa.float64()),
        pa.field("num_widths", pa.int64()),
        pa.field("samples_per_width", pa.int64()),
        pa.field("seed", pa.int64()),  # the experiment seed (--seed)
        pa.field("member", pa.string()),  # MODULE:CALLABLE of your own member; "" for a preset
        pa.field("architecture", pa.string()),  # the member's fingerprint; "" for a preset
        # ntk: sampled as written; standard: the member's NTK twin (ce_ray.theory.twin)
        pa.field("parameterisation", pa.string()),
        # The checks of the law (ce_ray.theory.alpha.LawChecks): R^2 with an intercept, the
        # slope of log E[K] on log n and its se, the log-ratio's sign and trend, and warnings.
        pa.field("r2_intercept", pa.float64()),
        pa.field("mean_slope", pa.float64()),
        pa.field("mean_slope_se", pa.float64()),
        pa.field("log_ratio_positive", pa.bool_()),
        pa.field("log_ratio_falls", pa.bool_()),
        pa.field("law_warnings", pa.list_(pa.string())),
    ]
)


#: trials.parquet's recipe columns, which tables written before them lack (and are read).
RECIPE_COLUMNS = RECIPE_FIELDS
#: trials.parquet's columns that tables written before them lack (and are still read).
LATER_TRIALS_COLUMNS = (*RECIPE_COLUMNS, "final_val_error", "recipes_tried", "search_val_error")

#: One row per (point, seed index) of a sweep (trials.parquet).
TRIALS_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("formulation", pa.string()),  # primal | dual
        pa.field("space", pa.string()),
        pa.field("member", pa.string()),  # MODULE:CALLABLE of your own member; "" for a preset
        pa.field("architecture", pa.string()),  # the member's fingerprint; "" for a preset
        pa.field("label", pa.string()),  # "m x n d"
        pa.field("n", pa.int64()),
        pa.field("m", pa.int64()),
        # Exact parameter count of the trained network (of its m members, for your own
        # member: what network(m, n) adds around them, a head, is the same at every point).
        pa.field("params", pa.int64()),
        pa.field("flops", pa.int64()),  # multiply-accumulates per example
        pa.field("rho", pa.float64()),  # baseline params / params
        pa.field("var_ensemble", pa.float64()),  # predicted Var(K_e) / E[K]^2 (Eq. 11)
        pa.field("alpha", pa.float64()),
        pa.field("role", pa.string()),  # optimum | baseline | curve
        pa.field("seed_index", pa.int64()),  # 0..S-1; the trial's seed derives from it
        # Seed indices its trial trained as one packed model (1: this seed alone).
        pa.field("packed_seeds", pa.int64()),
        pa.field("final_test_error", pa.float64()),  # top-1, percent
        pa.field("best_test_error", pa.float64()),
        # The paper's metric: mean top-1 test error over the last LAST_EPOCHS epochs trained
        # (over all of them when there are fewer; the next column says how many).
        pa.field("mean_test_error_last_epochs", pa.float64()),
        pa.field("last_epochs_averaged", pa.int64()),
        pa.field("final_test_error_top5", pa.float64()),  # null with <= 5 classes
        pa.field("final_val_error", pa.float64()),  # validation split; null: none held out
        pa.field("final_train_loss", pa.float64()),
        pa.field("epochs_completed", pa.int64()),
        pa.field("epochs_planned", pa.int64()),
        # The recipe trained with (--recipe and its flags, else the preset's): RECIPE_COLUMNS.
        pa.field("optimizer", pa.string()),
        pa.field("lr", pa.float64()),
        pa.field("weight_decay", pa.float64()),
        pa.field("momentum", pa.float64()),
        pa.field("batch_size", pa.int64()),
        pa.field("schedule", pa.string()),
        pa.field("warmup_epochs", pa.int64()),
        pa.field("label_smoothing", pa.float64()),
        # A tuned sweep (--tune-trials): the recipes its point tried, and the chosen one's
        # validation error in the search (its fields are the recipe columns); null untuned.
        pa.field("recipes_tried", pa.int64()),
        pa.field("search_val_error", pa.float64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("status", pa.string()),  # finished | stopped_early (ASHA) | error
        pa.field("retries", pa.int64()),  # restarts: lost worker/node, retried or resumed job
        pa.field("trial_id", pa.string()),
        pa.field("error", pa.string()),
    ]
)

#: One row per (trial, epoch) of a sweep (epochs.parquet).
EPOCHS_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("m", pa.int64()),
        pa.field("seed_index", pa.int64()),
        pa.field("packed_seeds", pa.int64()),  # as in trials.parquet
        # A tuned sweep's search: the candidate recipe (candidates.parquet) this row trained,
        # judged on validation (its test_error null); null for the sweep's seeds' own epochs.
        pa.field("candidate", pa.int64()),
        pa.field("epoch", pa.int64()),
        pa.field("train_loss", pa.float64()),
        pa.field("test_error", pa.float64()),
        pa.field("test_error_top5", pa.float64()),
        pa.field("val_error", pa.float64()),  # on the validation split; null: none held out
        pa.field("lr", pa.float64()),  # the learning rate this epoch trained with
        pa.field("time_total_s", pa.float64()),  # wall clock since the trial first started
        pa.field("train_time_s", pa.float64()),  # in the training loop, summed over epochs
        pa.field("attempt", pa.int64()),  # which start of the trial trained it (0 = first)
        pa.field("node_id", pa.string()),  # the Ray node of the rank-0 training worker
    ]
)

#: One row per (point, candidate recipe) of a tuned sweep's search (candidates.parquet).
CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("experiment", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("m", pa.int64()),
        pa.field("label", pa.string()),
        pa.field("candidate", pa.int64()),  # 0..K-1: the same recipes at every point
        pa.field("lr", pa.float64()),
        pa.field("weight_decay", pa.float64()),
        pa.field("momentum", pa.float64()),
        pa.field("label_smoothing", pa.float64()),
        pa.field("final_val_error", pa.float64()),  # top-1, percent, on the validation split
        pa.field("epochs_completed", pa.int64()),
        pa.field("chosen", pa.bool_()),  # the lowest final_val_error of its point
        # finished | stopped_early (halved out: --scheduler asha) | error | stopped (the sweep)
        pa.field("status", pa.string()),
        pa.field("trial_id", pa.string()),
    ]
)

#: Both curves of a sweep, long form (curves.parquet): ``ce_ray.theory.curves.CURVE_COLUMNS`` (see
#: there) and which curve, alpha and baseline each row belongs to.
CURVES_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("fan_in_sum", pa.float64()),
        pa.field("var_member", pa.float64()),
        pa.field("m_curve", pa.float64()),
        pa.field("var_ensemble_curve", pa.float64()),
        pa.field("rho_curve", pa.float64()),
        pa.field("m", pa.int64()),
        pa.field("params", pa.int64()),
        pa.field("flops", pa.int64()),
        pa.field("var_ensemble", pa.float64()),
        pa.field("rho", pa.float64()),
        pa.field("formulation", pa.string()),  # primal | dual
        pa.field("alpha", pa.float64()),
        pa.field("baseline", pa.int64()),  # n~
    ]
)


#: Member kernels of one NMK block (nmk/shards/w<width>-b<block>.parquet).
NMK_SHARD_SCHEMA = pa.schema(
    [
        pa.field("width", pa.int64()),
        pa.field("member", pa.int64()),  # index of the member network within its width
        pa.field("gamma", pa.float64()),
        pa.field("entry", pa.string()),  # diagonal: K(x_g, x_g); off_diagonal: K(x_0, x_g)
        pa.field("k", pa.float64()),
    ]
)

#: Ensemble kernels against the NMK (nmk.parquet): one row per (n, m, draw, gamma, entry).
NMK_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("m", pa.int64()),
        pa.field("draw", pa.int64()),  # which ensemble of multiplicity m
        pa.field("gamma", pa.float64()),
        pa.field("entry", pa.string()),
        pa.field("kernel", pa.float64()),  # the ensemble's NTK entry, mean of its m members'
        pa.field("nmk", pa.float64()),  # the NMK estimate at (n, gamma, entry)
    ]
)

#: Per (n, m, entry): the mean over draws of the mean over gamma of (kernel - nmk)^2.
NMK_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("m", pa.int64()),
        pa.field("entry", pa.string()),
        pa.field("mean_squared_distance", pa.float64()),
        pa.field("se", pa.float64()),  # its standard error over draws
        pa.field("draws", pa.int64()),
    ]
)

#: Per (n, entry): Lemma 1's slope and the NMK's distance to a much wider model's.
NMK_FIT_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64()),
        pa.field("entry", pa.string()),
        pa.field("slope_m", pa.float64()),  # of log mean_squared_distance on log m (-1)
        pa.field("ci_low", pa.float64()),  # percentile bootstrap over draws
        pa.field("ci_high", pa.float64()),
        pa.field("width_gap", pa.float64()),  # ||NMK_n - NMK_wide|| / ||NMK_wide|| over gamma
        pa.field("width_gap_se", pa.float64()),  # its Monte-Carlo standard error
    ]
)

#: Ensemble NTK drift under gradient descent (drift.parquet): one row per (m, n, seed, time).
DRIFT_SCHEMA = pa.schema(
    [
        pa.field("m", pa.int64()),
        pa.field("n", pa.int64()),
        pa.field("seed_index", pa.int64()),
        pa.field("time", pa.float64()),  # gradient-flow time t = learning rate x steps
        pa.field("steps", pa.int64()),
        pa.field("drift", pa.float64()),  # ||K_e(t) - K_e(0)||_F / ||K_e(0)||_F on the probes
        pa.field("train_loss", pa.float64()),  # 1/2 ||F_e(t) - y||^2 / N
    ]
)

#: The fit of log drift = exponent_m log m + exponent_n log n + intercept, per time.
DRIFT_FIT_SCHEMA = pa.schema(
    [
        pa.field("time", pa.float64()),
        pa.field("exponent_m", pa.float64()),
        pa.field("exponent_m_low", pa.float64()),  # 95% confidence interval (t distribution)
        pa.field("exponent_m_high", pa.float64()),
        pa.field("exponent_n", pa.float64()),
        pa.field("exponent_n_low", pa.float64()),
        pa.field("exponent_n_high", pa.float64()),
        pa.field("intercept", pa.float64()),
        pa.field("r2", pa.float64()),
        pa.field("runs", pa.int64()),
    ]
)


#: The AWS variables that say where ``s3://`` results are, none of them secret. A driver
#: passes those it has to its tasks and training workers for an ``s3://`` location. Keys and
#: session tokens never travel through Ray (a job's runtime environment is readable in Ray's
#: job table and logged on every node): nodes get access from their own environment -- the
#: shell that started the local head, or a cloud node's instance profile.
FORWARDED_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
)


def forwarded_env(location: str) -> dict[str, str]:
    """The variables of :data:`FORWARDED_ENV_VARS` set here, for an ``s3://`` ``location``
    (none for any other)."""
    if not location.startswith("s3://"):
        return {}
    return {name: os.environ[name] for name in FORWARDED_ENV_VARS if name in os.environ}


def is_uri(location: str) -> bool:
    """Whether ``location`` is a URI (``s3://...``) rather than a local path.

    >>> is_uri("s3://bucket/ce-ray"), is_uri("results")
    (True, False)
    """
    return "://" in location


def resolve(location: str) -> str:
    """A URI unchanged, a local path made absolute (jobs run in a copy of the working dir)."""
    return location if is_uri(location) else os.path.abspath(location)


def check_writable(location: str, option: str = "--results") -> None:
    """Fail early, with one line, when ``location`` cannot hold results.

    Local: the nearest existing ancestor must be a writable directory (nothing is created).
    URI: the endpoint must answer, the bucket must exist and the credentials in the
    environment must be able to read the location. Nothing is written (a probe object would
    leave a directory marker behind on S3), so credentials that may read but not write are
    found out at the first write. Raises ValueError naming the location.
    """

    def fail(reason: str) -> None:
        raise ValueError(f"{option} {location}: cannot write there: {reason}")

    if not is_uri(location):
        path = os.path.abspath(location)
        ancestor = path
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            fail(f"{ancestor} is a file, not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            fail(f"permission denied on {ancestor}")
        return
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except (ValueError, OSError, pa.ArrowException) as error:
        fail(first_line(error))
    bucket = path.split("/", 1)[0]
    try:
        if isinstance(fs, pafs.S3FileSystem) and (
            fs.get_file_info(bucket).type == pafs.FileType.NotFound
        ):
            fail(f"bucket {bucket!r} does not exist")
        fs.get_file_info(path.rstrip("/"))
    except (OSError, pa.ArrowException) as error:
        fail(first_line(error))


def first_line(error: BaseException) -> str:
    """An error's first non-empty line (its type when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def join(location: str, *parts: str) -> str:
    """A path or URI under ``location``, with ``/`` whatever the platform.

    >>> join("s3://bucket/ce-ray/", "digits-mlp-primal", "trials.parquet")
    's3://bucket/ce-ray/digits-mlp-primal/trials.parquet'
    """
    return "/".join([location.rstrip("/"), *parts])


def is_directory(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(location: str, suffix: str = "") -> list[str]:
    """Names (not paths) of the files directly under ``location``, temporaries of unfinished
    writes left out; [] when it is missing."""
    return [n for n in _names(location, suffix) if not n.startswith(TEMPORARY_PREFIX)]


def _names(location: str, suffix: str = "") -> list[str]:
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.is_file and i.base_name.endswith(suffix))


def remove_temporaries(location: str) -> int:
    """Delete what writes killed half-way left directly under ``location``; returns how many.

    Call it only when no writer is running there (e.g. before a resume starts its tasks).
    """
    fs, path = filesystem(location)
    leftovers = [n for n in _names(location) if n.startswith(TEMPORARY_PREFIX)]
    for name in leftovers:
        fs.delete_file(f"{path}/{name}")
    return len(leftovers)


def delete(location: str) -> None:
    fs, path = filesystem(location)
    fs.delete_file(path)


def parquet_rows(location: str) -> int | None:
    """Rows of a Parquet file, or None when it is not a whole Parquet file (truncated)."""
    fs, path = filesystem(location)
    try:
        with fs.open_input_file(path) as stream:
            return pq.ParquetFile(stream).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("ce-ray", "torch", "ray", "numpy", "pandas", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


#: Name prefix of the temporary files of :func:`_atomic_write`; a process killed mid-write
#: leaves one behind, which :func:`remove_temporaries` clears.
TEMPORARY_PREFIX = ".tmp-"


def _atomic_write(location: str, write: Callable[[Any], None]) -> None:
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    temporary = f"{parent}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    try:
        with fs.open_output_stream(temporary) as stream:
            write(stream)
        fs.move(temporary, path)
    except BaseException:
        if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
            fs.delete_file(temporary)
        raise


def write_parquet(
    table: pa.Table, location: str, schema: pa.Schema, metadata: dict | None = None
) -> None:
    """Write ``table`` cast to ``schema`` atomically; ``metadata`` goes in as JSON values."""
    table = table.select(schema.names).cast(schema)
    if metadata:
        table = table.replace_schema_metadata({k: json.dumps(v) for k, v in metadata.items()})
    _atomic_write(location, lambda stream: pq.write_table(table, stream))


def write_bytes(data: bytes, location: str) -> None:
    _atomic_write(location, lambda stream: stream.write(data))


def read_parquet(location: str) -> pa.Table:
    fs, path = filesystem(location)
    return pq.read_table(path, filesystem=fs)


def read_metadata(location: str) -> dict:
    """The JSON metadata :func:`write_parquet` stored."""
    fs, path = filesystem(location)
    raw = pq.read_schema(path, filesystem=fs).metadata or {}
    return {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"pandas")}


def check_or_write_config(
    directory: str, config: dict, name: str = "config.json", omitted: Sequence[str] = ()
) -> None:
    """Record an experiment's configuration in ``directory/name``, or, when one is already
    there, refuse a different one (one line naming each changed field). ``omitted``: fields
    a configuration leaves out when they have their default (so that one written before
    they existed still matches): one stored and now left out is a change too."""
    path = join(directory, name)
    if exists(path):
        stored = read_json(path)
        keys = [*config, *(k for k in omitted if k in stored and k not in config)]
        changed = [k for k in keys if json.dumps(stored.get(k)) != json.dumps(config.get(k))]
        if changed:
            details = "; ".join(f"{k}: {stored.get(k)} -> {config.get(k)}" for k in changed)
            raise ValueError(
                f"{directory} was written with a different configuration ({details}); "
                f"use another --experiment or the original settings"
            )
        return
    write_bytes(json.dumps(config, indent=2).encode(), path)


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


#: Reads of a JSON document before a cut-off one counts as broken (see :func:`read_json`).
JSON_READS = 5


def read_json(location: str) -> Any:
    """``location``'s JSON document, which another process may be replacing meanwhile.

    On an object store a reader can get a replaced document cut short: pyarrow reads an S3
    object by byte ranges after asking its size, and a replacement in between changes the
    bytes under it (seen on a sweep to S3: a trial record read while rank 0 rewrote it failed
    the trial). A document that does not parse is read again, up to ``JSON_READS`` times."""
    for read in range(1, JSON_READS + 1):
        try:
            return json.loads(read_text(location))
        except ValueError:
            if read == JSON_READS:
                raise
            time.sleep(0.05 * read)
