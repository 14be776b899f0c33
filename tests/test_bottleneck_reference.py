"""The Fig. 5 bottleneck against references that share no code with ce-ray's model or
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

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from ce_ray.theory.models import CollegialBottleneck
from ce_ray.theory.ntk import ntk_inputs, sample_ntk
from ce_ray.theory.spaces import ResNeXtBlockSpace


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
