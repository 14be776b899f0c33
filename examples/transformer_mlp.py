"""Your own architecture: a pre-LN transformer MLP block as a collegial-ensemble member.

The scikit-learn digits (8x8 images) are read as 8 tokens (rows) of 8 features each; a member
of width ``n`` is the block ``x + W2 gelu(W1 LN(x))`` with a hidden width ``n``:

    ce-ray inspect examples.transformer_mlp:member --input-shape 8,8 --widths 8,16,32,64

and swept on the digits with ``network``, the members read out by a linear head::

    ce-ray sweep primal --space examples.transformer_mlp:member --input-shape 8,8 \
        --network examples.transformer_mlp:network --alpha 1.0

``member`` is NTK-parameterised (unit-variance weights, each product scaled by
1/sqrt(fan-in), as the paper's blocks are); ``member_torch_default`` is the same block built
from ``nn.Linear`` with PyTorch's default initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ce_ray.theory.models import MemberEnsemble

TOKENS, FEATURES, CLASSES = 8, 8, 10


class TransformerMLP(nn.Module):
    """``x + W2 gelu(W1 LN(x))`` on ``(batch, tokens, features)``, hidden width ``n``."""

    def __init__(self, features: int, n: int):
        super().__init__()
        self.norm = nn.LayerNorm(features)
        self.w1 = nn.Parameter(torch.randn(n, features))
        self.w2 = nn.Parameter(torch.randn(features, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.linear(self.norm(x), self.w1) / math.sqrt(self.w1.shape[1]))
        return x + F.linear(h, self.w2) / math.sqrt(self.w2.shape[1])


def member(n: int) -> nn.Module:
    """A width-``n`` member, NTK-parameterised."""
    return TransformerMLP(FEATURES, n)


def network(m: int, n: int) -> nn.Module:
    """m members of width n as one digits classifier: their ensemble (outputs summed and
    scaled by 1/sqrt(m), the members vectorised) read out by one linear head, the same at
    every point of a curve (so it leaves the points' parameter budgets equal)."""
    members = MemberEnsemble([member(n) for _ in range(m)])
    return nn.Sequential(members, nn.Flatten(), nn.Linear(TOKENS * FEATURES, CLASSES))


def fan_in_sum(n: int) -> float:
    """S(n) by hand, for ``--fan-in-sum``: ``w1`` sums the features, ``w2`` the n hidden
    units. It equals the traced S(n); a block whose contractions the trace cannot see (a
    custom autograd function, a C++ extension) would need it."""
    return 1 / FEATURES + 1 / n


def member_torch_default(n: int) -> nn.Module:
    """The same block with ``nn.Linear``'s default (standard) parameterisation."""
    return nn.Sequential(
        nn.LayerNorm(FEATURES),
        nn.Linear(FEATURES, n, bias=False),
        nn.GELU(),
        nn.Linear(n, FEATURES, bias=False),
    )
