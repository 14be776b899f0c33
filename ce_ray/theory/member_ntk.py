"""Monte-Carlo NTK entries of any member ``member(n)``: Algorithm 1 for a user's own block.
Pure PyTorch.

One sample is ``K(x_a, x_b) = <grad_theta f(x_a), grad_theta f(x_b)>`` for a fresh
initialisation theta of ``member(n)`` -- the member's OWN initialisation (its constructor's
code), so that a block in PyTorch's default (standard) parameterisation is sampled as it
would train.

Drawing. The initialisations are drawn a block at a time (:func:`draws_per_block`: up to 256,
as the weights' memory allows) by running the constructor once under ``torch.func.vmap``
(``randomness="different"``, which batches random factories such as ``torch.randn``), every
other tensor it creates made batched too (:class:`_Constructor`), so that its in-place
initialisers (``nn.init.*``) fill each draw with its own numbers as well: one constructor call
instead of one per draw, which was the whole cost at small widths. A constructor that cannot
run so (data-dependent Python, NumPy's or Python's RNG, an op vmap lacks) is found out by
comparing the block with two ordinary builds, and its draws are built one by one instead.

Kernels. The per-example gradients of a chunk of draws come from one program,
``vmap_T(vmap_B(grad(f)))`` over ``torch.func.functional_call``.

The first-layer law (the built-in sampler's, ``ce_ray.theory.ntk``), found by one traced
forward pass: when the member's first contraction reads the raw input with a parameter W1
(``F.linear``, or a 1x1 ``F.conv2d``), W1 enters K only through its products W1 x, so

* its share of K is ``tr(D_a G D_b^T)``, with D = dF/d(W1 x) and G the Gram matrix of the
  vectors W1 multiplies (tokens, or pixels) -- exact for any initialisation, checked against
  autograd on two draws each call; it skips W1's per-example gradient;
* when W1 is one of the constructor's zero-mean Gaussian draws, only scaled (iid N(0, s^2)
  entries, :func:`gaussian_first_weight`), its products are drawn from their exact law,
  each row N(0, s^2 G), and W1 itself is never drawn: fewer numbers where there are fewer
  such vectors than W1's fan-in.

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

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ce_ray.choices import READOUTS, Readout, check_choice
from ce_ray.theory.ntk import psd_sqrt_and_pinv, scalar_readout
from ce_ray.theory.seeds import derive_seed

Member = Callable[[int], nn.Module]
#: Stacked tensors by name: ``(parameters, buffers)``, each with the draws along dim 0.
Stacked = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]

#: Most draws in one vectorised run of a constructor, and the most bytes of float32 weights
#: one block may hold (a call keeps two blocks).
MAX_DRAW_BLOCK = 256
BLOCK_BYTES = 32 * 2**20
#: Seed key of a block's first-layer products, and of the builds that find W1's law.
PRODUCTS, LAW_BUILDS = 0x9D0D, 0x6A55
#: The seed a :class:`Plan`'s checks draw from: a plan is the architecture's, not a shard's.
PLAN_SEED = 0x91A4

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
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed standard-normal inputs of ``input_shape``, determined by ``seed``: 1 input, or 2
    off-diagonal (as ``ce_ray.theory.ntk.ntk_inputs`` draws a convolutional block's); float32
    unless ``dtype``."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 0x1A7))
    count = 2 if off_diagonal else 1
    x = torch.randn((count, *input_shape), generator=generator, dtype=torch.float64)
    return x.to(device=device, dtype=dtype or torch.float32)


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
    numbers = sum(t.numel() for name, t in _tensors(template).items() if name != undrawn)
    fitting = max(1, BLOCK_BYTES // (4 * max(1, numbers)))
    return min(MAX_DRAW_BLOCK, 1 << (fitting.bit_length() - 1))


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
                in_place = func not in (torch.randn, torch.randn_like)
                created = created.copy_(numbers) if in_place else numbers.clone()
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
    alone, other = (_tensors(build.module) for build in builds)
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


def stacked_kernels(
    modules: list[nn.Module], inputs: torch.Tensor, readout: Readout = "pool"
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of each module (``inputs`` holds x_a, or x_a and x_b).

    The modules share one architecture; their parameters are stacked and every module's
    per-example gradients come from one vectorised program.
    """
    return kernels_of(modules[0], torch.func.stack_module_state(modules), inputs, readout)


