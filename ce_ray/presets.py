"""Named experiment settings: a space, its baseline width and, where the paper gives it, alpha."""

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
class Preset:
    """A space around a baseline ``1 x baseline d``.

    Attributes:
        alpha: the alpha to use when none is given, or None when it must be fitted first.
    """

    name: str
    space: Space
    baseline: int
    alpha: float | None
    description: str


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "cifar10-resnext29",
            CifarResNeXt29Space(num_classes=10),
            128,
            PAPER_BOTTLENECK_ALPHA,
            "ResNeXt-29 1x128d on CIFAR-10 (Table 1), the paper's bottleneck alpha",
        ),
        Preset(
            "cifar100-resnext29",
            CifarResNeXt29Space(num_classes=100),
            128,
            PAPER_BOTTLENECK_ALPHA,
            "ResNeXt-29 1x128d on CIFAR-100 (Table 1), the paper's bottleneck alpha",
        ),
        Preset(
            "imagenet-resnext50",
            ImageNetResNeXt50Space(),
            64,
            PAPER_BOTTLENECK_ALPHA,
            "ResNet-50 1x64d on ImageNet (Table 2), the paper's bottleneck alpha",
        ),
        Preset(
            "imagenet-resnext101",
            ImageNetResNeXt101Space(),
            64,
            PAPER_BOTTLENECK_ALPHA,
            "ResNet-101 1x64d on ImageNet (Table 2), the paper's bottleneck alpha",
        ),
        Preset(
            "mnist-mlp",
            FCSpace(input_dim=784, depth=6, num_classes=10),
            200,
            None,
            "Sec. 4.1 MLP (L = 6, baseline width 200) on MNIST; alpha must be fitted or given",
        ),
    )
}
DEFAULT_PRESET = "cifar10-resnext29"
