"""Drawing initialisations of any member ``member(n)``, by its own constructor: one by one, or
a block at a time by one vectorised run of the constructor. Pure PyTorch; used by the generic
NTK sampler (:mod:`ce_ray.theory.member_ntk`).

A block (:func:`draws_per_block`: up to 256 draws, as the weights' memory allows) is drawn by
running the constructor once under ``torch.func.vmap`` (``randomness="different"``, which
batches random factories such as ``torch.randn``), every other tensor it creates made batched
too (:class:`_Constructor`), so that its in-place initialisers (``nn.init.*``) fill each draw
with its own numbers as well: one constructor call instead of one per draw, which was the
whole cost at small widths. A constructor that cannot run so (data-dependent Python, NumPy's
or Python's RNG, an op vmap lacks) is found out by comparing a block with two ordinary builds
(:func:`vectorises`), and its draws are then built one by one.

Draw i of a one-by-one call comes from ``derive_seed(seed, i)``, block b of a vectorised one
from ``derive_seed(seed, b)``; the global RNG is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ce_ray.theory.seeds import derive_seed

#: ``member(n) -> nn.Module``: a user's own member, by its width.
Member = Callable[[int], nn.Module]
#: Stacked tensors by name: ``(parameters, buffers)``, each with the draws along dim 0.
Stacked = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]

#: Most draws in one vectorised run of a constructor, and the most bytes of float32 weights
#: one block may hold (a call keeps two blocks).
MAX_DRAW_BLOCK = 256
BLOCK_BYTES = 32 * 2**20
#: Seed key of the ordinary builds a member's plan looks at (:func:`watched_builds`).
LAW_BUILDS = 0x6A55

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


def _seeded(seed: int) -> None:
    """Seed the CPU generator only (``torch.manual_seed`` would seed every device's, and
    queue a CUDA seed with a stack trace: half a millisecond a call)."""
    torch.default_generator.manual_seed(seed)


def draw_members(member: Member, n: int, count: int, seed: int, first: int = 0) -> list[nn.Module]:
    """Initialisations ``first .. first + count - 1`` of ``member(n)``, each from its own seed."""
    modules = []
    for index in range(first, first + count):
        with torch.random.fork_rng(devices=[]):
            _seeded(derive_seed(seed, index))
            modules.append(member(n).eval())
    return modules


def draws_per_block(template: nn.Module, undrawn: str = "") -> int:
    """Draws one vectorised constructor run makes: the largest power of two up to
    MAX_DRAW_BLOCK whose float32 weights (but ``undrawn``) fit in BLOCK_BYTES -- a function
    of the architecture alone, so that the draws stay a function of (seed, index)."""
    numbers = sum(t.numel() for name, t in tensors(template).items() if name != undrawn)
    fitting = max(1, BLOCK_BYTES // (4 * max(1, numbers)))
    return min(MAX_DRAW_BLOCK, 1 << (fitting.bit_length() - 1))


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name, detached."""
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {k: t.detach() for k, t in named.items()}


def _gaussian_draw(func: Any, args: tuple, kwargs: dict) -> tuple[float, float] | None:
    """``(mean, std)`` when ``func`` draws iid normal numbers: ``torch.randn(_like)``,
    ``Tensor.normal_`` (which ``nn.init.kaiming_normal_`` and ``xavier_normal_`` call) and
    ``nn.init.normal_``; None otherwise."""
    if func in (torch.randn, torch.randn_like):
        return 0.0, 1.0
    if func in (torch.Tensor.normal_, nn.init.normal_):
        mean = args[1] if len(args) > 1 else kwargs.get("mean", 0.0)
        std = args[2] if len(args) > 2 else kwargs.get("std", 1.0)
        return float(mean), float(std)
    return None


