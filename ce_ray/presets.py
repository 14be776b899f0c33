"""Named experiments: a space around a baseline, the data, the training recipe, and how to
get alpha (a known value, or the fit-alpha preset that fits it)."""

from __future__ import annotations

from dataclasses import dataclass

from ce_ray.spaces import (
    CifarResNeXt29Space,
    FCSpace,
    ImageNetResNeXt50Space,
    ImageNetResNeXt101Space,
    Space,
)

# Sec. 4.2: alpha fitted on the Fig. 5 bottleneck (n_in = n_out = 256).
PAPER_BOTTLENECK_ALPHA = 1.60


@dataclass(frozen=True)
class Recipe:
    """How one point is trained. ``batch_size`` is global (split over the workers)."""

    optimizer: str  # "adam" or "sgd"
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()  # epochs at which the lr is divided by 10


@dataclass(frozen=True)
class Preset:
    """A space around a baseline ``1 x baseline d``, its data and its training recipe.

    Attributes:
        alpha: the alpha to use when none is given, or None to fit it with ``fit_preset``.
        fit_preset: the fit-alpha preset (``ce_ray.fit_alpha.FIT_PRESETS``) for this space.
        dataset: a name from ``ce_ray.data.DATASETS``.
    """

    name: str
    space: Space
    baseline: int
    alpha: float | None
    fit_preset: str
    dataset: str
    recipe: Recipe
    description: str


_CIFAR_RECIPE = Recipe("sgd", 0.1, 300, 128, weight_decay=5e-4, milestones=(150, 225))

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "digits-mlp",
            FCSpace(input_dim=64, depth=4, num_classes=10),
            64,
            None,
            "digits-mlp",
            "digits",
            Recipe("adam", 3e-3, 15, 64),
            "Sec. 4.1-style MLP (L = 4, baseline width 64) on scikit-learn's 8x8 digits",
        ),
        Preset(
            "synthetic-mlp",
            FCSpace(input_dim=16, depth=3, num_classes=4),
            16,
            None,
            "synthetic-mlp",
            "synthetic",
            Recipe("adam", 1e-2, 3, 64),
            "a tiny seeded Gaussian-mixture task for tests (L = 3, baseline width 16)",
        ),
        Preset(
            "mnist-mlp",
            FCSpace(input_dim=784, depth=6, num_classes=10),
            200,
            None,
            "mlp",
            "mnist",
            Recipe("adam", 1e-3, 70, 128),
            "Sec. 4.1: MLP L = 6, baseline width 200 on MNIST, Adam, 70 epochs",
        ),
        Preset(
            "cifar10-resnext29",
            CifarResNeXt29Space(num_classes=10),
            128,
            PAPER_BOTTLENECK_ALPHA,
            "bottleneck",
            "cifar10",
            _CIFAR_RECIPE,
            "ResNeXt-29 1x128d on CIFAR-10 (Table 1 recipe), the paper's bottleneck alpha",
        ),
        Preset(
            "cifar100-resnext29",
            CifarResNeXt29Space(num_classes=100),
            128,
            PAPER_BOTTLENECK_ALPHA,
            "bottleneck",
            "cifar100",
            _CIFAR_RECIPE,
            "ResNeXt-29 1x128d on CIFAR-100 (Table 1 recipe), the paper's bottleneck alpha",
        ),
        Preset(
            "imagenet-resnext50",
            ImageNetResNeXt50Space(),
            64,
            PAPER_BOTTLENECK_ALPHA,
            "bottleneck",
            "imagenet",
            Recipe("sgd", 0.1, 100, 256, weight_decay=1e-4, milestones=(30, 60, 90)),
            "ResNet-50 1x64d on ImageNet (Sec. 4.2.2 recipe), the paper's bottleneck alpha",
        ),
        Preset(
            "imagenet-resnext101",
            ImageNetResNeXt101Space(),
            64,
            PAPER_BOTTLENECK_ALPHA,
            "bottleneck",
            "imagenet",
            Recipe("sgd", 0.1, 100, 256, weight_decay=1e-4, milestones=(30, 60, 90)),
            "ResNet-101 1x64d on ImageNet (Sec. 4.2.2 recipe), the paper's bottleneck alpha",
        ),
    )
}
DEFAULT_PRESET = "digits-mlp"
