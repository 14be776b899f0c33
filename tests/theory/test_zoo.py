"""Members written as PyTorch code usually is (tests/theory/zoo.py): traced sizes, MACs and
S(n) equal what PyTorch and a hand count say; each is sampled without error; the nn.Linear
MLP and the digits MLP in the standard parameterisation (as its NTK twin) fit the built-in
digits block's alpha; the twin's kernel is the NTK-parameterised block's on identical weights.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.mobilenetv2 import InvertedResidual

from ce_ray.presets import FIT_PRESETS
from ce_ray.theory import member_ntk
from ce_ray.theory.alpha import check_law, fit_eq9
from ce_ray.theory.first_layer import first_layer
from ce_ray.theory.member import inspect_member
from ce_ray.theory.member_draws import draw_members
from ce_ray.theory.member_ntk import (
    SlowSampling,
    kernels_of,
    member_inputs,
    plan,
    sample_member_ntk,
)
from ce_ray.theory.ntk import ntk_inputs, sample_ntk
from ce_ray.theory.seeds import derive_seed
from ce_ray.theory.twin import init_scales
from examples.pytorch_blocks import mlp
from tests.theory.zoo import ZOO, KaimingMLP, LinearNormal

WIDTHS = (8, 16)


def pytorch_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """PyTorch's flop counter on one example, on the CPU, attention by its math kernel (the
    counter does not count the CPU's fused attention kernels) and autograd on (so that
    nn.MultiheadAttention takes its ordinary path, as in training)."""
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        module.eval()(torch.randn(1, *input_shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", list(ZOO))
def test_sizes_macs_and_s_of_the_zoo(name):
    entry = ZOO[name]
    found = inspect_member(entry.member, WIDTHS, entry.input_shape)
    for n, traced in zip(found.widths, found.traces, strict=True):
        module = entry.member(n)
        assert traced.num_params == sum(p.numel() for p in module.parameters())
        assert traced.macs == pytorch_macs(module, entry.input_shape)
        assert traced.fan_in_sum == pytest.approx(entry.fan_in_sum(n), rel=1e-12)
        assert traced.unplaced == {}  # every matrix is read by a contraction the trace saw
    assert not [w for w in found.warnings if "BatchNorm" not in w]


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("parameterisation", ["ntk", "standard"])
def test_every_zoo_member_is_sampled(name, parameterisation):
    """Sampling holds on each idiom (nn.init on a parameter made the sampler's rerun modify
    it in place under autograd), draws depend on (seed, index) alone, and the kernels are
    positive."""
    entry = ZOO[name]
    inputs = member_inputs(entry.input_shape, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowSampling)
        samples = sample_member_ntk(
            entry.member, 8, 6, 3, inputs, parameterisation=parameterisation
        )
        again = sample_member_ntk(
            entry.member, 8, 6, 3, inputs, memory_budget=1, parameterisation=parameterisation
        )
    assert samples.shape == (6,) and np.all(samples >= 0) and samples.max() > 0
    np.testing.assert_allclose(samples, again, rtol=1e-5)


def test_attention_s_unbatched_operations_are_one_note():
    """PyTorch warns twice per call that it has no batching rule for the CPU's attention
    kernel; the sampler says it once, as a SlowSampling, and passes no PyTorch warning on."""
    entry = ZOO["pre_ln_block"]
    inputs = member_inputs(entry.input_shape, seed=0)
    member_ntk._PLANS.clear()  # the plan's checks run the member under vmap too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_member_ntk(entry.member, 8, 4, 3, inputs)
    assert [w.category for w in caught] == [SlowSampling], [str(w.message) for w in caught]
    assert "_scaled_dot_product_flash_attention_for_cpu" in str(caught[0].message)
    assert "the same samples, more slowly" in str(caught[0].message)


def fitted_alpha(samples_of, fan_in_sum, widths=(4, 8, 16)):
    return fit_eq9(widths, fan_in_sum, samples_of, 0, bootstrap=1)


@pytest.fixture(scope="module")
def built_in_digits_fit():
    """The built-in digits block's alpha by its exact sampler."""
    space = FIT_PRESETS["digits-mlp-block"].space
    inputs = ntk_inputs(space.ntk_block(), 0)

    def exact(n: int) -> np.ndarray:
        return sample_ntk(space, n, 1500, derive_seed(1, n), inputs, method="exact")

    return fitted_alpha(exact, space.fan_in_sum), inputs


