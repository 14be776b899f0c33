"""NTK samplers: agreement with plain autograd, the known mean, Lemma 1, exact vs batched.

The Fig. 5 bottleneck against references that share no code with ce-ray's model or
sampler: the block written out with F.conv2d, E[K(x, x)] in closed form (centre read-out) and
by brute force (pooled read-out), and the whole law of K (KS test).

Closed form, centre read-out at an interior pixel c, NTK parameterisation with He scaling:
every one of the three layers contributes A = sum_{p in 3x3(c)} |x(p)|^2 / (9 n_in) to
E[K(x, x)] (the ReLU gates halve each second moment and the He factor 2 restores it; cross
terms between positions vanish in expectation), so E[K] = 3 A whatever the width. A factor
9/8 in the 3x3 scaling moves it by +8%, a missing ReLU or sqrt(2/n) for sqrt(2/(9n))
by far more; the bands below are 4 measured standard errors and are checked to be tighter
than that.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ce_ray.theory.alpha import width_moments
from ce_ray.theory.models import CollegialBottleneck
from ce_ray.theory.ntk import (
    chunk_size,
    derive_seed,
    draw_chunk,
    make_generator,
    member_kernels,
    ntk_inputs,
    sample_batched,
    sample_ntk,
    scalar_readout,
)
from ce_ray.theory.spaces import CifarResNeXt29Space, FCSpace, ResNeXtBlockSpace
from tests.theory.ensembles import fill_first_layer, split_members

FC = FCSpace(input_dim=12, depth=4, num_classes=1)
BLOCK = ResNeXtBlockSpace(in_channels=6, out_channels=1, spatial=5)  # 25 positions > 6: draws W1
WIDE_BLOCK = ResNeXtBlockSpace(in_channels=40, out_channels=1, spatial=3)  # draws W1 X instead
BLOCKS = {"fc": FC, "bottleneck": BLOCK, "wide-bottleneck": WIDE_BLOCK}


def drawn_ensemble(block, members, n, seed, inputs):
    """The ensemble the batched sampler draws for ``seed``, with a consistent first layer."""
    module, product = draw_chunk(block, members, n, make_generator(seed), inputs)
    if product is not None:
        fill_first_layer(module, product, inputs)
    return module


def autograd_ntk(member, inputs, readout) -> float:
    """K(x_a, x_b) of one separately built member by plain autograd."""
    outputs = scalar_readout(member(inputs), readout)
    grads = [torch.autograd.grad(o, list(member.parameters()), retain_graph=True) for o in outputs]
    first, second = grads[0], grads[-1]
    return sum((a * b).sum() for a, b in zip(first, second, strict=True)).item()


@pytest.mark.parametrize("block", BLOCKS.values(), ids=BLOCKS.keys())
@pytest.mark.parametrize("off_diagonal", [False, True], ids=["diag", "offdiag"])
@pytest.mark.parametrize("readout", ["pool", "centre"])
def test_batched_sampler_equals_autograd_on_separate_members(block, off_diagonal, readout):
    inputs = ntk_inputs(block, seed=3, off_diagonal=off_diagonal, dtype=torch.float64)
    seed, members, n = 11, 5, 4
    sampled = sample_batched(block, n, members, make_generator(seed), inputs, members, readout)
    ensemble = drawn_ensemble(block, members, n, seed, inputs)
    expected = [autograd_ntk(m, inputs, readout) for m in split_members(ensemble)]
    np.testing.assert_allclose(sampled.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("block", BLOCKS.values(), ids=BLOCKS.keys())
def test_ensemble_ntk_is_the_mean_of_member_ntks(block):
    """Lemma 1 / Eq. 11: with F_e = sum_j F_j / sqrt(m), K_e = mean_j K_j."""
    inputs = ntk_inputs(block, seed=4, dtype=torch.float64)
    ensemble = drawn_ensemble(block, 6, 3, 5, inputs)
    output = scalar_readout(ensemble(inputs))[0]
    grads = torch.autograd.grad(output, list(ensemble.parameters()))
    ensemble_ntk = sum((g * g).sum() for g in grads).item()
    assert ensemble_ntk == pytest.approx(member_kernels(ensemble, inputs).mean().item(), rel=1e-10)


@pytest.mark.parametrize("method", ["batched", "exact"])
def test_fc_mean_is_depth_times_input_norm(method):
    """E[K(x, x)] = L |x|^2 / n0 for the Eq. 3 MLP, within 4 standard errors."""
    space = FCSpace(input_dim=20, depth=5, num_classes=1)
    x = 0.7 * ntk_inputs(space, seed=1)  # |x|^2 = 0.49 * n0
    k = sample_ntk(space, 16, 3000, derive_seed(0, 16), x, method)
    expected = 5 * x.pow(2).sum().item() / 20
    assert abs(k.mean() - expected) < 4 * k.std() / np.sqrt(k.size)


@pytest.mark.parametrize(
    ("depth", "n", "off_diagonal"),
    [(2, 32, False), (3, 8, False), (5, 16, False), (4, 64, False), (3, 16, True), (6, 1, False)],
)
def test_exact_sampler_has_the_batched_samplers_law(depth, n, off_diagonal):
    """Same mean and E[K^2]/E[K]^2 within Monte-Carlo error, and a KS test does not reject.

    n = 1 makes whole ReLU layers die often, exercising the h = 0 branch.
    """
    space = FCSpace(input_dim=30, depth=depth, num_classes=1)
    x = ntk_inputs(space, seed=2, off_diagonal=off_diagonal, dtype=torch.float64)
    exact = sample_ntk(space, n, 20000, derive_seed(1, n), x, "exact")
    batched = sample_ntk(space, n, 3000, derive_seed(2, n), x, "batched")
    a, b = width_moments(exact), width_moments(batched)
    assert abs(a.mean - b.mean) < 4 * np.hypot(a.se_mean, b.se_mean)
    assert abs(a.log_ratio - b.log_ratio) < 4 * np.hypot(a.se_log_ratio, b.se_log_ratio)
    assert stats.ks_2samp(exact, batched).pvalue > 1e-3


def test_samples_are_reproducible_from_the_seed():
    x = ntk_inputs(BLOCK, seed=0)
    first = sample_ntk(BLOCK, 3, 50, 123, x, memory_budget=2**20)
    again = sample_ntk(BLOCK, 3, 50, 123, x, memory_budget=2**20)
    other = sample_ntk(BLOCK, 3, 50, 124, x, memory_budget=2**20)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_whole_networks_sample_their_fitted_bottleneck():
    block = CifarResNeXt29Space().ntk_block()
    assert (block.in_channels, block.out_channels) == (256, 1)
    x = ntk_inputs(block, seed=0)
    k = sample_ntk(CifarResNeXt29Space(), 4, 8, 1, x)
    # The same draws as the Fig. 5 block itself (n_in = n_out = 256 on 8x8), not just any K.
    np.testing.assert_array_equal(k, sample_ntk(ResNeXtBlockSpace(256, 256, 8), 4, 8, 1, x))


def test_memory_budget_too_small_for_one_sample():
    with pytest.raises(ValueError, match="too small for one sample at width 512"):
        chunk_size(FCSpace(), 512, 1, "batched", memory_budget=2**20)
    with pytest.raises(ValueError, match="exact sampler supports the fc space only"):
        sample_ntk(BLOCK, 2, 4, 0, ntk_inputs(BLOCK, 0), "exact")


MEASURE_PEAK = """
from ce_ray.theory.ntk import chunk_size, ntk_inputs, sample_ntk
from ce_ray.theory.spaces import ResNeXtBlockSpace, FCSpace

