"""A trial's record files: the decision a worker waits for under a scheduler that stops trials."""

import threading
import time

from ce_ray.worker import records


def test_a_worker_waits_for_tunes_decision(tmp_path):
    record = str(tmp_path / "trial.json")
    assert records.read_decision(record) == 0  # before any
    began = time.monotonic()
    records.wait_for_decision(record, 0)  # epochs 1 and 2: no wait
    assert time.monotonic() - began < 0.05

    later = threading.Timer(0.5, records.write_decision, (record, 3))
    later.start()
    began = time.monotonic()
    records.wait_for_decision(record, 3)
    assert time.monotonic() - began >= 0.45
    assert records.read_decision(record) == 3
    began = time.monotonic()
    records.wait_for_decision(record, 2)  # already decided
    assert time.monotonic() - began < 0.05
    later.join()


def test_a_decision_being_replaced_reads_as_none_yet(tmp_path):
    record = str(tmp_path / "trial.json")
    (tmp_path / "trial.json.go").write_text('{"epo')  # cut short
    assert records.read_decision(record) == 0
