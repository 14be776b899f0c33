"""Datasets for the sweep presets, as (train, test) torch datasets. Nothing downloads.

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (1797 images, no download):
  pixels scaled to [0, 1] and flattened to 64 features; a fixed stratified split, 20% test.
* ``synthetic`` -- a small seeded Gaussian-mixture classification set for tests.
* ``mnist``, ``cifar10``, ``cifar100`` -- torchvision's datasets read from ``data_root``.
* ``imagenet`` -- ``ImageFolder`` layout: ``data_root/imagenet/{train,val}/<class>/*.JPEG``.
* ``imagenet32``, ``imagenet64`` -- the downsampled ImageNet of Chrabaszcz et al. (2017) in its
  published pickled format: ``data_root/imagenet32/train_data_batch_1`` .. ``_10`` and
  ``val_data`` (likewise ``imagenet64/``), each a dict with ``data`` (uint8 rows of 3*r*r
  values, channel-major) and 1-based ``labels``; the training batches carry the ``mean`` image.

A missing dataset raises :class:`DatasetMissing` with one line saying where to put it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

#: A torchvision transform: an image in, a tensor out.
Transform = Callable[[Any], torch.Tensor]

DATASETS: tuple[str, ...] = (
    "digits",
    "synthetic",
    "mnist",
    "cifar10",
    "cifar100",
    "imagenet",
    "imagenet32",
    "imagenet64",
)
#: Image side of the downsampled ImageNet datasets.
DOWNSAMPLED_SIDES = {"imagenet32": 32, "imagenet64": 64}
DOWNSAMPLED_TRAIN_BATCHES = 10


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


def _synthetic(
    features: int = 16, classes: int = 4, train: int = 256, test: int = 128
) -> tuple[Dataset, Dataset]:
    generator = torch.Generator().manual_seed(1234)
    centres = 2.0 * torch.randn(classes, features, generator=generator)

    def draw(count: int) -> TensorDataset:
        labels = torch.randint(classes, (count,), generator=generator)
        points = centres[labels] + torch.randn(count, features, generator=generator)
        return TensorDataset(points, labels)

    return draw(train), draw(test)


def _torchvision(
    name: str,
    data_root: str,
    train_transform: Transform | None,
    test_transform: Transform | None,
) -> tuple[Dataset, Dataset]:
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


class DownsampledImageNet(Dataset):
    """Downsampled ImageNet images as uint8 ``(N, 3, r, r)`` with 0-based labels; ``transform``
    maps a uint8 image tensor to the model's input."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform):
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


class ScaleAndCentre:
    """uint8 image -> float in [0, 1] minus ``mean`` (a picklable transform)."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.float() / 255.0 - self.mean


class ArraysOnly(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and plain containers only.

    The downsampled ImageNet batches are pickles, and ``pickle.load`` runs whatever code a
    pickle names; this one refuses every global but the few that rebuild an array, so a
    tampered file in the data root is an error, not code run on every training worker.
    """

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed (only NumPy arrays and plain containers)"
            )
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    """A downsampled ImageNet batch, through :class:`ArraysOnly` (ValueError if refused)."""
    with open(path, "rb") as stream:
        try:
            return ArraysOnly(stream).load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: not a downsampled ImageNet batch: {error}") from None


def _downsampled_imagenet(name: str, data_root: str) -> tuple[Dataset, Dataset]:
    """``(train, test)`` from the pickled batches; the authors' preprocessing: scale to [0, 1],
    subtract the training set's mean image, random crop (padding 4) and flip for training."""
    from torchvision import transforms as T

    side = DOWNSAMPLED_SIDES[name]
    root = os.path.join(data_root, name)
    train_files = [f"train_data_batch_{i}" for i in range(1, DOWNSAMPLED_TRAIN_BATCHES + 1)]
    if not all(os.path.isfile(os.path.join(root, f)) for f in [*train_files, "val_data"]):
        raise DatasetMissing(
            f"{name} not found: put train_data_batch_1..{DOWNSAMPLED_TRAIN_BATCHES} and val_data "
            f"(Imagenet{side}_train and Imagenet{side}_val, unzipped) in {os.path.abspath(root)} "
            f"or pass --data-root"
        )
    batches = [_unpickle(os.path.join(root, f)) for f in train_files]
    mean = torch.as_tensor(np.asarray(batches[0]["mean"], np.float32)).reshape(3, side, side)
    mean = mean / 255.0

    def images_and_labels(parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        images = np.concatenate([np.asarray(p["data"], np.uint8) for p in parts])
        labels = np.concatenate([np.asarray(p["labels"], np.int64) for p in parts]) - 1
        return images.reshape(-1, 3, side, side), labels

    def scale(image: torch.Tensor) -> torch.Tensor:
        return image.float() / 255.0 - mean

    train_transform = T.Compose([scale, T.RandomCrop(side, padding=4), T.RandomHorizontalFlip()])
    return (
        DownsampledImageNet(*images_and_labels(batches), train_transform),
        DownsampledImageNet(*images_and_labels([_unpickle(os.path.join(root, "val_data"))]), scale),
    )


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _normalised_mnist(dataset: Any) -> TensorDataset:
    """MNIST as one tensor: scaled to [0, 1], normalised by the usual mean and std, flattened
    -- the numbers ToTensor + Normalize give per image, computed once (MNIST's preset has no
    augmentation), so that loading an example costs an index, not a PIL round trip."""
    images = dataset.data.float().div(255).sub(MNIST_MEAN).div(MNIST_STD).flatten(1)
    return TensorDataset(images, dataset.targets.clone())


def cifar_transforms() -> tuple[Transform, Transform]:
    """``(train, test)`` transforms of the CIFAR presets: crop (padding 4) and flip, then
    per-channel normalisation, as in the ResNeXt paper's recipe."""
    from torchvision import transforms as T

    normalize = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    augment = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    return augment, T.Compose([T.ToTensor(), normalize])


def load(name: str, data_root: str) -> tuple[Dataset, Dataset]:
    """``(train, test)`` of dataset ``name``; files are read from ``data_root``."""
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic()
    from torchvision import transforms as T

    if name == "mnist":
        train, test = _torchvision("mnist", data_root, None, None)
        return _normalised_mnist(train), _normalised_mnist(test)
    if name in ("cifar10", "cifar100"):
        return _torchvision(name, data_root, *cifar_transforms())
    if name in DOWNSAMPLED_SIDES:
        return _downsampled_imagenet(name, data_root)
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
