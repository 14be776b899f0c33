"""Every command-line option of ce-ray, declared once, and how a bad one is reported.

Each option is declared in one function below and reused by every command that takes it, so a
name means the same thing everywhere (and matches the Parquet column of the same name). A
value is checked where it is parsed, by its argparse ``type``; a rule that involves several
values is checked by the configuration it builds (``ce_ray.configs``). Either way the user
sees one line, ``PROG: error: ...``, and exit status 2 -- never a usage dump or a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ce_ray import limits
from ce_ray.choices import (
    COST_MODELS,
    DTYPES,
    FORMULATIONS,
    METHODS,
    METRICS,
    OPTIMIZERS,
    PARAMETERISATIONS,
    PRECISIONS,
    READOUTS,
    SCHEDULERS,
    SCHEDULES,
)
from ce_ray.presets import DEFAULT_FIT_PRESET, DEFAULT_SWEEP_PRESET, FIT_PRESETS, SWEEP_PRESETS
from ce_ray.theory.curves import parse_widths
from ce_ray.theory.spaces import SPACES

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2, and an
    option must be spelled whole: with argparse's prefix matching, an option added later
    (``--data``) would silently change what a prefix of an older one (``--data-root``)
    means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def run_reporting_errors(prog: str, command: Callable[[], int | None]) -> int:
    """Run ``command``; any error becomes one line on stderr.

    Bad input found after parsing -- a missing dataset, an unusable results location, a
    changed configuration, a file that is not what it should be (``ValueError``, ``OSError``,
    pyarrow's errors) -- exits with status 2. Anything else is a failure of ce-ray or of the
    cluster: status 1, and the traceback only with ``CE_RAY_TRACEBACK=1``.
    """
    try:
        return command() or 0
    except Exception as error:
        if isinstance(error, ValueError | OSError) or type(error).__module__.startswith("pyarrow"):
            print(f"{prog}: error: {first_line(error)}", file=sys.stderr)
            return USAGE_ERROR
        if os.environ.get("CE_RAY_TRACEBACK"):
            raise
        print(
            f"{prog}: failed: {type(error).__name__}: {first_line(error)} "
            "(CE_RAY_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its type when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# Value types: parse one value or say, in one line, what is allowed.


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``).

    >>> integer(2)("5")
    5
    >>> integer(2)("1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be an integer >= 2; got '1'
    >>> integer(1, 256)("1000")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be an integer <= 256; got '1000'
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be an integer <= {maximum}; got {text!r}")
        return value

    return parse


def number(
    minimum: float = 0.0, maximum: float | None = None, *, inclusive: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number > ``minimum`` (>= with ``inclusive``), and <=
    ``maximum``.

    >>> number()("1.5")
    1.5
    >>> number()("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a finite number > 0; got '0'
    """
    relation = ">=" if inclusive else ">"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {relation} {minimum:g}; got {text!r}"
            )
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f"must be a finite number <= {maximum:g}; got {text!r}"
            )
        return value

    return parse


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def experiment_name(text: str) -> str:
    """An argparse type: an experiment name, one safe path segment under the results.

    >>> experiment_name("digits-mlp-primal")
    'digits-mlp-primal'
    >>> experiment_name("../x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be one path segment of letters, digits, ...
    """
    if len(text) > limits.MAX_NAME_LENGTH or not NAME.fullmatch(text):
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(
            "must be one path segment of letters, digits, '.', '_' and '-' (not starting "
            f"with '.' or '-', at most {limits.MAX_NAME_LENGTH} characters); got {shown!r}"
        )
    return text


def location(text: str) -> str:
    """An argparse type: a path or a URI to read, without credentials in it (they would be
    printed and sent on); refused before any connection, and never echoed back.

    >>> location("s3://bucket/ce-ray/alpha.parquet")
    's3://bucket/ce-ray/alpha.parquet'
    >>> location("s3://KEY:SECRET@bucket/x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    argparse.ArgumentTypeError: a URI must not carry credentials (user:password@): ...
    """
    if "://" in text and "@" in urlsplit(text).netloc:
        raise argparse.ArgumentTypeError(
            "a URI must not carry credentials (user:password@): the nodes read them from "
            "their own environment or instance profile"
        )
    return text


