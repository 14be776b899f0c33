"""A trial's record files: the decision a worker waits for under a scheduler that stops trials."""

import threading
import time

from ce_ray.worker import records


def test_a_worker_waits_for_tunes_decision_and_beats_meanwhile(tmp_path):
    record = str(tmp_path / "trial.json")
    assert records.read_decision(record) == 0  # before any
    beats: list[float] = []
    records.wait_for_decision(record, 0, lambda: beats.append(0))  # epochs 1 and 2: no wait
    assert beats == []

    later = threading.Timer(0.5, records.write_decision, (record, 3))
    later.start()
    began = time.monotonic()
    records.wait_for_decision(record, 3, lambda: beats.append(time.monotonic()))
    assert time.monotonic() - began >= 0.45 and len(beats) >= 3
    assert records.read_decision(record) == 3
    records.wait_for_decision(record, 2, lambda: beats.append(0))  # already decided
    later.join()


def test_a_decision_being_replaced_reads_as_none_yet(tmp_path):
    record = str(tmp_path / "trial.json")
    (tmp_path / "trial.json.go").write_text('{"epo')  # cut short
    assert records.read_decision(record) == 0
