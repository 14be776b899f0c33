"""``--data MODULE:CALLABLE`` fixtures: the tests name them as ``tests.data_callables:NAME``.

:func:`table_arrays` is a small seeded classification table; :func:`table` returns it as a
``TensorDataset`` (no test split: one is held out), exactly what a Parquet file of the same
numbers holds, so that the two forms can be compared row for row.
"""

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

FEATURES, CLASSES, ROWS = 16, 4, 320


def table_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(x float32 (ROWS, FEATURES), y int64 (ROWS,))``: Gaussian clusters, one per class."""
    rng = np.random.default_rng(1234)
    centres = 2.0 * rng.standard_normal((CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, ROWS)
    x = (centres[y] + rng.standard_normal((ROWS, FEATURES))).astype(np.float32)
    return x, y.astype(np.int64)


def table() -> tuple[Dataset, None]:
    x, y = table_arrays()
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), None


class Pairs(Dataset):
    """A map-style dataset that is not a TensorDataset: ``(tensor, int)`` items."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


def split_table() -> tuple[Dataset, Dataset]:
    """The table's first 256 rows for training and the rest as its own test split."""
    x, y = (torch.from_numpy(a) for a in table_arrays())
    return Pairs(x[:256], y[:256]), Pairs(x[256:], y[256:])


def shuffled_test_labels() -> tuple[Dataset, Dataset]:
    """:func:`split_table` with its test labels permuted: an adversarial test split."""
    train, test = split_table()
    permuted = test.y[torch.randperm(len(test.y), generator=torch.Generator().manual_seed(0))]
    return train, Pairs(test.x, (permuted + 1) % CLASSES)


def a_list() -> list:
    return [1, 2]


def raises() -> tuple:
    raise RuntimeError("the data server is down")


class Ragged(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(4 if index < 4 else 5), index % 2


def ragged() -> tuple[Dataset, None]:
    return Ragged(), None


def untrained_class() -> tuple[Dataset, Dataset]:
    """Class 2 appears in the test split only."""
    x = torch.zeros(8, 3)
    return Pairs(x, torch.tensor([0, 1] * 4)), Pairs(x[:2], torch.tensor([2, 0]))
