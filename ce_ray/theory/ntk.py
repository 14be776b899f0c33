"""Monte-Carlo samples of empirical NTK entries (Algorithm 1, lines 3-5). Pure PyTorch.

For a member network f(x; theta) with iid N(0, 1) weights, one sample is

    K(x_a, x_b) = <grad_theta f(x_a), grad_theta f(x_b)>

for a fresh draw of theta: the diagonal entry K(x, x) by default, or K(x1, x2). Networks with
several outputs are read out as ONE scalar built from output channel 0 -- which is why
samplers use ``space.ntk_block()``, the same block with a single output: the other outputs'
weights do not enter. An MLP's read-out is output 0. A convolutional block's read-out is

* ``"pool"`` (default): channel 0 summed over positions and divided by sqrt(H W) -- global
  average pooling, scaled so E[K] does not shrink with the image; it is how a ResNeXt reads
  its features out, and it lands nearest the paper's alpha ~ 1.60 for the bottleneck;
* ``"centre"``: channel 0 at the centre pixel, the literal single NTK entry.

The fitted alpha depends on that choice (docs/paper.md: 1.29 pooled, 2.40 at the centre pixel,
for the ``resnext-block`` preset).

Two samplers:

* :func:`sample_batched` (every space): a chunk of T samples is ONE collegial-ensemble
  module with T members (block-diagonal / grouped layers). Because members share no weights,
  one backward pass of the ensemble's output yields every member's gradient, and
  ``K_j = T * <grad_j F_e(x_a), grad_j F_e(x_b)>`` (F_e carries 1/sqrt(T)). The first layer
  reads the same fixed inputs in every member, so instead of drawing W1 (fan-in numbers per
  unit) the sampler draws the products W1 X from their exact law N(0, Gram of X) (one number
  per input column) and adds that layer's share of K from dF/d(W1 X) -- drawing the weights
  is most of the cost on a CPU.
* :func:`sample_exact_fc` (``fc`` only): draws the products W h (forward) and W^T g
  (backward) from their exact joint law instead of W itself. Conditioned on A = W H (H = the
  layer's inputs as columns, Gram matrix G = H^T H),

      W = A G^+ H^T + W' P,   P = I - H G^+ H^T,

  with W' an independent copy of W, so ``W^T D = H G^+ A^T D + P W'^T D`` where the rows of
  ``W'^T D`` are iid N(0, D^T D). That costs O(width) random numbers per layer instead of
  O(width^2). A dead ReLU layer (h = 0) has G = 0, so G^+ = 0 and the backward product is
  simply fresh. Then K(x_a, x_b) = sum_l c_l^2 <h^a_{l-1}, h^b_{l-1}> <d^a_l, d^b_l> with
  d_l = df/dz_l and c_l the layer's NTK scale.

Chunking (``memory_budget``) bounds the bytes a chunk allocates; the estimate is deliberately
conservative (see :func:`bytes_per_sample`).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from typing_extensions import TypeIs  # narrows both branches (typing has it from 3.13)

from ce_ray.choices import METHODS, READOUTS, Method, Readout, check_choice
from ce_ray.theory.models import CollegialMLP, CollegialModel
from ce_ray.theory.seeds import derive_seed

if TYPE_CHECKING:  # the spaces call these samplers: they are told apart by name, not imported
    from ce_ray.theory.spaces import BuiltinSpace, FCSpace, ResNeXtBlockSpace


def _is_mlp(block: FCSpace | ResNeXtBlockSpace) -> TypeIs[FCSpace]:
    """Whether ``block`` is the Eq. 3 MLP (else the Fig. 5 bottleneck)."""
    return block.name == "fc"


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def ntk_inputs(
    block: FCSpace | ResNeXtBlockSpace,
    seed: int,
    off_diagonal: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed random inputs for ``block``, determined by ``seed``: 1 input, or 2 off-diagonal.

    MLP inputs are scaled to |x|^2 = n_0, so that E[K(x, x)] = L (Eq. 3); conv inputs are
    standard normal images of shape (in_channels, spatial, spatial). float32 unless ``dtype``.
    """
    count = 2 if off_diagonal else 1
    generator = make_generator(derive_seed(seed, 0x1A7), "cpu")
    if _is_mlp(block):
        x = torch.randn(count, block.input_dim, generator=generator, dtype=torch.float64)
        x = x * math.sqrt(block.input_dim) / x.norm(dim=1, keepdim=True)
    else:
        shape = (count, block.in_channels, block.spatial, block.spatial)
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x.to(device=device, dtype=dtype or torch.float32)


