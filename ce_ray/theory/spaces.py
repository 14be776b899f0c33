"""Collegial-ensemble spaces: architecture families indexed by (multiplicity m, width n).

A space maps the scalar width ``n`` to its layer widths (every hidden layer of an MLP; the
1x1 and 3x3 convs of a bottleneck; n, 2n, 4n per stage of ResNeXt-29) and answers, in closed
form and vectorised over numpy arrays of ``m`` and ``n``:

* ``num_params(m, n)`` -- the exact trainable-parameter count of ``build(m, n)``;
* ``flops(m, n)`` -- multiply-accumulates per example of the convolutions and linear layers
  (normalisation, activations and pooling are not counted);
* ``fan_in_sum(n)`` -- S(n) = sum_l 1 / fan_in_l of Eq. 9 over the weight layers of the
  block whose alpha is fitted (a k x k conv with c inputs and g groups has fan-in k*k*c/g);
* ``block_cost(n, metric)`` -- beta(n), the size of ONE member of that block, from which the
  paper builds its curves;
* ``ntk_inputs``/``sample_ntk``/``check_sampling`` -- Algorithm 1's samples of that block's
  NTK and the memory they take (torch is imported when they are called, not before);
* ``network(m, n)`` -- what a sweep's trial trains, and ``fingerprint(widths)`` -- what a rerun
  of a fit or a sweep must find unchanged.

ce-ray's own blocks (:class:`BuiltinSpace`) are sampled by ``ce_ray.theory.ntk``'s exact
samplers; your own ``member(n)`` (``ce_ray.theory.member.MemberSpace``) by the generic one.

Whole networks (``cifar-resnext29``, ``imagenet-resnext*``) fit alpha on the Fig. 5
bottleneck with n_in = n_out = 256 (the first stage's block), so S(n) and beta(n) come from
that block while ``num_params``/``flops`` count the whole network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ce_ray.choices import METRICS, Method, Metric, Parameterisation, Readout, check_choice

if TYPE_CHECKING:  # torch is imported only to build and sample modules: curves need numpy
    import torch
    from torch import nn
    from torchvision.models.resnet import ResNet

    from ce_ray.theory.models import CifarResNeXt, CollegialBottleneck, CollegialMLP


IntLike = int | np.ndarray


def _as_int(x: IntLike) -> IntLike:
    """Python ints stay exact; arrays become int64 so closed forms vectorise."""
    return x if isinstance(x, int | np.integer) else np.asarray(x, dtype=np.int64)


def _bottleneck_params(in_channels: IntLike, width: IntLike, out_channels: IntLike) -> IntLike:
    """Weights of one Fig. 5 bottleneck member: 1x1 in->n, 3x3 n->n, 1x1 n->out, no bias."""
    return in_channels * width + 9 * width * width + width * out_channels


def _bottleneck_fan_in_sum(in_channels: int, width: IntLike) -> np.ndarray:
    """S(n) of the Fig. 5 bottleneck: fan-ins n_in, 9n and n."""
    width = np.asarray(width, dtype=np.float64)
    return 1.0 / in_channels + 1.0 / (9.0 * width) + 1.0 / width


def _resnext_stages_count(
    m: IntLike,
    in_channels: int,
    size: int,
    stages: Sequence[tuple[int, IntLike, int, int]],
    num_classes: int,
    flops: bool,
) -> IntLike:
    """Parameters (or MACs on ``size x size`` inputs) of ResNeXt bottleneck stages and the
    linear classifier after global pooling.

    ``stages``: ``(out_channels, group_width, blocks, stride)`` each; a block has a 1x1 conv
    in -> m * group_width, a 3x3 grouped conv (m groups, stride on the first block), a 1x1
    conv to out_channels, BatchNorm after each (2 parameters per channel), and the first
    block of each stage a 1x1 projection shortcut with its BatchNorm.
    """
    total: IntLike = 0
    in_ch = in_channels
    for out_ch, group_width, blocks, stride in stages:
        width = m * group_width
        for block in range(blocks):
            s = stride if block == 0 else 1
            in_area, out_area = (size * size, (size // s) ** 2) if flops else (1, 1)
            total = total + in_ch * width * in_area + 9 * width * group_width * out_area
            total = total + width * out_ch * out_area
            if not flops:
                total = total + 2 * width + 2 * width + 2 * out_ch
            if block == 0:  # every stage's first block changes the channels: a projection
                total = total + in_ch * out_ch * out_area + (0 if flops else 2 * out_ch)
            in_ch, size = out_ch, size // s
    return total + in_ch * num_classes + (0 if flops else num_classes)


def ensemble_label(m: int, n: int) -> str:
    """The paper's ``m x n d`` notation, the same for every space.

    >>> ensemble_label(4, 16)
    '4x16d'
    """
    return f"{m}x{n}d"


@dataclass(frozen=True)
class Space(ABC):
    """An architecture family F_{m,n}; subclasses are frozen dataclasses of their options."""

    name: ClassVar[str]
    default_baseline: ClassVar[int]
    #: The samplers that can draw this space's NTK (``exact``: the MLP's exact law only).
    ntk_methods: ClassVar[tuple[Method, ...]] = ("batched",)
    #: Whether Eq. 9's law holds by construction (ce-ray's NTK-parameterised blocks); if not,
    #: fit-alpha prints what its checks of the law found (``ce_ray.theory.alpha.check_law``).
    law_by_construction: ClassVar[bool] = True

    @abstractmethod
    def build(self, m: int, n: int) -> nn.Module:
        """The collegial ensemble of ``m`` members of width ``n`` as ONE module."""

    @abstractmethod
    def num_params(self, m: IntLike, n: IntLike) -> IntLike:
        """Exact trainable-parameter count of ``build(m, n)``."""

    @abstractmethod
    def flops(self, m: IntLike, n: IntLike) -> IntLike:
        """Multiply-accumulates per example of ``build(m, n)`` (convs and linears)."""

    @abstractmethod
    def fan_in_sum(self, n: IntLike) -> np.ndarray:
        """S(n) of Eq. 9 for the block whose alpha is fitted."""

    @abstractmethod
    def block_cost(self, n: IntLike, metric: Metric = "params") -> IntLike:
        """beta(n): parameters (or FLOPs) of one member of the fitted block."""

    @abstractmethod
    def ntk_inputs(
        self,
        seed: int,
        off_diagonal: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """The fixed inputs at which the fitted block's NTK is sampled, determined by
        ``seed``: one (K(x, x)), or two (``off_diagonal``: K(x1, x2)); float32 by default."""

    @abstractmethod
    def sample_ntk(
        self,
        n: int,
        num_samples: int,
        seed: int,
        inputs: torch.Tensor,
        method: Method = "batched",
        memory_budget: int = 256 * 2**20,
        readout: Readout = "pool",
    ) -> np.ndarray:
        """``num_samples`` NTK entries of the fitted block at width ``n``, as float64, each
        from an initialisation drawn from ``seed`` (Algorithm 1, lines 3-5).

        Args:
            inputs: from :meth:`ntk_inputs`; their device and dtype are used.
            method: one of :attr:`ntk_methods`.
            memory_budget: bytes a chunk of draws may allocate.
            readout: how a convolutional output becomes one scalar, ``"pool"`` or ``"centre"``.
        """

    @abstractmethod
    def check_sampling(
        self,
        widths: Sequence[int],
        inputs: int,
        method: Method,
        memory_budget: int,
        dtype_bytes: int,
    ) -> tuple[str, ...]:
        """ValueError (one line) when alpha cannot be fitted at ``widths``: one sample at a
        width needs more than ``memory_budget`` bytes, or (your own member) a check fails;
        else the warnings a fit prints first (your own member's: BatchNorm, a matrix no
        contraction reads, an architecture that changes with n)."""

    def fingerprint(self, widths: Sequence[int]) -> str:
        """What a rerun must find unchanged of the architecture at ``widths``, stored with a
        fit or a sweep; empty for ce-ray's own blocks, which its version fixes."""
        return ""

    def network(self, m: int, n: int) -> nn.Module:
        """What a sweep's trial trains at point (m, n): a classifier of flat examples."""
        return self.build(m, n)

    def check_trains_on(
        self, example_shape: Sequence[int], classes: int, n: int, data: str
    ) -> None:
        """ValueError (one line) when :meth:`network` cannot train on ``data`` (examples of
        ``example_shape``, ``classes`` classes) at width ``n``; a preset's space is made for
        its data."""
        return None

    @property
    def member_name(self) -> str:
        """``MODULE:CALLABLE`` of your own member(n); empty for ce-ray's own blocks."""
        return ""

    @property
    def sampled_parameterisation(self) -> Parameterisation:
        """How the NTK samples read the block: ``ntk``, as written (ce-ray's blocks are
        NTK-parameterised); ``standard``, a block in PyTorch's default parameterisation,
        whose NTK twin is sampled."""
        return "ntk"

    def describe(self) -> str:
        """The space in a few words, for the console."""
        return f"{self.name} ({', '.join(f'{k}={v}' for k, v in self.options().items())})"

    def experiment_name(self, preset: str) -> str:
        """The experiment's name when none is given: the preset's, or your member's."""
        return preset

    def stored(self) -> dict:
        """What a configuration stores to build this space again, beside its preset (which
        names ce-ray's own spaces: nothing more)."""
        return {}

    def network_cost(self, m: IntLike, n: IntLike, metric: Metric = "params") -> IntLike:
        """Parameters (or FLOPs) of the whole network ``build(m, n)``."""
        _check_metric(metric)
        return self.num_params(m, n) if metric == "params" else self.flops(m, n)

    def label(self, m: int, n: int) -> str:
        """The paper's ``m x n d`` notation."""
        return ensemble_label(m, n)

    def options(self) -> dict[str, int]:
        """The space's construction options, e.g. for metadata and JSON output."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BuiltinSpace(Space):
    """ce-ray's own blocks: sampled by ``ce_ray.theory.ntk`` on :meth:`ntk_block`."""

    @abstractmethod
    def ntk_block(self) -> FCSpace | ResNeXtBlockSpace:
        """The space whose member NTK Algorithm 1 samples to fit alpha for this space.

        It has ONE output (the NTK entry of output 0 of a wider read-out is the same), and
        its ``fan_in_sum`` is this space's.
        """

    def ntk_inputs(
        self,
        seed: int,
        off_diagonal: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        from ce_ray.theory import ntk

        return ntk.ntk_inputs(self.ntk_block(), seed, off_diagonal, device, dtype)

    def sample_ntk(
        self,
        n: int,
        num_samples: int,
        seed: int,
        inputs: torch.Tensor,
        method: Method = "batched",
        memory_budget: int = 256 * 2**20,
        readout: Readout = "pool",
    ) -> np.ndarray:
        from ce_ray.theory import ntk

        return ntk.sample_ntk(self, n, num_samples, seed, inputs, method, memory_budget, readout)

    def check_sampling(
        self,
        widths: Sequence[int],
        inputs: int,
        method: Method,
        memory_budget: int,
        dtype_bytes: int,
    ) -> tuple[str, ...]:
        from ce_ray.theory import ntk

        for width in widths:
            ntk.chunk_size(self.ntk_block(), width, inputs, method, memory_budget, dtype_bytes)
        return ()


def _check_metric(metric: str) -> None:
    check_choice("metric", metric, METRICS)


@dataclass(frozen=True)
class FCSpace(BuiltinSpace):
    """Ensembles of the Eq. 3 MLP: depth L weight layers, every hidden layer of width n.

    S(n) = 1/n_0 + (L - 1)/n: the fan-ins of the L weight layers (input size for the first
    layer, n for the others). Each weight is used once per example, so FLOPs == parameters.
    """

    name: ClassVar[str] = "fc"
    default_baseline: ClassVar[int] = 500  # Fig. 3
    ntk_methods: ClassVar[tuple[Method, ...]] = ("batched", "exact")
    input_dim: int = 784
    depth: int = 6
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2 weight layers (1 hidden layer); got {self.depth}")
        if self.input_dim < 1 or self.num_classes < 1:
            raise ValueError("input_dim and num_classes must be positive integers")

    def build(self, m: int, n: int) -> CollegialMLP:
        from ce_ray.theory.models import CollegialMLP

        return CollegialMLP(self.input_dim, [n] * (self.depth - 1), self.num_classes, m)

    def num_params(self, m: IntLike, n: IntLike) -> IntLike:
        m, n = _as_int(m), _as_int(n)
        member = self.input_dim * n + (self.depth - 2) * n * n + n * self.num_classes
        return m * member

    def flops(self, m: IntLike, n: IntLike) -> IntLike:
        return self.num_params(m, n)

    def fan_in_sum(self, n: IntLike) -> np.ndarray:
        return 1.0 / self.input_dim + (self.depth - 1) / np.asarray(n, dtype=np.float64)

    def block_cost(self, n: IntLike, metric: Metric = "params") -> IntLike:
        return self.network_cost(1, n, metric)

    def ntk_block(self) -> FCSpace:
        return FCSpace(self.input_dim, self.depth, num_classes=1)


@dataclass(frozen=True)
class ResNeXtBlockSpace(BuiltinSpace):
    """Ensembles of the Fig. 5 bottleneck branch (``resnext-block``): m paths of width n.

    FLOPs are counted on ``spatial x spatial`` inputs (stride 1, so every conv runs at that
    resolution).
    """

    name: ClassVar[str] = "resnext-block"
    default_baseline: ClassVar[int] = 64
    in_channels: int = 256
    out_channels: int = 256
    spatial: int = 8

    def __post_init__(self) -> None:
        if min(self.in_channels, self.out_channels, self.spatial) < 1:
            raise ValueError("in_channels, out_channels and spatial must be positive integers")

    def build(self, m: int, n: int) -> CollegialBottleneck:
        from ce_ray.theory.models import CollegialBottleneck

        return CollegialBottleneck(self.in_channels, n, self.out_channels, m)

    def num_params(self, m: IntLike, n: IntLike) -> IntLike:
        m, n = _as_int(m), _as_int(n)
        return m * _bottleneck_params(self.in_channels, n, self.out_channels)

    def flops(self, m: IntLike, n: IntLike) -> IntLike:
        return self.spatial * self.spatial * self.num_params(m, n)

    def fan_in_sum(self, n: IntLike) -> np.ndarray:
        return _bottleneck_fan_in_sum(self.in_channels, n)

    def block_cost(self, n: IntLike, metric: Metric = "params") -> IntLike:
        return self.network_cost(1, n, metric)

    def ntk_block(self) -> ResNeXtBlockSpace:
        return ResNeXtBlockSpace(self.in_channels, 1, self.spatial)


# ResNeXt-29's layout: the counts below use it and build() hands it to the network.
CIFAR_STEM_CHANNELS = 64
CIFAR_STAGE_CHANNELS = (256, 512, 1024)
CIFAR_STAGE_STRIDES = (1, 2, 2)
# torchvision's ResNet bottleneck widens its output by 4 (Bottleneck.expansion).
IMAGENET_EXPANSION = 4

# The block whose alpha the paper fits for ResNeXt networks: Fig. 5 with n_in = n_out = 256.
_FITTED_BLOCK_CHANNELS = 256
# Alpha is a property of the block, not of the resolution; 8 x 8 keeps sampling cheap.
_FITTED_BLOCK_SPATIAL = 8


class _ResNeXtNetworkSpace(BuiltinSpace):
    """Whole ResNeXt networks: alpha is fitted on the Fig. 5 block with n_in = n_out = 256."""

    def fan_in_sum(self, n: IntLike) -> np.ndarray:
        return _bottleneck_fan_in_sum(_FITTED_BLOCK_CHANNELS, n)

    def ntk_block(self) -> ResNeXtBlockSpace:
        return ResNeXtBlockSpace(_FITTED_BLOCK_CHANNELS, 1, _FITTED_BLOCK_SPATIAL)

    @abstractmethod
    def _count(self, m: IntLike, n: IntLike, flops: bool) -> IntLike:
        """Parameters (``flops=False``) or MACs per example of the whole network."""

    @abstractmethod
    def _first_stage_area(self) -> int:
        """Pixels of the first stage's maps, where the fitted block's FLOPs are counted."""

    def num_params(self, m: IntLike, n: IntLike) -> IntLike:
        return self._count(m, n, flops=False)

    def flops(self, m: IntLike, n: IntLike) -> IntLike:
        return self._count(m, n, flops=True)

    def block_cost(self, n: IntLike, metric: Metric = "params") -> IntLike:
        _check_metric(metric)
        area = self._first_stage_area() if metric == "flops" else 1
        return area * _bottleneck_params(_FITTED_BLOCK_CHANNELS, _as_int(n), _FITTED_BLOCK_CHANNELS)


@dataclass(frozen=True)
class CifarResNeXt29Space(_ResNeXtNetworkSpace):
    """ResNeXt-29 for CIFAR (Table 1): ``m x n d``, widen factor 4, ``image_size`` square
    inputs (32 for CIFAR and ImageNet32, 64 for ImageNet64: the same network, whose global
    pooling takes any size; only the FLOPs change)."""

    name: ClassVar[str] = "cifar-resnext29"
    default_baseline: ClassVar[int] = 128
    num_classes: int = 10
    image_size: int = 32

    def build(self, m: int, n: int) -> CifarResNeXt:
        from ce_ray.theory.models import CifarResNeXt

        return CifarResNeXt(
            m,
            n,
            self.num_classes,
            stem_channels=CIFAR_STEM_CHANNELS,
            stage_channels=CIFAR_STAGE_CHANNELS,
            stage_strides=CIFAR_STAGE_STRIDES,
        )

    def _count(self, m: IntLike, n: IntLike, flops: bool) -> IntLike:
        m, n = _as_int(m), _as_int(n)
        stem, size = CIFAR_STEM_CHANNELS, self.image_size
        # The 3x3 stem conv and its BatchNorm (2 parameters per channel).
        total = 3 * 9 * stem * size * size if flops else 3 * 9 * stem + 2 * stem
        stages = [
            (out_ch, n * out_ch // 256, 3, stride)
            for out_ch, stride in zip(CIFAR_STAGE_CHANNELS, CIFAR_STAGE_STRIDES, strict=True)
        ]
        return total + _resnext_stages_count(m, stem, size, stages, self.num_classes, flops)

    def _first_stage_area(self) -> int:
        return self.image_size**2  # the first stage runs at the input's resolution


@dataclass(frozen=True)
class ImageNetResNeXtSpace(_ResNeXtNetworkSpace):
    """torchvision's ``ResNet(Bottleneck, layers, groups=m, width_per_group=n)`` (Table 2).

    A stage with ``planes`` has bottleneck width ``floor(planes * n / 64) * m`` and output
    ``4 * planes`` channels; FLOPs are for 224 x 224 inputs.
    """

    name: ClassVar[str] = "imagenet-resnext"
    default_baseline: ClassVar[int] = 64
    layers: tuple[int, ...] = (3, 4, 6, 3)
    num_classes: int = 1000

    stage_planes: ClassVar[tuple[int, ...]] = (64, 128, 256, 512)
    image_size: ClassVar[int] = 224

    def build(self, m: int, n: int) -> ResNet:
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, list(self.layers), self.num_classes, groups=m, width_per_group=n)

    def _count(self, m: IntLike, n: IntLike, flops: bool) -> IntLike:
        m, n = _as_int(m), _as_int(n)
        size = self.image_size // 2  # the 7x7 stem conv has stride 2
        total = 3 * 49 * 64 * size * size if flops else 3 * 49 * 64 + 2 * 64
        stages = [
            (planes * IMAGENET_EXPANSION, planes * n // 64, blocks, 1 if i == 0 else 2)
            for i, (planes, blocks) in enumerate(zip(self.stage_planes, self.layers, strict=True))
        ]
        # After the stride-2 max pool.
        return total + _resnext_stages_count(m, 64, size // 2, stages, self.num_classes, flops)

    def _first_stage_area(self) -> int:
        return (self.image_size // 4) ** 2  # after the stride-2 stem and max pool: 56 x 56


@dataclass(frozen=True)
class ImageNetResNeXt50Space(ImageNetResNeXtSpace):
    name: ClassVar[str] = "imagenet-resnext50"
    layers: tuple[int, ...] = (3, 4, 6, 3)


@dataclass(frozen=True)
class ImageNetResNeXt101Space(ImageNetResNeXtSpace):
    name: ClassVar[str] = "imagenet-resnext101"
    layers: tuple[int, ...] = (3, 4, 23, 3)


SPACES: dict[str, type[Space]] = {
    cls.name: cls
    for cls in (
        FCSpace,
        ResNeXtBlockSpace,
        CifarResNeXt29Space,
        ImageNetResNeXt50Space,
        ImageNetResNeXt101Space,
    )
}
