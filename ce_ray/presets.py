"""Named settings, one registry per kind, names distinct across kinds.

* :data:`FIT_PRESETS` -- blocks whose alpha ``ce-ray fit-alpha`` fits (names end in
  ``-block``): the block, its width grid, the NTK sampler and the draws per width.
* :data:`SWEEP_PRESETS` -- experiments ``ce-ray sweep`` trains: a space around a baseline
  ``1 x n~ d``, the dataset, the training recipe, and alpha (a known value, or the fit preset
  that fits it first).

>>> SWEEP_PRESETS[DEFAULT_SWEEP_PRESET].fit_preset
'digits-mlp-block'
>>> FIT_PRESETS['digits-mlp-block'].space.name
'fc'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from ce_ray.choices import Optimizer, Schedule
from ce_ray.theory.spaces import (
    CifarResNeXt29Space,
    FCSpace,
    ImageNetResNeXt50Space,
    ImageNetResNeXt101Space,
    ResNeXtBlockSpace,
    Space,
)

# Sec. 4.2: alpha fitted on the Fig. 5 bottleneck (n_in = n_out = 256).
PAPER_BOTTLENECK_ALPHA = 1.60


@dataclass(frozen=True, kw_only=True)
class FitPreset:
    """A block to fit alpha on, with the settings ``ce-ray fit-alpha`` uses by default.

    Attributes:
        name: the registry key.
        space: the space whose ``ntk_block()`` is sampled; a width n means its member width.
        widths: the default width grid (``parse_widths`` syntax).
        method: the NTK sampler (``ce_ray.theory.ntk.METHODS``): "exact" exists for MLPs only.
        samples: T, the default draws per width.
        description: one line for progress output and ``--help``.
    """

    name: str
    space: Space
    widths: str
    method: str
    samples: int
    description: str


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one point is trained. ``batch_size`` is global (split over the workers).

    The learning rate follows ``schedule`` epoch by epoch: ``step`` multiplies it by
    ``lr_decay`` after each of ``milestones`` (none: constant), ``constant`` keeps it,
    ``cosine`` anneals it to 0 over the epochs after the warm-up; ``warmup_epochs`` first
    raise it linearly (lr k / (warmup + 1) in epoch k).
    """

    optimizer: Optimizer
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9  # SGD's
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()  # epochs after which the lr is multiplied by lr_decay
    lr_decay: float = 0.1
    schedule: Schedule = "step"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0  # of the cross-entropy


#: The recipe's fields a sweep may set in place of its preset's (``--lr`` ...; ``epochs`` is a
#: sweep setting of its own, ``milestones`` and ``lr_decay`` stay the preset's).
RECIPE_FIELDS = (
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "batch_size",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
)


@dataclass(frozen=True, kw_only=True)
class SweepPreset:
    """A space around a baseline ``1 x baseline d``, its data and its training recipe.

    Attributes:
        name: the registry key.
        space: the architecture family whose points are trained.
        baseline: n~, the baseline's width (m = 1).
        dataset: a name from ``ce_ray.worker.data.DATASETS``.
        recipe: optimizer, learning rate, epochs, batch size, schedule.
        fit_preset: the :data:`FIT_PRESETS` entry that fits alpha for this space.
        alpha: the alpha to use when none is given, or None to fit it with ``fit_preset``.
        description: one line for ``--help`` and the docs.
    """

    name: str
    space: Space
    baseline: int
    dataset: str
    recipe: Recipe
    fit_preset: str
    alpha: float | None = None
    description: str


#: What each sweep dataset's loader yields: one example's shape and the number of classes.
#: A member's ``--input-shape`` must hold as many values as an example (ce-ray reshapes).
DATASET_EXAMPLES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((64,), 10),
    "synthetic": ((16,), 4),
    "mnist": ((784,), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "imagenet": ((3, 224, 224), 1000),
    "imagenet32": ((3, 32, 32), 1000),
    "imagenet64": ((3, 64, 64), 1000),
}

P = TypeVar("P", "FitPreset", "SweepPreset")


def _registry(*presets: P) -> dict[str, P]:
    return {preset.name: preset for preset in presets}


FIT_PRESETS: dict[str, FitPreset] = _registry(
    FitPreset(
        name="resnext-block",
        space=ResNeXtBlockSpace(in_channels=256, out_channels=256, spatial=8),
        widths="2,4,8,16,32,64,128",
        method="batched",
        samples=2000,
        description="the Fig. 5 bottleneck, n_in = n_out = 256 on 8x8 inputs",
    ),
    FitPreset(
        name="mnist-mlp-block",
        space=FCSpace(input_dim=784, depth=6, num_classes=1),
        widths="8,16,32,64,128,256,512",
        method="exact",
        samples=20000,
        description="the Fig. 3 MLP (mnist-mlp's), L = 6, n0 = 784",
    ),
    FitPreset(
        name="digits-mlp-block",
        space=FCSpace(input_dim=64, depth=4, num_classes=1),
        widths="4,8,16,32,64,128",
        method="exact",
        samples=20000,
        description="the digits-mlp sweep's MLP, L = 4, n0 = 64",
    ),
    FitPreset(
        name="synthetic-mlp-block",
        space=FCSpace(input_dim=16, depth=3, num_classes=1),
        widths="4,8,16,32",
        method="exact",
        samples=4000,
        description="the synthetic-mlp test sweep's MLP, L = 3, n0 = 16",
    ),
)
DEFAULT_FIT_PRESET = "resnext-block"

