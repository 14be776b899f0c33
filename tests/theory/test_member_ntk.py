"""The generic NTK sampler: on identical weights it equals the built-in one; its draws are a
function of (seed, draw index) alone, drawn a block at a time by one vectorised run of the
member's constructor (one by one where that cannot run); it samples the member's own
initialisation."""

import numpy as np
import pytest
import torch

from ce_ray.presets import FIT_PRESETS
from ce_ray.theory.alpha import AlphaFit, check_law, fit_eq9, fit_line
from ce_ray.theory.member_ntk import (
    DRAW_BLOCK,
    draw_block,
    draw_members,
    first_layer_law,
    first_linear,
    kernels_of,
    member_inputs,
    sample_member_ntk,
    stacked_kernels,
    vectorises,
)
from ce_ray.theory.ntk import member_ntk, ntk_inputs, sample_ntk
from ce_ray.theory.seeds import derive_seed
from ce_ray.theory.spaces import FCSpace, ResNeXtBlockSpace
from ce_ray.theory.traced import trace_member
from examples.transformer_mlp import member as ntk_member
from examples.transformer_mlp import member_torch_default
from tests.theory.ensembles import split_members


@pytest.mark.parametrize("space", [FCSpace(64, 4, 1), ResNeXtBlockSpace(16, 1, 6)], ids=str)
@pytest.mark.parametrize("off_diagonal", [False, True])
def test_identical_weights_give_the_built_in_kernel(space, off_diagonal):
    torch.manual_seed(0)
    ensemble = space.build(6, 5).double()
    with torch.no_grad():
        for parameter in ensemble.parameters():
            parameter.normal_()
    inputs = ntk_inputs(space, 3, off_diagonal=off_diagonal, dtype=torch.float64)
    built_in = member_ntk(ensemble, inputs).detach()
    generic = stacked_kernels(split_members(ensemble), inputs).detach()
    torch.testing.assert_close(generic, built_in, rtol=1e-12, atol=0)


def test_draws_depend_on_the_seed_and_index_alone():
    inputs = torch.randn(1, 8, 8)
    state = torch.random.get_rng_state()
    draws = DRAW_BLOCK + 8  # two blocks
    whole = sample_member_ntk(ntk_member, 16, draws, seed=7, inputs=inputs)
    chunked = sample_member_ntk(ntk_member, 16, draws, seed=7, inputs=inputs, memory_budget=1)
    np.testing.assert_array_equal(whole, chunked)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert len(set(whole.tolist())) == draws
    assert not np.array_equal(whole, sample_member_ntk(ntk_member, 16, draws, 8, inputs))
    # Draw 2 is the third of the first block, whoever asks for it.
    params, buffers = draw_block(ntk_member, 16, seed=7, block=0)
    third = ({k: v[2:3] for k, v in params.items()}, {k: v[2:3] for k, v in buffers.items()})
    np.testing.assert_allclose(
        kernels_of(ntk_member(16), third, inputs).item(), whole[2], rtol=1e-6
    )


def test_a_block_of_draws_is_drawn_as_the_constructor_draws_one():
    """One vectorised run of the constructor: each draw its own numbers, from the law the
    constructor's own initialisers give (randn; nn.Linear's kaiming-uniform, bound
    1/sqrt(fan-in); LayerNorm's ones)."""
    params, _ = draw_block(ntk_member, 64, seed=3, block=5)
    w1 = params["w1"]
    assert w1.shape == (DRAW_BLOCK, 64, 8)
    assert len({tuple(w.flatten()[:4].tolist()) for w in w1}) == DRAW_BLOCK
    assert abs(w1.std().item() - 1) < 0.02 and abs(w1.mean().item()) < 0.02
    assert torch.equal(params["norm.weight"], torch.ones(DRAW_BLOCK, 8))
    standard, _ = draw_block(member_torch_default, 64, seed=3, block=5)
    w2 = standard["3.weight"]  # nn.Linear(64, 8): U(-1/8, 1/8)
    assert w2.abs().max() <= 1 / 8 and abs(w2.std().item() - 1 / 8 / 3**0.5) < 0.002
    assert not torch.equal(w2[0], w2[1])


def numpy_initialised(n: int) -> torch.nn.Module:
    """A member drawn with NumPy's RNG: vmap would give a whole block the same numbers."""
    layer = torch.nn.Linear(8 * 8, n)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.random.standard_normal((n, 64))))
    return torch.nn.Sequential(torch.nn.Flatten(), layer, torch.nn.ReLU(), torch.nn.Linear(n, 1))


def branching(n: int) -> torch.nn.Module:
    """A member whose constructor branches on a value vmap cannot give Python."""
    layer = torch.nn.Linear(8 * 8, n)
    if layer.weight.sum() > 0:
        layer.weight.data.neg_()
    return torch.nn.Sequential(torch.nn.Flatten(), layer, torch.nn.ReLU(), torch.nn.Linear(n, 1))


@pytest.mark.parametrize("member", [numpy_initialised, branching])
def test_a_constructor_that_does_not_vectorise_is_drawn_one_by_one(member):
    assert vectorises(ntk_member, 16, 0) and not vectorises(member, 16, 0)
    inputs = torch.randn(1, 8, 8)
    np.random.seed(0)
    samples = sample_member_ntk(member, 16, 6, seed=7, inputs=inputs)
    assert len(set(samples.tolist())) == 6
    np.random.seed(0)
    (third,) = draw_members(member, 16, 1, seed=7, first=2)
    if member is branching:  # (NumPy's draws depend on its global state, not the seed)
        np.testing.assert_allclose(stacked_kernels([third], inputs).item(), samples[2], rtol=1e-6)


