"""Members written as PyTorch code usually is, in PyTorch's default (standard)
parameterisation -- ``nn.Linear``/``nn.Conv2d`` with their default initialisation, no scaling
in ``forward`` -- so their NTK twin is what fit-alpha samples (``--parameterisation
standard``; docs/your-own-member.md, "Blocks as PyTorch writes them"):

    ce-ray inspect examples.pytorch_blocks:transformer --input-shape 8,8 --widths 8,16,32,64
    ce-ray fit-alpha --space examples.pytorch_blocks:transformer --input-shape 8,8 \\
        --parameterisation standard

* ``mlp``: torchvision's ``ops.MLP``, 64 -> n -> n -> 1, no bias;
* ``transformer``: 8 tokens of 8 features embedded to width n, one pre-LN
  ``nn.TransformerEncoderLayer`` of width n (2 heads, feed-forward 2n), read out per token by
  a linear map -- attention and all, every layer but the embedding widens with n;
* ``bottleneck``: torchvision's ResNet ``Bottleneck`` on 64 channels, bottleneck width n --
  a block Eq. 9 does not describe (its last ReLU, after the shortcut, keeps a random factor
  at any width): fit-alpha says so.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import MLP

DIGITS = 64  # an 8x8 digit, flattened
TOKENS, FEATURES, HEADS = 8, 8, 2  # the same digit as 8 tokens of 8 features
CHANNELS = 64  # the bottleneck's input and output channels


def mlp(n: int) -> nn.Module:
    """torchvision's ``ops.MLP``: 64 -> n -> n -> 1 with ReLU, no bias."""
    return MLP(DIGITS, [n, n, 1], bias=False)


class Transformer(nn.Module):
    """``W_out Layer(W_in x)``: tokens embedded to width n, one pre-LN transformer layer
    (``nn.TransformerEncoderLayer``: attention with 2 heads, feed-forward 2n, no dropout),
    one output per token."""

    def __init__(self, n: int):
        super().__init__()
        self.embed = nn.Linear(FEATURES, n)
        self.layer = nn.TransformerEncoderLayer(
            n, HEADS, dim_feedforward=2 * n, dropout=0.0, batch_first=True, norm_first=True
        )
        self.readout = nn.Linear(n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.layer(self.embed(x)))


def transformer(n: int) -> nn.Module:
    return Transformer(n)


def bottleneck(n: int) -> nn.Module:
    """torchvision's ResNet ``Bottleneck`` on 64 channels with a bottleneck width n: 1x1
    64 -> n, 3x3 n -> n, 1x1 n -> 64 (each with BatchNorm), the shortcut, a ReLU."""
    return Bottleneck(CHANNELS, CHANNELS // 4, base_width=4 * n)
