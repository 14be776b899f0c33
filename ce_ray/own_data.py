"""Your own data for a sweep (``--data``), in three forms, split the same way every time.

* ``parquet:PATH_OR_URI`` -- a Parquet file or a folder of them (local or ``s3://``), with
  ``label_column`` the class: the input is either every other column (numbers) or the one other
  column, a list of numbers of the same length in every row. Features are used as given.
* ``imagefolder:DIR`` -- torchvision's ``ImageFolder`` layout, a folder per class; ``DIR/train``
  and ``DIR/test`` when it has its own test split. Every image is decoded as RGB, resized to
  ``image_size`` x ``image_size`` and normalised per channel with the mean and standard
  deviation of the training split (validation held out).
* ``MODULE:CALLABLE`` -- your own ``CALLABLE() -> (train, test)`` of
  ``torch.utils.data.Dataset``\\ s of ``(tensor, int label)`` (``test`` None: one is taken).

A test split is taken from the data when it has none (``test_fraction`` of the examples); a
validation split (``validation_fraction`` of the training examples) always is. Both draws are
permutations seeded by the experiment seed alone, so every worker of every trial, and a
resumed sweep, holds the same rows in each split. The test split is reported, never used to
choose anything. Everything is held in each training worker's memory: data larger than that
is Ray Data's job (docs/your-own-data.md).

:func:`load` checks as it reads and raises ValueError with one line for data that cannot
train; :meth:`Splits.summary` is what a sweep records of the data.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ce_ray.theory.seeds import derive_seed

DataKind = Literal["parquet", "imagefolder", "callable"]
#: The prefixes of ``--data`` (anything else with a colon is ``MODULE:CALLABLE``).
DATA_PREFIXES = ("parquet", "imagefolder")
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The keys of the split permutations' seeds, beside the experiment seed.
TEST_SPLIT_KEY, VALIDATION_SPLIT_KEY = 7_001, 7_002


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` and its options name.

    Attributes:
        source: ``parquet:PATH_OR_URI``, ``imagefolder:DIR`` or ``MODULE:CALLABLE``.
        label_column: a table's class column (parquet only, required there).
        image_size: the side images are resized to (imagefolder only).
        test_fraction: the share of the examples held out as the test split when the data
            has none.
        validation_fraction: the share of the training examples held out for validation.
    """

    source: str
    label_column: str | None = None
    image_size: int | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION

    def __post_init__(self) -> None:
        prefix, colon, rest = self.source.partition(":")
        if not colon or not prefix or not rest:
            raise ValueError(
                f"--data {self.source!r}: must be parquet:PATH_OR_URI, imagefolder:DIR or "
                f"MODULE:CALLABLE"
            )
        if self.kind == "parquet" and not self.label_column:
            raise ValueError(f"--data {self.source}: a table needs --label-column COLUMN")
        if self.kind != "parquet" and self.label_column is not None:
            raise ValueError("--label-column is for --data parquet:... only")
        if self.kind != "imagefolder" and self.image_size is not None:
            raise ValueError("--image-size is for --data imagefolder:... only")
        if self.image_size is not None and not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"--image-size must be from 1 to {MAX_IMAGE_SIZE}; got {self.image_size}"
            )
        for name, value in (
            ("--test-fraction", self.test_fraction),
            ("--validation-fraction", self.validation_fraction),
        ):
            if not (math.isfinite(value) and 0 < value < 1):
                raise ValueError(f"{name} must be a number above 0 and below 1; got {value!r}")

    @classmethod
    def given(cls, source: str, **options: Any) -> DataSpec:
        """The spec of ``source`` with the options given (None: the default), as the command
        line and a stored configuration name them."""
        return cls(source, **{k: v for k, v in options.items() if v is not None})

    @property
    def kind(self) -> DataKind:
        prefix = self.source.partition(":")[0]
        return prefix if prefix in DATA_PREFIXES else "callable"  # type: ignore[return-value]

    @property
    def location(self) -> str:
        """The path, URI or ``MODULE:CALLABLE``."""
        return self.source if self.kind == "callable" else self.source.partition(":")[2]


@dataclass(frozen=True)
class Splits:
    """The data's three splits and what a network needs to know of them."""

    train: Dataset
    validation: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    classes: int
    fingerprint: str  # the files' contents, or the callable's name

    def summary(self) -> dict:
        """What a sweep records (``sweep.json``): resuming on other data is refused."""
        sizes = {
            name: len(split)  # type: ignore[arg-type]  # map-style datasets have a length
            for name, split in (
                ("train", self.train),
                ("validation", self.validation),
                ("test", self.test),
            )
        }
        return {
            "rows": sizes,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "fingerprint": self.fingerprint,
        }


