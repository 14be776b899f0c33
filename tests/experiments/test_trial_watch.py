"""A trial's stall watch (``ce_ray.experiments.trial.Progress``) on the files a run writes --
its record, rank 0's heartbeat, its Train controller's state -- without Ray: a worker frozen
while its process starts or in its start-up is noticed; a worker group waiting for its
resources, or a start-up as slow as the sweep's others, is not."""

import json
import time

import pytest

from ce_ray.experiments import ray_compat, trial
from ce_ray.worker import records


def controller(record: str, state: str, seconds_ago: float = 0.0) -> None:
    written = {"state": state, "since": time.time() - seconds_ago}
    with open(records.controller_location(record), "w") as file:
        json.dump(written, file)


@pytest.fixture
def record(tmp_path):
    (tmp_path / "records").mkdir()
    return str(tmp_path / "records" / "trial-a")


def test_a_worker_group_up_but_silent_past_its_allowance_has_stalled_in_its_start_up(record):
    progress = trial.Progress(record, floor_s=10.0)
    progress.started -= 60.0  # the trial function began a minute ago
    controller(record, "RunningState", seconds_ago=1.0)
    progress.read()
    assert progress.phase == "starting" and 0.5 < progress.idle_s() < 5.0
    controller(record, "RunningState", seconds_ago=30.0)  # the same state: its clock stands
    progress.read()
    assert progress.idle_s() < 5.0
    progress.controller = ("RunningState", time.monotonic() - 30.0)  # up 30 s, no beat
    assert progress.idle_s() > 30.0 > progress.limit_s == 10.0  # stalled in its start-up


def test_a_group_set_up_past_train_s_own_wait_has_stalled_starting_its_workers(record):
    progress = trial.Progress(record, floor_s=10.0)
    progress.started -= 60.0  # the trial function began a minute ago
    controller(record, "SchedulingState", seconds_ago=1.0)
    progress.read()
    assert progress.phase == "setting up"
    assert progress.limit_s == ray_compat.worker_group_start_timeout_s() + 10.0
    # Train waits for the resources and tries again: a new state, a new clock.
    controller(record, "ReschedulingState")
    progress.read()
    assert progress.idle_s() < 1.0


def test_a_first_beat_records_the_start_up_and_the_sweep_s_slowest_sets_the_allowance(record):
    records_dir = record.rsplit("/", 1)[0]
    progress = trial.Progress(record, floor_s=10.0)
    progress.started -= 60.0  # the trial function began a minute ago
    controller(record, "RunningState", seconds_ago=4.0)
    progress.read()
    records.Heartbeat(record, start=0)()  # the first beat: start-up over, ~4 s
    progress.read()
    assert progress.phase == "training"
    assert records.longest_startup(records_dir) == pytest.approx(4.0, abs=1.0)
    records.write_startup(f"{records_dir}/trial-b", 30.0)  # another trial started slowly
    assert trial.Progress(f"{records_dir}/trial-c", floor_s=10.0).limit_s == 5.0 * 30.0


def test_an_earlier_start_s_controller_is_not_this_start_s_and_done_holds(record):
    controller(record, "RunningState", seconds_ago=600.0)  # the run before a retry
    progress = trial.Progress(record, floor_s=10.0)
    progress.read()
    assert progress.controller is None and progress.idle_s() == 0.0
    controller(record, "FinishedState")
    progress.read()
    assert progress.phase == "waiting" and progress.idle_s() == 0.0
