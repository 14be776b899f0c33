"""Closed-form sizes of every space against the built modules and the paper's tables."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ce_ray.presets import SWEEP_PRESETS
from ce_ray.theory.by_name import make_space
from ce_ray.theory.spaces import (
    SPACES,
    CifarResNeXt29Space,
    FCSpace,
    ImageNetResNeXt50Space,
    ImageNetResNeXt101Space,
    ResNeXtBlockSpace,
)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per example, as PyTorch's FLOP counter sees it.

    The counter reports 2 FLOPs per multiply-accumulate of matmuls and convolutions and
    ignores normalisation, activations and pooling -- the convention of ``Space.flops``.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.eval()(example)
    return counter.get_total_flops() // 2 // example.shape[0]


# Table 1 (CIFAR-10 column of sizes) and Table 2, at their printed precision (millions).
CIFAR10_TABLE1 = [
    (1, 128, "13.8"),
    (3, 64, "13.3"),
    (37, 10, "13.7"),
    (28, 12, "12.9"),
    (1, 226, "36.3"),
    (8, 64, "34.4"),
    (101, 10, "36.3"),
    (10, 10, "4.22"),
    (8, 12, "4.19"),
    (2, 64, "9.13"),
    (14, 10, "5.63"),
    (6, 25, "7.26"),
    (3, 58, "11.6"),
    (2, 98, "17.4"),
]
IMAGENET_TABLE2 = [
    ("imagenet-resnext50", 1, 64, "25.6"),
    ("imagenet-resnext50", 32, 4, "25.0"),
    ("imagenet-resnext50", 12, 10, "25.8"),
    ("imagenet-resnext50", 15, 8, "25.1"),
    ("imagenet-resnext50", 3, 23, "19.4"),
    ("imagenet-resnext50", 4, 16, "17.1"),
    ("imagenet-resnext101", 1, 64, "44.5"),
    ("imagenet-resnext101", 32, 4, "44.2"),
    ("imagenet-resnext101", 12, 10, "45.5"),
    ("imagenet-resnext101", 15, 8, "44.2"),
    ("imagenet-resnext101", 3, 23, "32.9"),
    ("imagenet-resnext101", 5, 12, "25.8"),
]


@pytest.mark.parametrize(("m", "n", "printed"), CIFAR10_TABLE1)
def test_table1_cifar10_counts(m, n, printed):
    decimals = len(printed.split(".")[1])
    assert f"{CifarResNeXt29Space(num_classes=10).num_params(m, n) / 1e6:.{decimals}f}" == printed


@pytest.mark.parametrize(("m", "n", "printed"), CIFAR10_TABLE1)
@pytest.mark.parametrize("side", [32, 64])
def test_downsampled_imagenet_counts_are_table1s_with_a_1000_class_classifier(m, n, printed, side):
    """The paper's appendix tables for ImageNet32/64 are not in the text we have; their network
    is Table 1's with 1000 outputs: every count is Table 1's plus 990 classifier rows."""
    imagenet = SWEEP_PRESETS[f"imagenet{side}-resnext29"].space
    cifar10 = CifarResNeXt29Space(num_classes=10)
    assert imagenet.num_params(m, n) == cifar10.num_params(m, n) + 990 * (1024 + 1)
    if side == 64:  # the same network on 4x the pixels: every conv does 4x the work
        classifier = 1024 * 1000
        assert imagenet.flops(m, n) - classifier == 4 * (
            SWEEP_PRESETS["imagenet32-resnext29"].space.flops(m, n) - classifier
        )


@pytest.mark.parametrize(("space", "m", "n", "printed"), IMAGENET_TABLE2)
def test_table2_imagenet_counts(space, m, n, printed):
    decimals = len(printed.split(".")[1])
    assert f"{make_space(space).num_params(m, n) / 1e6:.{decimals}f}" == printed


@pytest.mark.parametrize(
    ("space", "m", "n", "example"),
    [
        (FCSpace(input_dim=20, depth=4, num_classes=3), 5, 7, (2, 20)),
        (FCSpace(input_dim=784, depth=6, num_classes=10), 30, 48, (2, 784)),
        (FCSpace(depth=2), 3, 9, (2, 784)),
        (ResNeXtBlockSpace(in_channels=32, out_channels=48, spatial=6), 4, 5, (2, 32, 6, 6)),
        (ResNeXtBlockSpace(), 8, 16, (2, 256, 8, 8)),
        (CifarResNeXt29Space(num_classes=10), 3, 4, (2, 3, 32, 32)),
        (CifarResNeXt29Space(num_classes=100), 2, 7, (2, 3, 32, 32)),
        (CifarResNeXt29Space(num_classes=1000, image_size=32), 2, 3, (2, 3, 32, 32)),
        (CifarResNeXt29Space(num_classes=1000, image_size=64), 2, 3, (2, 3, 64, 64)),
        (ImageNetResNeXt50Space(num_classes=10), 4, 3, (1, 3, 224, 224)),
        (ImageNetResNeXt101Space(), 2, 2, (1, 3, 224, 224)),
    ],
)
def test_closed_forms_match_built_module(space, m, n, example):
    module = space.build(m, n)
    assert space.num_params(m, n) == count_parameters(module)
    assert space.flops(m, n) == count_macs(module, torch.randn(example))


@pytest.mark.parametrize("name", list(SPACES))
def test_counts_vectorise_over_widths(name):
    space = make_space(name)
    n = np.array([1, 3, 10, 64])
    m = np.array([7, 2, 5, 1])
    expected = [space.num_params(int(a), int(b)) for a, b in zip(m, n, strict=True)]
    assert space.num_params(m, n).tolist() == expected
    assert space.flops(m, n).tolist() == [
        space.flops(int(a), int(b)) for a, b in zip(m, n, strict=True)
    ]
    assert space.fan_in_sum(n).shape == n.shape


def test_fan_in_sums():
    # Fig. 5 block: fan-ins n_in, 9n (3x3 over n channels per group) and n.
    assert ResNeXtBlockSpace(in_channels=256).fan_in_sum(10) == pytest.approx(
        1 / 256 + 1 / 90 + 1 / 10
    )
    # Whole ResNeXt networks use that same fitted block.
    assert CifarResNeXt29Space().fan_in_sum(10) == ResNeXtBlockSpace().fan_in_sum(10)
    assert ImageNetResNeXt50Space().fan_in_sum(4) == ResNeXtBlockSpace().fan_in_sum(4)
    # MLP: input size for the first layer, n for the L - 1 others.
    assert FCSpace(input_dim=784, depth=6).fan_in_sum(50) == pytest.approx(1 / 784 + 5 / 50)


def test_block_cost_is_one_member_of_fig5_block():
    for space in (CifarResNeXt29Space(), ImageNetResNeXt50Space(), ResNeXtBlockSpace()):
        assert space.block_cost(10) == 256 * 10 + 9 * 100 + 10 * 256
    assert FCSpace().block_cost(48) == FCSpace().num_params(1, 48)
    assert CifarResNeXt29Space().block_cost(10, "flops") == 32 * 32 * 6020


def test_make_space_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="valid spaces: fc, resnext-block, cifar-resnext29"):
        make_space("resnet")
    with pytest.raises(ValueError, match="does not take depth"):
        make_space("cifar-resnext29", depth=3)
    with pytest.raises(ValueError, match="depth must be >= 2"):
        make_space("fc", depth=1)
