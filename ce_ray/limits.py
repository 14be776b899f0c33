"""The largest (and smallest) values ce-ray accepts, each with the reason, so that a typo is
one line before any work starts instead of hours of work, an allocation the machine cannot
hold, or a trial that no node can ever run. Imports nothing but the standard library.
"""

from __future__ import annotations

import os

#: Member widths n and the values of any width grid: the largest published is 2048 (Fig. 2's
#: wide reference); 65536 leaves room for a transformer's MLP.
MAX_WIDTH = 2**16
#: Values in one width grid: each is a curve row or a fit-alpha width.
MAX_GRID_VALUES = 4096
#: Multiplicity m.
MAX_MULTIPLICITY = 2**16
#: exp(alpha * S(n)) overflows float64 past 709; the paper's alphas are 1.6 to 5.
MAX_ALPHA = 100.0
#: NTK draws per width.
MAX_SAMPLES = 10**7
#: Ray tasks one fit-alpha, nmk or drift run plans.
MAX_TASKS = 100_000
#: Bootstrap replicates, and replicates x draws over all widths (about a minute per 10^10).
MAX_BOOTSTRAP = 100_000
MAX_BOOTSTRAP_WORK = 2 * 10**10
#: A sweep's points, seeds per point and epochs.
MAX_POINTS = 256
MAX_SEEDS = 1000
MAX_EPOCHS = 100_000
#: A recipe's learning rate, weight decay and global batch size.
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 1.0
MAX_BATCH_SIZE = 2**20
# Recipes tried per point by a tuned sweep (packed into one model: each is a copy of it).
MAX_TUNE_TRIALS = 256
#: Tune and Train restarts per trial.
MAX_FAILURES = 100
#: Ray's resource granularity is 1e-4; below 0.01 CPU a worker is never scheduled sensibly.
MIN_CPUS_PER_WORKER = 0.01
MAX_CPUS_PER_WORKER = 1024.0
#: Ray gives a worker a fraction of one GPU or a whole number of GPUs, never 1.5.
MAX_GPUS_PER_WORKER = 64
#: DataLoader processes per CPU a training worker holds.
MAX_LOADER_WORKERS_PER_CPU = 4
#: Ray Train workers of one trial.
MAX_WORKERS_PER_TRIAL = 4096
#: Experiment names: one path segment of at most this many characters.
MAX_NAME_LENGTH = 100
#: NMK: points on the circle, members drawn per width.
MAX_GAMMAS = 4097
MAX_MEMBERS = 2**20
#: Drift: training and probe inputs of the synthetic task.
MAX_TRAIN_POINTS = 100_000
MAX_PROBE_POINTS = 10_000


def machine_memory_bytes() -> int:
    """This machine's physical memory (the Linux value; 16 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


# A user's member (ce-ray inspect): one example's shape, traced on the meta device (no memory),
# bounded so that a typo cannot ask for an absurd tensor.
MAX_INPUT_DIMS = 5
MAX_INPUT_SIZE = 2**26


# --- The stall rule of every watch: fit-alpha's, nmk's and drift's tasks and a sweep's trials.
#: A task or trial stalls after this many times its longest pause between signs of progress
#: so far (a task: the longest a finished task took), and never before its floor.
STALL_FACTOR = 5.0
#: The floor, ``--stall-timeout``: by default a couple of minutes, far above a heartbeat's
#: interval; at least 10 s, at most a day.
DEFAULT_STALL_TIMEOUT_S = 120.0
MIN_STALL_TIMEOUT_S = 10.0
MAX_STALL_TIMEOUT_S = 86400.0


def stall_limit_s(floor_s: float, longest_s: float) -> float:
    """Seconds without progress after which work has stalled: ``STALL_FACTOR`` times the
    longest pause seen so far, and never less than ``floor_s``.

    >>> stall_limit_s(120.0, 10.0), stall_limit_s(120.0, 30.0)
    (120.0, 150.0)
    """
    return max(floor_s, STALL_FACTOR * longest_s)
