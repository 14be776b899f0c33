"""A trial's stall watch (``ce_ray.experiments.trial.Progress``) on the files a run writes --
its record, rank 0's heartbeat, its Train controller's state -- without Ray: a worker frozen
in its start-up is noticed; a worker group waiting to be scheduled, or a start-up as slow as
the sweep's others, is not."""

import json
import time

import pytest

from ce_ray.experiments import trial
from ce_ray.worker import records


def controller(record: str, state: str, seconds_ago: float) -> None:
    written = {"state": state, "since": time.time() - seconds_ago}
    with open(records.controller_location(record), "w") as file:
        json.dump(written, file)


@pytest.fixture
def record(tmp_path):
    (tmp_path / "records").mkdir()
    return str(tmp_path / "records" / "trial-a")


def test_a_worker_group_up_but_silent_past_the_floor_has_stalled_in_its_start_up(record):
    progress = trial.Progress(record, floor_s=10.0)
    controller(record, "RunningState", seconds_ago=0.0)
    progress.read()
    assert progress.starting and progress.idle_s() < 1.0
    progress.running_since -= 30.0  # the group started 30 s ago; no beat since
    progress.read()
    assert progress.idle_s() > 30.0 > progress.limit_s == 10.0  # stalled in its start-up


def test_scheduling_holds_the_clock_and_a_first_beat_records_the_start_up(record):
    progress = trial.Progress(record, floor_s=10.0)
    controller(record, "SchedulingState", seconds_ago=0.0)  # waiting for CPUs or a node
    progress.read()
    assert progress.idle_s() == 0.0
    controller(record, "RunningState", seconds_ago=0.0)
    progress.read()
    progress.running_since -= 4.0
    records.Heartbeat(record, start=0)()  # the first beat: start-up over, 4 s
    progress.read()
    assert not progress.starting
    assert records.longest_startup(record.rsplit("/", 1)[0]) == pytest.approx(4.0, abs=0.5)


def test_the_sweep_s_slowest_start_up_sets_the_allowance(record):
    records_dir = record.rsplit("/", 1)[0]
    records.write_startup(f"{records_dir}/trial-b", 30.0)  # another trial started slowly
    progress = trial.Progress(record, floor_s=10.0)
    assert progress.limit_s == 5.0 * 30.0


def test_an_earlier_start_s_controller_is_not_this_start_s(record):
    controller(record, "RunningState", seconds_ago=600.0)  # the run before a retry
    progress = trial.Progress(record, floor_s=10.0)
    progress.read()
    assert progress.running_since is None and progress.idle_s() == 0.0
