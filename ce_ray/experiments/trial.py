"""A sweep's trial: Tune's trial function, which trains one point's seeds as a Ray Train
``TorchTrainer`` run (Train V2), reports each epoch to Tune from the trial's record, and fails
the trial when its training stops making progress; and, once Tune is done, what each trial
came to. The sweep's driver (``ce_ray.experiments.sweep``) schedules it; the training itself
is ``ce_ray.worker.loop``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pandas as pd
import ray
import ray.train
from ray import tune

from ce_ray.configs import SweepConfig
from ce_ray.experiments import ray_compat
from ce_ray.limits import stall_limit_s
from ce_ray.results import storage, tables
from ce_ray.worker import records


def run_trial(trial: dict, datasets: list) -> None:
    """Tune's trial function: train one point's seed indices (one, or all of them packed) as
    a Ray Train job.

    ``trial`` holds the sweep's configuration whole (``SweepConfig.to_json``), the point
    ``{"n", "m"}``, its ``seed_indices``, the experiment directory and the retry budget.
    The Train run is named after the Tune trial id alone, which survives Tune's retries and
    ``Tuner.restore``: a new ``TorchTrainer`` with the same name and storage resumes from the
    run's latest checkpoint (Train V2 has no other resume). Inside the run, Train's own
    ``FailureConfig`` restarts a lost worker group from that checkpoint without Tune noticing.

    Tune hears of each epoch from the trial's record, not from Train's ``TuneReportCallback``
    (:func:`report_from_record`), and a trial that stops making progress fails.

    ``datasets`` is ``[reference]`` to the (train, test) datasets the driver put in Ray's
    object store once for the whole sweep (a list, so that ``tune.with_parameters`` hands
    over the reference, not the data); the training workers fetch them from there.
    """
    from ce_ray.worker.loop import train_point

    ray_compat.set_train_environment()
    config = SweepConfig.from_json(trial["sweep"])
    trial_id = tune.get_context().get_trial_id()
    record = records.record_location(trial["experiment_dir"], trial_id)
    gpus = config.gpus_per_worker
    trainer = ray_compat.torch_trainer_without_ray_data()(
        train_point,
        train_loop_config={
            "sweep": trial["sweep"],
            "point": trial["point"],
            "seed_indices": trial["seed_indices"],
            "datasets": datasets[0],
            "record": record,
            # A tuned sweep: a search trial's candidate recipes, or the recipe its point chose.
            "candidates": trial.get("candidates", []),
            "recipe": trial.get("recipes", {}).get(point_key(trial["point"]), {}),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers_per_trial,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": config.cpus_per_worker} | ({"GPU": gpus} if gpus else {}),
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=storage.join(trial["experiment_dir"], "train"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray_compat.train_failure_config(trial["max_failures"]),
            callbacks=[ray_compat.controller_state_callback(records.controller_location(record))],
        ),
    )
    point, indices = trial["point"], trial["seed_indices"]
    label = f"{config.space.label(point['m'], point['n'])} seeds {indices}"
    if trial.get("candidates"):
        label = f"{config.space.label(point['m'], point['n'])} search"
    report_from_record(
        trainer, record, trial["stall_timeout_s"], label, decide=config.scheduler_stops_trials
    )


#: How often a trial function reads its record and heartbeat (seconds).
PROGRESS_POLL_S = 1.0


class TrialStalled(RuntimeError):
    """A trial's training made no progress for longer than its limit."""


#: The Train controller's states in which it sets up a worker group: it waits for the group's
#: resources (a placement group, at most ``ray_compat.worker_group_start_timeout_s()`` before
#: it tries again, which is a new state), then starts the workers' processes.
SETTING_UP = ("SchedulingState", "ReschedulingState", "RestartingState", "ResizingState")


#: How a stall line says where the trial was.
PHASE_WORDS = {"setting up": " starting its workers", "starting": " in its start-up"}


