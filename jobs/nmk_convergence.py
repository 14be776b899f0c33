"""Fig. 2 / Lemma 1: the ensemble NTK converges to the Neural Mean Kernel as m grows.

The same program as ``ce-ray nmk``. Runs as a plain script (``ray.init()`` starts a local
cluster) or under
``ray job submit --working-dir . -- python jobs/nmk_convergence.py --results ...``.
"""

import sys
from pathlib import Path

# `python jobs/nmk_convergence.py` puts jobs/ on sys.path; the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["nmk", *sys.argv[1:]]))
