"""Monte-Carlo NTK entries of any member ``member(n)``: Algorithm 1 for a user's own block.
Pure PyTorch.

One sample is ``K(x_a, x_b) = <grad_theta f(x_a), grad_theta f(x_b)>`` for a fresh
initialisation theta of ``member(n)`` -- the member's OWN initialisation (its constructor's
code, drawn by :mod:`ce_ray.theory.member_draws`), so that a block in PyTorch's default
(standard) parameterisation is sampled as it would train.

Kernels. The per-example gradients of a chunk of draws come from one program,
``vmap_T(vmap_B(grad(f)))`` over ``torch.func.functional_call``; where the member's first layer
has a law (:mod:`ce_ray.theory.first_layer`), its share of K comes from that law, checked
against autograd on two draws (:func:`first_layer_law`), and its products may be drawn instead
of its weight.

Which of these apply to a member at a width -- the law's two halves, vectorised draws -- is
its :class:`Plan`, found from two watched builds once per process (:func:`cached_plan`).

The member's output becomes one scalar per example as ``ce_ray.theory.ntk.scalar_readout``
does for the built-in blocks: output 0 of a ``(B, C)`` output; channel 0 of ``(B, C, H, W)``
pooled (sum / sqrt(H W)) or at the centre pixel; feature 0 of a ``(B, T, F)`` sequence pooled
over the T tokens (sum / sqrt(T)) or at the middle token.

Block b of a call draws from the seed ``derive_seed(seed, b)`` (its products from
``derive_seed(seed, b, PRODUCTS)``; one by one: draw i from ``derive_seed(seed, i)``), so a
shard (its seed derived from the experiment seed, the width and the shard) gives the same
samples on any machine, however its memory budget chunks it; the global RNG is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ce_ray.choices import PARAMETERISATIONS, READOUTS, Parameterisation, Readout, check_choice
from ce_ray.theory.first_layer import (
    FirstLayer,
    FirstLayerMode,
    draw_products,
    fewer_products,
    first_layer,
    gaussian_first_weight,
    law_share,
)
from ce_ray.theory.member_draws import (
    LAW_BUILDS,
    Member,
    Stacked,
    draw_block,
    draw_members,
    draws_per_block,
    vectorises,
    watched_builds,
)
from ce_ray.theory.ntk import scalar_readout
from ce_ray.theory.seeds import derive_seed
from ce_ray.theory.twin import InitScales, init_scales


class SlowSampling(UserWarning):
    """Some of the member's operations have no vectorised (vmap) rule in PyTorch: the draws
    of a chunk run them one draw at a time. The samples are the same; only slower."""


_NO_BATCHING_RULE = re.compile(r"batching rule for (aten::\w+)")


@contextlib.contextmanager
def _unbatched_operations_noted() -> Iterator[None]:
    """PyTorch's "performance drop ... batching rule for aten::X" warnings (two per
    operation and call, forward and backward) become one :class:`SlowSampling`; other
    warnings pass on as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    unbatched = []
    for warning in caught:
        found = _NO_BATCHING_RULE.search(str(warning.message))
        if found:
            unbatched.append(found.group(1).removesuffix("_backward"))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if unbatched:
        operations = ", ".join(dict.fromkeys(unbatched))
        warnings.warn(
            SlowSampling(
                f"PyTorch has no vectorised rule for {operations}: the member's NTK draws run "
                "it one draw at a time (the same samples, more slowly)"
            ),
            stacklevel=3,
        )


#: Seed key of a block's first-layer products.
PRODUCTS = 0x9D0D
#: The seed a :class:`Plan`'s checks draw from: a plan is the architecture's, not a shard's.
PLAN_SEED = 0x91A4