def load(spec: DataSpec, seed: int) -> Splits:
    """The three splits of ``spec``'s data for experiment seed ``seed`` (ValueError, one line,
    for data that cannot train)."""
    if spec.kind == "parquet":
        x, y, classes, fingerprint = _read_table(spec)
        splits = _split(spec, TensorDataset(x, y), None, classes, seed)
        return Splits(*splits, tuple(x.shape[1:]), classes, fingerprint)
    if spec.kind == "imagefolder":
        return _read_image_folder(spec, seed)
    return _read_callable(spec, seed)


def hold_out(count: int, fraction: float, seed: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held_out)`` indices of ``range(count)``: a permutation seeded by (seed, key),
    its first ``round(fraction * count)`` (at least 1) held out; each part in index order.

    >>> kept, held = hold_out(10, 0.2, seed=0, key=1)
    >>> len(kept), len(held), sorted([*kept, *held]) == list(range(10))
    (8, 2, True)
    """
    order = np.random.default_rng(derive_seed(seed, key)).permutation(count)
    held = max(1, round(fraction * count))
    return np.sort(order[held:]), np.sort(order[:held])


def hold_out_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(train without validation, validation)``: ``fraction`` of ``train`` held out."""
    kept, held = hold_out(len(train), fraction, seed, VALIDATION_SPLIT_KEY)  # type: ignore[arg-type]
    return _rows(train, kept), _rows(train, held)


def _rows(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """``dataset``'s rows ``indices``: a TensorDataset's as tensors (indexing an example is
    then one lookup), any other through ``Subset``."""
    if isinstance(dataset, TensorDataset):
        index = torch.from_numpy(indices)
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def _split(
    spec: DataSpec, train: Dataset, test: Dataset | None, classes: int, seed: int
) -> tuple[Dataset, Dataset, Dataset]:
    """``(train, validation, test)``: the test split held out of ``train`` when ``test`` is
    None, then the validation split; every class must keep a training example."""
    if test is None:
        kept, held = hold_out(len(train), spec.test_fraction, seed, TEST_SPLIT_KEY)  # type: ignore[arg-type]
        train, test = _rows(train, kept), _rows(train, held)
    train, validation = hold_out_validation(train, spec.validation_fraction, seed)
    counts = np.bincount(_labels(train), minlength=classes)
    if (counts == 0).any():
        raise ValueError(
            f"--data {spec.source}: class {int(np.argmin(counts))} has no training example "
            f"once the test and validation splits are held out; give it more examples or "
            f"smaller fractions"
        )
    return train, validation, test


def _filesystem(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def _files(spec: DataSpec, suffixes: tuple[str, ...]) -> tuple[Any, str, list[str]]:
    """``(filesystem, base, files)``: the data's files, sorted, and the folder their names in
    the fingerprint are relative to (ValueError when the path does not exist or holds none)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        fs, path = _filesystem(spec.location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return fs, os.path.dirname(path), [path]
        if info.type != pafs.FileType.Directory:
            raise ValueError(f"--data {spec.source}: no such file or directory")
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except (OSError, pa.ArrowException) as error:
        raise ValueError(
            f"--data {spec.source}: cannot read it: {str(error).splitlines()[0]}"
        ) from None
    names = sorted(
        f.path for f in found if f.type == pafs.FileType.File and f.path.lower().endswith(suffixes)
    )
    if not names:
        raise ValueError(f"--data {spec.source}: holds no {'/'.join(suffixes)} file")
    return fs, path, names


def _read_into(digest: Any, fs: Any, base: str, path: str) -> bytes:
    """``path``'s contents, read once; ``digest`` (the fingerprint: sha256 over each file's
    name relative to ``base`` and contents, in order) updated with them."""
    with fs.open_input_stream(path) as stream:
        contents = stream.read()
    digest.update(os.path.relpath(path, base).encode() + b"\0")
    digest.update(contents)
    return contents


def _read_table(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """A table's features ``(N, F)`` as float32, its labels as class indices (the label
    values in sorted order), the number of classes and the files' fingerprint."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, base, paths = _files(spec, (".parquet", ".pq"))
    digest = hashlib.sha256()
    try:
        contents = [_read_into(digest, fs, base, p) for p in paths]
        table = pa.concat_tables([pq.read_table(pa.BufferReader(c)) for c in contents])
    except (OSError, pa.ArrowException) as error:
        raise ValueError(
            f"--data {spec.source}: not a Parquet table: {str(error).splitlines()[0]}"
        ) from None
    label = spec.label_column
    if label not in table.column_names:
        raise ValueError(
            f"--label-column {label!r} is not a column of {spec.location} "
            f"(columns: {', '.join(table.column_names)})"
        )
    labels = table.column(label)
    if labels.null_count:
        raise ValueError(f"--label-column {label!r}: {labels.null_count} row(s) have no label")
    values = np.asarray(labels.to_pylist(), dtype=object)
    names = sorted(set(values.tolist()))
    if len(names) < 2:
        raise ValueError(
            f"--label-column {label!r} has {len(names)} class(es); a classifier needs 2 or more"
        )
    y = torch.as_tensor(np.searchsorted(np.asarray(names, dtype=object), values), dtype=torch.long)
    features = [c for c in table.column_names if c != label]
    if not features:
        raise ValueError(f"--data {spec.source}: no feature column beside {label!r}")
    lists = [
        c
        for c in features
        if pa.types.is_list(table.schema.field(c).type)
        or pa.types.is_fixed_size_list(table.schema.field(c).type)
    ]
    if lists and len(features) > 1:
        raise ValueError(
            f"--data {spec.source}: the input is numeric columns or ONE list column; got the list "
            f"column {lists[0]!r} beside {len(features) - 1} other(s)"
        )
    if lists:
        column = table.column(lists[0]).combine_chunks()
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if column.null_count or len(set(lengths.tolist())) > 1:
            row = (
                int(np.argmax(lengths != lengths[0]))
                if not column.null_count
                else column.to_pylist().index(None)
            )
            raise ValueError(
                f"--data {spec.source}: examples of different shapes: column {lists[0]!r} has "
                f"{lengths[0]} values in row 0 and "
                f"{lengths[row] if not column.null_count else 'none'} in row {row}"
            )
        flat = column.flatten()
        _check_numeric(spec, lists[0], flat.type)
        x = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
            len(column), -1
        )
        names_of_columns = [lists[0]] * x.shape[1]
    else:
        for c in features:
            _check_numeric(spec, c, table.schema.field(c).type)
            if table.column(c).null_count:
                raise ValueError(
                    f"--data {spec.source}: column {c!r} has "
                    f"{table.column(c).null_count} empty value(s)"
                )
        x = np.column_stack(
            [np.asarray(table.column(c).to_numpy(), dtype=np.float32) for c in features]
        )
        names_of_columns = features
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"--data {spec.source}: column {names_of_columns[col]!r} row {row} is {x[row, col]} "
            f"(features must be finite numbers)"
        )
    return torch.from_numpy(np.array(x)), y, len(names), digest.hexdigest()


