"""The ``ce-ray`` command line, and the entry point of every job.

    ce-ray params     exact parameter count, MACs and S(n) of an ensemble m x n d
    ce-ray curve      the primal or dual curve of a space and its optimum
    ce-ray inspect    your own member(n): layers, fan-ins, S(n), parameters, MACs
    ce-ray fit-alpha  fit alpha (Algorithm 1) by Monte-Carlo NTK sampling as Ray tasks
    ce-ray sweep      train points of the primal or dual curve with Ray Tune + Ray Train
    ce-ray report     the table and plots of a sweep's results
    ce-ray nmk        Fig. 2 / Lemma 1: ensemble NTKs converge to the Neural Mean Kernel
    ce-ray drift      Theorem 1: how far a trained ensemble's NTK moves, against m and n

``jobs/*.py`` call :func:`main` with their command, so ``ray job submit -- python
jobs/primal_curve.py ...`` and ``ce-ray sweep primal ...`` are the same program. Options are
declared in ``ce_ray.options``; a bad value exits with status 2 and one line on stderr. The
commands that use Ray connect here, once (``ray.init()``); the library functions they call
take the connection as given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ce_ray import options
from ce_ray.theory.by_name import make_space
from ce_ray.theory.curves import curve, curve_to_json, format_curve
from ce_ray.theory.spaces import Space

if TYPE_CHECKING:
    import pandas as pd

    from ce_ray.configs import FitConfig, SweepConfig
    from ce_ray.experiments.tasks import Log


def space_from_args(args: argparse.Namespace) -> Space:
    """The space named by ``--space`` with the space options that were given."""
    flags = {field: flag for flag, field in options.SPACE_FLAGS.items()}
    given = {field: getattr(args, field) for field in flags if getattr(args, field) is not None}
    return make_space(args.space, spelled=flags, **given)


def params_command(args: argparse.Namespace) -> None:
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
    settings = ", ".join(f"{k}={v}" for k, v in record["options"].items())
    print(f"{space.name} {record['label']} ({settings})")
    print(f"  parameters      {record['params']:,}")
    print(f"  MACs / example  {record['flops']:,}")
    print(f"  S(n)            {record['fan_in_sum']:.6f}")


def curve_command(args: argparse.Namespace) -> None:
    space = space_from_args(args)
    alpha = args.alpha
    if args.alpha_from:
        from ce_ray.experiments.fit_alpha import read_alpha

        alpha = read_alpha(args.alpha_from, args.accept_law_warnings)
    result = curve(
        space, alpha, args.baseline, args.widths, args.formulation, args.metric, args.cost
    )
    if args.json:
        print(json.dumps(curve_to_json(result), indent=2))
    else:
        print(format_curve(result, all_rows=args.all))


def inspect_command(args: argparse.Namespace) -> None:
    from ce_ray.theory.member import inspect_member, load_member

    found = inspect_member(load_member(args.member), args.widths, args.input_shape)
    smallest = found.traces[0]
    rows = [
        {
            "n": n,
            "params": t.num_params,
            "macs": t.macs,
            "fan_in_sum": t.fan_in_sum,
        }
        for n, t in zip(found.widths, found.traces, strict=True)
    ]
    fan_ins = {c.parameter: c.fan_in for c in smallest.contractions}
    layers: list[dict] = [
        {"parameter": name, "shape": list(shape), "fan_in": fan_ins.get(name)}
        for name, shape in smallest.parameters.items()
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "member": args.member,
                    "input_shape": list(args.input_shape),
                    "layers": layers,
                    "widths": rows,
                    "warnings": list(found.warnings),
                },
                indent=2,
            )
        )
        return
    print(f"{args.member} on inputs of shape {tuple(args.input_shape)}, at n = {found.widths[0]}:")
    print(f"  {'parameter':<32} {'shape':<20} {'fan-in':>8}  in S(n)")
    for layer in layers:
        fan_in = layer["fan_in"]
        print(
            f"  {layer['parameter']:<32} {str(tuple(layer['shape'])):<20} "
            f"{fan_in if fan_in is not None else '-':>8}  {'yes' if fan_in else 'no'}"
        )
    print(f"  {'n':>6} {'parameters':>14} {'MACs / example':>16} {'S(n)':>10}")
    for row in rows:
        print(f"  {row['n']:>6} {row['params']:>14,} {row['macs']:>16,} {row['fan_in_sum']:>10.6f}")
    for warning in found.warnings:
        print(f"warning: {warning}")


def fit_config(args: argparse.Namespace) -> FitConfig:
    """The fit the options describe: your member's (``--space``) with its defaults, or a
    preset's block (``--preset``, default :data:`options.DEFAULT_FIT_PRESET`)."""
    from ce_ray.configs import FitConfig
    from ce_ray.theory.by_name import your_member

    member = your_member(
        args.space, args.input_shape, args.fan_in_sum_from, parameterisation=args.parameterisation
    )
    fields = FitConfig.__dataclass_fields__.keys() - {"preset", "member"}
    settings = _given(args, fields) | {"memory_budget_mib": args.memory_budget}
    if member is None:
        return FitConfig.from_preset(args.preset or options.DEFAULT_FIT_PRESET, **settings)
    return FitConfig.for_member(member, **settings)


