"""Seeds derived from an experiment seed and a work item's identity.

Every random draw in ce-ray starts from ``derive_seed(experiment seed, *identity)`` -- e.g.
(seed, width, shard) for an NTK shard, (seed, n, m, seed index) for a trained trial -- so a
retried, resumed or rescheduled piece of work reproduces its result exactly, whichever worker
runs it and in whatever order.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A 63-bit seed determined by ``keys`` alone (numpy's ``SeedSequence`` of the keys).

    >>> derive_seed(0, 64, 3) == derive_seed(0, 64, 3)
    True
    >>> derive_seed(0, 64, 3) == derive_seed(0, 64, 4)
    False
    >>> 0 <= derive_seed(7) < 2**63
    True
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1
