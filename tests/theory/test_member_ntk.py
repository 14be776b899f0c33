"""The generic NTK sampler: on identical weights it equals the built-in one; its draws are a
function of (seed, draw index) alone, drawn a block at a time by one vectorised run of the
member's constructor (one by one where that cannot run); it samples the member's own
initialisation."""

import numpy as np
import pytest
import torch

from ce_ray.presets import FIT_PRESETS
from ce_ray.theory.alpha import AlphaFit, check_law, fit_eq9, fit_line
from ce_ray.theory.first_layer import (
    FirstLayer,
    draw_products,
    first_layer,
    gaussian_first_weight,
)
from ce_ray.theory.member_draws import (
    draw_block,
    draw_members,
    draws_per_block,
    vectorises,
    watched_builds,
)
from ce_ray.theory.member_ntk import (
    first_layer_law,
    kernels_of,
    member_inputs,
    plan,
    sample_member_ntk,
    stacked_kernels,
)
from ce_ray.theory.ntk import member_kernels, ntk_inputs, sample_ntk
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
    built_in = member_kernels(ensemble, inputs).detach()
    generic = stacked_kernels(split_members(ensemble), inputs).detach()
    torch.testing.assert_close(generic, built_in, rtol=1e-12, atol=0)


def test_draws_depend_on_the_seed_and_index_alone():
    inputs = torch.randn(1, 8, 8)
    size = draws_per_block(ntk_member(16))
    draws = size + 8  # two blocks
    state = torch.random.get_rng_state()
    whole = sample_member_ntk(ntk_member, 16, draws, seed=7, inputs=inputs)
    chunked = sample_member_ntk(ntk_member, 16, draws, seed=7, inputs=inputs, memory_budget=1)
    np.testing.assert_array_equal(whole, chunked)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert len(set(whole.tolist())) == draws
    assert not np.array_equal(whole, sample_member_ntk(ntk_member, 16, draws, 8, inputs))
    # Draw 2 is the third of the first block, whoever asks for it.
    params, buffers = draw_block(ntk_member, 16, seed=7, block=0, size=size)
    third = ({k: v[2:3] for k, v in params.items()}, {k: v[2:3] for k, v in buffers.items()})
    np.testing.assert_allclose(
        kernels_of(ntk_member(16), third, inputs).item(), whole[2], rtol=1e-6
    )


def test_drawn_products_depend_on_the_seed_and_index_alone():
    """The digits block's first weight is never drawn -- its products are, a block at a time
    beside the block's other weights -- and the samples still do not depend on the chunks."""
    inputs = torch.randn(1, 64)
    how = plan(digits_block_member, 16, 0, inputs, "pool")
    assert how.gaussian == (0, 1.0) and how.undrawn == "input_weight"
    draws = how.size + 8
    whole = sample_member_ntk(digits_block_member, 16, draws, seed=7, inputs=inputs)
    budget = (
        40 * 4 * 2 * 3 * sum(p.numel() for p in digits_block_member(16).parameters())
    )  # 40 a chunk
    chunked = sample_member_ntk(digits_block_member, 16, draws, 7, inputs, memory_budget=budget)
    np.testing.assert_array_equal(whole, chunked)
    assert len(set(whole.tolist())) == draws


def test_a_block_of_draws_is_drawn_as_the_constructor_draws_one():
    """One vectorised run of the constructor: each draw its own numbers, from the law the
    constructor's own initialisers give (randn; nn.Linear's kaiming-uniform, bound
    1/sqrt(fan-in); LayerNorm's ones)."""
    params, _ = draw_block(ntk_member, 64, seed=3, block=5, size=32)
    w1 = params["w1"]
    assert w1.shape == (32, 64, 8)
    assert len({tuple(w.flatten()[:4].tolist()) for w in w1}) == 32
    assert abs(w1.std().item() - 1) < 0.02 and abs(w1.mean().item()) < 0.02
    assert torch.equal(params["norm.weight"], torch.ones(32, 8))
    standard, _ = draw_block(member_torch_default, 64, seed=3, block=5, size=32)
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
    inputs = torch.randn(1, 8, 8)
    assert plan(ntk_member, 16, 0, inputs, "pool").vectorised
    assert not plan(member, 16, 0, inputs, "pool").vectorised
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


