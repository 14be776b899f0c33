"""Results locations: a real S3 API on 127.0.0.1 (moto's server), and locations that cannot
be written failing before any Ray work with one line naming the location and the reason.

Atomic writes: a write interrupted between start and finish leaves the old file or none.
"""

import itertools
import json
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from ce_ray import cli
from ce_ray.results import storage
from tests.conftest import S3_ENV, S3Server

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SWEEP = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--seeds", "1"]
FIT = ["--preset", "mnist-mlp-block", "--widths", "8,16", "--samples", "100", "--workers", "1"]


def assert_one_line_exit_2(run, location: str, reason: str) -> None:
    rc, err = run(location)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err[-2000:]
    assert f"--results {location}: cannot write there: " in lines[0] and reason in lines[0], lines


def run_sweep(capsys):
    def run(location):
        rc = cli.main(["sweep", "primal", *SWEEP, "--results", location])
        return rc, capsys.readouterr().err

    return run


def run_fit(capsys):
    # In this process, as the sweep's: the console script's own one-line errors are
    # tests/jobs/test_fit_alpha.py's (a subprocess here cost ~5 s a case).
    def run(location):
        rc = cli.main(["fit-alpha", *FIT, "--results", location])
        return rc, capsys.readouterr().err

    return run


def test_a_path_under_a_file_fails_first(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    location = str(blocker / "results")
    assert_one_line_exit_2(run_sweep(capsys), location, f"{blocker} is a file")
    assert_one_line_exit_2(run_fit(capsys), location, f"{blocker} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_missing_bucket_fails_first(s3, capsys):
    server, bucket = s3
    location = "s3://no-such-bucket/prefix"
    assert_one_line_exit_2(run_sweep(capsys), location, "bucket 'no-such-bucket' does not exist")
    assert_one_line_exit_2(run_fit(capsys), location, "bucket 'no-such-bucket' does not exist")
    assert server.keys(bucket) == []


def test_an_unreachable_endpoint_fails_first(s3, capsys, monkeypatch):
    from ce_ray.experiments import local_head

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{local_head.free_port()}")
    assert_one_line_exit_2(run_sweep(capsys), f"s3://{s3[1]}/x", "connect")


def test_wrong_credentials_fail_first(capsys, monkeypatch):
    # A second server that checks credentials: every key is unknown to it.
    server = S3Server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        for key, value in (S3_ENV | {"AWS_ENDPOINT_URL": server.endpoint}).items():
            monkeypatch.setenv(key, value)
        assert_one_line_exit_2(run_sweep(capsys), "s3://some-bucket/x", "AWS Error")
    finally:
        server.stop()


def test_check_writable_leaves_nothing_behind(s3, tmp_path):
    server, bucket = s3
    storage.check_writable(f"s3://{bucket}/deep/prefix")
    storage.check_writable(str(tmp_path / "a/b/c"))
    assert server.keys(bucket) == [] and not any(tmp_path.iterdir())


SCHEMA = pa.schema([pa.field("x", pa.int64())])


def half_then_fail(table, stream, **kwargs):
    stream.write(b"PAR1" + bytes(100))  # some bytes reach the file, then the writer dies
    raise KeyboardInterrupt


def test_an_interrupted_first_write_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.pq, "write_table", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        storage.write_parquet(pa.table({"x": [1, 2]}), str(tmp_path / "t.parquet"), SCHEMA)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary


def test_an_interrupted_rewrite_leaves_the_old_file(tmp_path, monkeypatch):
    target = str(tmp_path / "t.parquet")
    storage.write_parquet(pa.table({"x": [1, 2]}), target, SCHEMA)
    monkeypatch.setattr(storage.pq, "write_table", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        storage.write_parquet(pa.table({"x": [3, 4, 5]}), target, SCHEMA)
    assert pd.read_parquet(target)["x"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_temporaries_are_hidden_from_listings_and_removable(tmp_path):
    (tmp_path / f"{storage.TEMPORARY_PREFIX}abc-w1.parquet").write_bytes(b"PAR1")
    storage.write_parquet(pa.table({"x": [1]}), str(tmp_path / "w2.parquet"), SCHEMA)
    assert storage.list_files(str(tmp_path), ".parquet") == ["w2.parquet"]
    assert storage.remove_temporaries(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["w2.parquet"]


def test_parquet_rows_tells_a_whole_file_from_a_truncated_one(tmp_path):
    target = tmp_path / "t.parquet"
    storage.write_parquet(pa.table({"x": [1, 2, 3]}), str(target), SCHEMA)
    assert storage.parquet_rows(str(target)) == 3
    target.write_bytes(target.read_bytes()[:-20])
    assert storage.parquet_rows(str(target)) is None


def test_a_json_document_replaced_while_read_from_s3_is_read_whole(s3):
    """pyarrow reads an S3 object by byte ranges after asking its size: a document replaced in
    between can come back cut short (a trial record read while rank 0 rewrote it once failed a
    trial). ``read_json`` reads it again; plain reads, meanwhile, are counted."""
    _, bucket = s3
    location = f"s3://{bucket}/records/trial.json"
    documents = [{"epochs": list(range(k))} for k in (300, 700)]
    storage.write_bytes(json.dumps(documents[0]).encode(), location)
    stop = threading.Event()

    def rewrite() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            storage.write_bytes(json.dumps(documents[i % 2]).encode(), location)

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads, cut_short = 0, 0
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert storage.read_json(location) in documents
            try:
                json.loads(storage.read_text(location))
            except ValueError:
                cut_short += 1
            reads += 1
    finally:
        stop.set()
        writer.join()
    print(f"\n[figures] {reads} plain reads of a document being replaced: {cut_short} cut short")
