"""Fit alpha (Algorithm 1): Monte-Carlo NTK sampling sharded as Ray tasks.

Runs as a plain script (``ray.init()`` starts a local cluster) or under
``ray job submit --working-dir . -- python jobs/fit_alpha.py --results /shared/results ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python jobs/fit_alpha.py` puts jobs/ on sys.path; the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray import fit_alpha  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fit_alpha.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return fit_alpha.run(args)
    except ValueError as error:
        print(f"fit_alpha: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
