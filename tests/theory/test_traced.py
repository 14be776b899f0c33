"""Sizes found by tracing a module equal the built-in spaces' closed forms, and follow a
block written with raw parameters, transposes and activation-by-activation products."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ce_ray.theory.spaces import (
    CifarResNeXt29Space,
    FCSpace,
    ImageNetResNeXt50Space,
    ResNeXtBlockSpace,
)
from ce_ray.theory.traced import trace, trace_member

BLOCKS = [
    (FCSpace(input_dim=64, depth=4), (64,)),
    (FCSpace(input_dim=784, depth=6), (784,)),
    (ResNeXtBlockSpace(256, 256, 8), (256, 8, 8)),
]


@pytest.mark.parametrize(("space", "input_shape"), BLOCKS, ids=str)
@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 7), (4, 16), (32, 4), (1, 200)])
def test_traced_blocks_equal_the_closed_forms(space, input_shape, m, n):
    network = trace_member(lambda width: space.build(m, width), n, input_shape)
    assert network.num_params == space.num_params(m, n)
    assert network.macs == space.flops(m, n)
    member = trace_member(lambda width: space.build(1, width), n, input_shape)
    assert member.fan_in_sum == pytest.approx(float(space.fan_in_sum(n)), abs=1e-12, rel=0)
    assert member.outside_contractions == []


@pytest.mark.parametrize(
    ("space", "input_shape", "points"),
    [
        # Table 1's ResNeXt-29 points and its baseline; Table 2's ResNeXt-50 32x4d and 1x64d.
        (CifarResNeXt29Space(num_classes=10), (3, 32, 32), [(8, 64), (16, 64), (1, 128), (3, 37)]),
        (ImageNetResNeXt50Space(), (3, 224, 224), [(32, 4), (1, 64)]),
    ],
    ids=["resnext29", "resnext50"],
)
def test_traced_networks_equal_the_closed_forms(space, input_shape, points):
    for m, n in points:
        with torch.device("meta"):
            network = space.build(m, n)
        found = trace(network, input_shape)
        assert (found.num_params, found.macs) == (space.num_params(m, n), space.flops(m, n))
        # BatchNorm's scales and shifts and the classifier's bias enter no contraction.
        norms = {
            f"{name}.{parameter}"
            for name, module in network.named_modules()
            if isinstance(module, nn.BatchNorm2d)
            for parameter in ("weight", "bias")
        }
        assert set(found.outside_contractions) == norms | {network_bias(network)}


def network_bias(network: nn.Module) -> str:
    (bias,) = [
        name
        for name, _ in network.named_parameters()
        if name.startswith(("fc.", "classifier.")) and name.endswith(".bias")
    ]
    return bias


class PreLNTransformerMLP(nn.Module):
    """A pre-LN transformer MLP block written with raw parameters and ``@``."""

    def __init__(self, d: int, n: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.w_in = nn.Parameter(torch.randn(n, d))
        self.w_out = nn.Parameter(torch.randn(d, n))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        h = F.gelu(self.norm(x) @ self.w_in.t() * d_scale(self.w_in) + self.bias)
        return x + (h @ self.w_out.T) / math.sqrt(h.shape[-1])


def d_scale(weight):
    return 1.0 / math.sqrt(weight.shape[1])


def test_raw_parameters_through_transposes_and_scalings_count():
    found = trace_member(lambda n: PreLNTransformerMLP(12, n), 40, (5, 12))
    assert [(c.parameter, c.fan_in) for c in found.contractions] == [("w_in", 12), ("w_out", 40)]
    assert found.fan_in_sum == pytest.approx(1 / 12 + 1 / 40, abs=1e-15)
    assert found.outside_contractions == ["bias", "norm.weight", "norm.bias"]
    assert found.num_params == 2 * 12 + 2 * 12 * 40 + 40
    assert found.macs == 5 * 2 * 12 * 40  # 5 tokens, two products each


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        batch, tokens, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.out((scores @ v).transpose(1, 2).reshape(batch, tokens, d))


def test_products_of_two_activations_read_no_parameter():
    found = trace(Attention(16, 4), (6, 16))
    assert [(c.parameter, c.operation, c.fan_in) for c in found.contractions] == [
        ("qkv.weight", "linear", 16),
        ("out.weight", "linear", 16),
    ]
    # Q K^T and scores V are counted as multiply-accumulates all the same.
    assert found.macs == 6 * 16 * 48 + 6 * 16 * 16 + 2 * 4 * 6 * 6 * 4


def test_a_grouped_convolution_reads_k_k_in_over_groups():
    conv = nn.Conv2d(32, 64, kernel_size=3, padding=1, groups=4, bias=True)
    found = trace(conv, (32, 5, 5))
    assert [(c.operation, c.fan_in) for c in found.contractions] == [("conv2d", 9 * 8)]
    assert found.outside_contractions == ["bias"]


class LayerScaled(nn.Module):
    """``W2 (gamma * W1 x)``: gamma, a vector of gains, times an activation is no longer a
    parameter that the next product reads."""

    def __init__(self, n: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n, 8))
        self.gamma = nn.Parameter(torch.ones(n))
        self.w2 = nn.Parameter(torch.randn(1, n))

    def forward(self, x):
        return (self.gamma * (x @ self.w1.T)) @ self.w2.T


def test_a_parameter_times_an_activation_is_not_that_parameter():
    found = trace(LayerScaled(16), (8,))
    assert [(c.parameter, c.fan_in) for c in found.contractions] == [("w1", 8), ("w2", 16)]
    assert found.outside_contractions == ["gamma"] and found.unplaced == {}


def test_products_inside_attention_are_seen():
    """nn.MultiheadAttention runs its projections inside F.multi_head_attention_forward: the
    trace sees them at the ATen level (one contraction for Q, K and V together, one out)."""
    block = nn.TransformerEncoderLayer(16, 4, dim_feedforward=40, dropout=0.0, batch_first=True)
    found = trace(block, (6, 16))
    assert [(c.parameter, c.operation, c.fan_in) for c in found.contractions] == [
        ("self_attn.in_proj_weight", "addmm", 16),
        ("self_attn.out_proj.weight", "addmm", 16),
        ("linear1.weight", "linear", 16),
        ("linear2.weight", "linear", 40),
    ]
    assert found.unplaced == {}


def test_a_transposed_convolution_sums_in_over_groups_k_k_over_stride_squared():
    """Each output of a stride-2 4x4 transposed convolution sums 8 channels x 16 taps / 4."""
    found = trace(nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1), (8, 5, 5))
    assert [(c.operation, c.fan_in) for c in found.contractions] == [("conv_transpose2d", 32)]
