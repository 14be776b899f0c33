"""Datasets for the sweep presets, as (train, test) torch datasets. Nothing downloads.

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (1797 images, no download):
  pixels scaled to [0, 1] and flattened to 64 features; a fixed stratified split, 20% test.
* ``synthetic`` -- a small seeded Gaussian-mixture classification set for tests.
* ``mnist``, ``cifar10``, ``cifar100`` -- torchvision's datasets read from ``data_root``.
* ``imagenet`` -- ``ImageFolder`` layout: ``data_root/imagenet/{train,val}/<class>/*.JPEG``.

A missing dataset raises :class:`DatasetMissing` with one line saying where to put it.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

DATASETS: tuple[str, ...] = ("digits", "synthetic", "mnist", "cifar10", "cifar100", "imagenet")


class DatasetMissing(ValueError):
    """The dataset's files are not under the data root."""


def _digits() -> tuple[Dataset, Dataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    train, test = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=0, stratify=digits.target
    )
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def _synthetic(features: int = 16, classes: int = 4, train: int = 256, test: int = 128):
    generator = torch.Generator().manual_seed(1234)
    centres = 2.0 * torch.randn(classes, features, generator=generator)

    def draw(count: int) -> TensorDataset:
        labels = torch.randint(classes, (count,), generator=generator)
        points = centres[labels] + torch.randn(count, features, generator=generator)
        return TensorDataset(points, labels)

    return draw(train), draw(test)


def _torchvision(name: str, data_root: str, train_transform, test_transform):
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    try:
        return (
            cls[name](data_root, train=True, download=False, transform=train_transform),
            cls[name](data_root, train=False, download=False, transform=test_transform),
        )
    except RuntimeError:
        where = {
            "mnist": "MNIST/raw/ (the four *-ubyte files)",
            "cifar10": "cifar-10-batches-py/",
            "cifar100": "cifar-100-python/",
        }[name]
        raise DatasetMissing(
            f"{name} not found: put {where} under {os.path.abspath(data_root)} "
            f"(torchvision.datasets layout) or pass --data-root"
        ) from None


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_root(data_root: str) -> str:
    """An absolute data root as is; a relative one under the project directory -- the job's
    working directory on every node under ``ray job submit``, wherever Ray unpacked it, so
    that a resubmitted job (a new copy) still names the same data."""
    return data_root if os.path.isabs(data_root) else os.path.join(PROJECT_ROOT, data_root)


def load(name: str, data_root: str) -> tuple[Dataset, Dataset]:
    """``(train, test)`` of dataset ``name``; files are read from ``data_root``."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic()
    from torchvision import transforms as T

    if name == "mnist":
        flat = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,)), T.Lambda(torch.flatten)])
        return _torchvision("mnist", data_root, flat, flat)
    if name in ("cifar10", "cifar100"):
        normalize = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        augment = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
        )
        return _torchvision(name, data_root, augment, T.Compose([T.ToTensor(), normalize]))
    if name == "imagenet":
        from torchvision.datasets import ImageFolder

        root = os.path.join(data_root, "imagenet")
        if not all(os.path.isdir(os.path.join(root, split)) for split in ("train", "val")):
            raise DatasetMissing(
                f"imagenet not found: put train/ and val/ (one folder per class) under "
                f"{os.path.abspath(root)} or pass --data-root"
            )
        normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        train = T.Compose(
            [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
        )
        test = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
        return (
            ImageFolder(os.path.join(root, "train"), train),
            ImageFolder(os.path.join(root, "val"), test),
        )
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