@pytest.mark.parametrize(
    ("name", "parameterisation"),
    [("linear_normal", "ntk"), ("kaiming_mlp", "standard")],
    ids=["nn.Linear+normal_", "kaiming_normal_-twin"],
)
def test_the_digits_block_written_with_nn_linear_fits_the_built_in_alpha(
    built_in_digits_fit, name, parameterisation
):
    """Within 4 standard errors of the difference, same widths and draws per width."""
    reference, inputs = built_in_digits_fit
    member = ZOO[name].member

    def generic(n: int) -> np.ndarray:
        return sample_member_ntk(
            member, n, 1500, derive_seed(2, n), inputs, parameterisation=parameterisation
        )

    fit = fitted_alpha(generic, FIT_PRESETS["digits-mlp-block"].space.fan_in_sum)
    gap = abs(fit.alpha - reference.alpha)
    assert gap < 4 * np.hypot(fit.alpha_se, reference.alpha_se), (fit.alpha, reference.alpha)


def test_the_standard_parameterised_block_is_flagged_and_its_twin_is_not():
    """torchvision's ops.MLP: sampled as written, E[K] grows with n (the warning); as its
    twin, E[K] is flat and the law's checks pass."""
    entry = ZOO["torchvision_mlp"]
    inputs = member_inputs(entry.input_shape, seed=0)
    widths = (8, 32, 128)

    def law(parameterisation: str):
        def samples_of(n: int) -> np.ndarray:
            return sample_member_ntk(
                entry.member, n, 300, n, inputs, parameterisation=parameterisation
            )

        fit = fitted_alpha(
            samples_of, lambda w: np.array([entry.fan_in_sum(int(n)) for n in w]), widths
        )
        return check_law(fit.moments, fit.r2)

    as_written, twin = law("ntk"), law("standard")
    assert as_written.mean_grows and "E[K] grows with n" in as_written.warnings[-1]
    assert not twin.mean_grows and not [w for w in twin.warnings if "E[K]" in w]

    # With biases (PyTorch's default bias scale shrinks with n) the twin's fit is weak; the
    # guide's ops.MLP without bias passes every check of the law as its twin.
    def samples_of(n: int) -> np.ndarray:
        return sample_member_ntk(mlp, n, 300, n, inputs, parameterisation="standard")

    fit = fitted_alpha(samples_of, lambda w: 1 / 64 + 2 / np.asarray(w, dtype=float), widths)
    assert check_law(fit.moments, fit.r2).warnings == ()


def test_the_twin_s_kernel_is_the_ntk_parameterised_kernel_on_identical_weights():
    """KaimingMLP's weights W = s V (kaiming: s^2 = 2 / fan-in, the read-out's 1 / fan-in),
    sampled as its twin, against LinearNormal (the same block NTK-parameterised) with weights
    V: the same kernel to float64 rounding, s read from the constructor's own draws."""
    n = 16
    scales = init_scales(ZOO["kaiming_mlp"].member, n, seed=0)
    expected = [2 / 64, 2 / n, 2 / n, 1 / n]
    assert [w for _, w in scales.weights] == pytest.approx(expected, rel=1e-12)
    assert scales.estimated == ()

    ntk_blocks = [LinearNormal(n).double() for _ in range(4)]
    standard = [KaimingMLP(n).double() for _ in range(4)]
    for block, twin in zip(ntk_blocks, standard, strict=True):
        layers = [*twin.hidden, twin.readout]
        with torch.no_grad():
            for v, layer, s2 in zip(block.layers, layers, expected, strict=True):
                layer.weight.copy_(v.weight * math.sqrt(s2))
    inputs = torch.randn(2, 64, dtype=torch.float64)
    as_ntk = kernels_of(ntk_blocks[0], torch.func.stack_module_state(ntk_blocks), inputs)
    as_twin = kernels_of(
        standard[0], torch.func.stack_module_state(standard), inputs, weights=scales.as_dict()
    )
    torch.testing.assert_close(as_twin, as_ntk, rtol=1e-12, atol=0)
    # The same with W1's share from its law (dF/d(W1 x) and the inputs' Gram matrix).
    found = first_layer(standard[0], inputs)
    assert found is not None and found.weight == "hidden.0.weight"
    by_law = kernels_of(
        standard[0],
        torch.func.stack_module_state(standard),
        inputs,
        first=found,
        weights=scales.as_dict(),
    )
    torch.testing.assert_close(by_law, as_ntk, rtol=1e-12, atol=0)
    plain = kernels_of(standard[0], torch.func.stack_module_state(standard), inputs)
    assert not torch.allclose(plain, as_ntk)  # the weights are what makes it the twin


