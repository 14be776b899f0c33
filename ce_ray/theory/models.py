"""Collegial ensembles implemented as one model each.

A collegial ensemble of ``m`` members (Eq. 4 of the paper) is

    F_e(x) = (1 / sqrt(m)) * sum_j F(x; theta_j)

with independent member weights ``theta_j``. Evaluating the m members one by one is slow;
these modules evaluate all of them at once:

* :class:`CollegialMLP` -- members are the NTK-parameterised ReLU MLP of Eq. 3. The first
  layer of every member reads the same input, so the m first layers stack into one dense
  matrix; hidden layers are block-diagonal and run as one batched matmul over the members;
  the read-outs sum, so they concatenate into one dense matrix whose NTK scale
  ``sqrt(1 / (m * n))`` is the member's ``sqrt(1 / n)`` times the ensemble's ``1 / sqrt(m)``.
* :class:`CollegialBottleneck` -- members are the residual branch of the ResNet bottleneck of
  Fig. 5 (1x1 -> 3x3 -> 1x1, NTK-parameterised, no bias, no normalisation). The same argument
  turns it into a dense 1x1, a grouped 3x3 (``groups = m``) and a dense 1x1.
* :class:`CifarResNeXt` -- ResNeXt-29 for CIFAR (Table 1) in the ordinary parameterisation
  (Kaiming init, BatchNorm), the network the paper trains.

NTK parameterisation: weights are drawn iid N(0, 1) and each layer multiplies its input by
``sqrt(c / fan_in)`` (c = 2 before a ReLU, 1 at the read-out), so the NTK has a
width-independent mean ``E[K(x, x)] = L * |x|^2 / n_0`` for the MLP.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CollegialModel(nn.Module):
    """Shared by the one-model ensembles.

    ``forward(x) = forward_from_first(first_layer(x))``: the first layer's raw product W1 x
    (no scale, no activation) can be fed in directly, which lets the NTK sampler draw that
    product from its exact law instead of drawing W1.

    ``member_views`` says which slice of each parameter belongs to member j: most weights stack
    the members along dim 0; the read-out (``_summed``) sums the members, so they sit along
    its input dimension instead.
    """

    multiplicity: int
    first_weight: str  # name of the first layer's weight
    _summed: str

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_from_first(self, product: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_first(self.first_layer(x))

    def member_views(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Reshape ``(parameter name, tensor shaped like it)`` pairs -- e.g. gradients -- to
        ``(m, -1)``: row j holds member j's entries."""
        m = self.multiplicity
        views = []
        for name, tensor in named_tensors:
            if name == self._summed:  # (out, m * n, ...) -> (m, out * n * ...)
                tensor = tensor.reshape(tensor.shape[0], m, -1).transpose(0, 1)
            views.append(tensor.reshape(m, -1))
        return views


class CollegialMLP(CollegialModel):
    """``m`` NTK-parameterised ReLU MLPs without bias (Eq. 3), summed and scaled by 1/sqrt(m).

    Args:
        in_features: input size n_0.
        widths: hidden widths (n_1, ..., n_{L-1}) of ONE member; L = len(widths) + 1 weight
            layers. Must be non-empty.
        out_features: number of outputs n_L of each member (1 in the paper's analysis).
        multiplicity: number of members m.

    With ``multiplicity=1`` this is exactly the member network F of Eq. 3.

    >>> model = CollegialMLP(in_features=64, widths=(13, 13, 13), out_features=10,
    ...                      multiplicity=10)
    >>> model(torch.zeros(2, 64)).shape, sum(p.numel() for p in model.parameters())
    (torch.Size([2, 10]), 13000)
    """

    first_weight = "input_weight"
    _summed = "readout_weight"

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int = 1,
        multiplicity: int = 1,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one hidden layer")
        self.in_features = in_features
        self.widths = tuple(int(w) for w in widths)
        self.out_features = out_features
        self.multiplicity = m = multiplicity
        # Layer 1: every member reads the same input, so their matrices stack row-wise.
        self.input_weight = nn.Parameter(torch.randn(m * self.widths[0], in_features))
        # Layers 2..L-1: one (m, n_out, n_in) block-diagonal weight each.
        self.hidden_weights = nn.ParameterList(
            nn.Parameter(torch.randn(m, n_out, n_in))
            for n_in, n_out in zip(self.widths[:-1], self.widths[1:], strict=True)
        )
        # Layer L: member outputs are summed, so their read-outs concatenate column-wise.
        self.readout_weight = nn.Parameter(torch.randn(out_features, m * self.widths[-1]))

    @property
    def depth(self) -> int:
        """Number of weight layers L."""
        return len(self.widths) + 1

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.input_weight)  # (batch, m * n_1)

    def forward_from_first(self, product: torch.Tensor) -> torch.Tensor:
        m, batch = self.multiplicity, product.shape[0]
        h = F.relu(product * math.sqrt(2.0 / self.in_features))
        # (batch, m * n) -> (m, batch, n): members lead so each hidden layer is one bmm.
        h = h.view(batch, m, self.widths[0]).transpose(0, 1)
        for weight in self.hidden_weights:
            fan_in = weight.shape[2]
            h = F.relu(torch.bmm(h, weight.transpose(1, 2)) * math.sqrt(2.0 / fan_in))
        h = h.transpose(0, 1).reshape(batch, m * self.widths[-1])
        return F.linear(h, self.readout_weight) * math.sqrt(1.0 / (m * self.widths[-1]))