def assert_the_law_equals_autograd(member, n, draws, inputs, expected, pairs) -> None:
    """``member(n)``'s first layer is ``expected``, and over a block of ``draws`` float64
    draws the law's kernels equal autograd's on each input pair, to float64 rounding."""
    template = member(n).double().eval()
    params, buffers = draw_block(member, n, seed=1, block=0, size=draws)
    stacked = ({k: v.double() for k, v in params.items()}, buffers)
    found = first_layer(template, inputs)
    assert found == expected
    for pair in pairs:
        torch.testing.assert_close(
            kernels_of(template, stacked, pair, first=found),
            kernels_of(template, stacked, pair),
            rtol=1e-12,
            atol=0,
        )
    assert first_layer_law(template, stacked, inputs, "pool") == found


def test_the_first_layer_s_share_from_its_output_gradient_equals_autograd_s():
    """The digits MLP block reads its input with F.linear first: its first weight's share of
    K from dF/d(W1 x) and the inputs' Gram matrix, to float64 rounding; a member that begins
    with a norm has no such layer, and one whose first weight is read again is not given the
    law (its share would be more than the law says)."""
    inputs = ntk_inputs(FCSpace(64, 4, 1), 0, off_diagonal=True, dtype=torch.float64)
    expected = FirstLayer("input_weight", (1, 16), conv=False)
    assert_the_law_equals_autograd(digits_block_member, 16, 32, inputs, expected, [inputs])
    assert first_layer(ntk_member(16).eval(), torch.randn(1, 8, 8)) is None
    tied = TiedFirstWeight(8).eval()
    tied_draws = draw_block(TiedFirstWeight, 8, seed=1, block=0, size=32)
    x = torch.randn(1, 64)
    assert first_layer(tied, x) == FirstLayer("weight", (1, 8), conv=False)
    assert first_layer_law(tied, tied_draws, x, "pool") is None


def bottleneck_member(n: int) -> torch.nn.Module:
    return ResNeXtBlockSpace(16, 1, 6).ntk_block().build(1, n)


def test_a_first_1x1_convolution_gets_the_law_too():
    """The bottleneck reads its input with a 1x1 convolution first: W1's share of K from
    dF/d(W1 x) and the Gram matrix of the input's pixels equals autograd's, to float64
    rounding, on and off the diagonal."""
    inputs = ntk_inputs(ResNeXtBlockSpace(16, 1, 6), 0, off_diagonal=True, dtype=torch.float64)
    expected = FirstLayer("conv1_weight", (1, 5, 6, 6), conv=True)
    assert_the_law_equals_autograd(bottleneck_member, 5, 8, inputs, expected, [inputs[:1], inputs])


