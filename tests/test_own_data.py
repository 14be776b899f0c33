"""Your own data (``ce_ray.own_data``): the three forms read to the same rows, split the same
way by the experiment seed, images normalised by their training split. No Ray here: the
sweeps on each form are in tests/experiments/test_own_data_sweep.py; every bad input is one
line in tests/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ce_ray.configs import SweepConfig
from ce_ray.own_data import DataSpec, Splits, load
from tests import data_callables


def write_table(path: Path, layout: str) -> Path:
    """:func:`data_callables.table_arrays` as Parquet: one list column, or a column per
    feature with the labels as text (their sorted order is the classes' order)."""
    x, y = data_callables.table_arrays()
    if layout == "list":
        table = pa.table({"x": pa.array(list(x), pa.list_(pa.float32())), "label": y})
    else:
        columns = {f"f{i:02d}": x[:, i] for i in range(x.shape[1])}
        table = pa.table(columns | {"label": [f"class-{v}" for v in y]})
    pq.write_table(table, path)
    return path


def tensors(splits: Splits) -> list[torch.Tensor]:
    return [t for split in (splits.train, splits.validation, splits.test) for t in split.tensors]


def test_a_table_in_either_layout_and_a_callable_hold_the_same_rows_in_each_split(tmp_path):
    from_callable = load(DataSpec("tests.data_callables:table"), seed=3)
    for layout in ("list", "columns"):
        path = write_table(tmp_path / f"{layout}.parquet", layout)
        splits = load(DataSpec(f"parquet:{path}", label_column="label"), seed=3)
        assert splits.input_shape == (data_callables.FEATURES,) and splits.classes == 4
        for got, expected in zip(tensors(splits), tensors(from_callable), strict=True):
            assert torch.equal(got, expected)  # to the last bit
    sizes = from_callable.summary()["rows"]
    assert sizes == {"train": 230, "validation": 26, "test": 64}  # 20% test, 10% of the rest


def test_the_splits_follow_the_experiment_seed_alone_and_do_not_overlap(tmp_path):
    spec = DataSpec("tests.data_callables:table", test_fraction=0.25, validation_fraction=0.2)
    first, again, other = load(spec, 0), load(spec, 0), load(spec, 1)
    assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(again), strict=True))
    assert not torch.equal(first.test.tensors[0], other.test.tensors[0])
    rows = [tuple(row.tolist()) for split in tensors(first)[::2] for row in split]
    assert len(rows) == len(set(rows)) == data_callables.ROWS  # every row in one split


def test_a_dataset_with_its_own_test_split_keeps_it_and_is_not_copied(tmp_path):
    splits = load(DataSpec("tests.data_callables:split_table"), seed=0)
    assert splits.test.y.tolist() == data_callables.split_table()[1].y.tolist()
    assert len(splits.train) + len(splits.validation) == 256
    x, label = splits.train[0]
    assert x.shape == (16,) and isinstance(label, int)


def write_images(root: Path, classes: dict[str, int], size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(len(classes))
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for k in range(count):
            image = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=generator)
            image[..., index % 3] //= 4  # the classes differ in colour
            Image.fromarray(image.numpy()).save(root / name / f"{k:03d}.png")


def test_an_image_folder_is_resized_and_normalised_by_its_training_split(tmp_path):
    write_images(tmp_path / "flat", {"cat": 12, "dog": 10, "owl": 8}, (12, 10))
    splits = load(DataSpec(f"imagefolder:{tmp_path / 'flat'}", image_size=8), seed=0)
    assert splits.input_shape == (3, 8, 8) and splits.classes == 3
    train = splits.train.tensors[0]
    torch.testing.assert_close(train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)
    assert len(splits.test) == 6  # 20% of 30 held out
    # DIR/train and DIR/test: its own test split; a changed file changes the fingerprint.
    write_images(tmp_path / "split/train", {"cat": 6, "dog": 6}, (8, 8))
    write_images(tmp_path / "split/test", {"cat": 2, "dog": 3}, (8, 8))
    spec = DataSpec(f"imagefolder:{tmp_path / 'split'}", image_size=8)
    before = load(spec, seed=0)
    assert len(before.test) == 5 and before.test.tensors[1].tolist() == [0, 0, 1, 1, 1]
    Image.new("RGB", (8, 8)).save(tmp_path / "split/test/dog/000.png")
    assert load(spec, seed=0).fingerprint != before.fingerprint


def test_a_sweep_on_your_data_sizes_the_preset_s_family_to_it(tmp_path):
    path = write_table(tmp_path / "t.parquet", "list")
    config = SweepConfig.from_preset(
        "digits-mlp", alpha=2.4, num_points=2, data=f"parquet:{path}", label_column="label"
    )
    assert (config.space.input_dim, config.space.num_classes) == (16, 4)
    assert config.validation == 0.1 and config.classes == 4
    stored = config.to_json()
    assert stored["data_summary"]["rows"] == {"train": 230, "validation": 26, "test": 64}
    assert SweepConfig.from_json(stored) == config
    # A preset's own data: no validation split unless asked (its table is as before).
    assert SweepConfig.from_preset("digits-mlp", alpha=2.4).validation == 0.0
    assert "data" not in SweepConfig.from_preset("digits-mlp", alpha=2.4).to_json()
    with pytest.raises(ValueError, match="do not suit the cifar-resnext29 preset"):
        SweepConfig.from_preset(
            "cifar10-resnext29", data=f"parquet:{path}", label_column="label", num_points=2
        )
    assert np.isfinite(config.alpha)


def test_a_resume_on_other_data_is_refused_in_one_line(tmp_path):
    from ce_ray.configs import OPTIONAL_SWEEP_FIELDS
    from ce_ray.results import storage

    path = write_table(tmp_path / "t.parquet", "list")

    def config() -> dict:
        data = {"data": f"parquet:{path}", "label_column": "label"}
        return SweepConfig.from_preset("digits-mlp", alpha=2.4, num_points=2, **data).to_json()

    first = config()
    storage.check_or_write_config(str(tmp_path), first, "sweep.json", OPTIONAL_SWEEP_FIELDS)
    storage.check_or_write_config(str(tmp_path), config(), "sweep.json", OPTIONAL_SWEEP_FIELDS)
    x, y = data_callables.table_arrays()
    x[0, 0] += 1.0  # one value of one row changed
    pq.write_table(pa.table({"x": pa.array(list(x), pa.list_(pa.float32())), "label": y}), path)
    with pytest.raises(ValueError, match="different configuration \\(data_summary: ") as error:
        storage.check_or_write_config(str(tmp_path), config(), "sweep.json", OPTIONAL_SWEEP_FIELDS)
    assert "\n" not in str(error.value)