class Progress:
    """One trial's signs of life, read by the trial function: the epochs its record holds,
    rank 0's beats, and the state of its Ray Train controller
    (``ray_compat.controller_state_callback``). The stall clock runs in three phases:

    * the controller sets up a worker group (:data:`SETTING_UP`): against Train's own wait for
      the group's resources plus the start-up allowance -- a wait for CPUs or a node is Train's
      to time out (a new state, a new clock), a worker frozen while its process starts is a
      stall;
    * the group is up and this start has not beaten: against the start-up allowance,
      ``stall_limit_s(floor, the slowest start-up this sweep has recorded)``;
    * it has beaten: from the last change seen, against ``stall_limit_s(floor, the longest
      pause so far)``.

    In the controller's other states (initialising, shutting down, done) the clock holds;
    without word from the controller (an older run) it starts with the first beat.
    """

    def __init__(self, record: str, floor_s: float):
        self.record, self.floor_s = record, floor_s
        self.first_beat = records.read_heartbeat(record)  # left by an earlier start, if any
        self.started = time.time()  # this start's: the controller's older words are not its
        self.state: tuple | None = None
        self.changed_at: float | None = None
        self.controller: tuple[str, float] | None = None  # (state, since on the monotonic clock)
        self.group_up_at: float | None = None  # when this start's worker group last came up
        self.longest_pause = 0.0

    def read(self) -> list[dict]:
        """The record's epochs now; notes whether anything moved."""
        epochs = records.read_reports(self.record)
        beat = records.read_heartbeat(self.record)
        state = (len(epochs), epochs[-1]["epoch"] if epochs else 0, beat)
        now = time.monotonic()
        written = records.read_controller(self.record)
        if written is not None and written[1] >= self.started - 1.0:
            since = now - max(0.0, time.time() - written[1])
            if self.controller is None or self.controller[0] != written[0]:
                if self.changed_at is not None:  # after a restart, the clock starts anew
                    self.changed_at = now
                self.controller = (written[0], since)
                if written[0] == "RunningState":
                    self.group_up_at = since
        if state != self.state:
            if self.changed_at is not None:
                self.longest_pause = max(self.longest_pause, now - self.changed_at)
            elif beat != self.first_beat and self.group_up_at is not None:
                records.write_startup(self.record, now - self.group_up_at)
            if self.changed_at is not None or beat != self.first_beat:
                self.changed_at = now
            self.state = state
        return epochs

    @property
    def phase(self) -> str:
        """``setting up``, ``starting``, ``training``, or ``waiting`` (the clock holds)."""
        controlled = self.controller[0] if self.controller else "RunningState"
        if controlled in SETTING_UP:
            return "setting up"
        if controlled != "RunningState":
            return "waiting"
        return "starting" if self.changed_at is None else "training"

    @property
    def limit_s(self) -> float:
        if self.phase == "training":
            return stall_limit_s(self.floor_s, self.longest_pause)
        startup = stall_limit_s(self.floor_s, records.longest_startup(os.path.dirname(self.record)))
        if self.phase == "setting up":
            return ray_compat.worker_group_start_timeout_s() + startup
        return startup

    def idle_s(self) -> float:
        """Seconds since the last sign of progress, in the phase the trial is in."""
        phase, now = self.phase, time.monotonic()
        if phase == "training":
            return now - (self.changed_at or now)
        if phase in ("setting up", "starting") and self.controller is not None:
            return now - self.controller[1]
        return 0.0