def results_location(text: str) -> str:
    """An argparse type: a results directory or a URI without a query or credentials.

    A query would be dropped from every file's key, and credentials in a URI would be printed
    and stored; neither is echoed back.

    >>> results_location("s3://bucket/ce-ray")
    's3://bucket/ce-ray'
    >>> results_location("s3://KEY:SECRET@bucket/x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    argparse.ArgumentTypeError: a URI must not carry credentials (user:password@): ...
    """
    if "://" not in location(text):
        return text
    parts = urlsplit(text)
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise argparse.ArgumentTypeError(
            f"a URI must not have a query or fragment ({parts.scheme}://{parts.netloc}"
            f"{parts.path}?...): set AWS_ENDPOINT_URL and AWS_REGION instead"
        )
    return text


#: Where MLflow can track runs: a server, or a local store (a directory or a database file).
MLFLOW_SCHEMES = ("http", "https", "file", "sqlite")


def mlflow_uri(text: str) -> str:
    """An argparse type: an MLflow tracking URI, without credentials (MLflow reads them from
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` in the driver's environment).

    >>> mlflow_uri("http://127.0.0.1:5000")
    'http://127.0.0.1:5000'
    >>> mlflow_uri("http://me:pw@host")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must not carry credentials (user:password@): ...
    """
    parts = urlsplit(text)
    if parts.scheme not in MLFLOW_SCHEMES or not (parts.netloc or parts.path):
        raise argparse.ArgumentTypeError(
            f"must be a tracking URI with one of the schemes {', '.join(MLFLOW_SCHEMES)} "
            f"(http://HOST:PORT, sqlite:///PATH.db); got {text[:80]!r}"
        )
    if parts.username or parts.password:
        raise argparse.ArgumentTypeError(
            "must not carry credentials (user:password@): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the driver's environment"
        )
    return text


