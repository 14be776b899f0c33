"""The ``ce-ray`` command line: parameter counts and primal/dual curves.

Every bad input exits with status 2 and one line on stderr naming the value and what is
allowed; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ce_ray.curves import COST_MODELS, FORMULATIONS, Curve, curve, parse_widths
from ce_ray.spaces import METRICS, SPACES, Space, make_space

# Space options on the command line -> the space's constructor field.
SPACE_FLAGS: dict[str, str] = {
    "--classes": "num_classes",
    "--input-dim": "input_dim",
    "--depth": "depth",
    "--in-channels": "in_channels",
    "--out-channels": "out_channels",
    "--spatial": "spatial",
}

# How many rows `curve` prints unless --all is given.
MAX_PRINTED_ROWS = 40


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _add_space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", required=True, choices=list(SPACES), help="architecture family")
    group = parser.add_argument_group("space options (each applies to the spaces named)")
    group.add_argument(
        "--classes", type=positive_int, help="outputs: fc, cifar-resnext29, imagenet-*"
    )
    group.add_argument("--input-dim", type=positive_int, help="fc: input size n0 (784)")
    group.add_argument("--depth", type=positive_int, help="fc: weight layers L (6)")
    group.add_argument("--in-channels", type=positive_int, help="resnext-block: n_in (256)")
    group.add_argument("--out-channels", type=positive_int, help="resnext-block: n_out (256)")
    group.add_argument(
        "--spatial", type=positive_int, help="resnext-block: input side for FLOPs (8)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def space_from_args(args: argparse.Namespace) -> Space:
    """The space named by ``--space`` with the space options that were given."""
    options = {}
    allowed = set(SPACES[args.space].__dataclass_fields__)
    for flag, field in SPACE_FLAGS.items():
        value = getattr(args, field_to_dest(flag))
        if value is None:
            continue
        if field not in allowed:
            takes = [f for f, name in SPACE_FLAGS.items() if name in allowed]
            raise ValueError(
                f"{flag} does not apply to --space {args.space} "
                f"(it takes: {', '.join(takes) or 'no options'})"
            )
        options[field] = value
    return make_space(args.space, **options)


def field_to_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ce-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    params = commands.add_parser("params", help="exact parameter count of an ensemble m x n d")
    _add_space_arguments(params)
    params.add_argument("--m", type=positive_int, required=True, help="multiplicity m")
    params.add_argument("--n", type=positive_int, required=True, help="member width n")

    curve_parser = commands.add_parser("curve", help="primal or dual curve and its optimum")
    _add_space_arguments(curve_parser)
    curve_parser.add_argument(
        "--baseline", type=positive_int, required=True, help="baseline width n~ (m = 1)"
    )
    curve_parser.add_argument(
        "--alpha", type=positive_float, required=True, help="fitted alpha of Eq. 9"
    )
    curve_parser.add_argument("--formulation", choices=FORMULATIONS, default="primal")
    curve_parser.add_argument(
        "--metric", choices=METRICS, default="params", help="budget (default: params)"
    )
    curve_parser.add_argument(
        "--cost",
        choices=COST_MODELS,
        default="block",
        help="beta(n) from one fitted block (paper, default) or the whole network's count",
    )
    curve_parser.add_argument(
        "--widths", help="width grid LO:HI[:STEP] or a comma list (default: 1:BASELINE)"
    )
    curve_parser.add_argument("--all", action="store_true", help="print every row")

    # fit-alpha's options live with its (PyTorch) sampler; parse them only when it is asked
    # for, so `params` and `curve` start without importing torch.
    fit = commands.add_parser(
        "fit-alpha",
        help="fit alpha by sharded Monte-Carlo NTK sampling",
        add_help=False,
        prefix_chars="\0",  # hand every token, options included, to the full parser below
    )
    fit.add_argument("fit_args", nargs=argparse.REMAINDER)

    report_parser = commands.add_parser("report", help="plots and table of a sweep's results")
    report_parser.add_argument("results_dir", help="<results>/<experiment> of a sweep")
    report_parser.add_argument("--no-plots", action="store_true", help="only print the table")
    return parser


def _params_command(args: argparse.Namespace) -> None:
    space = space_from_args(args)
    record = {
        "space": space.name,
        "options": space.options(),
        "m": args.m,
        "n": args.n,
        "label": space.label(args.m, args.n),
        "params": int(space.num_params(args.m, args.n)),
        "flops": int(space.flops(args.m, args.n)),
        "fan_in_sum": float(space.fan_in_sum(args.n)),
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return
    options = ", ".join(f"{k}={v}" for k, v in record["options"].items())
    print(f"{space.name} {record['label']} ({options})")
    print(f"  parameters      {record['params']:,}")
    print(f"  MACs / example  {record['flops']:,}")
    print(f"  S(n)            {record['fan_in_sum']:.6f}")


def _curve_command(args: argparse.Namespace) -> None:
    space = space_from_args(args)
    widths = parse_widths(args.widths) if args.widths else None
    result = curve(
        space, args.alpha, args.baseline, widths, args.formulation, args.metric, args.cost
    )
    if args.json:
        print(json.dumps(curve_to_json(result), indent=2))
    else:
        print(format_curve(result, all_rows=args.all))


def _row_record(space: Space, row: pd.Series) -> dict:
    record = {
        k: (int(v) if k in ("n", "m", "params", "flops") else float(v)) for k, v in row.items()
    }
    record["label"] = space.label(record["m"], record["n"])
    return record


def curve_to_json(result: Curve) -> dict:
    """The curve as a JSON-ready dict (fields documented in the README)."""
    return {
        "space": result.space.name,
        "options": result.space.options(),
        "formulation": result.formulation,
        "metric": result.metric,
        "cost": result.cost,
        "alpha": result.alpha,
        "baseline": _row_record(result.space, result.baseline),
        "optimum": _row_record(result.space, result.optimum),
        "table": [_row_record(result.space, row) for _, row in result.table.iterrows()],
    }


def _rows_to_print(result: Curve, all_rows: bool) -> pd.DataFrame:
    """All rows, or ~MAX_PRINTED_ROWS log-spaced widths plus the optimum and the baseline."""
    table = result.table
    if all_rows or len(table) <= MAX_PRINTED_ROWS:
        return table
    positions = np.unique(np.geomspace(1, len(table), MAX_PRINTED_ROWS).astype(int) - 1)
    keep = set(positions) | {int(result.optimum.name), int(result.baseline.name)}
    return table.iloc[sorted(keep)]


def format_curve(result: Curve, all_rows: bool = False) -> str:
    """A human-readable table of the curve with its optimum and the baseline."""
    space, optimum, baseline = result.space, result.optimum, result.baseline
    shown = _rows_to_print(result, all_rows)
    if result.formulation == "primal":
        objective, what = "var_ensemble_curve", "min Var(K_e) at the baseline's budget"
    else:
        objective, what = "rho_curve", "max efficiency at the baseline's Var(K_e)"
    columns = ["n", "m_curve", objective, "m", "params", "var_ensemble", "rho"]
    text = shown[columns].to_string(
        index=False,
        formatters={
            "m_curve": "{:.2f}".format,
            "var_ensemble_curve": "{:.6f}".format,
            "rho_curve": "{:.3f}".format,
            "params": "{:,}".format,
            "var_ensemble": "{:.6f}".format,
            "rho": "{:.3f}".format,
        },
    )
    options = ", ".join(f"{k}={v}" for k, v in space.options().items())
    lines = [
        f"{result.formulation} curve of {space.name} ({options}): alpha={result.alpha:g}, "
        f"baseline 1x{result.baseline_width}d = {int(baseline['params']):,} params, "
        f"metric={result.metric}, cost={result.cost}",
        f"objective: {what}; m_curve is the real-valued m, m the integer model",
        text,
    ]
    if len(shown) < len(result.table):
        lines.append(f"({len(shown)} of {len(result.table)} widths shown; --all shows every row)")
    lines.append(
        f"optimum: n={int(optimum['n'])}, m_curve={optimum['m_curve']:.2f} -> "
        f"{space.label(int(optimum['m']), int(optimum['n']))}: "
        f"{int(optimum['params']):,} params, rho={optimum['rho']:.3f}, "
        f"Var(K_e)={optimum['var_ensemble']:.6f} (baseline {baseline['var_ensemble']:.6f})"
    )
    return "\n".join(lines)


def _fit_alpha_command(args: argparse.Namespace) -> None:
    from ce_ray import fit_alpha  # noqa: PLC0415

    parser = _Parser(prog="ce-ray fit-alpha", description="Fit alpha (Algorithm 1) on Ray.")
    fit_alpha.add_arguments(parser)
    fit_alpha.run(parser.parse_args(args.fit_args))


def _report_command(args: argparse.Namespace) -> None:
    from ce_ray.report import report  # noqa: PLC0415

    print(report(args.results_dir, write_plots=not args.no_plots))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {
        "params": _params_command,
        "curve": _curve_command,
        "fit-alpha": _fit_alpha_command,
        "report": _report_command,
    }[args.command]
    try:
        command(args)
    except ValueError as error:
        print(f"ce-ray {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
