"""Sweep the dual curve of a preset with Ray Tune; each point trains as a Ray Train job.

The same program as ``ce-ray sweep dual``. Runs as a plain script (``ray.init()`` starts a
local cluster) or under
``ray job submit --working-dir . -- python jobs/dual_curve.py --preset cifar10-resnext29 ...``.
Results: ``<results>/<experiment>/{trials,epochs,curves}.parquet`` and PNGs.
"""

import sys
from pathlib import Path

# `python jobs/dual_curve.py` puts jobs/ on sys.path; the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", "dual", *sys.argv[1:]]))
