"""Monte-Carlo NTK entries of any member ``member(n)``: Algorithm 1 for a user's own block.
Pure PyTorch.

One sample is ``K(x_a, x_b) = <grad_theta f(x_a), grad_theta f(x_b)>`` for a fresh
initialisation theta of ``member(n)`` -- the member's OWN initialisation (its constructor's
code), so that a block in PyTorch's default (standard) parameterisation is sampled as it
would train. The initialisations are drawn DRAW_BLOCK at a time by running the constructor
once under ``torch.func.vmap`` (``randomness="different"``, which batches random factories
such as ``torch.randn``), every other tensor it creates made batched too
(:class:`_EveryDrawItsOwnTensors`), so that its in-place initialisers (``nn.init.*``) fill
each draw with its own numbers as well: one
constructor call instead of one per draw, which was the whole cost at small widths. A
constructor that cannot run so (data-dependent Python, NumPy's or Python's RNG, an op vmap
lacks) is found out by comparing the block with two ordinary builds, and its draws are built
one by one instead.
The per-example gradients of a chunk of draws come from one program:
``vmap_T(vmap_B(grad(f)))`` over ``torch.func.functional_call``.

The member's output becomes one scalar per example as ``ce_ray.theory.ntk.scalar_readout``
does for the built-in blocks: output 0 of a ``(B, C)`` output; channel 0 of ``(B, C, H, W)``
pooled (sum / sqrt(H W)) or at the centre pixel; feature 0 of a ``(B, T, F)`` sequence pooled
over the T tokens (sum / sqrt(T)) or at the middle token.

Block b of a call draws from the seed ``derive_seed(seed, b)`` (one by one: draw i from
``derive_seed(seed, i)``), so a shard (its seed derived from the experiment seed, the width and
the shard) gives the same samples on any machine, however its memory budget chunks it; the
global RNG is left as it was.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ce_ray.choices import READOUTS, Readout, check_choice
from ce_ray.theory.ntk import scalar_readout
from ce_ray.theory.seeds import derive_seed

Member = Callable[[int], nn.Module]
#: Stacked tensors by name: ``(parameters, buffers)``, each with the draws along dim 0.
Stacked = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]

#: Initialisations built by one vectorised run of the member's constructor. Their weights are
#: held at once (1/8 of what ``bytes_per_draw`` budgets for a draw in a chunk).
DRAW_BLOCK = 32

#: The functions and methods a constructor creates tensors with, but for the random ones
#: (``torch.randn``, ``torch.rand``...): vmap's "different" randomness batches those itself.
_FACTORIES = frozenset(
    {
        torch.empty,
        torch.zeros,
        torch.ones,
        torch.full,
        torch.eye,
        torch.tensor,
        torch.empty_like,
        torch.zeros_like,
        torch.ones_like,
        torch.full_like,
        torch.Tensor.new_empty,
        torch.Tensor.new_zeros,
        torch.Tensor.new_ones,
        torch.Tensor.new_full,
        torch.Tensor.new_tensor,
    }
)


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
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed standard-normal inputs of ``input_shape``, determined by ``seed``: 1 input, or 2
    off-diagonal (as ``ce_ray.theory.ntk.ntk_inputs`` draws a convolutional block's)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x1A7))
    count = 2 if off_diagonal else 1
    x = torch.randn((count, *input_shape), generator=generator, dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def draw_members(member: Member, n: int, count: int, seed: int, first: int = 0) -> list[nn.Module]:
    """Initialisations ``first .. first + count - 1`` of ``member(n)``, each from its own seed."""
    modules = []
    for index in range(first, first + count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, index))
            modules.append(member(n).eval())
    return modules


class _EveryDrawItsOwnTensors(TorchFunctionMode):
    """Inside ``vmap``: every floating tensor a constructor creates by a non-random factory
    (:data:`_FACTORIES`) gets a batched zero added, so that it is batched, and an in-place
    initialiser on it (``uniform_``, ``normal_``) draws for each draw separately -- vmap
    refuses "different" randomness in place on an unbatched tensor."""

    def __init__(self, zero: torch.Tensor):
        super().__init__()
        self.zero = zero

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        created = func(*args, **(kwargs or {}))
        if func in _FACTORIES and isinstance(created, torch.Tensor) and created.is_floating_point():
            return created + self.zero.to(dtype=created.dtype, device=created.device)
        return created


def draw_block(member: Member, n: int, seed: int, block: int) -> Stacked:
    """Initialisations ``block * DRAW_BLOCK ..`` of ``member(n)``, from ``derive_seed(seed,
    block)``, by one vectorised run of its constructor (module docstring)."""

    def build(zero: torch.Tensor) -> Stacked:
        with _EveryDrawItsOwnTensors(zero):
            module = member(n)
        return dict(module.named_parameters()), dict(module.named_buffers())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, block))
        params, buffers = torch.func.vmap(build, randomness="different")(torch.zeros(DRAW_BLOCK))
    return {k: v.detach() for k, v in params.items()}, {k: v.detach() for k, v in buffers.items()}


def vectorises(
    member: Member, n: int, seed: int, block: Callable[[int], Stacked] | None = None
) -> bool:
    """Whether ``member(n)``'s constructor runs under :func:`draw_block` as it runs alone:
    the same parameters and buffers of the same shapes, and a parameter that differs between
    two ordinary builds differs between the block's first two draws (NumPy's or Python's RNG
    would give every draw of a block the same numbers). ``block(b)``: the caller's
    ``draw_block`` of this member, width and seed, to draw block 0 once."""
    try:
        params, buffers = block(0) if block else draw_block(member, n, seed, 0)
    except Exception:  # whatever vmap cannot run: the constructor is not vectorised
        return False
    first, second = draw_members(member, n, 2, derive_seed(seed, 0x0DD))
    alone = {**dict(first.named_parameters()), **dict(first.named_buffers())}
    other = {**dict(second.named_parameters()), **dict(second.named_buffers())}
    drawn = params | buffers
    if {k: tuple(v.shape) for k, v in alone.items()} != {
        k: tuple(v.shape[1:]) for k, v in drawn.items()
    }:
        return False
    return all(
        not torch.equal(drawn[name][0], drawn[name][1])
        for name, tensor in alone.items()
        if not torch.equal(tensor, other[name])
    )


def stacked_kernels(
    modules: list[nn.Module], inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of each module (``inputs`` holds x_a, or x_a and x_b).

    The modules share one architecture; their parameters are stacked and every module's
    per-example gradients come from one vectorised program.
    """
    return kernels_of(modules[0], torch.func.stack_module_state(modules), inputs, readout)


