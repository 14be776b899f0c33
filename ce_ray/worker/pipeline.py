"""How a training worker feeds and runs its model, at the hardware's speed, without changing
what it computes.

* Input pipeline: :func:`train_loader` reads with loader worker processes (pinned memory on a
  GPU, workers kept across epochs), yet an epoch's batches are the same whatever the number
  of workers: the sampler tags every index with its epoch (:class:`EpochTaggedSampler`) and
  each item's random transforms draw from a generator seeded by (seed, epoch, index)
  (:class:`SeededItems`), not from a worker's own stream.
* Packed seeds: :class:`StackedBatches` steps the loaders of S seeds together for one
  :class:`~ce_ray.theory.models.PackedSeeds` model, each seed reading its own batches.
* Execution: :class:`Execution` holds the numeric settings -- autocast precision (fp32, bf16,
  fp16 with a gradient scaler), ``channels_last`` memory layout for convolutional networks,
  ``torch.compile`` -- and applies them to the model, the inputs and the step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from ce_ray.choices import PRECISIONS, Precision, check_choice
from ce_ray.theory.seeds import derive_seed

#: Autocast dtype of each precision (None: no autocast).
AUTOCAST_DTYPES: dict[Precision, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Execution:
    """Numeric settings of a training worker.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 also scales the loss).
        channels_last: NHWC memory layout for 4-D inputs and the model (convolutions).
        compile: run the model through ``torch.compile``.
        compile_backend: its backend (inductor generates and compiles C++/Triton code).
    """

    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        check_choice("--precision", self.precision, PRECISIONS)

    def autocast(self, device: torch.device) -> AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A loss scaler, enabled for fp16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train: ``model`` in the memory layout, compiled if asked. The raw
        ``model`` keeps the parameters (checkpoint it, not the compiled wrapper)."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            return cast(nn.Module, torch.compile(model, backend=self.compile_backend))
        return model


class EpochTaggedSampler(Sampler[int]):
    """The indices of a ``DistributedSampler``, each tagged with the epoch:
    ``epoch * len(dataset) + index`` (:class:`SeededItems` splits the tag again).

    It travels to loader workers by value, so the tag, not state set in the main process,
    tells a persistent worker which epoch an item belongs to.
    """

    def __init__(self, sampler: DistributedSampler, size: int):
        self.sampler, self.size, self.epoch = sampler, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (self.epoch * self.size + index for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededItems(Dataset):
    """``dataset`` addressed by epoch-tagged indices; each item's random transforms draw from
    torch's generator seeded by (``seed``, epoch, index), the caller's RNG state untouched.

    >>> noisy = type("Noisy", (Dataset,), {"__getitem__": lambda self, i: torch.rand(1).item()})
    >>> items = SeededItems(noisy(), seed=0, size=10)
    >>> items[3] == items[3], items[3] == items[13]  # same epoch and index; epoch 1
    (True, False)
    """

    def __init__(self, dataset: Dataset, seed: int, size: int):
        self.dataset, self.seed, self.size = dataset, seed, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, tag: int) -> tuple[torch.Tensor, int]:
        epoch, index = divmod(tag, self.size)
        # The CPU generator alone (torch.manual_seed also seeds every accelerator: ~30x
        # slower per item); torchvision's random transforms draw from it.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(derive_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: DistributedSampler,
    seed: int,
    workers: int,
    pin_memory: bool,
    drop_last: bool,
) -> tuple[DataLoader, EpochTaggedSampler | DistributedSampler]:
    """The training loader and its sampler (call ``set_epoch`` on it every epoch).

    A ``TensorDataset`` holds final tensors, with nothing random to seed: it is read by plain
    indices, without :class:`SeededItems`' per-item cost."""
    items: Dataset
    epoch_sampler: EpochTaggedSampler | DistributedSampler
    if isinstance(dataset, TensorDataset):
        items, epoch_sampler = dataset, sampler
    else:
        size = len(dataset)  # type: ignore[arg-type]  # map-style datasets have a length
        items = SeededItems(dataset, seed, size)
        epoch_sampler = EpochTaggedSampler(sampler, size)
    loader = DataLoader(
        items,
        batch_size=batch_size,
        sampler=epoch_sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        # The loader's own base seed, so that it draws nothing from the training process's
        # generator (its items are seeded by SeededItems anyway).
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, epoch_sampler


class StackedBatches:
    """The loaders of S seeds stepped together: each step yields ``(x, y)`` with ``x`` shaped
    ``(S, batch, ...)`` and ``y`` ``(S, batch)``, row s from loader s. The loaders must yield
    batches of equal size (same dataset, batch size and ``drop_last``: one seed's order, its
    sampler's seed, is all that differs)."""

    def __init__(self, loaders: list):
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batches in zip(*self.loaders, strict=True):
            xs, ys = zip(*batches, strict=True)
            yield torch.stack(xs), torch.stack(ys)


class RepeatedBatches:
    """One loader's batches for ``copies`` copies of a packed model: ``x`` ``(copies, batch,
    ...)`` and ``y`` ``(copies, batch)``, every row the same batch -- what
    :class:`StackedBatches` yields for loaders of one seed, read once instead of ``copies``
    times (a tuned point's candidates: ``ce_ray.worker.loop.train_point``)."""

    def __init__(self, loader: Iterable, copies: int):
        self.loader = loader
        self.copies = copies

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            # Contiguous, as StackedBatches' stack: the same kernels, the same rounding.
            yield (
                x.expand(self.copies, *x.shape).contiguous(),
                y.expand(self.copies, *y.shape).contiguous(),
            )