def device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N``.

    >>> device("cuda:1")
    'cuda:1'
    """
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N; got {text!r}")
    return text


def widths(text: str) -> tuple[int, ...]:
    """An argparse type: a grid of positive integers (widths, multiplicities), ``LO:HI``,
    ``LO:HI:STEP`` or ``8,16,32``.

    >>> widths("8:12:2")
    (8, 10, 12)
    """
    try:
        return tuple(int(w) for w in parse_widths(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: ``MODULE:CALLABLE``: how a user names their own member(n).
MEMBER_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def space_name(text: str) -> str:
    """An argparse type: a built-in space or ``MODULE:CALLABLE`` (your own member).

    >>> space_name("mypkg.blocks:member")
    'mypkg.blocks:member'
    """
    if text in SPACES or MEMBER_NAME.fullmatch(text):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(map(repr, SPACES))}, "
        "or MODULE:CALLABLE for your own member)"
    )


def shape(text: str) -> tuple[int, ...]:
    """An argparse type: one example's shape without the batch, ``64`` or ``3,32,32``.

    >>> shape("3,32,32")
    (3, 32, 32)
    """
    parts = text.split(",")
    if not 1 <= len(parts) <= limits.MAX_INPUT_DIMS or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"must be 1 to {limits.MAX_INPUT_DIMS} positive integers, e.g. 64 or 3,32,32; "
            f"got {text!r}"
        )
    dims = tuple(int(p) for p in parts)
    if min(dims) < 1 or math.prod(dims) > limits.MAX_INPUT_SIZE:
        raise argparse.ArgumentTypeError(
            f"must hold 1 to {limits.MAX_INPUT_SIZE:,} values per example; got {text!r}"
        )
    return dims


def member_name(text: str) -> str:
    """An argparse type: ``MODULE:CALLABLE``, your own member(n)."""
    if not MEMBER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"must be MODULE:CALLABLE naming your member(n), e.g. mypkg.blocks:member; got {text!r}"
        )
    return text


def numbers(text: str) -> tuple[float, ...]:
    """An argparse type: a comma list of finite numbers > 0.

    >>> numbers("2,8,32")
    (2.0, 8.0, 32.0)
    """
    parse = number(0, 10**6)
    return tuple(parse(part) for part in text.split(","))


# Options shared by several commands.


def add_results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=results_location,
        default=os.environ.get("CE_RAY_RESULTS", "results"),
        help="results directory or URI (s3://...); shared storage on a multi-node cluster "
        "(default: $CE_RAY_RESULTS or ./results)",
    )


def add_experiment(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--experiment", type=experiment_name, help=f"experiment name (default: {default})"
    )


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed",
        type=integer(0, 2**63 - 1),
        default=0,
        help="experiment seed: every draw derives from it (0)",
    )


def add_stall_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--stall-timeout",
        type=number(limits.MIN_STALL_TIMEOUT_S, limits.MAX_STALL_TIMEOUT_S, inclusive=True),
        default=limits.DEFAULT_STALL_TIMEOUT_S,
        help=f"seconds without progress after which {what} (at least: "
        f"{limits.STALL_FACTOR:g} x the longest so far when larger; "
        f"{limits.DEFAULT_STALL_TIMEOUT_S:g})",
    )


def add_alpha_from(parser: argparse.ArgumentParser, group: Any) -> None:
    """``--alpha-from`` (in ``group``, beside ``--alpha``) and ``--accept-law-warnings``."""
    group.add_argument(
        "--alpha-from", type=location, help="alpha.parquet of an earlier fit-alpha run"
    )
    parser.add_argument(
        "--accept-law-warnings",
        action="store_true",
        help="use an --alpha-from fit although it warns that Eq. 9 may not describe the block",
    )


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        type=location,
        metavar="HOST:PORT",
        help="the running Ray cluster to join (default: RAY_ADDRESS, else the cluster your own "
        "`ray start` recorded on this node, else a new one of its own on 127.0.0.1)",
    )


def add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=integer(1, 10**6), help="concurrent tasks (cluster CPUs)")


def add_input_shape(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    required: bool = False,
    fan_in_sum: bool = True,
) -> None:
    """``--input-shape``: one example's shape, for a member of the user's own; and (with
    ``fan_in_sum``) ``--fan-in-sum``, its S(n) given instead of traced."""
    parser.add_argument(
        "--input-shape",
        type=shape,
        required=required,
        help="your member: one example's shape, 64 or 3,32,32",
    )
    if not fan_in_sum:
        return
    parser.add_argument(
        "--fan-in-sum",
        type=member_name,
        dest="fan_in_sum_from",
        metavar="MODULE:CALLABLE",
        help="your member: S(n) -> float to use instead of the traced S(n)",
    )


# Options of one command each.


def add_space_options(parser: argparse.ArgumentParser) -> None:
    """``--space`` and the options of its constructor (``ce_ray.theory.spaces.make_space``)."""
    parser.add_argument(
        "--space",
        required=True,
        type=space_name,
        metavar="{" + ",".join(SPACES) + "} or MODULE:CALLABLE",
        help="architecture family, or your own member(n) (with --input-shape)",
    )
    group = parser.add_argument_group("space options (each applies to the spaces named)")
    group.add_argument(
        "--classes",
        type=integer(1, 10**6),
        dest="num_classes",
        help="outputs: fc, cifar-resnext29, imagenet-*",
    )
    group.add_argument("--input-dim", type=integer(1, 10**7), help="fc: input size n0 (784)")
    group.add_argument("--depth", type=integer(1, 1000), help="fc: weight layers L (6)")
    group.add_argument("--in-channels", type=integer(1, 10**5), help="resnext-block: n_in (256)")
    group.add_argument("--out-channels", type=integer(1, 10**5), help="resnext-block: n_out (256)")
    group.add_argument("--spatial", type=integer(1, 4096), help="resnext-block: input side (8)")
    group.add_argument(
        "--image-size", type=integer(1, 4096), help="cifar-resnext29: input side (32)"
    )
    add_input_shape(group)


#: The space options above: command-line flag -> the space constructor's keyword.
SPACE_FLAGS: dict[str, str] = {
    "--classes": "num_classes",
    "--input-dim": "input_dim",
    "--depth": "depth",
    "--in-channels": "in_channels",
    "--out-channels": "out_channels",
    "--spatial": "spatial",
    "--image-size": "image_size",
    "--input-shape": "input_shape",
    "--fan-in-sum": "fan_in_sum_from",
}


def add_params_options(parser: argparse.ArgumentParser) -> None:
    add_space_options(parser)
    parser.add_argument(
        "--m", type=integer(1, limits.MAX_MULTIPLICITY), required=True, help="multiplicity m"
    )
    parser.add_argument(
        "--n", type=integer(1, limits.MAX_WIDTH), required=True, help="member width n"
    )
    add_json(parser)


def add_curve_options(parser: argparse.ArgumentParser) -> None:
    add_space_options(parser)
    parser.add_argument(
        "--baseline", type=integer(1, limits.MAX_WIDTH), required=True, help="baseline width n~"
    )
    alpha = parser.add_mutually_exclusive_group(required=True)
    alpha.add_argument("--alpha", type=number(0, limits.MAX_ALPHA), help="fitted alpha of Eq. 9")
    add_alpha_from(parser, alpha)
    parser.add_argument("--formulation", choices=FORMULATIONS, default="primal")
    parser.add_argument("--metric", choices=METRICS, default="params", help="budget (params)")
    parser.add_argument(
        "--cost",
        choices=COST_MODELS,
        default="block",
        help="beta(n) from one fitted block (the paper; default) or the whole network's count",
    )
    parser.add_argument(
        "--widths", type=widths, help="width grid LO:HI[:STEP] or a comma list (1:BASELINE)"
    )
    parser.add_argument("--all", action="store_true", help="print every row")
    add_json(parser)


def add_inspect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "member",
        help="your member as MODULE:CALLABLE, member(n) -> torch.nn.Module (width n)",
    )
    add_input_shape(parser, required=True, fan_in_sum=False)
    parser.add_argument(
        "--widths", type=widths, default=(8, 16, 32, 64), help="widths to trace (8,16,32,64)"
    )
    add_json(parser)


def add_fit_alpha_options(parser: argparse.ArgumentParser) -> None:
    block = parser.add_mutually_exclusive_group()
    block.add_argument(
        "--preset",
        choices=list(FIT_PRESETS),
        help=f"block to fit (default {DEFAULT_FIT_PRESET})",
    )
    block.add_argument(
        "--space",
        type=member_name,
        metavar="MODULE:CALLABLE",
        help="your own member(n) to fit instead of a preset's block (with --input-shape)",
    )
    add_input_shape(parser)
    parser.add_argument(
        "--parameterisation",
        choices=PARAMETERISATIONS,
        help="your member: ntk, sampled as written (as ce-ray's blocks; when not given), or "
        "standard, written in PyTorch's default parameterisation: its NTK twin is sampled",
    )
    parser.add_argument("--widths", type=widths, help="width grid (default: the preset's)")
    parser.add_argument(
        "--samples", type=integer(2, limits.MAX_SAMPLES), help="T, draws per width (the preset's)"
    )
    add_workers(parser)
    add_experiment(parser, "the preset")
    add_results(parser)
    add_address(parser)
    add_seed(parser)
    parser.add_argument(
        "--device", type=device, default="cpu", help="cpu or cuda[:N] (default cpu)"
    )
    parser.add_argument("--method", choices=METHODS, help="NTK sampler (default: the preset's)")
    parser.add_argument("--readout", choices=READOUTS, default="pool", help="conv read-out")
    parser.add_argument("--off-diagonal", action="store_true", help="sample K(x1, x2)")
    parser.add_argument(
        "--shard-size", type=integer(1, limits.MAX_SAMPLES), help="draws per Ray task"
    )
    parser.add_argument(
        "--memory-budget", type=number(0, 2**20), default=256.0, help="MiB per sampling chunk (256)"
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument(
        "--bootstrap",
        type=integer(1, limits.MAX_BOOTSTRAP),
        default=1000,
        help="bootstrap replicates (1000)",
    )
    parser.add_argument("--intercept", action="store_true", help="fit an intercept too")
    add_stall_timeout(parser, "a task is killed and run again")
    add_json(parser)


def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("formulation", choices=FORMULATIONS, help="which curve to sweep")
    parser.add_argument(
        "--preset",
        choices=list(SWEEP_PRESETS),
        default=DEFAULT_SWEEP_PRESET,
        help=f"experiment (default {DEFAULT_SWEEP_PRESET})",
    )
    add_experiment(parser, "PRESET-FORMULATION")
    add_results(parser)
    add_address(parser)
    parser.add_argument(
        "--points",
        dest="num_points",
        type=integer(2, limits.MAX_POINTS),
        help="points on the curve (5)",
    )
    parser.add_argument("--seeds", type=integer(1, limits.MAX_SEEDS), help="seeds per point (2)")
    add_recipe_options(parser)
    add_data_options(parser)
    add_tune_options(parser)
    parser.add_argument(
        "--workers-per-trial",
        type=integer(1, limits.MAX_WORKERS_PER_TRIAL),
        help="Ray Train workers per trial (1)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=number(0, limits.MAX_GPUS_PER_WORKER, inclusive=True),
        help="GPUs per worker: a fraction below 1 or a whole number (0)",
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=number(limits.MIN_CPUS_PER_WORKER, limits.MAX_CPUS_PER_WORKER, inclusive=True),
        help="CPUs per worker (1)",
    )
    alpha = parser.add_mutually_exclusive_group()
    alpha.add_argument(
        "--alpha", type=number(0, limits.MAX_ALPHA), help="alpha of Eq. 9 (default: the preset's)"
    )
    add_alpha_from(parser, alpha)
    add_sweep_member_options(parser)
    parser.add_argument(
        "--max-concurrent-trials", type=integer(1, 10**6), help="default: what the cluster can hold"
    )
    parser.add_argument(
        "--max-failures",
        type=integer(0, limits.MAX_FAILURES),
        default=2,
        help="restarts per trial (2)",
    )
    add_stall_timeout(parser, "a trial fails and is retried from its checkpoint")
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="fifo (default) or asha")
    add_seed(parser)
    parser.add_argument(
        "--data-root",
        type=location,
        default=os.environ.get("CE_RAY_DATA"),  # checked as if given (argparse parses it)
        help="dataset root; relative: under the project (default: $CE_RAY_DATA or data)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the PNGs")
    parser.add_argument(
        "--mlflow",
        type=mlflow_uri,
        metavar="URI",
        help="log each (point, seed) as an MLflow run at this tracking URI, under an MLflow "
        "experiment named like --experiment (pip install 'ce-ray[mlflow]')",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's and Tune's whole output as well: status tables, Ray Train's per-epoch "
        "lines, the workers' logs (or CE_RAY_VERBOSE=1)",
    )
    add_execution_options(parser)


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """The training recipe's fields (``ce_ray.presets.Recipe``), each the preset's when not
    given here nor in ``--recipe``'s file."""
    recipe = parser.add_argument_group(
        "the training recipe (default: the preset's; flags override --recipe's file)"
    )
    recipe.add_argument(
        "--recipe",
        type=location,
        metavar="FILE",
        help="a JSON object of recipe fields: epochs, optimizer, lr, weight_decay, momentum, "
        "batch_size, schedule, warmup_epochs, label_smoothing",
    )
    recipe.add_argument(
        "--epochs", type=integer(1, limits.MAX_EPOCHS), help="epochs (default: the preset's)"
    )
    recipe.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd, adam or adamw")
    recipe.add_argument("--lr", type=number(0, limits.MAX_LR), help="learning rate")
    recipe.add_argument(
        "--weight-decay",
        type=number(0, limits.MAX_WEIGHT_DECAY, inclusive=True),
        help="weight decay (adamw: decoupled)",
    )
    recipe.add_argument("--momentum", type=number(0, 0.999, inclusive=True), help="SGD's momentum")
    recipe.add_argument(
        "--batch-size",
        type=integer(1, limits.MAX_BATCH_SIZE),
        help="global batch size, split over a trial's workers",
    )
    recipe.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="lr schedule per epoch: constant, step (the preset's milestones) or cosine",
    )
    recipe.add_argument(
        "--warmup-epochs",
        type=integer(0, limits.MAX_EPOCHS),
        help="epochs of linear lr warm-up before the schedule",
    )
    recipe.add_argument(
        "--label-smoothing",
        type=number(0, 0.999, inclusive=True),
        help="label smoothing of the cross-entropy",
    )