def fit_alpha_command(args: argparse.Namespace) -> None:
    # Ray is imported by the commands that use it, so that params and curve start without it.
    from ce_ray.experiments.fit_alpha import check_fits_in_memory, fit_alpha
    from ce_ray.results import storage

    config = fit_config(args)
    experiment = args.experiment or config.experiment
    config.check_bootstrap(args.bootstrap)
    member_warnings = check_fits_in_memory(config)
    results, log, workers = _connect(args)
    log(
        f"[fit-alpha] {config.description}; "
        f"widths {list(config.widths)}, {config.samples} samples each, {config.method} sampler, "
        f"{workers} workers -> {storage.join(results, experiment, 'fit_alpha')}"
    )
    for warning in member_warnings:
        log(f"warning: {warning}")
    fit = fit_alpha(
        config,
        results,
        experiment,
        workers,
        args.bootstrap,
        intercept=args.intercept,
        log=log,
        stall_timeout_s=args.stall_timeout,
    )
    if args.json:
        print(json.dumps(fit.to_json(), indent=2))
    else:
        print(fit.moments.to_string(index=False, float_format="{:.5g}".format))
    log(
        f"alpha = {fit.alpha:.4f} ({fit.ci_level:.0%} CI {fit.ci_low:.4f}...{fit.ci_high:.4f}), "
        f"R^2 = {fit.r2:.4f}, {len(config.widths)} widths x {config.samples} samples "
        f"-> {fit.directory}"
    )
    if not config.space.law_by_construction:
        from ce_ray.theory.alpha import check_law

        law = check_law(fit.moments, fit.r2)
        for warning in law.warnings:
            log(f"warning: {warning}")
        if law.mean_grows and config.space.sampled_parameterisation == "ntk":
            log(
                "hint: a member in PyTorch's default parameterisation (nn.Linear, nn.Conv2d, "
                "torchvision's blocks) has an E[K] that grows with n; --parameterisation "
                "standard samples its NTK twin, whose alpha the curves can use"
            )


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep the options describe: ``SweepConfig.from_preset`` with the options given,
    your member's space (``--space``) in place of the preset's."""
    from ce_ray.configs import SweepConfig, parse_tune_range
    from ce_ray.experiments.fit_alpha import read_alpha
    from ce_ray.theory.by_name import your_member

    settings = _given(args, SweepConfig.__dataclass_fields__)
    if args.data:  # read and checked once here; the member reads its examples' shape
        summary = data_summary(args)
        settings["data_summary"] = summary
        if args.member and not args.input_shape:
            args.input_shape = tuple(summary["input_shape"])
    member = your_member(args.member, args.input_shape, args.fan_in_sum_from, args.network_from)
    alpha = args.alpha
    if args.alpha_from:
        fitted_for = "" if member is None else member.member_name
        alpha = read_alpha(args.alpha_from, args.accept_law_warnings, fitted_for)
    settings |= {
        "alpha": alpha,
        "member": member,
        "precision": None if args.precision == "auto" else args.precision,
    }
    del settings["preset"], settings["formulation"]
    if args.tune:
        settings["tune"] = dict(parse_tune_range(text) for text in args.tune)
    from_file = read_recipe(args.recipe) if args.recipe else {}
    return SweepConfig.from_preset(args.preset, args.formulation, **(from_file | settings))


def data_summary(args: argparse.Namespace) -> dict:
    """``--data`` read and checked (``ce_ray.own_data``): what the sweep records of it."""
    from ce_ray import own_data

    spec = own_data.DataSpec.given(
        args.data,
        label_column=args.label_column,
        image_size=args.image_size,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
    )
    return own_data.load(spec, args.seed or 0).summary()


def read_recipe(location: str) -> dict:
    """``--recipe``'s JSON object of recipe fields (``epochs`` and ``RECIPE_FIELDS``), checked
    for unknown keys and the kind of each value here; their ranges, as the flags', by
    ``SweepConfig``."""
    from ce_ray.presets import RECIPE_FIELDS
    from ce_ray.results import storage

    if not storage.exists(location) or storage.is_directory(location):
        raise ValueError(f"--recipe {location}: no such file (a JSON object of recipe fields)")
    try:
        recipe = storage.read_json(location)
    except ValueError:
        raise ValueError(f"--recipe {location}: not JSON") from None
    known = ("epochs", *RECIPE_FIELDS, "tune_trials", "tune")
    if not isinstance(recipe, dict):
        raise ValueError(f"--recipe {location}: not a JSON object of {', '.join(known)}")
    if unknown := sorted(set(recipe) - set(known)):
        raise ValueError(
            f"--recipe {location}: unknown field {unknown[0]!r} (allowed: {', '.join(known)})"
        )
    kinds = {"epochs": int, "batch_size": int, "warmup_epochs": int, "tune_trials": int}
    if "tune" in recipe:  # {"lr": "1e-4..1e-1:log", ...}, as --tune's values
        ranges = recipe.pop("tune")
        if not isinstance(ranges, dict) or not all(isinstance(v, str) for v in ranges.values()):
            raise ValueError(
                f'--recipe {location}: tune must be an object like {{"lr": "1e-4..1e-1:log"}}'
            )
        from ce_ray.configs import parse_tune_range

        recipe["tune"] = dict(parse_tune_range(f"{k}={v}") for k, v in ranges.items())
    for key, value in recipe.items():
        if key == "tune":
            continue
        kind = kinds.get(key, str if key in ("optimizer", "schedule") else float)
        fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if isinstance(value, bool) or not fits:
            raise ValueError(f"--recipe {location}: {key} must be a {kind.__name__}; got {value!r}")
    return recipe


def sweep_command(args: argparse.Namespace) -> None:
    from ce_ray.experiments import cluster, console, trackers
    from ce_ray.experiments.sweep import default_experiment, run_sweep
    from ce_ray.results import storage
    from ce_ray.results.report import report
    from ce_ray.worker import data

    config = sweep_config(args)
    experiment = args.experiment or default_experiment(config)
    results = storage.resolve(args.results)
    storage.check_writable(results)
    if args.mlflow:  # missing or not answering: one line, now
        trackers.client(args.mlflow)
    # Missing data: one line, now; a preset's loaded once, handed to every trial by Ray's
    # object store (your own data was read and checked by sweep_config; each worker reads it).
    datasets = None
    if config.data is None:
        datasets = data.load(config.spec.dataset, data.resolve_root(config.data_root))
    verbose = console.verbose_from_env(args.verbose)
    also = [config.data_spec.location] if config.data is not None else []
    cluster.init_ray(results, quiet=not verbose, address=args.address, also=also)
    result = run_sweep(
        config,
        results,
        experiment,
        max_concurrent_trials=args.max_concurrent_trials,
        max_failures=args.max_failures,
        verbose=verbose,
        datasets=datasets,
        stall_timeout_s=args.stall_timeout,
        mlflow=args.mlflow,
    )
    print(report(result.directory, with_plots=not args.no_report))
    _say_failed_trials(result.trials)


def _say_failed_trials(trials: pd.DataFrame) -> None:
    """One line for the trial rows that failed; an error when every one did."""
    failed = trials[trials["status"] == "error"]
    if len(failed) and len(failed) == len(trials):
        raise RuntimeError(f"every trial failed; the last error: {failed['error'].iloc[-1]}")
    if len(failed):
        print(f"[sweep] {len(failed)} of {len(trials)} trial rows failed (trials.parquet)")


def _given(args: argparse.Namespace, fields: Iterable[str]) -> dict:
    """The options of ``args`` named like ``fields`` that were given (the rest: defaults)."""
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def _connect(args: argparse.Namespace) -> tuple[str, Log, int]:
    """For the Ray commands: check ``--results``, connect to Ray (``ray.init()``, once, here),
    and choose the log (stderr under ``--json``) and ``--workers`` (default: the cluster's
    CPUs). Returns ``(results, log, workers)``."""
    from ce_ray.experiments import cluster
    from ce_ray.results import storage

    results = storage.resolve(args.results)
    storage.check_writable(results)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    cluster.init_ray(results, address=args.address, log=log)
    return results, log, args.workers or cluster.default_workers()


def _print(args: argparse.Namespace, table: pd.DataFrame, headline: dict) -> None:
    """The headline as JSON under ``--json``, else the table."""
    if args.json:
        print(json.dumps(headline, indent=2))
    else:
        print(table.to_string(index=False, float_format="{:.4g}".format))


def nmk_command(args: argparse.Namespace) -> None:
    from ce_ray.experiments.nmk import NMKConfig, run_nmk

    config = NMKConfig(**_given(args, NMKConfig.__dataclass_fields__))
    results, log, workers = _connect(args)
    log(
        f"[nmk] L={config.depth}, widths {list(config.widths)} against {config.wide_width}, "
        f"m in {list(config.multiplicities)}, {workers} workers"
    )
    result = run_nmk(config, results, args.experiment or "lemma1", workers, log, args.stall_timeout)
    headline = result.headline()
    _print(args, result.fit, headline)
    low, high = headline["slope_m_ci"]
    log(
        f"slope of ||K_e - NMK||^2 against m: {headline['slope_m']:.3f} ({low:.3f}..{high:.3f}) "
        f"at n={headline['slope_m_at_width']} (Lemma 1: -1); largest NMK gap to n="
        f"{config.wide_width}: {headline['width_gap']:.4f} +- {headline['width_gap_se']:.4f} "
        f"-> {result.directory}"
    )


def drift_command(args: argparse.Namespace) -> None:
    from ce_ray.experiments.drift import DriftConfig, run_drift

    config = DriftConfig(**_given(args, DriftConfig.__dataclass_fields__))
    results, log, workers = _connect(args)
    log(
        f"[drift] m in {list(config.multiplicities)}, n in {list(config.widths)}, "
        f"{config.seeds} seeds, L={config.depth}, {workers} workers"
    )
    result = run_drift(
        config, results, args.experiment or "theorem1", workers, log, args.stall_timeout
    )
    headline = result.headline()
    _print(args, result.fit, headline)
    (m_low, m_high), (n_low, n_high) = headline["exponent_m_ci"], headline["exponent_n_ci"]
    log(
        f"drift ~ m^{headline['exponent_m']:.3f} ({m_low:.3f}..{m_high:.3f}) "
        f"n^{headline['exponent_n']:.3f} ({n_low:.3f}..{n_high:.3f}) at t={headline['time']:.4g} "
        f"(Theorem 1: m^-1 n^-1) -> {result.directory}"
    )


def report_command(args: argparse.Namespace) -> None:
    from ce_ray.results.report import report

    print(report(args.results_dir, with_plots=not args.no_plots))


#: command -> (one-line help, its options, what runs it)
COMMANDS = {
    "params": (
        "exact parameter count of an ensemble m x n d",
        options.add_params_options,
        params_command,
    ),
    "curve": ("primal or dual curve and its optimum", options.add_curve_options, curve_command),
    "inspect": (
        "your own member(n): its layers, fan-ins, S(n), parameters and MACs (no Ray)",
        options.add_inspect_options,
        inspect_command,
    ),
    "fit-alpha": (
        "fit alpha (Algorithm 1) by sharded Monte-Carlo NTK sampling on Ray",
        options.add_fit_alpha_options,
        fit_alpha_command,
    ),
    "sweep": (
        "train points of the primal or dual curve (Ray Tune + Ray Train)",
        options.add_sweep_options,
        sweep_command,
    ),
    "report": ("table and plots of a sweep's results", options.add_report_options, report_command),
    "nmk": (
        "Fig. 2 / Lemma 1: the ensemble NTK converges to the Neural Mean Kernel",
        options.add_nmk_options,
        nmk_command,
    ),
    "drift": (
        "Theorem 1: how far a trained ensemble's NTK moves, against m and n",
        options.add_drift_options,
        drift_command,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="ce-ray", description="Collegial ensembles on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=options.Parser)
    for name, (summary, add_options, _) in COMMANDS.items():
        add_options(commands.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2: bad input, reported in one line)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad option argparse reported: return, not exit
        return exit_.code if isinstance(exit_.code, int) else options.USAGE_ERROR
    run = COMMANDS[args.command][2]
    return options.run_reporting_errors(f"ce-ray {args.command}", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