def scalar_readout(output: torch.Tensor, readout: Readout = "pool") -> torch.Tensor:
    """One scalar per example from output channel 0 (see the module docstring).

    ``(B, C)`` -> column 0. ``(B, C, H, W)`` -> ``sum_p y[:, 0, p] / sqrt(H W)`` ("pool") or
    ``y[:, 0, H // 2, W // 2]`` ("centre").
    """
    if output.dim() == 2:
        return output[:, 0]
    if readout == "centre":
        return output[:, 0, output.shape[2] // 2, output.shape[3] // 2]
    return output[:, 0].sum(dim=(1, 2)) / math.sqrt(output.shape[2] * output.shape[3])


def _gradients(outputs: torch.Tensor, leaves: Sequence[torch.Tensor]) -> list[tuple]:
    """Gradients of each scalar ``outputs[a]`` with respect to ``leaves``."""
    last = len(outputs) - 1
    return [torch.autograd.grad(o, leaves, retain_graph=a < last) for a, o in enumerate(outputs)]


def _weight_kernel(
    module: CollegialModel,
    names: Sequence[str],
    grads_a: Sequence[torch.Tensor],
    grads_b: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Per member, sum over the named weights of <grad_a, grad_b> restricted to the member."""
    first = module.member_views(zip(names, grads_a, strict=True))
    second = first if grads_b is grads_a else module.member_views(zip(names, grads_b, strict=True))
    return functools.reduce(
        operator.add, ((a * b).sum(dim=1) for a, b in zip(first, second, strict=True))
    )


def member_kernels(
    module: CollegialModel, inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """K_j(x_a, x_b) of every member j of a one-model ensemble, for its weights, by autograd.

    Members share no weights, so the ensemble's gradient split by member is each member's
    gradient times 1/sqrt(m): ``K_j = m * <grad_j F_e(x_a), grad_j F_e(x_b)>``.

    Args:
        module: a collegial ensemble with m members (``CollegialMLP``/``CollegialBottleneck``).
        inputs: one input (diagonal entry K(x, x)) or two (K(x1, x2)), batched along dim 0.
        readout: how a conv output becomes a scalar (:func:`scalar_readout`).

    Returns:
        ``(m,)`` tensor: member j's NTK entry.
    """
    if inputs.shape[0] not in (1, 2):
        raise ValueError(f"inputs must hold 1 or 2 examples; got {inputs.shape[0]}")
    names, params = zip(*module.named_parameters(), strict=True)
    grads = _gradients(scalar_readout(module(inputs), readout), params)
    return module.multiplicity * _weight_kernel(module, names, grads[0], grads[-1])


def member_ntk_matrix(
    module: CollegialModel, inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """``(m, B, B)``: K_j(x_a, x_b) of every member j for every pair of the B ``inputs``.

    Holds B gradients of the whole ensemble at once: keep B small (e.g. two inputs).
    """
    names, params = zip(*module.named_parameters(), strict=True)
    grads = _gradients(scalar_readout(module(inputs), readout), params)
    count = len(grads)
    kernel = torch.empty(module.multiplicity, count, count, dtype=inputs.dtype)
    for a in range(count):
        for b in range(a, count):
            entry = module.multiplicity * _weight_kernel(module, names, grads[a], grads[b])
            kernel[:, a, b] = kernel[:, b, a] = entry.detach().to(kernel.device)
    return kernel


def mlp_member_kernels(module: CollegialMLP, inputs: torch.Tensor) -> torch.Tensor:
    """``(m, B, B)``: every member's NTK on the B inputs, from one forward and one backward
    pass written out by hand (no weight gradients are formed, so memory is O(m B n)).

    With ``y_l = s_l W_l h_{l-1}`` (``s_l`` the layer's NTK scale) the gradient of a member's
    output with respect to ``W_l`` is ``s_l delta_l h_{l-1}^T``, ``delta_l = dF/dy_l``, so
    ``K = sum_l s_l^2 (delta_l delta_l^T) * (h_{l-1} h_{l-1}^T)`` (elementwise product).
    It equals :func:`member_ntk_matrix` (autograd); a test checks that.
    """
    m, batch = module.multiplicity, inputs.shape[0]
    # Forward, members leading: h[l] is the input of weight layer l + 1, (m, B, n_l).
    scales = [math.sqrt(2.0 / module.in_features)]
    layers = [module.input_weight.view(m, module.widths[0], module.in_features)]
    for weight in module.hidden_weights:
        scales.append(math.sqrt(2.0 / weight.shape[2]))
        layers.append(weight)
    readout = module.readout_weight.view(m, module.widths[-1])  # one output
    h = [inputs.expand(m, batch, module.in_features)]
    gates = []
    for scale, weight in zip(scales, layers, strict=True):
        pre = torch.bmm(h[-1], weight.transpose(1, 2)) * scale
        gates.append((pre > 0).to(pre.dtype))
        h.append(pre.clamp_min(0))
    # Backward: delta = dF_member/dy for each layer's pre-activation y (the member's output
    # is s_L W_L h_{L-1}, s_L = sqrt(1 / n_{L-1})).
    out_scale = math.sqrt(1.0 / module.widths[-1])
    kernel = out_scale**2 * torch.bmm(h[-1], h[-1].transpose(1, 2))  # the read-out's share
    back = (readout * out_scale)[:, None, :].expand(m, batch, module.widths[-1])
    for index in range(len(layers) - 1, -1, -1):
        delta = back * gates[index]  # (m, B, n_l)
        kernel = kernel + scales[index] ** 2 * torch.bmm(delta, delta.transpose(1, 2)) * (
            torch.bmm(h[index], h[index].transpose(1, 2))
        )
        back = torch.bmm(delta, layers[index]) * scales[index]
    return kernel


def input_columns(inputs: torch.Tensor) -> torch.Tensor:
    """The vectors the first layer multiplies, as rows: ``(p, n_0)`` for an MLP; for a 1x1
    conv every (example, position), ``(p * H * W, n_in)`` in (example, row, column) order."""
    if inputs.dim() == 2:
        return inputs
    return inputs.permute(0, 2, 3, 1).reshape(-1, inputs.shape[1])


def first_layer_product(
    module: CollegialModel, inputs: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``module.first_layer(inputs)`` -- the products W1 X -- from their exact law.

    Each row of W1 is iid N(0, I), so its products with the k input columns are N(0, G), with
    G the columns' Gram matrix: k random numbers per row instead of fan-in many.
    """
    columns = input_columns(inputs)
    root, _ = psd_sqrt_and_pinv(columns @ columns.T)
    rows = getattr(module, module.first_weight).shape[0]
    z = torch.randn(
        rows, columns.shape[0], generator=generator, device=inputs.device, dtype=inputs.dtype
    )
    return (z @ root).reshape(rows, inputs.shape[0], *inputs.shape[2:]).movedim(0, 1)


def member_ntk_from_product(
    module: CollegialModel, product: torch.Tensor, inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """:func:`member_kernels` with the first layer given by its product ``W1 X`` (W1 is unused).

    With D = dF/d(W1 X) of member j arranged as (n, k), the first layer's gradient is D X, so
    its share of K_j(x_a, x_b) is ``tr(D_a G D_b^T)`` with G the inputs' Gram matrix; the other
    layers go through autograd as in :func:`member_kernels`.
    """
    if inputs.shape[0] not in (1, 2):
        raise ValueError(f"inputs must hold 1 or 2 examples; got {inputs.shape[0]}")
    named = [(k, v) for k, v in module.named_parameters() if k != module.first_weight]
    names, params = zip(*named, strict=True)
    product = product.detach().requires_grad_(True)
    grads = _gradients(
        scalar_readout(module.forward_from_first(product), readout), [*params, product]
    )
    kernel = _weight_kernel(module, names, grads[0][:-1], grads[-1][:-1])
    columns = input_columns(inputs)
    m = module.multiplicity

    def by_member(d: torch.Tensor) -> torch.Tensor:  # (p, m * n, ...) -> (m, n, k)
        return d.movedim(1, 0).reshape(m, d.shape[1] // m, -1)

    first = torch.einsum(
        "jik,kl,jil->j", by_member(grads[0][-1]), columns @ columns.T, by_member(grads[-1][-1])
    )
    return m * (kernel + first)


def _uses_product_law(inputs: torch.Tensor) -> bool:
    """Drawing W1 X beats drawing W1 when there are fewer input columns than fan-in."""
    columns = input_columns(inputs)
    return columns.shape[0] <= columns.shape[1]


def draw_chunk(
    block: FCSpace | ResNeXtBlockSpace,
    members: int,
    n: int,
    generator: torch.Generator,
    inputs: torch.Tensor,
) -> tuple[CollegialModel, torch.Tensor | None]:
    """A ``members``-member ensemble of ``block`` with iid N(0, 1) weights from ``generator``.

    Where :func:`_uses_product_law` holds, the first layer's weight is left undrawn (its
    memory is uninitialised) and its product with ``inputs`` is returned instead; else
    ``None``.
    """
    with torch.device("meta"):
        module = block.build(members, n)
    module = module.to_empty(device=inputs.device).to(inputs.dtype)
    by_product = _uses_product_law(inputs)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if not (by_product and name == module.first_weight):
                parameter.normal_(generator=generator)
    product = first_layer_product(module, inputs, generator) if by_product else None
    return module, product


def bytes_per_sample(
    block: FCSpace | ResNeXtBlockSpace, n: int, inputs: int, method: Method, dtype_bytes: int = 4
) -> int:
    """Upper estimate of the memory one sample needs inside a chunk.

    Batched: weights, their gradients, the per-member products and one spare copy (4 x
    parameters), plus activations, their gradients and autograd's saved tensors (4 x the
    activations) -- an upper bound, as the first layer's weight is never drawn when its
    product is. Exact fc: the per-layer vectors the backward pass keeps (h, z, A, d and
    temporaries: 12 per layer) for each input. Measured peak resident growth stays below the
    budget (tests/theory/test_ntk.py).
    """
    if method == "exact":
        assert _is_mlp(block), "the exact sampler supports the fc space only"
        return dtype_bytes * inputs * (12 * block.depth * n + 2 * block.input_dim + 64)
    params = int(block.num_params(1, n))
    if _is_mlp(block):
        activations = block.input_dim + 2 * block.depth * n
    else:
        activations = block.spatial**2 * (block.in_channels + 6 * n + 2)
    return dtype_bytes * (4 * params + 4 * inputs * activations)


# On a CPU the batched sampler is memory-bound: chunks whose weights stay near the cache
# (measured best around 32 MiB of weights on 2 cores) beat chunks that fill the budget.
CPU_CHUNK_WEIGHT_BYTES = 32 * 2**20


def chunk_size(
    block: FCSpace | ResNeXtBlockSpace,
    n: int,
    inputs: int,
    method: Method,
    memory_budget: int,
    dtype_bytes: int = 4,
    device_type: str = "cpu",
) -> int:
    """Samples per chunk: at most ``memory_budget`` bytes; on a CPU, batched chunks also keep
    their weights within :data:`CPU_CHUNK_WEIGHT_BYTES`.

    Raises:
        ValueError: the budget cannot hold even one sample.
    """
    need = bytes_per_sample(block, n, inputs, method, dtype_bytes)
    if need > memory_budget:
        raise ValueError(
            f"memory budget {memory_budget / 2**20:.3g} MiB is too small for one sample at "
            f"width {n} (needs {need / 2**20:.3g} MiB)"
        )
    chunk = memory_budget // need
    if method == "batched" and device_type == "cpu":
        weight_bytes = dtype_bytes * int(block.num_params(1, n))
        chunk = min(chunk, max(1, CPU_CHUNK_WEIGHT_BYTES // weight_bytes))
    return chunk


def sample_batched(
    block: FCSpace | ResNeXtBlockSpace,
    n: int,
    num_samples: int,
    generator: torch.Generator,
    inputs: torch.Tensor,
    chunk: int,
    readout: Readout = "pool",
) -> torch.Tensor:
    """``num_samples`` NTK entries at width n, ``chunk`` members per batched ensemble."""
    values = []
    for start in range(0, num_samples, chunk):
        module, product = draw_chunk(block, min(chunk, num_samples - start), n, generator, inputs)
        if product is None:
            values.append(member_kernels(module, inputs, readout).detach())
        else:
            values.append(member_ntk_from_product(module, product, inputs, readout).detach())
    return torch.cat(values)


def psd_sqrt_and_pinv(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric square root and pseudo-inverse of a batch of small PSD matrices."""
    eigenvalues, vectors = torch.linalg.eigh(gram)
    tolerance = eigenvalues.amax(dim=-1, keepdim=True).clamp_min(0) * 1e-6 * gram.shape[-1]
    positive = eigenvalues > tolerance
    root = torch.where(positive, eigenvalues.clamp_min(0).sqrt(), 0)
    inverse = torch.where(positive, 1 / torch.where(positive, eigenvalues, 1), 0)
    sandwich = lambda d: (vectors * d.unsqueeze(-2)) @ vectors.transpose(-1, -2)  # noqa: E731
    return sandwich(root), sandwich(inverse)


def _exact_fc_chunk(
    block: FCSpace, n: int, samples: int, generator: torch.Generator, inputs: torch.Tensor
) -> torch.Tensor:
    """One chunk of the exact fc sampler; shapes are (samples, width, inputs)."""
    p, device, dtype = inputs.shape[0], inputs.device, inputs.dtype
    widths = [block.input_dim] + [n] * (block.depth - 1) + [1]
    gains = [2.0] * (block.depth - 1) + [1.0]  # c_l^2 * fan_in: 2 before a ReLU, 1 at read-out

    def normal(rows: int) -> torch.Tensor:
        return torch.randn(samples, rows, p, generator=generator, device=device, dtype=dtype)

    # Forward: per layer keep H (inputs as columns), G^+ and A = W H.
    h = inputs.T.expand(samples, -1, -1)  # (samples, n_0, p)
    saved = []
    for layer in range(block.depth):
        gram = h.transpose(1, 2) @ h
        root, pinv = psd_sqrt_and_pinv(gram)
        a = normal(widths[layer + 1]) @ root  # rows ~ N(0, G)
        saved.append((h, gram, pinv, a))
        z = a * math.sqrt(gains[layer] / widths[layer])
        h = torch.relu(z)

    # Backward from d_L = 1, accumulating c_l^2 <h_{l-1}^a, h_{l-1}^b> <d_l^a, d_l^b>.
    d = torch.ones(samples, 1, p, device=device, dtype=dtype)
    kernel = torch.zeros(samples, p, p, device=device, dtype=dtype)
    for layer in reversed(range(block.depth)):
        h, gram, pinv, a = saved[layer]
        scale2 = gains[layer] / widths[layer]
        kernel = kernel + scale2 * gram * (d.transpose(1, 2) @ d)
        if layer == 0:
            break
        # W^T D = H G^+ A^T D + P W'^T D, rows of W'^T D ~ N(0, D^T D).
        fresh = normal(widths[layer]) @ psd_sqrt_and_pinv(d.transpose(1, 2) @ d)[0]
        fresh = fresh - h @ (pinv @ (h.transpose(1, 2) @ fresh))
        back = h @ (pinv @ (a.transpose(1, 2) @ d)) + fresh
        d = back * math.sqrt(scale2) * (h > 0)  # ReLU derivative of the layer below
    return kernel[:, 0, p - 1]


def sample_exact_fc(
    block: FCSpace,
    n: int,
    num_samples: int,
    generator: torch.Generator,
    inputs: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``num_samples`` exact-law NTK entries of the Eq. 3 MLP at width n (see module doc)."""
    if not _is_mlp(block):
        raise ValueError(f"the exact sampler supports the fc space only; got {block.name}")
    values = [
        _exact_fc_chunk(block, n, min(chunk, num_samples - start), generator, inputs)
        for start in range(0, num_samples, chunk)
    ]
    return torch.cat(values)


def sample_ntk(
    space: BuiltinSpace,
    n: int,
    num_samples: int,
    seed: int,
    inputs: torch.Tensor,
    method: Method = "batched",
    memory_budget: int = 256 * 2**20,
    readout: Readout = "pool",
) -> np.ndarray:
    """``num_samples`` NTK entries of ``space``'s fitted block at width ``n``, as float64.

    Args:
        space: any space; its ``ntk_block()`` is sampled.
        n: member width.
        num_samples: T.
        seed: seeds the weight draws (derive it from the experiment seed and the work item).
        inputs: from :func:`ntk_inputs` (1 input: K(x, x); 2: K(x1, x2)); their device and
            dtype are used.
        method: ``"batched"`` (any space) or ``"exact"`` (fc only).
        memory_budget: bytes a chunk may allocate.
        readout: conv read-out, ``"pool"`` or ``"centre"`` (ignored by the MLP).
    """
    check_choice("method", method, METHODS)
    check_choice("readout", readout, READOUTS)
    block = space.ntk_block()
    if method == "exact" and not _is_mlp(block):
        raise ValueError(f"the exact sampler supports the fc space only; got {space.name}")
    dtype_bytes = inputs.element_size()
    chunk = chunk_size(
        block, n, inputs.shape[0], method, memory_budget, dtype_bytes, inputs.device.type
    )
    generator = make_generator(seed, inputs.device)
    if _is_mlp(block) and method == "exact":
        values = sample_exact_fc(block, n, num_samples, generator, inputs, chunk)
    else:
        values = sample_batched(block, n, num_samples, generator, inputs, chunk, readout)
    return values.to(device="cpu", dtype=torch.float64).numpy()
