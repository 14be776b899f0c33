"""Monte-Carlo NTK entries of any member ``member(n)``: Algorithm 1 for a user's own block.
Pure PyTorch.

One sample is ``K(x_a, x_b) = <grad_theta f(x_a), grad_theta f(x_b)>`` for a fresh
initialisation theta of ``member(n)`` -- the member's OWN initialisation (its constructor's
code), so that a block in PyTorch's default (standard) parameterisation is sampled as it
would train. A chunk of T initialisations is stacked (``torch.func.stack_module_state``) and
the per-example gradients of all of them come from one program:
``vmap_T(vmap_B(grad(f)))`` over ``torch.func.functional_call``.

The member's output becomes one scalar per example as ``ce_ray.theory.ntk.scalar_readout``
does for the built-in blocks: output 0 of a ``(B, C)`` output; channel 0 of ``(B, C, H, W)``
pooled (sum / sqrt(H W)) or at the centre pixel; feature 0 of a ``(B, T, F)`` sequence pooled
over the T tokens (sum / sqrt(T)) or at the middle token.

Draw i of a call uses the seed ``derive_seed(seed, i)``, so a shard (its seed derived from the
experiment seed, the width and the shard) gives the same samples on any machine, however it is
chunked; the global RNG is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ce_ray.choices import READOUTS, Readout, check_choice
from ce_ray.theory.ntk import scalar_readout
from ce_ray.theory.seeds import derive_seed

Member = Callable[[int], nn.Module]


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


def stacked_kernels(
    modules: list[nn.Module], inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of each module (``inputs`` holds x_a, or x_a and x_b).

    The modules share one architecture; their parameters are stacked and every module's
    per-example gradients come from one vectorised program.
    """
    if inputs.shape[0] not in (1, 2):
        raise ValueError(f"inputs must hold 1 or 2 examples; got {inputs.shape[0]}")
    params, buffers = torch.func.stack_module_state(modules)
    template = modules[0]

    def output(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(template, (p, b), (x.unsqueeze(0),))
        return member_readout(out, readout)[0]

    per_example = torch.func.vmap(torch.func.grad(output), in_dims=(None, None, 0))
    grads = torch.func.vmap(per_example, in_dims=(0, 0, None))(params, buffers, inputs)
    kernel = torch.zeros(len(modules), dtype=inputs.dtype, device=inputs.device)
    for g in grads.values():
        kernel = kernel + (g[:, 0] * g[:, -1]).flatten(1).sum(dim=1)
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
    values = []
    for first in range(0, num_samples, chunk):
        count = min(chunk, num_samples - first)
        modules = [
            m.to(device=inputs.device, dtype=inputs.dtype)
            for m in draw_members(member, n, count, seed, first)
        ]
        values.append(stacked_kernels(modules, inputs, readout).detach())
    return torch.cat(values).to(device="cpu", dtype=torch.float64).numpy()