def data_source(text: str) -> str:
    """An argparse type: ``--data``'s ``parquet:PATH_OR_URI``, ``imagefolder:DIR`` or
    ``MODULE:CALLABLE`` (a path or URI checked as :func:`location` checks it).

    >>> data_source("parquet:s3://bucket/table.parquet")
    'parquet:s3://bucket/table.parquet'
    """
    from ce_ray.own_data import DATA_PREFIXES

    prefix, colon, rest = text.partition(":")
    if not colon or not prefix or not rest:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be parquet:PATH_OR_URI, imagefolder:DIR or MODULE:CALLABLE"
        )
    if prefix in DATA_PREFIXES:
        return f"{prefix}:{location(rest)}"
    return member_name(text)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--data`` (your own data instead of the preset's) and how it is read and split."""
    data = parser.add_argument_group(
        "your own data instead of the preset's (the preset gives the network family and recipe)"
    )
    data.add_argument(
        "--data",
        type=data_source,
        metavar="SOURCE",
        help="parquet:PATH_OR_URI (with --label-column), imagefolder:DIR (a folder per class) "
        "or MODULE:CALLABLE returning (train, test) torch Datasets",
    )
    data.add_argument("--label-column", metavar="COLUMN", help="a table's class column")
    data.add_argument(
        "--image-size",
        type=integer(1, 1024),
        help="side images are resized to (imagefolder; default 32)",
    )
    data.add_argument(
        "--test-fraction",
        type=number(0, 1),
        help="share of the examples held out for testing when the data has no test split: "
        "0.2 unless given",
    )
    data.add_argument(
        "--validation-fraction",
        type=number(0, 1),
        help="share of the training examples held out for validation (0.1 of your own data; "
        "a preset's: none unless given)",
    )


def add_tune_options(parser: argparse.ArgumentParser) -> None:
    """``--tune-trials`` and ``--tune``: a recipe tuned per point on the validation split."""
    tune = parser.add_argument_group(
        "a fair comparison: the recipe tuned per point (judged on the validation split)"
    )
    tune.add_argument(
        "--tune-trials",
        type=integer(1, limits.MAX_TUNE_TRIALS),
        metavar="K",
        help="recipes drawn from --tune's ranges and tried on every point (the same K for each); "
        "the best on validation trains the point's seeds",
    )
    tune.add_argument(
        "--tune",
        action="append",
        metavar="FIELD=LOW..HIGH[:log]",
        help="a range to draw FIELD from (lr, weight-decay, momentum, label-smoothing); "
        "repeat for several",
    )


def add_sweep_member_options(parser: argparse.ArgumentParser) -> None:
    """The sweep's ``--space`` (your own member instead of the preset's space) and its
    ``--input-shape``, ``--fan-in-sum``, ``--network`` and ``--baseline``."""
    member = parser.add_argument_group(
        "your own member instead of the preset's space (the preset gives data and recipe)"
    )
    member.add_argument(
        "--space",
        type=member_name,
        dest="member",
        metavar="MODULE:CALLABLE",
        help="your member(n) -> torch.nn.Module (with --input-shape, and --alpha or --alpha-from)",
    )
    add_input_shape(member)
    member.add_argument(
        "--network",
        type=member_name,
        dest="network_from",
        metavar="MODULE:CALLABLE",
        help="network(m, n) -> torch.nn.Module: m members of width n as a classifier of the "
        "preset's data (default: the members' vectorised ensemble, which must give logits)",
    )
    member.add_argument(
        "--baseline",
        type=integer(1, limits.MAX_WIDTH),
        help="n~, the baseline 1 x n~ (default: the preset's)",
    )


def add_execution_options(parser: argparse.ArgumentParser) -> None:
    """How each training worker runs: precision, layout, compile, packed seeds, loaders."""
    execution = parser.add_argument_group("how each training worker runs (default: per device)")
    execution.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="autocast precision (auto: bf16 with GPUs, fp32 on CPUs)",
    )
    execution.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="NHWC layout (default: on for convolutional presets with GPUs)",
    )
    execution.add_argument("--compile", action="store_true", help="torch.compile the model")
    execution.add_argument(
        "--pack-seeds",
        action=argparse.BooleanOptionalAction,
        help="train a point's seeds as one vectorised model in one trial (default: on for "
        "the MLP presets unless fp16)",
    )
    execution.add_argument(
        "--loader-workers",
        type=integer(0, 4096),
        help="DataLoader processes per training worker (default: --cpus-per-worker - 1)",
    )


