"""Members written the way PyTorch code is usually written: ``nn.Linear`` with ``nn.init.*_``,
``reset_parameters`` overrides, attention, torchvision's own blocks, BatchNorm, raw parameters on
either side of a matrix product. Each entry of :data:`ZOO` is a member, its input shape and
S(n) counted by hand (one term per contraction that reads a parameter: 1 / its fan-in).

Every member is built with the width ``n`` it is given; the sizes are kept small so that the
suite can fit alpha of each in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import MLP

DIGITS = 64  # an 8x8 digit, flattened
TOKENS, FEATURES = 8, 8  # the same digit as 8 tokens of 8 features


class LinearNormal(nn.Module):
    """The digits block (64 -> n -> n -> n -> 1, ReLU) with ``nn.Linear`` and
    ``nn.init.normal_``, NTK-scaled in ``forward`` as ce-ray's own block is."""

    def __init__(self, n: int):
        super().__init__()
        sizes = [DIGITS, n, n, n, 1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for layer in self.layers:
            nn.init.normal_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x) * math.sqrt(2.0 / layer.in_features))
        last = self.layers[-1]
        return last(x) / math.sqrt(last.in_features)


class KaimingMLP(nn.Module):
    """The same block in PyTorch's default (standard) parameterisation with the same scale:
    ``kaiming_normal_`` in ``reset_parameters``, W ~ N(0, 2 / fan-in) (the read-out's
    N(0, 1 / fan-in)), no scaling in ``forward``."""

    def __init__(self, n: int):
        super().__init__()
        self.hidden = nn.ModuleList(
            [nn.Linear(DIGITS, n, bias=False), nn.Linear(n, n, bias=False)]
            + [nn.Linear(n, n, bias=False)]
        )
        self.readout = nn.Linear(n, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.hidden:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.readout.weight, nonlinearity="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.readout(x)


class PreLNBlock(nn.Module):
    """A pre-LN transformer block on (batch, tokens, features): ``x + attention(LN(x))``,
    then ``x + W2 gelu(W1 LN(x))`` with a hidden width n; biases zero, weights
    ``xavier_uniform_`` / ``trunc_normal_`` (the ViT recipe)."""

    def __init__(self, n: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(FEATURES), nn.LayerNorm(FEATURES)
        self.attention = nn.MultiheadAttention(FEATURES, num_heads=2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(FEATURES, n), nn.Linear(n, FEATURES)
        for layer in (self.fc1, self.fc2):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ScaledDotProduct(nn.Module):
    """Attention written with ``F.scaled_dot_product_attention``: Q, K and V of width n from
    one ``nn.Linear`` (``xavier_normal_``), two heads, an output map back to the features."""

    def __init__(self, n: int):
        super().__init__()
        self.qkv = nn.Linear(FEATURES, 3 * n, bias=False)
        self.out = nn.Linear(n, FEATURES, bias=False)
        nn.init.xavier_normal_(self.qkv.weight)
        self.heads = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)  # (batch, heads, tokens, n / heads)
        return x + self.out(h.transpose(1, 2).reshape(batch, tokens, -1))


class RawProducts(nn.Module):
    """Raw parameters on either side of a matrix product: ``x @ w1.T`` then ``w2 @ h``."""

    def __init__(self, n: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n, DIGITS))
        self.w2 = nn.Parameter(torch.randn(1, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x @ self.w1.T / math.sqrt(DIGITS))  # (batch, n)
        return (self.w2 @ h.T).T / math.sqrt(self.w2.shape[1])  # (batch, 1)


def linear_normal(n: int) -> nn.Module:
    return LinearNormal(n)


def kaiming_mlp(n: int) -> nn.Module:
    return KaimingMLP(n)


def pre_ln_block(n: int) -> nn.Module:
    return PreLNBlock(n)


def encoder_layer(n: int) -> nn.Module:
    """``nn.TransformerEncoderLayer`` with a feed-forward width n (post-LN, no dropout)."""
    return nn.TransformerEncoderLayer(
        FEATURES, nhead=2, dim_feedforward=n, dropout=0.0, batch_first=True
    )


def torchvision_mlp(n: int) -> nn.Module:
    """torchvision's ``ops.MLP``: 64 -> n -> n -> 1 with biases, PyTorch's default init."""
    return MLP(DIGITS, [n, n, 1])


def bottleneck(n: int) -> nn.Module:
    """torchvision's ResNet ``Bottleneck`` on 16 channels with a bottleneck width n:
    1x1 16 -> n, 3x3 n -> n, 1x1 n -> 16, each followed by BatchNorm."""
    return Bottleneck(16, 4, base_width=16 * n)


def conv_bn(n: int) -> nn.Module:
    """A small conv net with BatchNorm: 3x3 3 -> n, 3x3 n -> n, pooled, a linear read-out."""
    return nn.Sequential(
        nn.Conv2d(3, n, 3, padding=1, bias=False),
        nn.BatchNorm2d(n),
        nn.ReLU(),
        nn.Conv2d(n, n, 3, padding=1, bias=False),
        nn.BatchNorm2d(n),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(n, 1),
    )


def sdpa_block(n: int) -> nn.Module:
    return ScaledDotProduct(n)


def raw_products(n: int) -> nn.Module:
    return RawProducts(n)


@dataclass(frozen=True)
class Entry:
    """A zoo member, the shape of one example and S(n) counted by hand."""

    member: Callable[[int], nn.Module]
    input_shape: tuple[int, ...]
    fan_in_sum: Callable[[int], float]

    @property
    def name(self) -> str:
        return f"tests.theory.zoo:{self.member.__name__}"


ZOO: dict[str, Entry] = {
    # Four linear maps: fan-ins 64, n, n, n.
    "linear_normal": Entry(linear_normal, (DIGITS,), lambda n: 1 / 64 + 3 / n),
    "kaiming_mlp": Entry(kaiming_mlp, (DIGITS,), lambda n: 1 / 64 + 3 / n),
    # Attention's input projection (Q, K and V in one map) and output projection read the
    # 8 features; the feed-forward's W1 the 8 features, W2 the n hidden units.
    "pre_ln_block": Entry(pre_ln_block, (TOKENS, FEATURES), lambda n: 3 / 8 + 1 / n),
    "encoder_layer": Entry(encoder_layer, (TOKENS, FEATURES), lambda n: 3 / 8 + 1 / n),
    # Q, K and V in one map of the 8 features; the output map reads the n attended values.
    "sdpa_block": Entry(sdpa_block, (TOKENS, FEATURES), lambda n: 1 / 8 + 1 / n),
    "torchvision_mlp": Entry(torchvision_mlp, (DIGITS,), lambda n: 1 / 64 + 2 / n),
    # 1x1 over 16 channels, 3x3 over n, 1x1 over n.
    "bottleneck": Entry(bottleneck, (16, 6, 6), lambda n: 1 / 16 + 1 / (9 * n) + 1 / n),
    "conv_bn": Entry(conv_bn, (3, 8, 8), lambda n: 1 / 27 + 1 / (9 * n) + 1 / n),
    "raw_products": Entry(raw_products, (DIGITS,), lambda n: 1 / 64 + 1 / n),
}