def _check_numeric(spec: DataSpec, column: str, kind: Any) -> None:
    import pyarrow as pa

    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise ValueError(
            f"--data {spec.source}: feature column {column!r} is {kind}, not numbers "
            f"(give the label as --label-column and numeric features)"
        )


def _read_image_folder(spec: DataSpec, seed: int) -> Splits:
    """Decode, resize and normalise every image; ``DIR/train`` + ``DIR/test`` or one folder."""
    from torchvision.datasets.folder import find_classes

    root = spec.location
    if "://" in root:
        raise ValueError(
            f"--data {spec.source}: an image folder must be a directory on this machine or "
            f"a shared file system"
        )
    if not os.path.isdir(root):
        raise ValueError(f"--data {spec.source}: no such directory")
    own_test = os.path.isdir(os.path.join(root, "train")) and os.path.isdir(
        os.path.join(root, "test")
    )
    parts = ("train", "test") if own_test else ("",)
    classes, _ = find_classes(os.path.join(root, parts[0]))
    if len(classes) < 2:
        raise ValueError(
            f"--data {spec.source}: {len(classes)} class folder(s); a classifier needs 2 or more"
        )
    size = spec.image_size or DEFAULT_IMAGE_SIZE
    digest = hashlib.sha256()
    read = [_read_images(spec, root, part, classes, size, digest) for part in parts]
    test = read[1] if own_test else None
    train, validation, test_set = _split(spec, read[0], test, len(classes), seed)
    # Per-channel statistics of the training split (validation and test held out).
    train_images = train.tensors[0]  # type: ignore[attr-defined]
    mean = train_images.mean(dim=(0, 2, 3), keepdim=True)
    std = train_images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def normalised(split: Dataset) -> TensorDataset:
        x, y = split.tensors  # type: ignore[attr-defined]
        return TensorDataset((x - mean) / std, y)

    return Splits(
        normalised(train),
        normalised(validation),
        normalised(test_set),
        (3, size, size),
        len(classes),
        digest.hexdigest(),
    )