class CollegialBottleneck(CollegialModel):
    """``m`` NTK-parameterised bottleneck branches (Fig. 5), summed and scaled by 1/sqrt(m).

    Member j computes ``W3_j relu(W2_j relu(W1_j x))`` with a 1x1 conv ``in -> width``, a 3x3
    conv ``width -> width`` (padding 1) and a 1x1 conv ``width -> out``. The block's identity
    shortcut has no parameters, so it changes neither the NTK nor the parameter count and is
    left to the caller.

    Args:
        in_channels: n_in.
        width: bottleneck width n of ONE member.
        out_channels: n_out.
        multiplicity: number of members m (the ResNeXt cardinality).
    """

    first_weight = "conv1_weight"
    _summed = "conv3_weight"

    def __init__(
        self, in_channels: int, width: int, out_channels: int, multiplicity: int = 1
    ) -> None:
        super().__init__()
        self.in_channels, self.width, self.out_channels = in_channels, width, out_channels
        self.multiplicity = m = multiplicity
        self.conv1_weight = nn.Parameter(torch.randn(m * width, in_channels, 1, 1))
        self.conv2_weight = nn.Parameter(torch.randn(m * width, width, 3, 3))
        self.conv3_weight = nn.Parameter(torch.randn(out_channels, m * width, 1, 1))

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.conv1_weight)  # (batch, m * n, H, W)

    def forward_from_first(self, product: torch.Tensor) -> torch.Tensor:
        m, n = self.multiplicity, self.width
        h = F.relu(product * math.sqrt(2.0 / self.in_channels))
        h = F.conv2d(h, self.conv2_weight, padding=1, groups=m)
        h = F.relu(h * math.sqrt(2.0 / (9 * n)))
        return F.conv2d(h, self.conv3_weight) * math.sqrt(1.0 / (m * n))


class ResNeXtBlock(nn.Module):
    """The ResNeXt bottleneck (form c) used by ResNeXt-29: grouped 3x3, BatchNorm, shortcut."""

    def __init__(self, in_channels: int, out_channels: int, width: int, groups: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + self.shortcut(x))


