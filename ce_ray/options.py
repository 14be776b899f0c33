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
import sys
from collections.abc import Callable

from ce_ray.choices import (
    COST_MODELS,
    DTYPES,
    FORMULATIONS,
    METHODS,
    METRICS,
    PRECISIONS,
    READOUTS,
    SCHEDULERS,
)
from ce_ray.presets import DEFAULT_FIT_PRESET, DEFAULT_SWEEP_PRESET, FIT_PRESETS, SWEEP_PRESETS
from ce_ray.theory.curves import parse_widths
from ce_ray.theory.spaces import SPACES

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def run_reporting_errors(prog: str, command: Callable[[], int | None]) -> int:
    """Run ``command``; a ``ValueError`` (bad input found after parsing: a missing dataset,
    an unwritable results location, a changed configuration) becomes one line on stderr and
    exit status 2."""
    try:
        return command() or 0
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


# Value types: parse one value or say, in one line, what is allowed.


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``.

    >>> integer(2)("5")
    5
    >>> integer(2)("1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be an integer >= 2; got '1'
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}")
        return value

    return parse


def number(minimum: float = 0.0, *, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number > ``minimum`` (>= with ``inclusive``).

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
        return value

    return parse


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


# Options shared by several commands.


def add_results(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        default=os.environ.get("CE_RAY_RESULTS", "results"),
        help="results directory or URI (s3://...); shared storage on a multi-node cluster "
        "(default: $CE_RAY_RESULTS or ./results)",
    )


def add_experiment(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--experiment", help=f"experiment name (default: {default})")


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=integer(0), default=0, help="experiment seed: every draw derives from it (0)"
    )


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


# Options of one command each.


def add_space_options(parser: argparse.ArgumentParser) -> None:
    """``--space`` and the options of its constructor (``ce_ray.theory.spaces.make_space``)."""
    parser.add_argument("--space", required=True, choices=list(SPACES), help="architecture family")
    group = parser.add_argument_group("space options (each applies to the spaces named)")
    group.add_argument(
        "--classes",
        type=integer(1),
        dest="num_classes",
        help="outputs: fc, cifar-resnext29, imagenet-*",
    )
    group.add_argument("--input-dim", type=integer(1), help="fc: input size n0 (784)")
    group.add_argument("--depth", type=integer(1), help="fc: weight layers L (6)")
    group.add_argument("--in-channels", type=integer(1), help="resnext-block: n_in (256)")
    group.add_argument("--out-channels", type=integer(1), help="resnext-block: n_out (256)")
    group.add_argument("--spatial", type=integer(1), help="resnext-block: input side (8)")
    group.add_argument("--image-size", type=integer(1), help="cifar-resnext29: input side (32)")


#: The space options above: command-line flag -> the space constructor's keyword.
SPACE_FLAGS: dict[str, str] = {
    "--classes": "num_classes",
    "--input-dim": "input_dim",
    "--depth": "depth",
    "--in-channels": "in_channels",
    "--out-channels": "out_channels",
    "--spatial": "spatial",
    "--image-size": "image_size",
}


def add_params_options(parser: argparse.ArgumentParser) -> None:
    add_space_options(parser)
    parser.add_argument("--m", type=integer(1), required=True, help="multiplicity m")
    parser.add_argument("--n", type=integer(1), required=True, help="member width n")
    add_json(parser)


def add_curve_options(parser: argparse.ArgumentParser) -> None:
    add_space_options(parser)
    parser.add_argument("--baseline", type=integer(1), required=True, help="baseline width n~")
    parser.add_argument("--alpha", type=number(), required=True, help="fitted alpha of Eq. 9")
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


def add_fit_alpha_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=list(FIT_PRESETS),
        default=DEFAULT_FIT_PRESET,
        help=f"block to fit (default {DEFAULT_FIT_PRESET})",
    )
    parser.add_argument("--widths", type=widths, help="width grid (default: the preset's)")
    parser.add_argument("--samples", type=integer(2), help="T, draws per width (the preset's)")
    add_workers(parser)
    add_experiment(parser, "the preset")
    add_results(parser)
    add_seed(parser)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--method", choices=METHODS, help="NTK sampler (default: the preset's)")
    parser.add_argument("--readout", choices=READOUTS, default="pool", help="conv read-out")
    parser.add_argument("--off-diagonal", action="store_true", help="sample K(x1, x2)")
    parser.add_argument("--shard-size", type=integer(1), help="draws per Ray task")
    parser.add_argument(
        "--memory-budget", type=number(), default=256.0, help="MiB per sampling chunk (256)"
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument(
        "--bootstrap", type=integer(1), default=1000, help="bootstrap replicates (1000)"
    )
    parser.add_argument("--intercept", action="store_true", help="fit an intercept too")
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
    parser.add_argument(
        "--points", dest="num_points", type=integer(2), help="points on the curve (5)"
    )
    parser.add_argument("--seeds", type=integer(1), help="seeds per point (2)")
    parser.add_argument("--epochs", type=integer(1), help="epochs (default: the preset's)")
    parser.add_argument(
        "--workers-per-trial", type=integer(1), help="Ray Train workers per trial (1)"
    )
    parser.add_argument(
        "--gpus-per-worker", type=number(inclusive=True), help="GPUs per worker (0)"
    )
    parser.add_argument("--cpus-per-worker", type=number(), help="CPUs per worker (1)")
    alpha = parser.add_mutually_exclusive_group()
    alpha.add_argument("--alpha", type=number(), help="alpha of Eq. 9 (default: the preset's)")
    alpha.add_argument("--alpha-from", help="alpha.parquet of an earlier fit-alpha run")
    parser.add_argument(
        "--max-concurrent-trials", type=integer(1), help="default: what the cluster can hold"
    )
    parser.add_argument("--max-failures", type=integer(0), default=2, help="restarts per trial (2)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="fifo (default) or asha")
    add_seed(parser)
    parser.add_argument(
        "--data-root",
        help="dataset root; relative: under the project (default: $CE_RAY_DATA or data)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the PNGs")
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
        type=integer(0),
        help="DataLoader processes per training worker (default: --cpus-per-worker - 1)",
    )


def numbers(text: str) -> tuple[float, ...]:
    """An argparse type: a comma list of finite numbers > 0.

    >>> numbers("2,8,32")
    (2.0, 8.0, 32.0)
    """
    parse = number()
    return tuple(parse(part) for part in text.split(","))


def add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=integer(1), help="concurrent tasks (cluster CPUs)")


def add_nmk_options(parser: argparse.ArgumentParser) -> None:
    """Fig. 2 / Lemma 1 (``ce_ray.experiments.nmk.NMKConfig``; None: its default)."""
    parser.add_argument("--depth", type=integer(2), help="fc: weight layers L (4)")
    parser.add_argument("--widths", type=widths, help="member widths n (16,64,256)")
    parser.add_argument("--wide-width", type=integer(2), help="the reference model's width (2048)")
    parser.add_argument("--multiplicities", type=widths, help="ensemble sizes m (1,2,4,...,64)")
    parser.add_argument("--draws", type=integer(2), help="ensembles at the largest m (32)")
    parser.add_argument("--wide-members", type=integer(2), help="members at the wide width (256)")
    parser.add_argument("--gammas", type=integer(2), help="points on [-pi, pi] (33)")
    parser.add_argument(
        "--block-members", type=integer(1), help="members per Ray task at width 256 (512)"
    )
    parser.add_argument("--bootstrap", type=integer(1), help="bootstrap replicates (1000)")
    add_workers(parser)
    add_experiment(parser, "lemma1")
    add_results(parser)
    add_seed(parser)
    add_json(parser)


def add_drift_options(parser: argparse.ArgumentParser) -> None:
    """Theorem 1 (``ce_ray.experiments.drift.DriftConfig``; None: its default)."""
    parser.add_argument("--multiplicities", type=widths, help="ensemble sizes m (1,2,4,8,16)")
    parser.add_argument("--widths", type=widths, help="member widths n (16,32,64,128)")
    parser.add_argument("--depth", type=integer(2), help="fc: weight layers L (3)")
    parser.add_argument("--seeds", type=integer(1), help="runs per (m, n) (3)")
    parser.add_argument("--train-points", type=integer(1), help="training inputs N (32)")
    parser.add_argument("--input-dim", type=integer(1), help="fc: input size n0 (8)")
    parser.add_argument("--probe-points", type=integer(1), help="kernel probe inputs P (8)")
    parser.add_argument("--step", type=number(), help="learning rate x N L (0.1)")
    parser.add_argument(
        "--flow-times", type=numbers, help="when to measure, gradient-flow time x N L (2,8,32)"
    )
    add_workers(parser)
    add_experiment(parser, "theorem1")
    add_results(parser)
    add_seed(parser)
    add_json(parser)


def add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", help="<results>/<experiment> of a sweep")
    parser.add_argument("--no-plots", action="store_true", help="only print the table")
