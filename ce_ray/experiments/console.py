"""What a sweep prints, as a Tune callback: one line per trial start and end, a progress line
at most every ``every_s`` seconds while trials run, and one line per failed start (retried
from its checkpoint, or out of retries) -- instead of Tune's status tables and Ray Train's
per-epoch lines, which ``--verbose`` (or ``CE_RAY_VERBOSE=1``) brings back.

Quiet is the default: the driver connects with ``log_to_driver=False`` (the trial actors',
Train controllers' and workers' output stays in Ray's session logs and, for each trial actor,
in ``stdout``/``stderr`` of its Tune directory), Tune runs with ``verbose=0``, and the Tune
controller's traceback per failed start is left to the trial's ``error.txt`` (its last line is
this module's failure line).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from ce_ray.experiments.tasks import Log
from ce_ray.results import storage

#: ``CE_RAY_VERBOSE=1`` gives Ray's and Tune's full output, as ``--verbose`` does.
VERBOSE_ENV = "CE_RAY_VERBOSE"
#: Seconds between progress lines while trials run.
PROGRESS_EVERY_S = 20.0


def verbose_from_env(flag: bool = False) -> bool:
    """``--verbose``, or ``CE_RAY_VERBOSE`` set to anything but "", "0", "false" or "no"."""
    return flag or os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


#: The Tune controller logs a failed start's traceback (some 40 lines) at ERROR.
TUNE_CONTROLLER = "ray.tune.execution.tune_controller"
#: Tune warns when one of its steps took over 0.5 s ("... may be a performance bottleneck"):
#: on a busy 2-core machine, several times a sweep, with nothing for the user to do.
TUNE_TIMING = "ray.tune.utils.util"


def _for_the_console(record: logging.LogRecord) -> bool:
    """Whether Ray's console handler prints ``record`` in a quiet sweep (the kept log has
    every record): not a failed start's traceback, not Tune's timing hints."""
    if record.name.startswith(TUNE_CONTROLLER):
        return record.levelno >= logging.CRITICAL
    return not (record.name == TUNE_TIMING and record.levelno < logging.ERROR)


def quiet_tune() -> None:
    """Tune prints nothing of its own: its new output engine prints the experiment's box and a
    TensorBoard hint whatever its verbosity, so the legacy reporter (silent at ``verbose=0``)
    is chosen unless the environment says otherwise (``RAY_AIR_NEW_OUTPUT``); and a failed
    start's traceback is left to its ``error.txt`` and the kept log (:func:`kept_log`) --
    Ray's console handler drops it (and Tune's timing hints), and :class:`SweepConsole` says
    it in one line."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for handler in logging.getLogger("ray").handlers:
        if _for_the_console not in handler.filters:
            handler.addFilter(_for_the_console)


class _Tee:
    """``log``, and the kept log's ``handler``. Tune pickles the callbacks that hold it with
    the experiment; a pickled one prints only (a restored sweep gets new callbacks)."""

    def __init__(self, log: Log, handler: logging.Handler | None):
        self.log, self.handler = log, handler

    def __call__(self, line: str) -> None:
        self.log(line)
        if self.handler is not None:
            fields = {"name": "ce_ray", "levelno": logging.INFO, "levelname": "INFO"}
            self.handler.handle(logging.makeLogRecord(fields | {"msg": line}))

    def __getstate__(self) -> dict:
        return {"log": self.log, "handler": None}


@contextmanager
def kept_log(location: str, log: Log) -> Iterator[Log]:
    """``log``, which also writes each line, time-stamped, to ``location`` -- with every log
    record of Ray, Tune and Train in this process at INFO and above (what the quiet console
    leaves out: Tune's INFO lines, a failed start's traceback). A local file is written as it
    goes (``tail -f`` works); a URI's is stored when the block ends, however it ends."""
    local = not storage.is_uri(location)
    if local:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        path = Path(location)
    else:
        path = Path(tempfile.mkdtemp(prefix="ce-ray-log-")) / "sweep.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    try:
        yield _Tee(log, handler)
    finally:
        ray_logger.removeHandler(handler)
        handler.close()
        if not local:
            storage.write_bytes(path.read_bytes(), location)
            shutil.rmtree(path.parent, ignore_errors=True)


_PROGRESS = re.compile(r"^\[\S+\] (\d+)/(\d+) ")