def _undrawn(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """Zeros where ``func`` (a Gaussian draw) would have drawn numbers."""
    kwargs = {k: v for k, v in kwargs.items() if k != "generator"}
    if func is torch.randn:
        return torch.zeros(*args, **kwargs)
    if func is torch.randn_like:
        return torch.zeros_like(*args, **kwargs)
    tensor = args[0] if args else kwargs["tensor"]
    with torch.no_grad():  # a parameter: never in place under autograd
        return tensor.zero_()


class _Constructor(TorchFunctionMode):
    """Watches a member's constructor.

    Counts its Gaussian draws (:func:`_gaussian_draw`) in call order. ``record``: keeps each
    one's numbers and std in :attr:`gaussian` (numbers None for a non-zero mean). ``skip``:
    the index of a draw to leave undrawn (zeros) -- the first weight's, whose products are
    drawn instead (unbatched: one copy serves the block). ``replace``: ``(index, numbers)``,
    a draw made as usual, then overwritten with ``numbers``. ``zero`` (inside vmap): a batched
    zero added to every floating tensor a non-random factory (:data:`_FACTORIES`) creates, so
    that it is batched and an in-place initialiser on it (``uniform_``, ``normal_``) draws for
    each draw separately -- vmap refuses "different" randomness in place on an unbatched
    tensor.
    """

    def __init__(
        self,
        zero: torch.Tensor | None = None,
        record: bool = False,
        skip: int | None = None,
        replace: tuple[int, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.zero, self.record, self.skip, self.replace = zero, record, skip, replace
        self.gaussian: list[tuple[torch.Tensor | None, float]] = []
        self.draws = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        law = _gaussian_draw(func, args, kwargs)
        skipped = law is not None and self.draws == self.skip
        created = _undrawn(func, args, kwargs) if skipped else func(*args, **kwargs)
        if law is not None:
            if self.replace is not None and self.draws == self.replace[0]:
                numbers = self.replace[1].to(created.dtype).reshape(created.shape)
                if func in (torch.randn, torch.randn_like):
                    created = numbers.clone()
                else:  # ``nn.init.normal_`` on a parameter: never in place under autograd
                    with torch.no_grad():
                        created = created.copy_(numbers)
            self.draws += 1
            if self.record:
                self.gaussian.append((created.detach().clone() if law[0] == 0 else None, law[1]))
        if (
            self.zero is not None
            and func in _FACTORIES
            and isinstance(created, torch.Tensor)
            and created.is_floating_point()
        ):
            return created + self.zero.to(dtype=created.dtype, device=created.device)
        return created


def draw_block(
    member: Member, n: int, seed: int, block: int, size: int, skip: int | None = None
) -> Stacked:
    """Initialisations ``block * size .. block * size + size - 1`` of ``member(n)``, from
    ``derive_seed(seed, block)``, by one vectorised run of its constructor (module docstring).
    ``skip``: the index of the constructor's Gaussian draw left undrawn (zeros)."""

    def build(zero: torch.Tensor) -> Stacked:
        with _Constructor(zero=zero, skip=skip):
            module = member(n)
        return dict(module.named_parameters()), dict(module.named_buffers())

    with torch.random.fork_rng(devices=[]):
        _seeded(derive_seed(seed, block))
        params, buffers = torch.func.vmap(build, randomness="different")(torch.zeros(size))
    return {k: v.detach() for k, v in params.items()}, {k: v.detach() for k, v in buffers.items()}


@dataclass
class Build:
    """An ordinary build of ``member(n)`` and its constructor's Gaussian draws, in call order
    (numbers and std; numbers None for a non-zero mean)."""

    module: nn.Module
    gaussian: list[tuple[torch.Tensor | None, float]]
    seed: int


def watched_build(
    member: Member, n: int, seed: int, replace: tuple[int, torch.Tensor] | None = None
) -> Build:
    """An ordinary build of ``member(n)`` from ``seed``, its Gaussian draws recorded (and
    draw ``replace[0]`` overwritten with ``replace[1]``)."""
    watch = _Constructor(record=True, replace=replace)
    with torch.random.fork_rng(devices=[]), watch:
        _seeded(seed)
        module = member(n).eval()
    return Build(module, watch.gaussian, seed)


def watched_builds(member: Member, n: int, seed: int) -> tuple[Build, Build]:
    """Two ordinary builds of ``member(n)`` (seeds derived from ``seed``), their Gaussian
    draws recorded: what :func:`vectorises`, :func:`gaussian_first_weight` and the
    first-layer law's check look at."""
    first, second = (derive_seed(seed, LAW_BUILDS, index) for index in range(2))
    return watched_build(member, n, first), watched_build(member, n, second)


def vectorises(
    block: Callable[[], Stacked], builds: tuple[Build, Build], undrawn: str = ""
) -> bool:
    """Whether the member's constructor runs under :func:`draw_block` (``block()``: the
    first block of draws) as it runs alone (``builds``): the same parameters and buffers of
    the same shapes, and a parameter that differs between the two ordinary builds differs
    between the block's first two draws (NumPy's or Python's RNG would give every draw of a
    block the same numbers). ``undrawn``: a parameter the block leaves undrawn, which must
    then be all zeros."""
    try:
        params, buffers = block()
    except Exception:  # whatever vmap cannot run: the constructor is not vectorised
        return False
    alone, other = (tensors(build.module) for build in builds)
    drawn = params | buffers
    if {k: tuple(v.shape) for k, v in alone.items()} != {
        k: tuple(v.shape[1:]) for k, v in drawn.items()
    }:
        return False
    if undrawn and drawn[undrawn].any():
        return False
    return all(
        not torch.equal(drawn[name][0], drawn[name][1])
        for name, tensor in alone.items()
        if name != undrawn and not torch.equal(tensor, other[name])
    )
