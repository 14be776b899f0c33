"""Theorem 1: how far a collegial ensemble's NTK moves under gradient descent.

The same program as ``ce-ray drift``. Runs as a plain script (``ray.init()`` starts a local
cluster) or under ``ray job submit --working-dir . -- python jobs/ntk_drift.py --results ...``.
"""

import sys
from pathlib import Path

# `python jobs/ntk_drift.py` puts jobs/ on sys.path; the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["drift", *sys.argv[1:]]))