@dataclass(frozen=True)
class FirstLayer:
    """A member's first contraction when it reads the raw input with a parameter W1:
    ``F.linear`` (features last) or a 1x1 ``F.conv2d`` (stride 1, no padding, one group;
    channels on dim 1). W1 multiplies vectors of the input -- its tokens, or its pixels.

    Attributes:
        weight: W1's parameter name.
        shape: the layer's output for one example (batch dim 1 included).
        conv: a 1x1 convolution rather than a linear layer.
    """

    weight: str
    shape: tuple[int, ...]
    conv: bool

    @property
    def rows(self) -> int:
        """W1's output features (channels)."""
        return self.shape[1] if self.conv else self.shape[-1]

    def vectors(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(E, k, fan-in)``: the k vectors W1 multiplies in each of the E inputs."""
        if self.conv:
            return inputs.flatten(2).transpose(1, 2)
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])

    def by_vector(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(T, E, *shape)`` outputs (or their gradients) as ``(T, E, k, rows)``."""
        t, e = outputs.shape[:2]
        if self.conv:
            return outputs.reshape(t, e, self.rows, -1).transpose(-1, -2)
        return outputs.reshape(t, e, -1, self.rows)

    def from_vectors(self, products: torch.Tensor) -> torch.Tensor:
        """``(T, E, k, rows)`` products as the layer's outputs, ``(T, E, *shape)``."""
        t, e = products.shape[:2]
        if self.conv:
            products = products.transpose(-1, -2)
        return products.reshape(t, e, *self.shape)


def _first_layer_call(
    func: Any, args: tuple, kwargs: dict
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, bool] | None:
    """``(input, weight, bias, conv)`` of an ``F.linear`` or a 1x1 ``F.conv2d`` call (stride
    1, no padding, one group); None for any other call."""

    def arg(index: int, name: str, default: Any = None) -> Any:
        return args[index] if len(args) > index else kwargs.get(name, default)

    if func is F.linear:
        return arg(0, "input"), arg(1, "weight"), arg(2, "bias"), False
    if func is F.conv2d:
        weight = arg(1, "weight")
        if (
            isinstance(weight, torch.Tensor)
            and tuple(weight.shape[2:]) == (1, 1)
            and arg(3, "stride", 1) in (1, (1, 1), [1, 1])
            and arg(4, "padding", 0) in (0, (0, 0), [0, 0], "valid")
            and arg(6, "groups", 1) == 1
        ):
            return arg(0, "input"), weight, arg(2, "bias"), True
    return None


class _FirstLayerMode(TorchFunctionMode):
    """Finds (``probe`` None) or probes the first layer (:class:`FirstLayer`) that reads the
    raw input ``x`` with one of ``weights`` (id -> name): probing adds ``probe`` (zeros) to
    its output, so that the gradient with respect to ``probe`` is dF/d(W1 x); ``product``
    replaces W1 x (drawn from its law; W1 is then not multiplied)."""

    def __init__(
        self,
        x: torch.Tensor,
        weights: dict[int, str],
        probe: torch.Tensor | None = None,
        product: torch.Tensor | None = None,
    ):
        super().__init__()
        self.x, self.weights, self.probe, self.product = x, weights, probe, product
        self.found: FirstLayer | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        call = _first_layer_call(func, args, kwargs) if self.found is None else None
        if call is None or call[0] is not self.x or id(call[1]) not in self.weights:
            return func(*args, **kwargs)
        _, weight, bias, conv = call
        if self.product is None:
            out = func(*args, **kwargs)
        else:
            out = self.product
            if bias is not None:
                out = out + (bias[:, None, None] if conv else bias)
        self.found = FirstLayer(self.weights[id(weight)], tuple(out.shape), conv)
        return out if self.probe is None else out + self.probe


def first_layer(template: nn.Module, inputs: torch.Tensor) -> FirstLayer | None:
    """The member's first layer that reads one raw example with a parameter; None when the
    member begins otherwise (a 3x3 convolution, a norm, an embedding)."""
    x = inputs[:1]
    finder = _FirstLayerMode(x, {id(p): k for k, p in template.named_parameters()})
    with torch.no_grad(), finder:
        template(x)
    return finder.found


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
            with _FirstLayerMode(example, {id(named): weight}, zero, product):
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


def _law_share(first: FirstLayer, inputs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(T,)``: W1's share of K(x_a, x_b), ``tr(D_a G D_b^T)`` from D = dF/d(W1 x)."""
    vectors = first.vectors(inputs)
    gram = vectors[0] @ vectors[-1].T
    d = first.by_vector(d)  # (T, E, k, rows)
    return torch.einsum("tir,ij,tjr->t", d[:, 0], gram, d[:, -1])


def kernels_of(
    template: nn.Module,
    stacked: Stacked,
    inputs: torch.Tensor,
    readout: Readout = "pool",
    first: FirstLayer | None = None,
    products: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(T,)``: K(x_a, x_b) of ``template`` with each of the T stacked parameter sets.

    ``first`` (:func:`first_layer`): W1's share of K is then taken from its output's gradient
    D (``tr(D_a G D_b^T)``, G the Gram matrix of the vectors W1 multiplies) instead of W1's
    own per-example gradient, which for a wide input is most of the work -- exact for any
    initialisation. ``products``: ``(T, E, *first.shape)``, each draw's W1 x, used instead of
    multiplying by W1 (which ``stacked`` then need not hold).
    """
    if inputs.shape[0] not in (1, 2):
        raise ValueError(f"inputs must hold 1 or 2 examples; got {inputs.shape[0]}")
    params, buffers = stacked
    weight = first.weight if first else ""
    rest = {k: v for k, v in params.items() if k != weight}
    first_weight = {weight: params[weight]} if first and products is None else {}
    grads, d = _gradients(template, rest, first_weight, buffers, inputs, readout, first, products)
    draws = len(products) if products is not None else len(next(iter(params.values())))
    kernel = torch.zeros(draws, dtype=inputs.dtype, device=inputs.device)
    for g in grads.values():
        kernel = kernel + _share(g)
    if first:
        kernel = kernel + _law_share(first, inputs, d)
    return kernel


def draw_products(
    first: FirstLayer, std: float, inputs: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``(count, E, *first.shape)``: draws of W1 x for W1 with iid N(0, std^2) entries. Each
    row of W1 gives its products with the E k vectors jointly N(0, std^2 G), G their Gram
    matrix: E k numbers a row instead of fan-in many."""
    vectors = first.vectors(inputs).flatten(0, 1)  # (E k, fan-in)
    root, _ = psd_sqrt_and_pinv(vectors @ vectors.T)
    z = torch.randn(
        count, first.rows, vectors.shape[0], generator=generator, dtype=inputs.dtype
    ).to(inputs.device)
    products = (z @ root) * std  # (count, rows, E k)
    return first.from_vectors(
        products.reshape(count, first.rows, inputs.shape[0], -1).movedim(1, -1)
    )


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
    by_law, by_autograd = _law_share(found, inputs, d), _share(grads[found.weight])
    tolerance = 1e-4 if inputs.dtype != torch.float64 else 1e-10
    return found if torch.allclose(by_law, by_autograd, rtol=tolerance, atol=0) else None


def gaussian_first_weight(
    member: Member, n: int, build: Build, weight: str
) -> tuple[int, float] | None:
    """``(index, std)`` when ``member(n)``'s parameter ``weight`` is its constructor's
    Gaussian draw ``index`` only scaled, and made from it alone: in ``build``, ``weight = c v``
    with v a zero-mean normal draw; in its rerun with v replaced by other numbers u, ``weight
    = c u`` (so c does not depend on v, as ``v / |v|``'s would) and every other parameter and
    buffer is as it was (none was made from v). Its entries are then iid N(0, std^2),
    independent of the rest, and its products can be drawn from their law
    (:func:`draw_products`) instead of it."""
    found = _scaled_draw(build, weight)
    if found is None:
        return None
    index, c, std = found
    v = build.gaussian[index][0]
    assert v is not None
    u = torch.randn(v.shape, generator=torch.Generator().manual_seed(LAW_BUILDS), dtype=v.dtype)
    rerun = watched_build(member, n, build.seed, replace=(index, u))
    before, after = _tensors(build.module), _tensors(rerun.module)
    scaled_u = c * u.reshape(after[weight].shape).double()
    made_from_u = torch.allclose(after[weight].double(), scaled_u, rtol=1e-5, atol=0)
    rest_unchanged = all(torch.equal(after[k], t) for k, t in before.items() if k != weight)
    return (index, abs(c) * std) if made_from_u and rest_unchanged else None


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name, detached."""
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {k: t.detach() for k, t in named.items()}


def _scaled_draw(build: Build, weight: str) -> tuple[int, float, float] | None:
    """``(index, c, std)``: the build's first zero-mean Gaussian draw v (of std ``std``) with
    ``weight = c v``; None if there is none."""
    w = _tensors(build.module)[weight].flatten().double()
    if not w.any():
        return None
    for index, (v, std) in enumerate(build.gaussian):
        if v is None or v.numel() != w.numel():
            continue
        v = v.flatten().double()
        c = float(w @ v / (v @ v))
        if torch.allclose(w, c * v, rtol=1e-5, atol=1e-6 * float(w.abs().max())):
            return index, c, std
    return None


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
    """

    size: int
    vectorised: bool
    first: FirstLayer | None
    gaussian: tuple[int, float] | None

    @property
    def undrawn(self) -> str:
        """W1's name when its products are drawn: the blocks hold zeros for it."""
        return self.first.weight if self.first and self.gaussian else ""


def plan(member: Member, n: int, seed: int, inputs: torch.Tensor, readout: Readout) -> Plan:
    """Find how to draw ``member(n)`` (:class:`Plan`) from two watched builds and a block
    drawn from seeds derived from ``seed``."""
    builds = watched_builds(member, n, seed)
    params, buffers = torch.func.stack_module_state([build.module for build in builds])
    stacked = (
        {k: _like(v, inputs) for k, v in params.items()},
        {k: _like(v, inputs) for k, v in buffers.items()},
    )
    template = copy.deepcopy(builds[0].module).to(device=inputs.device, dtype=inputs.dtype)
    first = first_layer_law(template, stacked, inputs, readout)
    gaussian = None
    if first is not None and _fewer_products(first, inputs):
        gaussian = gaussian_first_weight(member, n, builds[0], first.weight)
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


def cached_plan(member: Member, n: int, inputs: torch.Tensor, readout: Readout) -> Plan:
    """:func:`plan`, drawn from PLAN_SEED, once per process for each member, width, inputs'
    shape, dtype and device and read-out (a member that cannot be hashed: every call)."""
    key = (member, n, tuple(inputs.shape), inputs.dtype, str(inputs.device), readout)
    try:
        found = _PLANS.get(key)
    except TypeError:  # an unhashable callable
        return plan(member, n, PLAN_SEED, inputs, readout)
    if found is None:
        if len(_PLANS) >= MAX_PLANS:
            del _PLANS[next(iter(_PLANS))]
        found = _PLANS[key] = plan(member, n, PLAN_SEED, inputs, readout)
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
    how = cached_plan(member, n, inputs, readout)
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
        drawn = draws(first, count)
        kernels = kernels_of(template, drawn, inputs, readout, how.first, products(first, count))
        values.append(kernels.detach())
    return torch.cat(values).to(device="cpu", dtype=torch.float64).numpy()


def _fewer_products(first: FirstLayer, inputs: torch.Tensor) -> bool:
    """Drawing W1 x beats drawing W1 when W1 multiplies fewer vectors than its fan-in."""
    vectors = first.vectors(inputs)
    return vectors.shape[0] * vectors.shape[1] <= vectors.shape[2]