_CIFAR_RECIPE = Recipe(
    optimizer="sgd", lr=0.1, epochs=300, batch_size=128, weight_decay=5e-4, milestones=(150, 225)
)
_IMAGENET_RECIPE = Recipe(
    optimizer="sgd",
    lr=0.1,
    epochs=100,
    batch_size=256,
    weight_decay=1e-4,
    milestones=(30, 60, 90),
)

# The downsampled ImageNet as the paper's authors' public code trains it.
_DOWNSAMPLED_IMAGENET_RECIPE = Recipe(
    optimizer="sgd",
    lr=0.08,
    epochs=80,
    batch_size=1024,
    weight_decay=5e-4,
    milestones=(20, 40, 60),
    lr_decay=0.2,
)

SWEEP_PRESETS: dict[str, SweepPreset] = _registry(
    SweepPreset(
        name="digits-mlp",
        space=FCSpace(input_dim=64, depth=4, num_classes=10),
        baseline=64,
        dataset="digits",
        recipe=Recipe(optimizer="adam", lr=3e-3, epochs=15, batch_size=64),
        fit_preset="digits-mlp-block",
        description="Sec. 4.1-style MLP (L = 4, baseline width 64) on scikit-learn's 8x8 digits",
    ),
    SweepPreset(
        name="synthetic-mlp",
        space=FCSpace(input_dim=16, depth=3, num_classes=4),
        baseline=16,
        dataset="synthetic",
        recipe=Recipe(optimizer="adam", lr=1e-2, epochs=3, batch_size=64),
        fit_preset="synthetic-mlp-block",
        description="a tiny seeded Gaussian-mixture task for tests (L = 3, baseline width 16)",
    ),
    SweepPreset(
        name="mnist-mlp",
        space=FCSpace(input_dim=784, depth=6, num_classes=10),
        baseline=200,
        dataset="mnist",
        recipe=Recipe(optimizer="adam", lr=1e-3, epochs=70, batch_size=128),
        fit_preset="mnist-mlp-block",
        description="Sec. 4.1: MLP L = 6, baseline width 200 on MNIST, Adam, 70 epochs",
    ),
    SweepPreset(
        name="cifar10-resnext29",
        space=CifarResNeXt29Space(num_classes=10),
        baseline=128,
        dataset="cifar10",
        recipe=_CIFAR_RECIPE,
        fit_preset="resnext-block",
        alpha=PAPER_BOTTLENECK_ALPHA,
        description="ResNeXt-29 1x128d on CIFAR-10 (Table 1 recipe), the paper's alpha",
    ),
    SweepPreset(
        name="cifar100-resnext29",
        space=CifarResNeXt29Space(num_classes=100),
        baseline=128,
        dataset="cifar100",
        recipe=_CIFAR_RECIPE,
        fit_preset="resnext-block",
        alpha=PAPER_BOTTLENECK_ALPHA,
        description="ResNeXt-29 1x128d on CIFAR-100 (Table 1 recipe), the paper's alpha",
    ),
    SweepPreset(
        name="imagenet32-resnext29",
        space=CifarResNeXt29Space(num_classes=1000, image_size=32),
        baseline=128,
        dataset="imagenet32",
        recipe=_DOWNSAMPLED_IMAGENET_RECIPE,
        fit_preset="resnext-block",
        alpha=PAPER_BOTTLENECK_ALPHA,
        description="ResNeXt-29 1x128d on ImageNet32x32 (Chrabaszcz et al.), the paper's alpha",
    ),
    SweepPreset(
        name="imagenet64-resnext29",
        space=CifarResNeXt29Space(num_classes=1000, image_size=64),
        baseline=128,
        dataset="imagenet64",
        recipe=_DOWNSAMPLED_IMAGENET_RECIPE,
        fit_preset="resnext-block",
        alpha=PAPER_BOTTLENECK_ALPHA,
        description="ResNeXt-29 1x128d on ImageNet64x64 (Chrabaszcz et al.), the paper's alpha",
    ),
    SweepPreset(
        name="imagenet-resnext50",
        space=ImageNetResNeXt50Space(),
        baseline=64,
        dataset="imagenet",
        recipe=_IMAGENET_RECIPE,
        fit_preset="resnext-block",
        alpha=PAPER_BOTTLENECK_ALPHA,
        description="ResNet-50 1x64d on ImageNet (Sec. 4.2.2 recipe), the paper's alpha",
    ),
    SweepPreset(
        name="imagenet-resnext101",
        space=ImageNetResNeXt101Space(),
        baseline=64,
        dataset="imagenet",
        recipe=_IMAGENET_RECIPE,
        fit_preset="resnext-block",
        alpha=PAPER_BOTTLENECK_ALPHA,
        description="ResNet-101 1x64d on ImageNet (Sec. 4.2.2 recipe), the paper's alpha",
    ),
)
DEFAULT_SWEEP_PRESET = "digits-mlp"