def report_from_record(
    trainer: Any, record: str, stall_timeout_s: float, label: str, decide: bool = False
) -> None:
    """Run ``trainer.fit()`` in a thread and report each epoch to Tune from the trial's
    record, in this (the trial function's) thread; fail the trial when it stalls.

    Why not Train's ``TuneReportCallback``: in Ray 2.60 it puts each report into a one-slot
    Ray queue that the trial actor's main thread moves into a one-slot thread queue; when the
    trial function returns before the main thread has moved the last report, Tune's "done"
    marker fills the thread queue first and the main thread blocks forever on the late report
    (``ray/train/_internal/session.py``, ``_get_result_from_queues``). Reporting from this
    thread is Tune's ordinary function-trainable path, which has no second queue. Rank 0
    writes each epoch to the record before it reports it to Train, so nothing is lost.

    With ``decide`` (a scheduler that stops trials early), each epoch that Tune takes and
    goes on from is written to ``<record>.go``, which the training worker waits for
    (:func:`ce_ray.worker.records.wait_for_decision`): Tune's ``report`` returns only when
    Tune asks for the next result (``synchronous_result_reporting``), never after a stop.

    Epochs already in the record when this start began were reported by an earlier one;
    if this start reports nothing (every epoch was trained before a stop landed), it reports
    the last recorded epoch again, so that the trial ends with its result.
    """
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # handed to the trial function's thread
            outcome["error"] = error

    progress = Progress(record, stall_timeout_s)
    epochs = progress.read()
    reported = epochs[-1]["epoch"] if epochs else 0
    reported_now = False
    if decide:  # Tune took the epochs an earlier start reported and went on
        records.write_decision(record, reported)
    thread = threading.Thread(target=fit, name=f"fit-{label}", daemon=True)
    thread.start()
    while True:
        thread.join(timeout=PROGRESS_POLL_S)
        done = not thread.is_alive()
        epochs = progress.read()
        for metrics in (e for e in epochs if e["epoch"] > reported):
            tune.report(metrics)  # returns when Tune wants the next epoch, not when it stops
            reported, reported_now = metrics["epoch"], True
            if decide:
                records.write_decision(record, reported)
        if done:
            break
        # The floor first: the start-up's allowance lists the sweep's records.
        if progress.idle_s() > progress.floor_s and progress.idle_s() > progress.limit_s:
            where = PHASE_WORDS.get(progress.phase, "")
            message = (
                f"[sweep] trial {label} stalled{where}: no progress for "
                f"{progress.idle_s():.0f} s (limit {progress.limit_s:.0f} s); failing it, to "
                "retry from its checkpoint"
            )
            print(message, flush=True)
            raise TrialStalled(message)
    if "error" in outcome:
        raise outcome["error"]
    if not reported_now and epochs:
        tune.report(epochs[-1])


def point_key(point: dict) -> str:
    """``"<n>x<m>"``: a point's key in a tuned sweep's chosen recipes (JSON keys are text)."""
    return f"{point['n']}x{point['m']}"


def trial_outcomes(grid: tune.ResultGrid) -> list[tables.TrialOutcome]:
    """One outcome per (trial, seed index it trained); of a search trial, one per candidate
    (in its ``seed_index``)."""
    outcomes = []
    for result in (grid[i] for i in range(len(grid))):
        # The trial directory is named by _trial_name: "<m>x<n>d-seed<s>-<trial id>".
        trial_id = os.path.basename(str(result.path).rstrip("/")).rsplit("-", 1)[-1]
        config = result.config or {}
        if "point" not in config:  # never started: the sweep was stopped before it ran
            continue
        point, indices = config["point"], config["seed_indices"]
        if config.get("candidates"):
            indices = list(range(len(config["candidates"])))
        error = str(result.error).strip().splitlines()[-1] if result.error else None
        outcomes += [
            tables.TrialOutcome(
                trial_id, int(point["n"]), int(point["m"]), int(index), error, len(indices)
            )
            for index in indices
        ]
    return outcomes


def trial_histories(
    directory: str, outcomes: list[tables.TrialOutcome]
) -> dict[tuple[str, int], pd.DataFrame]:
    """(trial id, seed index) -> that seed's epochs, from the trial's record."""
    histories = {}
    for trial_id in {o.trial_id for o in outcomes}:
        rows = records.read_epochs(records.record_location(directory, trial_id))
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["epoch", "seed_index"])
        for outcome in (o for o in outcomes if o.trial_id == trial_id):
            seed = frame[frame["seed_index"] == outcome.seed_index]
            histories[trial_id, outcome.seed_index] = seed.reset_index(drop=True)
    return histories