class _FirstLinear(TorchFunctionMode):
    """Finds (``probe`` None) or probes the first ``F.linear`` that reads the raw input
    ``x`` with a parameter: probing adds ``probe`` (zeros) to its output, so that the gradient
    with respect to ``probe`` is dF/d(W1 x)."""

    def __init__(self, x: torch.Tensor, weights: dict[int, str], probe: torch.Tensor | None):
        super().__init__()
        self.x, self.weights, self.probe = x, weights, probe
        self.found: tuple[str, tuple[int, ...]] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear and self.found is None:
            x = kwargs.get("input", args[0] if args else None)
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            if x is self.x and id(weight) in self.weights:
                self.found = (self.weights[id(weight)], tuple(out.shape))
                if self.probe is not None:
                    return out + self.probe
        return out


def first_linear(template: nn.Module, inputs: torch.Tensor) -> tuple[str, tuple[int, ...]] | None:
    """The parameter of the first ``F.linear`` that reads one raw example, and its output's
    shape; None when the member begins otherwise (a convolution, a norm, an embedding)."""
    x = inputs[:1]
    finder = _FirstLinear(x, {id(p): k for k, p in template.named_parameters()}, None)
    with torch.no_grad(), finder:
        template(x)
    return finder.found


def kernels_of(
    template: nn.Module,
    stacked: Stacked,
    inputs: torch.Tensor,
    readout: Readout = "pool",
    first: tuple[str, tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of ``template`` with each of the T stacked parameter sets.

    ``first`` (:func:`first_linear`): the parameter W1 of a first layer that reads the raw
    input, and its output's shape. Its share of K is then taken from its output's gradient D
    (``tr(D_a G D_b^T)``, G the inputs' token Gram matrix) instead of W1's own per-example
    gradient, which for a wide input is most of the work -- the gradient half of the built-in
    sampler's first-layer law (``ce_ray.theory.ntk``), exact for any initialisation.
    """
    if inputs.shape[0] not in (1, 2):
        raise ValueError(f"inputs must hold 1 or 2 examples; got {inputs.shape[0]}")
    params, buffers = stacked
    draws = len(next(iter(params.values())))
    kernel = torch.zeros(draws, dtype=inputs.dtype, device=inputs.device)
    weight = first[0] if first else ""
    rest = {k: v for k, v in params.items() if k != weight}
    probe = torch.zeros(first[1] if first else (), dtype=inputs.dtype, device=inputs.device)

    def output(p: dict, w: dict, b: dict, x: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        example = x.unsqueeze(0)
        if not weight:
            out = torch.func.functional_call(template, (p | w, b), (example,))
        else:
            with _FirstLinear(example, {id(w[weight]): weight}, zero):
                out = torch.func.functional_call(template, (p | w, b), (example,))
        return member_readout(out, readout)[0]

    gradient = torch.func.grad(output, argnums=(0, 4))
    per_example = torch.func.vmap(gradient, in_dims=(None, None, None, 0, None))
    first_weight = {weight: params[weight]} if weight else {}
    grads, d = torch.func.vmap(per_example, in_dims=(0, 0, 0, None, None))(
        rest, first_weight, buffers, inputs, probe
    )
    for g in grads.values():
        kernel = kernel + (g[:, 0] * g[:, -1]).flatten(1).sum(dim=1)
    if weight:
        tokens = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])  # (E, tokens, fan-in)
        gram = tokens[0] @ tokens[-1].T
        d = d.reshape(draws, inputs.shape[0], -1, d.shape[-1])  # (T, E, tokens, rows)
        kernel = kernel + torch.einsum("tir,ij,tjr->t", d[:, 0], gram, d[:, -1])
    return kernel


def bytes_per_draw(module: nn.Module, inputs: int, dtype_bytes: int = 4) -> int:
    """Upper estimate of one draw's memory in a chunk: its weights, their stacked copy and a
    gradient per input, times two for autograd's saved tensors."""
    params = sum(p.numel() for p in module.parameters())
    return dtype_bytes * params * 2 * (2 + inputs)


def sample_member_ntk(
    member: Member,
    n: int,
    num_samples: int,
    seed: int,
    inputs: torch.Tensor,
    memory_budget: int = 256 * 2**20,
    readout: Readout = "pool",
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
    """
    check_choice("readout", readout, READOUTS)
    probe = draw_members(member, n, 1, seed)[0]
    chunk = max(1, memory_budget // bytes_per_draw(probe, inputs.shape[0], inputs.element_size()))
    template = probe.to(device=inputs.device, dtype=inputs.dtype)
    block = functools.lru_cache(maxsize=2)(functools.partial(draw_block, member, n, seed))
    vectorised = vectorises(member, n, seed, block)

    def draws(first: int, count: int) -> Stacked:
        """Draws ``first .. first + count - 1``, on the inputs' device and in their dtype."""
        if not vectorised:
            return torch.func.stack_module_state(
                [
                    m.to(device=inputs.device, dtype=inputs.dtype)
                    for m in draw_members(member, n, count, seed, first)
                ]
            )
        # The blocks the draws fall in, and which of each block's draws they are.
        spans = [
            (
                block(b),
                max(first, b * DRAW_BLOCK) - b * DRAW_BLOCK,
                min(first + count, (b + 1) * DRAW_BLOCK) - b * DRAW_BLOCK,
            )
            for b in range(first // DRAW_BLOCK, (first + count - 1) // DRAW_BLOCK + 1)
        ]

        def gathered(part: int) -> dict[str, torch.Tensor]:
            names = spans[0][0][part]
            return {
                name: _like(torch.cat([drawn[part][name][lo:hi] for drawn, lo, hi in spans]))
                for name in names
            }

        return gathered(0), gathered(1)

    def _like(tensor: torch.Tensor) -> torch.Tensor:
        dtype = inputs.dtype if tensor.is_floating_point() else tensor.dtype
        return tensor.to(device=inputs.device, dtype=dtype)

    law = first_layer_law(template, draws(0, min(2, num_samples)), inputs, readout)
    values = []
    for first in range(0, num_samples, chunk):
        count = min(chunk, num_samples - first)
        values.append(kernels_of(template, draws(first, count), inputs, readout, law).detach())
    return torch.cat(values).to(device="cpu", dtype=torch.float64).numpy()


def first_layer_law(
    template: nn.Module, stacked: Stacked, inputs: torch.Tensor, readout: Readout
) -> tuple[str, tuple[int, ...]] | None:
    """:func:`first_linear`, if the law it allows gives these draws' kernels as autograd
    does (to float rounding): a first weight read again later (tied, or in a norm) would make
    its share more than ``tr(D_a G D_b^T)``, and the law is then not used."""
    found = first_linear(template, inputs)
    if found is None:
        return None
    with_law = kernels_of(template, stacked, inputs, readout, found)
    plain = kernels_of(template, stacked, inputs, readout)
    tolerance = 1e-4 if inputs.dtype != torch.float64 else 1e-10
    return found if torch.allclose(with_law, plain, rtol=tolerance, atol=0) else None
