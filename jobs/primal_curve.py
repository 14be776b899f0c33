"""Main job: the primal and dual curves of a preset, printed as tables.

Runs as a plain script or under ``ray job submit --working-dir . -- python jobs/primal_curve.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python jobs/primal_curve.py` puts jobs/ on sys.path; the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.cli import format_curve, positive_float  # noqa: E402
from ce_ray.curves import COST_MODELS, curve  # noqa: E402
from ce_ray.presets import DEFAULT_PRESET, PRESETS  # noqa: E402
from ce_ray.spaces import METRICS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--alpha", type=positive_float, help="default: the preset's alpha")
    parser.add_argument("--metric", choices=METRICS, default="params")
    parser.add_argument("--cost", choices=COST_MODELS, default="block")
    parser.add_argument("--all", action="store_true", help="print every width")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    alpha = args.alpha if args.alpha is not None else preset.alpha
    if alpha is None:
        print(f"error: preset {preset.name} has no alpha yet; pass --alpha A", file=sys.stderr)
        return 2
    print(f"preset {preset.name}: {preset.description}\n")
    for formulation in ("primal", "dual"):
        result = curve(
            preset.space, alpha, preset.baseline, None, formulation, args.metric, args.cost
        )
        print(format_curve(result, all_rows=args.all), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