def add_nmk_options(parser: argparse.ArgumentParser) -> None:
    """Fig. 2 / Lemma 1 (``ce_ray.experiments.nmk.NMKConfig``; None: its default)."""
    parser.add_argument("--depth", type=integer(2, 64), help="fc: weight layers L (4)")
    parser.add_argument("--widths", type=widths, help="member widths n (16,64,256)")
    parser.add_argument(
        "--wide-width", type=integer(2, limits.MAX_WIDTH), help="the reference model's width (2048)"
    )
    parser.add_argument("--multiplicities", type=widths, help="ensemble sizes m (1,2,4,8,16,32,64)")
    parser.add_argument(
        "--draws", type=integer(2, limits.MAX_MEMBERS), help="ensembles at the largest m (32)"
    )
    parser.add_argument(
        "--wide-members",
        type=integer(2, limits.MAX_MEMBERS),
        help="members at the wide width (256)",
    )
    parser.add_argument(
        "--gammas", type=integer(2, limits.MAX_GAMMAS), help="points on [-pi, pi] (33)"
    )
    parser.add_argument(
        "--block-members",
        type=integer(1, limits.MAX_MEMBERS),
        help="members per Ray task at width 256 (512)",
    )
    parser.add_argument(
        "--bootstrap", type=integer(1, limits.MAX_BOOTSTRAP), help="bootstrap replicates (1000)"
    )
    add_workers(parser)
    add_experiment(parser, "lemma1")
    add_results(parser)
    add_address(parser)
    add_seed(parser)
    add_stall_timeout(parser, "a task is killed and run again")
    add_json(parser)