class CifarResNeXt(nn.Module):
    """ResNeXt-29 for CIFAR, ``m x n d`` in the paper's notation (Table 1).

    A 3x3 stem conv 3 -> 64, three stages of ``blocks_per_stage`` bottlenecks with output
    channels ``stage_channels`` and strides 1, 2, 2, global average pooling and a linear
    classifier. A stage with output channels ``c`` has bottleneck width
    ``D = m * floor(n * c / 256)`` and a 3x3 conv with ``groups = m``.

    The layout is the space's (``ce_ray.theory.spaces.CifarResNeXt29Space.build`` passes it), so
    the network and its closed-form counts cannot drift apart.

    Args:
        cardinality: m, the number of paths (groups).
        width: n, the per-path bottleneck width of the first stage ("d" in ``m x n d``).
        num_classes: classifier outputs.
        stem_channels: output channels of the 3x3 stem conv.
        stage_channels: output channels of each stage.
        stage_strides: stride of each stage's first block.
        blocks_per_stage: bottlenecks per stage.
    """

    def __init__(
        self,
        cardinality: int,
        width: int,
        num_classes: int,
        *,
        stem_channels: int,
        stage_channels: Sequence[int],
        stage_strides: Sequence[int],
        blocks_per_stage: int = 3,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_channels = stem_channels
        for out_channels, stride in zip(stage_channels, stage_strides, strict=True):
            group_width = cardinality * (width * out_channels // 256)
            for i in range(blocks_per_stage):
                blocks.append(
                    ResNeXtBlock(
                        in_channels, out_channels, group_width, cardinality, stride if i == 0 else 1
                    )
                )
                in_channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.classifier = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def stacked_call(
    modules: Sequence[nn.Module], x: torch.Tensor, shared_input: bool, training: bool
) -> torch.Tensor:
    """``(len(modules), ...)``: each module applied to ``x`` (``shared_input``) or to its own
    ``x[i]``, as ONE program: their parameters and buffers stacked, the first module's forward
    under ``torch.func.vmap`` (``functional_call`` swaps its tensors for the stacked ones for
    this call only). Gradients reach each module's own parameters; in training, BatchNorm's
    updated running statistics are copied back to each module's own buffers."""
    own_params = [dict(module.named_parameters()) for module in modules]
    params = {name: torch.stack([p[name] for p in own_params]) for name in own_params[0]}
    own_buffers = [dict(module.named_buffers()) for module in modules]
    buffers = {name: torch.stack([b[name] for b in own_buffers]) for name in own_buffers[0]}

    def one(
        params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        return torch.func.functional_call(modules[0], (params, buffers), (x,))

    in_dims = (0, 0, None if shared_input else 0)
    out = torch.func.vmap(one, in_dims=in_dims)(params, buffers, x)
    if training and buffers:  # the stacked running statistics were updated in place
        with torch.no_grad():
            for name, stacked in buffers.items():
                for own, updated in zip((b[name] for b in own_buffers), stacked, strict=True):
                    own.copy_(updated)
    return out


class PackedSeeds(nn.Module):
    """S independently initialised copies of one network, trained as ONE vectorised model.

    ``forward(x)`` takes a batch per seed, ``x`` shaped ``(S, batch, ...)``, and returns
    ``(S, batch, outputs)``: copy s applied to ``x[s]``. The copies' parameters (and buffers,
    e.g. BatchNorm's running statistics) are stacked and the network runs once under
    ``torch.func.vmap``, so S small models become one program of S-times-larger operations.

    Nothing is shared between the copies: with a loss that sums the per-seed losses, each
    copy's gradient is the one it would have alone, and the copies keep their own parameter
    tensors (``seeds[s]``), so an elementwise optimizer (SGD, Adam) steps each as if alone.
    Copy s's state_dict entries are those of the network under ``seeds.<s>.``.

    >>> packed = PackedSeeds([CollegialMLP(8, (4,), 3), CollegialMLP(8, (4,), 3)])
    >>> packed(torch.zeros(2, 5, 8)).shape
    torch.Size([2, 5, 3])
    """

    def __init__(self, networks: Sequence[nn.Module]):
        super().__init__()
        self.seeds = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stacked_call(list(self.seeds), x, shared_input=False, training=self.training)


class MemberEnsemble(nn.Module):
    """The collegial ensemble of any ``m`` members as ONE module: ``sum_j f_j(x) / sqrt(m)``.

    The members' parameters (and buffers) are stacked and one member's forward runs once under
    ``torch.func.vmap`` on the shared input, so m small networks become one program of m-times
    larger operations -- what :class:`CollegialMLP` and :class:`CollegialBottleneck` do by hand
    with ``bmm`` and grouped convolutions, for a member ce-ray knows only as ``member(n)``.
    Member j's state_dict entries are those of ``members[j]`` under ``members.<j>.``.

    >>> ensemble = MemberEnsemble([nn.Linear(4, 2) for _ in range(3)])
    >>> ensemble(torch.zeros(5, 4)).shape
    torch.Size([5, 2])
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = stacked_call(list(self.members), x, shared_input=True, training=self.training)
        return outputs.sum(dim=0) / math.sqrt(len(self.members))


class Reshaped(nn.Module):
    """``network`` on each example reshaped to ``shape``: a dataset yields digits as 64
    values, which a member reads as 8 tokens of 8 features (``shape = (8, 8)``).

    >>> Reshaped((2, 3), nn.Flatten())(torch.arange(12.0).reshape(2, 6)).shape
    torch.Size([2, 6])
    """

    def __init__(self, shape: Sequence[int], network: nn.Module):
        super().__init__()
        self.shape = tuple(shape)
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.reshape(len(x), *self.shape))