def _read_images(
    spec: DataSpec, root: str, part: str, classes: list[str], size: int, digest: Any
) -> TensorDataset:
    """Every image under ``root/part/<class>/`` as float RGB in [0, 1], ``size`` x ``size``
    (decoded by Pillow, as torchvision's ``ImageFolder`` does); each file read once, into the
    fingerprint ``digest`` too."""
    import io

    import pyarrow.fs as pafs
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor, resize

    fs, base = pafs.LocalFileSystem(), os.path.abspath(root)
    images, labels = [], []
    for index, name in enumerate(classes):
        directory = os.path.join(base, part, name)
        if not os.path.isdir(directory):
            raise ValueError(
                f"--data {spec.source}: {directory} is missing "
                f"(the classes are {', '.join(classes)})"
            )
        files = sorted(
            os.path.join(directory, f)
            for f in os.listdir(directory)
            if f.lower().endswith(IMAGE_SUFFIXES)
        )
        if not files:
            raise ValueError(f"--data {spec.source}: class folder {directory} holds no image")
        for path in files:
            contents = _read_into(digest, fs, base, path)
            try:
                with Image.open(io.BytesIO(contents)) as opened:
                    image = pil_to_tensor(opened.convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise ValueError(
                    f"--data {spec.source}: {path} does not decode as an image "
                    f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
                ) from None
            images.append(resize(image, [size, size], antialias=True).float() / 255.0)
            labels.append(index)
    return TensorDataset(torch.stack(images), torch.tensor(labels, dtype=torch.long))


def _read_callable(spec: DataSpec, seed: int) -> Splits:
    """Your ``CALLABLE() -> (train, test)``, every example read once and checked."""
    from ce_ray.theory.member import load_member

    make = load_member(
        spec.location, role="--data", signature="data() -> (train Dataset, test Dataset)"
    )
    try:
        returned = make()
    except Exception as error:  # the user's code: one line
        raise ValueError(
            f"--data {spec.location}() raised {type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        ) from None
    if not (isinstance(returned, tuple) and len(returned) == 2):
        raise ValueError(
            f"--data {spec.location}() returned a {type(returned).__name__}; it must return "
            f"(train, test) Datasets (test may be None)"
        )
    train, test = returned
    shape, classes = _check_dataset(spec, "train", train, None)
    if test is not None:
        _check_dataset(spec, "test", test, shape)
    test_labels = _labels(test) if test is not None else []
    classes = max(classes, max(test_labels, default=-1) + 1)
    if classes < 2:
        raise ValueError(
            f"--data {spec.location}: the labels hold {classes} class(es); a classifier "
            f"needs 2 or more"
        )
    splits = _split(spec, train, test, classes, seed)
    return Splits(*splits, shape, classes, f"callable:{spec.location}")


def _labels(dataset: Dataset) -> list[int]:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist()
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def _check_dataset(
    spec: DataSpec, split: str, dataset: Any, shape: tuple[int, ...] | None
) -> tuple[tuple[int, ...], int]:
    """The examples' shape and the number of classes (max label + 1) of a returned Dataset,
    every example checked: a tensor of one shape, finite, with a whole-number label >= 0."""
    where = f"--data {spec.location}: the {split} set"
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ValueError(f"{where} is a {type(dataset).__name__}, not a map-style torch Dataset")
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty")
    most = -1
    for index in range(len(dataset)):
        item = dataset[index]
        if not (
            isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], torch.Tensor)
        ):
            raise ValueError(f"{where}: example {index} is not a (tensor, int label) pair")
        x, label = item
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 0:
            raise ValueError(
                f"{where}: example {index}'s label is {label!r}, not a whole number >= 0"
            )
        shape = shape or tuple(x.shape)
        if tuple(x.shape) != shape:
            raise ValueError(
                f"{where}: examples of different shapes: {list(shape)} and {list(x.shape)} "
                f"(example {index})"
            )
        if not x.is_floating_point() or not torch.isfinite(x).all():
            raise ValueError(f"{where}: example {index} is not finite floating-point numbers")
        most = max(most, int(label))
    return shape or (), most + 1