def add_drift_options(parser: argparse.ArgumentParser) -> None:
    """Theorem 1 (``ce_ray.experiments.drift.DriftConfig``; None: its default)."""
    parser.add_argument("--multiplicities", type=widths, help="ensemble sizes m (1,2,4,8,16)")
    parser.add_argument("--widths", type=widths, help="member widths n (16,32,64,128)")
    parser.add_argument("--depth", type=integer(2, 64), help="fc: weight layers L (3)")
    parser.add_argument("--seeds", type=integer(1, limits.MAX_SEEDS), help="runs per (m, n) (3)")
    parser.add_argument(
        "--train-points", type=integer(1, limits.MAX_TRAIN_POINTS), help="training inputs N (32)"
    )
    parser.add_argument("--input-dim", type=integer(1, 10**5), help="fc: input size n0 (8)")
    parser.add_argument(
        "--probe-points", type=integer(1, limits.MAX_PROBE_POINTS), help="kernel probe inputs P (8)"
    )
    parser.add_argument("--step", type=number(0, 1), help="learning rate x N L (0.1)")
    parser.add_argument(
        "--flow-times", type=numbers, help="when to measure, gradient-flow time x N L (2,8,32)"
    )
    add_workers(parser)
    add_experiment(parser, "theorem1")
    add_results(parser)
    add_address(parser)
    add_seed(parser)
    add_stall_timeout(parser, "a task is killed and run again")
    add_json(parser)


def add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", type=location, help="<results>/<experiment> of a sweep")
    parser.add_argument("--no-plots", action="store_true", help="only print the table")