def status(field):  # kB -> bytes, from this process's own memory map
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

space = {space}
budget, n, method = {budget}, {n}, "{method}"
x = ntk_inputs(space.ntk_block(), 0)
sample_ntk(space, 2, 4, 0, x, method, 2**24)  # warm-up: libraries and allocator pools
resident = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
samples = 3 * chunk_size(space.ntk_block(), n, 1, method, budget)
sample_ntk(space, n, samples, 1, x, method, budget)
print(status("VmHWM") - resident)
"""


@pytest.mark.parametrize(
    ("space", "n", "method"),
    [
        ("FCSpace(784, 6, 1)", 512, "batched"),
        ("FCSpace(784, 6, 1)", 512, "exact"),
        ("ResNeXtBlockSpace(256, 256, 8)", 128, "batched"),
    ],
)
def test_peak_memory_stays_within_the_budget(space, n, method):
    budget = 96 * 2**20
    code = MEASURE_PEAK.format(space=space, budget=budget, n=n, method=method)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert 0 < int(result.stdout) <= budget


def fig5_block(x, w1, w2, w3):
    """F(x) = sqrt(1/n) W3 relu(sqrt(2/(9n)) W2 * relu(sqrt(2/n_in) W1 x)), written out."""
    n_in, n = w1.shape[1], w1.shape[0]
    h = F.relu(math.sqrt(2 / n_in) * F.conv2d(x, w1))
    h = F.relu(math.sqrt(2 / (9 * n)) * F.conv2d(h, w2, padding=1))
    return math.sqrt(1 / n) * F.conv2d(h, w3)


def test_member_is_the_fig5_block():
    torch.manual_seed(3)
    net = CollegialBottleneck(5, 4, 3).double()
    x = torch.randn(2, 5, 6, 6, dtype=torch.double)
    expected = fig5_block(x, net.conv1_weight, net.conv2_weight, net.conv3_weight)
    torch.testing.assert_close(net(x), expected)


def brute_force_ntk(x, n: int, draws: int, readout: str, seed: int) -> np.ndarray:
    """K(x, x) of fresh Fig. 5 members, one autograd pass each (no ce-ray code)."""
    generator = torch.Generator().manual_seed(seed)
    n_in, size = x.shape[1], x.shape[-1]
    values = []
    for _ in range(draws):
        weights = [
            torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
            for shape in ((n, n_in, 1, 1), (n, n, 3, 3), (1, n, 1, 1))
        ]
        out = fig5_block(x, *weights)[0, 0]
        scalar = out.sum() / size if readout == "pool" else out[size // 2, size // 2]
        grads = torch.autograd.grad(scalar, weights)
        values.append(sum(float((g**2).sum()) for g in grads))
    return np.array(values)


def test_centre_readout_mean_is_the_closed_form():
    space = ResNeXtBlockSpace(in_channels=64, out_channels=64, spatial=5)
    x = ntk_inputs(space.ntk_block(), seed=11, dtype=torch.float64)
    k = sample_ntk(space, 64, 4000, seed=12, inputs=x.float(), readout="centre")
    norms = (x[0] ** 2).sum(dim=0)  # |x(p)|^2 per pixel
    expected = 3 * float(norms[1:4, 1:4].sum()) / (9 * 64)
    band = 4 * k.std(ddof=1) / math.sqrt(k.size)
    assert band < expected / 24  # a factor 9/8 in one layer's share would show
    assert abs(k.mean() - expected) < band, (k.mean(), expected, band)


def test_pooled_readout_mean_and_law_match_brute_force():
    space = ResNeXtBlockSpace(in_channels=16, out_channels=16, spatial=4)
    x = ntk_inputs(space.ntk_block(), seed=21, dtype=torch.float64)
    sampled = sample_ntk(space, 16, 3000, seed=22, inputs=x.float(), readout="pool")
    brute = brute_force_ntk(x, 16, 1500, "pool", seed=23)
    se = math.sqrt(sampled.var(ddof=1) / sampled.size + brute.var(ddof=1) / brute.size)
    assert 4 * se < 0.08 * brute.mean()  # tight enough to see a factor 9/8 in the 3x3
    assert abs(sampled.mean() - brute.mean()) < 4 * se, (sampled.mean(), brute.mean(), se)
    # The whole law, including the first layer's products drawn from N(0, Gram(X)).
    assert stats.ks_2samp(sampled, brute).pvalue > 1e-3