def sparse_progress(log: Log, every_s: float = PROGRESS_EVERY_S) -> Log:
    """``log`` with fewer ``[prefix] k/N ...`` task lines: the first, the last, and one at most
    every ``every_s`` seconds between (a sweep's fit of alpha first: its tasks take
    milliseconds each). Every other line passes."""
    last: list[float] = []

    def emit(line: str) -> None:
        match = _PROGRESS.match(line)
        now = time.monotonic()
        if match and last and match.group(1) != match.group(2) and now - last[0] < every_s:
            return
        if match:
            last[:] = [now]
        log(line)

    return emit


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class SweepConsole(tune.Callback):
    """The sweep's lines, each through ``log``. ``name_of(trial)`` names a trial
    (``4x6d seeds [0, 1]``); ``epochs`` is the planned epochs of every trial and ``total`` the
    number of trials (Tune creates them only as they can start)."""

    def __init__(
        self,
        log: Log,
        name_of: Callable[[Trial], str],
        epochs: int,
        total: int,
        every_s: float = PROGRESS_EVERY_S,
    ):
        self.log, self.name_of, self.every_s = log, name_of, every_s
        self.epochs, self.total = epochs, total
        self.setup()

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        """At the start of each run (a restored run unpickles this callback: its clock and
        counts start again here)."""
        self.started = time.monotonic()
        self.last_progress = self.started
        self.attempts: dict[str, int] = {}  # trial id -> the latest start its epochs came from
        self.started_by_tune: set[str] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        failures = trial.num_failures  # Tune's count, kept across restores
        again = f" again, from its checkpoint (retry {failures})" if failures else ""
        self.started_by_tune.add(trial.trial_id)
        self.log(f"[sweep] trial {self.name_of(trial)} started{again}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any
    ) -> None:
        """A new start of the trial's training that Tune did not make -- Ray Train restarted
        its worker group after a worker or its node was lost -- in one line."""
        attempt = int(result.get("attempt", 0))
        seen = self.attempts.get(trial.trial_id)
        self.attempts[trial.trial_id] = attempt
        if trial.trial_id in self.started_by_tune:  # this start's first epoch: said already
            self.started_by_tune.discard(trial.trial_id)
            return
        if seen is not None and attempt > seen:
            self.log(
                f"[sweep] trial {self.name_of(trial)} restarted by Ray Train from its checkpoint "
                f"after epoch {int(result.get('start_epoch', 1)) - 1} (a training worker or "
                f"its node was lost; start {attempt + 1})"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        how = "finished" if epoch >= self.epochs else "stopped early by the scheduler"
        error, validation = result.get("test_error"), result.get("val_error")
        figures = f"last-epoch test error {error:.2f} %, " if error is not None else ""
        if error is None and validation is not None:  # a search: judged on validation alone
            figures = f"last-epoch validation error {validation:.2f} % (mean of its recipes), "
        self.log(
            f"[sweep] trial {self.name_of(trial)} {how}: {figures}{epoch}/{self.epochs} epochs, "
            f"{_duration(float(result.get('time_total_s', 0.0)))}"
        )

    def _failure(self, trial: Trial, verdict: str) -> None:
        local = trial.error_file  # written on this node before the callbacks run
        text = Path(local).read_text() if local and os.path.exists(local) else trial.get_error()
        lines = [line.strip() for line in str(text or "").splitlines()]
        reason = next((line for line in reversed(lines) if line), "see its error file")
        self.log(f"[sweep] trial {self.name_of(trial)} failed, {verdict}: {reason}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._failure(trial, "retrying from its checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._failure(trial, "no retries left")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_progress < self.every_s or not trials:
            return
        self.last_progress = now
        self.log(progress_line(trials, self.epochs, now - self.started, self.total))


def progress_line(trials: list, epochs: int, elapsed_s: float, total: int = 0) -> str:
    """``[sweep] 2/5 trials done, 2 running, 1 pending; epochs 41/75; 1 min 05 s elapsed,
    ~50 s left`` (the estimate: the time per epoch so far, for the epochs still planned).
    ``trials``: those Tune has created so far; ``total``: all the sweep will run."""
    total = max(total, len(trials))
    status = [trial.status for trial in trials]
    done = sum(s in (Trial.TERMINATED, Trial.ERROR) for s in status)
    running = status.count(Trial.RUNNING)
    pending = total - done - running
    trained = sum(
        epochs
        if trial.status == Trial.TERMINATED
        else int((trial.last_result or {}).get("epoch", 0))
        for trial in trials
    )
    planned = total * epochs
    left = ""
    if 0 < trained < planned:
        left = f", ~{_duration(elapsed_s / trained * (planned - trained))} left"
    return (
        f"[sweep] {done}/{total} trials done, {running} running, {pending} pending; "
        f"epochs {trained}/{planned}; {_duration(elapsed_s)} elapsed{left}"
    )
