"""Atomic writes: a write interrupted between start and finish leaves the old file or none."""

import pandas as pd
import pyarrow as pa
import pytest

from ce_ray.results import storage

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
