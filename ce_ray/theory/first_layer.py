"""The first-layer law of any member: when its first contraction reads the raw input with a
parameter W1 (``F.linear``, or a 1x1 ``F.conv2d``), W1 enters the NTK only through its
products W1 x. Pure PyTorch; used by the generic NTK sampler (:mod:`ce_ray.theory.member_ntk`),
as ``ce_ray.theory.ntk`` uses the same law for ce-ray's own blocks.

* The gradient half: W1's share of K is ``tr(D_a G D_b^T)``, with D = dF/d(W1 x) and G the
  Gram matrix of the vectors W1 multiplies (tokens, or pixels) -- exact for any
  initialisation (:func:`law_share`); it skips W1's per-example gradient.
* The drawing half: when W1 is one of the constructor's zero-mean Gaussian draws, only scaled
  (iid N(0, s^2) entries, :func:`gaussian_first_weight`), its products are drawn from their
  exact law, each row N(0, s^2 G) (:func:`draw_products`), and W1 itself is never drawn:
  fewer numbers where there are fewer such vectors than W1's fan-in.

The layer is found by one traced forward pass (:func:`first_layer`, :class:`FirstLayerMode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ce_ray.theory.member_draws import LAW_BUILDS, Build, Member, tensors, watched_build
from ce_ray.theory.ntk import psd_sqrt_and_pinv


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


class FirstLayerMode(TorchFunctionMode):
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
    finder = FirstLayerMode(x, {id(p): k for k, p in template.named_parameters()})
    with torch.no_grad(), finder:
        template(x)
    return finder.found


def law_share(first: FirstLayer, inputs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(T,)``: W1's share of K(x_a, x_b), ``tr(D_a G D_b^T)`` from D = dF/d(W1 x)."""
    vectors = first.vectors(inputs)
    gram = vectors[0] @ vectors[-1].T
    d = first.by_vector(d)  # (T, E, k, rows)
    return torch.einsum("tir,ij,tjr->t", d[:, 0], gram, d[:, -1])


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
    before, after = tensors(build.module), tensors(rerun.module)
    scaled_u = c * u.reshape(after[weight].shape).double()
    made_from_u = torch.allclose(after[weight].double(), scaled_u, rtol=1e-5, atol=0)
    rest_unchanged = all(torch.equal(after[k], t) for k, t in before.items() if k != weight)
    return (index, abs(c) * std) if made_from_u and rest_unchanged else None


def _scaled_draw(build: Build, weight: str) -> tuple[int, float, float] | None:
    """``(index, c, std)``: the build's first zero-mean Gaussian draw v (of std ``std``) with
    ``weight = c v``; None if there is none."""
    w = tensors(build.module)[weight].flatten().double()
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


def fewer_products(first: FirstLayer, inputs: torch.Tensor) -> bool:
    """Drawing W1 x beats drawing W1 when W1 multiplies fewer vectors than its fan-in."""
    vectors = first.vectors(inputs)
    return vectors.shape[0] * vectors.shape[1] <= vectors.shape[2]