def member_readout(output: torch.Tensor, readout: Readout = "pool") -> torch.Tensor:
    """One scalar per example of a member's output (see the module docstring)."""
    if output.dim() in (2, 4):
        return scalar_readout(output, readout)
    if output.dim() == 3:
        if readout == "centre":
            return output[:, output.shape[1] // 2, 0]
        return output[:, :, 0].sum(dim=1) / math.sqrt(output.shape[1])
    raise ValueError(
        f"a member's output must be (B, C), (B, T, F) or (B, C, H, W); got {tuple(output.shape)}"
    )


def member_inputs(
    input_shape: tuple[int, ...],
    seed: int,
    off_diagonal: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed standard-normal inputs of ``input_shape``, determined by ``seed``: 1 input, or 2
    off-diagonal (as ``ce_ray.theory.ntk.ntk_inputs`` draws a convolutional block's); float32
    unless ``dtype``."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x1A7))
    count = 2 if off_diagonal else 1
    x = torch.randn((count, *input_shape), generator=generator, dtype=torch.float64)
    return x.to(device=device, dtype=dtype or torch.float32)


def _gradients(
    template: nn.Module,
    differentiated: dict[str, torch.Tensor],
    fixed: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    readout: Readout,
    first: FirstLayer | None,
    products: torch.Tensor | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each draw's per-example gradients of the read-out: ``(T, E, *shape)`` for each of the
    stacked parameters ``differentiated`` and, with ``first``, for W1's output (D; else a
    dummy). ``fixed``: the draws' other parameters; ``products``: each draw's W1 x (W1 then
    need not be given: the template's own is named, never multiplied)."""
    weight = first.weight if first else ""
    own_weight = dict(template.named_parameters()).get(weight)
    probe = torch.zeros(first.shape if first else (), dtype=inputs.dtype, device=inputs.device)

    def output(
        p: dict, w: dict, b: dict, x: torch.Tensor, zero: torch.Tensor, product: Any
    ) -> torch.Tensor:
        example = x.unsqueeze(0)
        if not weight:
            out = torch.func.functional_call(template, (p | w, b), (example,))
        else:
            named = (p | w).get(weight, own_weight)
            with FirstLayerMode(example, {id(named): weight}, zero, product):
                out = torch.func.functional_call(template, (p | w, b), (example,))
        return member_readout(out, readout)[0]

    drawn = None if products is None else 0
    gradient = torch.func.grad(output, argnums=(0, 4))
    if len(inputs) == 1:  # K(x, x): one vmap, over the draws (half the time at small widths)
        product = None if products is None else products[:, 0]
        grads, d = torch.func.vmap(gradient, in_dims=(0, 0, 0, None, None, drawn))(
            differentiated, fixed, buffers, inputs[0], probe, product
        )
        return {k: g.unsqueeze(1) for k, g in grads.items()}, d.unsqueeze(1)
    per_example = torch.func.vmap(gradient, in_dims=(None, None, None, 0, None, drawn))
    return torch.func.vmap(per_example, in_dims=(0, 0, 0, None, None, drawn))(
        differentiated, fixed, buffers, inputs, probe, products
    )


def _share(gradient: torch.Tensor) -> torch.Tensor:
    """``(T,)``: a parameter's share of K(x_a, x_b) from its per-example gradients."""
    return (gradient[:, 0] * gradient[:, -1]).flatten(1).sum(dim=1)


def kernels_of(
    template: nn.Module,
    stacked: Stacked,
    inputs: torch.Tensor,
    readout: Readout = "pool",
    first: FirstLayer | None = None,
    products: torch.Tensor | None = None,
    weights: dict[str, float] | None = None,
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of ``template`` with each of the T stacked parameter sets.

    ``first`` (:func:`first_layer`): W1's share of K is then taken from its output's gradient
    D (``tr(D_a G D_b^T)``, G the Gram matrix of the vectors W1 multiplies) instead of W1's
    own per-example gradient, which for a wide input is most of the work -- exact for any
    initialisation. ``products``: ``(T, E, *first.shape)``, each draw's W1 x, used instead of
    multiplying by W1 (which ``stacked`` then need not hold). ``weights``: each parameter's
    share of K times its weight (1 if not named) -- the NTK twin of a member in the standard
    parameterisation (:mod:`ce_ray.theory.twin`: s^2).
    """
    if inputs.shape[0] not in (1, 2):
        raise ValueError(f"inputs must hold 1 or 2 examples; got {inputs.shape[0]}")
    params, buffers = stacked
    weight = first.weight if first else ""
    rest = {k: v for k, v in params.items() if k != weight}
    first_weight = {weight: params[weight]} if first and products is None else {}
    grads, d = _gradients(template, rest, first_weight, buffers, inputs, readout, first, products)
    draws = len(products) if products is not None else len(next(iter(params.values())))
    weight_of = (weights or {}).get
    kernel = torch.zeros(draws, dtype=inputs.dtype, device=inputs.device)
    for name, g in grads.items():
        kernel = kernel + weight_of(name, 1.0) * _share(g)
    if first:
        kernel = kernel + weight_of(first.weight, 1.0) * law_share(first, inputs, d)
    return kernel


def stacked_kernels(
    modules: list[nn.Module], inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of each module (``inputs`` holds x_a, or x_a and x_b).

    The modules share one architecture; their parameters are stacked and every module's
    per-example gradients come from one vectorised program.
    """
    return kernels_of(modules[0], torch.func.stack_module_state(modules), inputs, readout)


def first_layer_law(
    template: nn.Module, stacked: Stacked, inputs: torch.Tensor, readout: Readout
) -> FirstLayer | None:
    """:func:`first_layer`, if W1's share of these draws' kernels by the law it allows equals
    its share by autograd (to float rounding): a first weight read again later (tied, or in a
    norm) would have a larger share than ``tr(D_a G D_b^T)``, and the law is then not used."""
    found = first_layer(template, inputs)
    if found is None:
        return None
    params, buffers = stacked
    weight = {found.weight: params[found.weight]}
    rest = {k: v for k, v in params.items() if k != found.weight}
    grads, d = _gradients(template, weight, rest, buffers, inputs, readout, found, None)
    by_law, by_autograd = law_share(found, inputs, d), _share(grads[found.weight])
    tolerance = 1e-4 if inputs.dtype != torch.float64 else 1e-10
    return found if torch.allclose(by_law, by_autograd, rtol=tolerance, atol=0) else None


def bytes_per_draw(module: nn.Module, inputs: int, dtype_bytes: int = 4) -> int:
    """Upper estimate of one draw's memory in a chunk: its weights, their stacked copy and a
    gradient per input, times two for autograd's saved tensors."""
    params = sum(p.numel() for p in module.parameters())
    return dtype_bytes * params * 2 * (2 + inputs)


@dataclass(frozen=True)
class Plan:
    """How :func:`sample_member_ntk` draws a member at one width on inputs of one shape.

    Attributes:
        size: draws per block (:func:`draws_per_block`).
        vectorised: blocks are drawn by one vectorised constructor run (else one by one).
        first: the first layer whose share of K comes from its law (:func:`first_layer_law`).
        gaussian: ``(index, std)`` when W1's products are drawn instead of W1
            (:func:`gaussian_first_weight`): the constructor's Gaussian draw it leaves undrawn.
        scales: with the standard parameterisation, each parameter's s^2
            (:func:`ce_ray.theory.twin.init_scales`): its twin is sampled.
    """

    size: int
    vectorised: bool
    first: FirstLayer | None
    gaussian: tuple[int, float] | None
    scales: InitScales | None = None

    @property
    def undrawn(self) -> str:
        """W1's name when its products are drawn: the blocks hold zeros for it."""
        return self.first.weight if self.first and self.gaussian else ""


def plan(
    member: Member,
    n: int,
    seed: int,
    inputs: torch.Tensor,
    readout: Readout,
    parameterisation: Parameterisation = "ntk",
) -> Plan:
    """Find how to draw ``member(n)`` (:class:`Plan`) from two watched builds and a block
    drawn from seeds derived from ``seed``; with the ``standard`` parameterisation, its
    parameters' init scales too (its NTK twin is then sampled)."""
    scales = init_scales(member, n, seed) if parameterisation == "standard" else None
    return dataclasses.replace(_how_to_draw(member, n, seed, inputs, readout), scales=scales)


def _how_to_draw(member: Member, n: int, seed: int, inputs: torch.Tensor, readout: Readout) -> Plan:
    builds = watched_builds(member, n, seed)
    params, buffers = torch.func.stack_module_state([build.module for build in builds])
    stacked = (
        {k: _like(v, inputs) for k, v in params.items()},
        {k: _like(v, inputs) for k, v in buffers.items()},
    )
    template = copy.deepcopy(builds[0].module).to(device=inputs.device, dtype=inputs.dtype)
    first = first_layer_law(template, stacked, inputs, readout)
    gaussian = None
    if first is not None and fewer_products(first, inputs):
        try:
            gaussian = gaussian_first_weight(member, n, builds[0], first.weight)
        except Exception:  # whatever the rerun with other numbers trips on: draw W1 itself
            gaussian = None
    # Whether the constructor vectorises does not depend on the block's size: two draws.
    check = functools.partial(draw_block, member, n, derive_seed(seed, LAW_BUILDS, 2), 0, 2)
    if first is not None and gaussian is not None:
        if vectorises(functools.partial(check, gaussian[0]), builds, first.weight):
            size = draws_per_block(builds[0].module, first.weight)
            return Plan(size, True, first, gaussian)
    return Plan(draws_per_block(builds[0].module), vectorises(check, builds), first, None)


#: Plans found in this process (at most MAX_PLANS; a plan holds no tensors), by member,
#: width, the inputs' shape, dtype and device, and read-out: every shard of a width a worker
#: runs after its first skips the checks (milliseconds, as long as a small width's shard).
_PLANS: dict[tuple, Plan] = {}

MAX_PLANS = 256


def cached_plan(
    member: Member,
    n: int,
    inputs: torch.Tensor,
    readout: Readout,
    parameterisation: Parameterisation = "ntk",
) -> Plan:
    """:func:`plan`, drawn from PLAN_SEED, once per process for each member, width, inputs'
    shape, dtype and device, read-out and parameterisation (a member that cannot be hashed:
    every call)."""
    how = (member, n, PLAN_SEED, inputs, readout, parameterisation)
    shape, where = tuple(inputs.shape), str(inputs.device)
    key = (member, n, shape, inputs.dtype, where, readout, parameterisation)
    try:
        found = _PLANS.get(key)
    except TypeError:  # an unhashable callable
        return plan(*how)
    if found is None:
        if len(_PLANS) >= MAX_PLANS:
            del _PLANS[next(iter(_PLANS))]
        found = _PLANS[key] = plan(*how)
    return found


def _like(tensor: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the inputs' device, floating point in their dtype."""
    dtype = inputs.dtype if tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=inputs.device, dtype=dtype)


def sample_member_ntk(
    member: Member,
    n: int,
    num_samples: int,
    seed: int,
    inputs: torch.Tensor,
    memory_budget: int = 256 * 2**20,
    readout: Readout = "pool",
    parameterisation: Parameterisation = "ntk",
) -> np.ndarray:
    """``num_samples`` NTK entries of ``member`` at width ``n``, as float64.

    Args:
        member: ``member(n) -> nn.Module``; its constructor's initialisation is sampled.
        n: member width.
        num_samples: T.
        seed: seeds the draws (derive it from the experiment seed and the work item).
        inputs: 1 input (K(x, x)) or 2 (K(x1, x2)), batched along dim 0, float32 or 64.
        memory_budget: bytes a chunk may allocate (a chunk holds at least one draw).
        readout: ``"pool"`` or ``"centre"`` (:func:`member_readout`).
        parameterisation: ``"ntk"``, the member as written; ``"standard"``, a member in
            PyTorch's default parameterisation, whose NTK twin is sampled
            (:mod:`ce_ray.theory.twin`).
    """
    check_choice("readout", readout, READOUTS)
    check_choice("parameterisation", parameterisation, PARAMETERISATIONS)
    with _unbatched_operations_noted():  # the plan's checks run the member under vmap too
        samples = _sample(
            member, n, num_samples, seed, inputs, memory_budget, readout, parameterisation
        )
    return samples


def _sample(
    member: Member,
    n: int,
    num_samples: int,
    seed: int,
    inputs: torch.Tensor,
    memory_budget: int,
    readout: Readout,
    parameterisation: Parameterisation,
) -> np.ndarray:
    how = cached_plan(member, n, inputs, readout, parameterisation)
    weights = how.scales.as_dict() if how.scales else None
    template = draw_members(member, n, 1, seed)[0].to(device=inputs.device, dtype=inputs.dtype)
    size, per_draw = how.size, bytes_per_draw(template, inputs.shape[0], inputs.element_size())
    chunk = max(1, memory_budget // per_draw)
    skip = how.gaussian[0] if how.gaussian else None
    block = functools.lru_cache(maxsize=2)(
        functools.partial(draw_block, member, n, seed, size=size, skip=skip)
    )

    @functools.lru_cache(maxsize=2)
    def block_products(b: int) -> torch.Tensor:
        assert how.first is not None and how.gaussian is not None
        generator = torch.Generator().manual_seed(derive_seed(seed, b, PRODUCTS))
        return draw_products(how.first, how.gaussian[1], inputs, size, generator)

    def spans(first: int, count: int) -> list[tuple[int, int, int]]:
        """The blocks draws ``first .. first + count - 1`` fall in, and which of each
        block's draws they are."""
        return [
            (b, max(first, b * size) - b * size, min(first + count, (b + 1) * size) - b * size)
            for b in range(first // size, (first + count - 1) // size + 1)
        ]

    def draws(first: int, count: int) -> Stacked:
        """Draws ``first .. first + count - 1``, on the inputs' device and in their dtype."""
        if not how.vectorised:
            built = draw_members(member, n, count, seed, first)
            return torch.func.stack_module_state([m.to(inputs.device, inputs.dtype) for m in built])
        parts = [(block(b), lo, hi) for b, lo, hi in spans(first, count)]

        def gathered(part: int) -> dict[str, torch.Tensor]:
            names = [k for k in parts[0][0][part] if k != how.undrawn]
            return {
                k: _like(torch.cat([drawn[part][k][lo:hi] for drawn, lo, hi in parts]), inputs)
                for k in names
            }

        return gathered(0), gathered(1)

    def products(first: int, count: int) -> torch.Tensor | None:
        if how.gaussian is None:
            return None
        return torch.cat([block_products(b)[lo:hi] for b, lo, hi in spans(first, count)])

    values = []
    for first in range(0, num_samples, chunk):
        count = min(chunk, num_samples - first)
        drawn, drawn_products = draws(first, count), products(first, count)
        kernels = kernels_of(template, drawn, inputs, readout, how.first, drawn_products, weights)
        values.append(kernels.detach())
    return torch.cat(values).to(device="cpu", dtype=torch.float64).numpy()
