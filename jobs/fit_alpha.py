"""Fit alpha (Algorithm 1): Monte-Carlo NTK sampling sharded as Ray tasks.

The same program as ``ce-ray fit-alpha``. Runs as a plain script (``ray.init()`` starts a
local cluster) or under
``ray job submit --working-dir . -- python jobs/fit_alpha.py --results /shared/results ...``.
"""

import sys
from pathlib import Path

# `python jobs/fit_alpha.py` puts jobs/ on sys.path; the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit-alpha", *sys.argv[1:]]))