def test_the_members_own_initialisation_is_sampled():
    """NTK parameterisation keeps E[K] flat in n; PyTorch's default lets it grow with n."""
    inputs = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))

    def growth(member) -> float:
        narrow = sample_member_ntk(member, 8, 150, seed=1, inputs=inputs).mean()
        wide = sample_member_ntk(member, 128, 150, seed=1, inputs=inputs).mean()
        return wide / narrow

    assert 0.7 < growth(ntk_member) < 1.4
    assert growth(member_torch_default) > 4


def test_the_law_checks_flag_the_standard_parameterisation_only():
    """E[K] grows with n under PyTorch's default initialisation: a warning; NTK-parameterised,
    none about E[K], and the figures behind each check are reported either way."""
    inputs = member_inputs((8, 8), seed=0)
    widths = (4, 8, 16, 32, 64)

    def fit(member) -> AlphaFit:
        def samples_of(n: int) -> np.ndarray:
            return sample_member_ntk(member, n, 300, seed=n, inputs=inputs)

        def fan_in_sum(n: np.ndarray) -> np.ndarray:
            return np.array([trace_member(member, int(w), (8, 8)).fan_in_sum for w in n])

        return fit_eq9(widths, fan_in_sum, samples_of, 0, bootstrap=1)

    standard = check_law(fit(member_torch_default).moments, r2=0.99)
    assert any(w.startswith("E[K] grows with n") for w in standard.warnings), standard
    assert standard.mean_slope - 2 * standard.mean_slope_se > 0.1
    ntk_fit = fit(ntk_member)
    ntk = check_law(ntk_fit.moments, r2=0.99)
    assert not any(w.startswith("E[K] grows") for w in ntk.warnings), ntk
    assert abs(ntk.mean_slope) < 0.1 and ntk.log_ratio_positive and ntk.log_ratio_falls
    frame = ntk_fit.moments
    with_intercept = fit_line(
        frame["fan_in_sum"], frame["log_ratio"], 1 / frame["se_log_ratio"] ** 2, intercept=True
    )
    assert ntk.r2_intercept == pytest.approx(with_intercept.r2, rel=1e-12)
    assert ntk.r2_intercept > ntk_fit.r2  # a line with an intercept fits better
    weak = check_law(ntk_fit.moments, r2=0.5)
    assert weak.warnings[0].startswith("weak fit of Eq. 9 (R^2 = 0.500 < 0.9; ")
    assert weak.r2 == 0.5 and weak.r2_intercept == ntk.r2_intercept


def digits_block_member(n: int) -> torch.nn.Module:
    return FIT_PRESETS["digits-mlp-block"].space.ntk_block().build(1, n)


def test_alpha_of_the_digits_block_agrees_with_the_exact_sampler():
    """The same block, named as a user's member and sampled generically, against the exact
    sampler of the built-in space: alphas within 4 standard errors of their difference."""
    space = FIT_PRESETS["digits-mlp-block"].space
    block, widths, samples = space.ntk_block(), (4, 8, 16), 1500
    inputs = ntk_inputs(block, 0)

    def exact(n: int) -> np.ndarray:
        return sample_ntk(space, n, samples, derive_seed(1, n), inputs, method="exact")

    def generic(n: int) -> np.ndarray:
        return sample_member_ntk(digits_block_member, n, samples, derive_seed(2, n), inputs)

    first = fit_eq9(widths, space.fan_in_sum, exact, 0, bootstrap=1)
    second = fit_eq9(widths, space.fan_in_sum, generic, 0, bootstrap=1)
    gap = abs(first.alpha - second.alpha)
    assert gap < 4 * np.hypot(first.alpha_se, second.alpha_se), (first.alpha, second.alpha)


class TiedFirstWeight(torch.nn.Module):
    """Its first weight is read twice: by the first layer and, transposed, by the last."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.nn.functional.linear(x.flatten(1), self.weight))
        return torch.nn.functional.linear(h, self.weight.T)[:, :1]


def test_the_first_layer_s_share_from_its_output_gradient_equals_autograd_s():
    """The digits MLP block reads its input with F.linear first: its first weight's share of
    K from dF/d(W1 x) and the inputs' Gram matrix, to float64 rounding; a member that begins
    with a norm has no such layer, and one whose first weight is read again is not given the
    law (its share would be more than the law says)."""
    space = FCSpace(64, 4, 1)
    inputs = ntk_inputs(space, 0, off_diagonal=True, dtype=torch.float64)
    template = digits_block_member(16).double().eval()
    stacked = draw_block(digits_block_member, 16, seed=1, block=0)
    stacked = ({k: v.double() for k, v in stacked[0].items()}, stacked[1])
    found = first_linear(template, inputs)
    assert found == ("input_weight", (1, 16))
    torch.testing.assert_close(
        kernels_of(template, stacked, inputs, first=found),
        kernels_of(template, stacked, inputs),
        rtol=1e-12,
        atol=0,
    )
    assert first_layer_law(template, stacked, inputs, "pool") == found
    assert first_linear(ntk_member(16).eval(), torch.randn(1, 8, 8)) is None
    tied = TiedFirstWeight(8).eval()
    tied_draws = draw_block(TiedFirstWeight, 8, seed=1, block=0)
    x = torch.randn(1, 64)
    assert first_linear(tied, x) == ("weight", (1, 8))
    assert first_layer_law(tied, tied_draws, x, "pool") is None