@pytest.mark.parametrize("member", [digits_block_member, bottleneck_member], ids=["mlp", "conv"])
def test_products_given_for_w1_give_the_kernels_of_w1_itself(member):
    """Each draw's W1 x, handed in instead of W1, gives the same K: the path the drawn
    products take, checked on products computed from the drawn W1."""
    space = FCSpace(64, 4, 1) if member is digits_block_member else ResNeXtBlockSpace(16, 1, 6)
    inputs = ntk_inputs(space, 0, off_diagonal=True, dtype=torch.float64)
    template = member(5).double().eval()
    params, buffers = draw_block(member, 5, seed=2, block=0, size=8)
    params = {k: v.double() for k, v in params.items()}
    found = first_layer(template, inputs)
    assert found is not None
    w1 = params[found.weight]
    if found.conv:
        products = torch.einsum("tri,eihw->terhw", w1[..., 0, 0], inputs).unsqueeze(2)
    else:
        products = torch.einsum("tri,ei->ter", w1, inputs).unsqueeze(2)
    without_w1 = {k: v for k, v in params.items() if k != found.weight}
    torch.testing.assert_close(
        kernels_of(template, (without_w1, buffers), inputs, first=found, products=products),
        kernels_of(template, (params, buffers), inputs),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize(
    ("first", "shape"),
    [
        (FirstLayer("w", (1, 2, 3), conv=False), (2, 2, 8)),  # 2 examples x 2 tokens of 8
        (FirstLayer("w", (1, 3, 1, 2), conv=True), (2, 6, 1, 2)),  # 2 x 2 pixels of 6 channels
    ],
    ids=["tokens", "pixels"],
)
def test_products_are_drawn_from_their_law(first, shape):
    """Each row of W1 ~ N(0, std^2 I) gives its products with the E k input vectors jointly
    N(0, std^2 G), G their Gram matrix, laid out as the layer's output."""
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    products = draw_products(first, 0.5, inputs, 40000, torch.Generator().manual_seed(1))
    assert products.shape == (40000, 2, *first.shape)
    by_vector = first.by_vector(products).flatten(1, 2)  # (T, E k, rows)
    vectors = first.vectors(inputs).flatten(0, 1)
    expected = 0.25 * vectors @ vectors.T
    for row in range(first.rows):
        sample = by_vector[:, :, row]
        covariance = sample.T @ sample / len(sample)
        torch.testing.assert_close(covariance, expected, rtol=0, atol=0.05 * expected.max().item())


class FirstWeightFrom(torch.nn.Module):
    """``F.linear`` on the raw input with a weight ``init(n)`` makes, then a read-out."""

    def __init__(self, n: int, init) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(init(n))
        self.readout = torch.nn.Parameter(torch.randn(1, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.nn.functional.linear(x, self.weight))
        return torch.nn.functional.linear(h, self.readout)


def _normal(mean: float, std: float):
    return lambda n: torch.nn.init.normal_(torch.empty(n, 64), mean, std)


def _randn_over_norm(n: int) -> torch.Tensor:
    v = torch.randn(n, 64)
    return v / v.norm()


class TransposedFromTheFirstDraw(FirstWeightFrom):
    """A second parameter that is W1's draw transposed and scaled."""

    def __init__(self, n: int) -> None:
        super().__init__(n, lambda n: torch.randn(n, 64))
        self.tied = torch.nn.Parameter(self.weight.detach().T.clone() * 3)


class SquaredFromTheFirstDraw(FirstWeightFrom):
    """A read-out made from W1's draw by a non-linear function of another shape."""

    def __init__(self, n: int) -> None:
        super().__init__(n, lambda n: torch.randn(n, 64))
        self.readout = torch.nn.Parameter(self.weight.detach().pow(2).mean(1)[None, :])


@pytest.mark.parametrize(
    ("init", "law"),
    [
        (lambda n: torch.randn(n, 64), (0, 1.0)),
        (lambda n: torch.randn(n, 64) * 0.5, (0, 0.5)),
        (_normal(0.0, 2.0), (0, 2.0)),
        (lambda n: torch.nn.init.kaiming_normal_(torch.empty(n, 64)), (0, (2 / 64) ** 0.5)),
        (lambda n: torch.nn.Linear(64, n).weight.detach(), None),  # kaiming-uniform
        (_normal(1.0, 1.0), None),  # not zero-mean
        (_randn_over_norm, None),  # its scale depends on the draw
    ],
    ids=["randn", "scaled", "normal_", "kaiming_normal_", "uniform", "mean-1", "normalised"],
)
def test_the_first_weight_s_law_is_found_when_it_is_a_scaled_gaussian_draw(init, law):
    def member(n: int) -> torch.nn.Module:
        return FirstWeightFrom(n, init)

    found = gaussian_first_weight(member, 8, watched_builds(member, 8, 0)[0], "weight")
    if law is None:
        assert found is None
    else:
        assert found is not None and found[0] == law[0]
        assert found[1] == pytest.approx(law[1], rel=1e-6)


@pytest.mark.parametrize("member", [TransposedFromTheFirstDraw, SquaredFromTheFirstDraw])
def test_a_first_weight_whose_draw_made_another_tensor_is_drawn_itself(member):
    """W1 is the first Gaussian draw, but another parameter was made from the same numbers:
    drawing W1 x independently of it would break their dependence."""
    builds = watched_builds(member, 8, 0)
    assert gaussian_first_weight(member, 8, builds[0], "weight") is None
    assert plan(member, 8, 0, torch.randn(1, 64), "pool").gaussian is None
    assert gaussian_first_weight(
        FirstWeightFromRandn, 8, watched_builds(FirstWeightFromRandn, 8, 0)[0], "weight"
    ) == (0, 1.0)


class FirstWeightFromRandn(FirstWeightFrom):
    def __init__(self, n: int) -> None:
        super().__init__(n, lambda n: torch.randn(n, 64))


def test_a_block_that_drew_w1_is_not_taken_for_one_that_left_it_undrawn():
    """The block leaves the constructor's first Gaussian draw undrawn, and the plan checks
    that it was W1: a block whose W1 holds numbers (the constructor drew in another order
    under vmap) is not used so."""
    builds = watched_builds(digits_block_member, 8, 0)
    assert vectorises(
        lambda: draw_block(digits_block_member, 8, 0, 0, 2, skip=0), builds, "input_weight"
    )
    assert not vectorises(
        lambda: draw_block(digits_block_member, 8, 0, 0, 2), builds, "input_weight"
    )
    assert vectorises(lambda: draw_block(digits_block_member, 8, 0, 0, 2), builds)