class Laws(nn.Module):
    """One parameter per initialisation idiom."""

    def __init__(self, n: int):
        super().__init__()
        self.normal = nn.Linear(n, 8, bias=False)
        nn.init.normal_(self.normal.weight, std=0.3)
        self.default = nn.Linear(n, 8)  # kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(n))
        self.xavier = nn.Parameter(torch.empty(8, n))
        nn.init.xavier_uniform_(self.xavier)
        self.trunc = nn.Parameter(torch.empty(8, n))
        nn.init.trunc_normal_(self.trunc, std=0.5, a=-1.0, b=1.0)  # truncated at 2 std
        self.raw = nn.Parameter(torch.randn(8, n) * 0.1)
        self.in_place = nn.Parameter(torch.empty(8, n))
        with torch.no_grad():
            self.in_place.normal_(0.0, 2.0)
        self.orthogonal = nn.Parameter(torch.empty(8, n))
        nn.init.orthogonal_(self.orthogonal)
        self.zero = nn.Parameter(torch.zeros(n))
        self.one = nn.Parameter(torch.ones(n))


def test_init_scales_follow_each_idiom():
    n = 32
    got = init_scales(Laws, n, seed=0).as_dict()
    # trunc_normal_ at +-2 std: variance shrinks by 1 - 2 phi(2) * 2 / (Phi(2) - Phi(-2)).
    phi, mass = math.exp(-2) / math.sqrt(2 * math.pi), math.erf(2 / math.sqrt(2))
    expected = {
        "normal.weight": 0.3**2,
        "default.weight": 1 / (3 * n),
        "default.bias": 1 / (3 * n),
        "xavier": 2 / (8 + n),
        "trunc": 0.25 * (1 - 4 * phi / mass),
        "raw": 0.01,
        "in_place": 4.0,
        "orthogonal": 1 / n,  # rows orthonormal: their squares sum to 8 over 8 n entries
        "zero": 1.0,  # a constant has no scale: its share of K is kept as it is
        "one": 1.0,
    }
    assert got == pytest.approx(expected, rel=1e-6)
    assert init_scales(Laws, n, seed=0).estimated == ("orthogonal",)


def test_the_plan_records_the_scales_only_for_the_standard_parameterisation():
    inputs = member_inputs((64,), seed=0)
    member = ZOO["kaiming_mlp"].member
    assert plan(member, 8, 0, inputs, "pool").scales is None
    assert plan(member, 8, 0, inputs, "pool", "standard").scales == init_scales(member, 8, 0)


def expanding(n: int) -> nn.Module:
    """torchvision's InvertedResidual with an expansion ratio n / 16: at n = 16 it has no
    expansion layer."""
    return InvertedResidual(16, 16, stride=1, expand_ratio=n // 16)


class HiddenMatrix(nn.Module):
    """A matrix read by a reduction, not by a contraction."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, 64))
        self.gains = nn.Parameter(torch.randn(4, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight) * self.gains.sum(0)


def test_an_architecture_that_changes_with_n_and_an_unplaced_matrix_are_warnings():
    changing = inspect_member(expanding, (16, 32, 64), (16, 4, 4)).warnings
    (change,) = [w for w in changing if "changes with n" in w]
    assert change.startswith(
        "member's architecture changes with n (conv.1.weight, conv.2.bias, "
        "conv2d(conv.1.weight) at n=16 only; conv.1.0.weight, "
    )
    assert "at n=32 only): S(n), the sizes and alpha then compare different blocks" in change
    (unplaced,) = inspect_member(HiddenMatrix, (8, 16), (64,)).warnings
    assert unplaced.startswith("member parameter gains (4, 8) enters no contraction")
    assert "read by aten.sum" in unplaced


def test_a_draw_rerun_never_touches_a_parameter_in_place_under_autograd():
    """The idiom that crashed: nn.init.normal_ on an nn.Linear's weight, whose first-layer
    products are drawn (the sampler reruns the constructor with other numbers)."""
    inputs = member_inputs((64,), seed=0)
    how = plan(ZOO["linear_normal"].member, 16, 0, inputs, "pool")
    assert how.gaussian is not None and how.vectorised
    (alone,) = draw_members(ZOO["linear_normal"].member, 16, 1, seed=4)
    assert all(p.requires_grad and p.is_leaf for p in alone.parameters())
