"""A trial's own account of its training: one JSON file per trial in the results storage.

``<experiment>/records/<trial id>.json`` holds ``starts`` (how often its training began),
``first_started_at`` (unix time) and ``epochs`` (one metrics dict per trained epoch, with
``seeds``: each of the trial's seed indices' own loss and errors). It is the
source of ``epochs.parquet`` and of the ``retries`` column: Tune's copy of the reports can lag
behind the checkpoints when a job is stopped (seen: epochs 31-33 checkpointed, Tune's history
ending at 30). It lives in the results storage, not in a checkpoint or on a node's disk, so
that a start that died before its first checkpoint is counted and a retry on another node sees
it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator

from ce_ray.results import storage


def record_location(experiment_dir: str, trial_id: str) -> str:
    return storage.join(experiment_dir, "records", f"{trial_id}.json")


def read_epochs(location: str) -> list[dict]:
    """The epochs a trial record holds, one dict per (seed index, epoch): the epoch's shared
    figures (time, attempt, node) with that seed's own ([] when the trial never started)."""
    if not storage.exists(location):
        return []
    rows = []
    for epoch in storage.read_json(location)["epochs"]:
        shared = {key: value for key, value in epoch.items() if key != "seeds"}
        rows += [shared | seed for seed in epoch["seeds"]]
    return rows


def read_reports(location: str) -> list[dict]:
    """What each recorded epoch reports to Tune, in order ([] when the trial never started):
    its shared figures (the means over the trial's seeds) and ``seed``, each seed index's own
    figures by index -- ``{"seed": {"0": {"test_error": ..., "train_loss": ...}}}``, which
    Tune's TensorBoard logger flattens to ``seed/0/test_error`` (a curve per seed, also when
    seeds are packed into one trial)."""
    if not storage.exists(location):
        return []
    reports = []
    for epoch in storage.read_json(location)["epochs"]:
        shared = {key: value for key, value in epoch.items() if key != "seeds"}
        seeds = {
            str(seed["seed_index"]): {k: v for k, v in seed.items() if k != "seed_index"}
            for seed in epoch["seeds"]
        }
        reports.append(shared | {"seed": seeds})
    return reports


#: A training worker's heartbeat comes at most this often (seconds).
HEARTBEAT_S = 5.0


def heartbeat_location(record: str) -> str:
    return f"{record}.beat"


def read_heartbeat(record: str) -> tuple[int, int]:
    """``(start, beats)`` of a trial's heartbeat: which start of its training wrote it and how
    often it has beaten; ``(-1, 0)`` before any (or when it is being replaced)."""
    location = heartbeat_location(record)
    try:
        # One read, not storage.read_json's re-reads: polled often, a cut-short read is "not
        # yet" and the next poll reads it again.
        beat = json.loads(storage.read_text(location))
        return int(beat["start"]), int(beat["beats"])
    except (OSError, ValueError, KeyError):
        return -1, 0


class Heartbeat:
    """Rank 0's sign of life between epochs: call it once per batch; every ``HEARTBEAT_S`` it
    writes ``<record>.beat`` (the start's number and a counter). A worker that stops making
    progress -- stopped, hung in a collective, starved by a data loader -- stops beating."""

    def __init__(self, record: str, start: int):
        self.location, self.start = heartbeat_location(record), start
        self.beats, self.last = 0, 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            self.beats, self.last = self.beats + 1, now
            payload = {"start": self.start, "beats": self.beats}
            storage.write_bytes(json.dumps(payload).encode(), self.location)


@contextlib.contextmanager
def beating(beat: Callable[[], None]) -> Iterator[None]:
    """``beat`` from a thread of this process, every ``HEARTBEAT_S`` at most, while the block
    runs: work that is slow but alive -- a checkpoint's upload, a wait for Tune's decision, a
    first compiled step -- is no stall, while a stopped process (every thread of it) still
    stops beating."""
    done = threading.Event()

    def keep_beating() -> None:
        while not done.wait(HEARTBEAT_S / 2):
            beat()

    thread = threading.Thread(target=keep_beating, name="beating", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def controller_location(record: str) -> str:
    return f"{record}.controller"


def read_controller(record: str) -> tuple[str, float] | None:
    """``(state, since)``: the state of the trial's Ray Train controller (``RunningState``:
    its worker group has started; ``SchedulingState``: it waits for CPUs, GPUs or a node) and
    when it began (``time.time()``), as the controller last wrote it; None before it has
    (polled: a read cut short is "not yet")."""
    try:
        written = json.loads(storage.read_text(controller_location(record)))
        return str(written["state"]), float(written["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def startup_location(record: str) -> str:
    return f"{record}.startup"


def write_startup(record: str, seconds: float) -> None:
    """How long this start of the trial took from its worker group's start to its first
    beat -- what a start-up takes in this sweep, which the stall watch allows for."""
    storage.write_bytes(json.dumps({"seconds": seconds}).encode(), startup_location(record))


def longest_startup(records_dir: str) -> float:
    """The longest start-up any trial of the sweep has recorded (0.0 before any)."""
    longest = 0.0
    for name in storage.list_files(records_dir, ".startup"):
        try:
            text = storage.read_text(storage.join(records_dir, name))
            longest = max(longest, float(json.loads(text)["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return longest


def decision_location(record: str) -> str:
    return f"{record}.go"


def write_decision(record: str, epoch: int) -> None:
    """Say that Tune has taken epoch ``epoch``'s report and wants the trial to go on."""
    storage.write_bytes(json.dumps({"epoch": epoch}).encode(), decision_location(record))


def read_decision(record: str) -> int:
    """The last epoch after which Tune let the trial go on (0 before any; polled, so a read
    cut short by a replacement is 0 until the next poll, as in :func:`read_heartbeat`)."""
    try:
        return int(json.loads(storage.read_text(decision_location(record)))["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


#: How often a worker waiting for Tune's decision reads it (seconds).
DECISION_POLL_S = 0.1


def wait_for_decision(record: str, epoch: int) -> None:
    """Block until Tune has let the trial go on after ``epoch``.

    With a scheduler that stops trials early (ASHA) rank 0 calls this before it trains
    epoch ``e`` with ``epoch = e - 2``: training runs at most one epoch ahead of Tune's
    decisions, so that a stop lands however short an epoch is (the trial's driver is what
    reads the record and reports, about once a second). When Tune stops the trial, its
    actor goes and takes this worker with it. The caller beats while it waits
    (:func:`beating`): a decision that comes late, as Tune's loop tends the other trials, is
    the worker waiting alive, not a stall.
    """
    while epoch > 0 and read_decision(record) < epoch:
        time.sleep(DECISION_POLL_S)


class TrialRecord:
    """The record of one trial, opened by a start of its training at ``start_epoch``.

    Only rank 0 writes it; starts of one trial never overlap. Each epoch is written before it
    is reported, and a start drops the epochs after its checkpoint, which it trains again.
    ``attempt`` numbers this start (0 = the first).
    """

    def __init__(self, location: str, start_epoch: int):
        self.location = location
        record = storage.read_json(location) if storage.exists(location) else {}
        self.attempt = record.get("starts", 0)
        self.first_started_at = record.get("first_started_at", time.time())
        self.epochs = [e for e in record.get("epochs", []) if e["epoch"] < start_epoch]
        self._write()

    def add(self, metrics: dict) -> None:
        self.epochs.append(metrics)
        self._write()

    def _write(self) -> None:
        record = {
            "starts": self.attempt + 1,
            "first_started_at": self.first_started_at,
            "epochs": self.epochs,
        }
        storage.write_bytes(json.dumps(record).encode(), self.location)
