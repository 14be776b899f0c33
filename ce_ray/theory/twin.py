"""The NTK twin of a member written in PyTorch's default (standard) parameterisation. Pure
PyTorch; used by the generic NTK sampler (:mod:`ce_ray.theory.member_ntk`).

A weight initialised as ``W = s V`` -- V of unit variance, s its init scale (kaiming's
sqrt(2 / fan-in), ``nn.Linear``'s default 1 / sqrt(3 fan-in)) -- computes at initialisation
exactly what its NTK-parameterised twin computes with the parameter V and the product scaled
by s. The twin's gradient with respect to V is s times the gradient with respect to W, so its
kernel weighs each parameter's share of K by s^2:

    K_twin(x, x') = sum over parameters p of  s_p^2 <df/dW_p(x), df/dW_p(x')>

A parameter initialised to a constant (a bias at zero, a norm's scale at one) has no s: it
is its own twin (weight 1, the NTK parameterisation's bias scale beta = 1).

s_p is read from the constructor's own draws (:func:`init_scales`): the build is watched at
the ATen level, and the law of every tensor it fills is followed by its storage -- drawn
(``normal_``, ``uniform_``, ``randn``, ``rand``), filled with a constant, scaled or shifted by
a number, copied, viewed, and ``trunc_normal_``'s truncation (by rejection, as PyTorch 2.14
draws it: a ``where`` that redraws the entries an ``x < a | x > b`` mask marks; or by the
inverse error function, as earlier versions do). A parameter whose law the
watch cannot follow (``orthogonal_``, a draw transformed by anything else) gets s^2 from its
entries' mean square over two builds -- exact for ``orthogonal_``, whose entries' sum of
squares is fixed -- and is named in :attr:`InitScales.estimated`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ce_ray.theory.seeds import derive_seed

aten = torch.ops.aten

#: Seed key of the builds :func:`init_scales` watches.
SCALE_BUILDS = 0x5CA1

#: ATen operations that copy their input's numbers unchanged (a view needs no entry: it
#: shares its input's storage, and so its law).
_COPIES = {aten.clone, aten.contiguous, aten._to_copy, aten.lift_fresh, aten.reshape}


@dataclass(frozen=True)
class Law:
    """What the watch knows of a tensor's entries: their mean and standard deviation, and
    the interval that holds them (a truncated draw's bounds; infinite otherwise)."""

    mean: float
    std: float
    low: float = -math.inf
    high: float = math.inf

    def scaled(self, factor: float) -> Law:
        low, high = sorted((self.low * factor, self.high * factor))
        return Law(self.mean * factor, self.std * abs(factor), low, high)

    def shifted(self, by: float) -> Law:
        return Law(self.mean + by, self.std, self.low + by, self.high + by)


def _uniform(low: float, high: float) -> Law:
    return Law((low + high) / 2, (high - low) / math.sqrt(12), low, high)


def _truncated(law: Law, low: float, high: float) -> Law:
    """The law of a normal ``law`` truncated to [low, high]."""
    a, b = ((v - law.mean) / law.std for v in (max(low, law.low), min(high, law.high)))
    mass = 0.5 * (math.erf(b / math.sqrt(2)) - math.erf(a / math.sqrt(2)))
    density = [
        math.exp(-v * v / 2) / math.sqrt(2 * math.pi) if math.isfinite(v) else 0.0 for v in (a, b)
    ]
    edge = [v * d if math.isfinite(v) else 0.0 for v, d in zip((a, b), density, strict=True)]
    mean = (density[0] - density[1]) / mass
    variance = 1 + (edge[0] - edge[1]) / mass - mean**2
    return Law(
        law.mean + law.std * mean,
        law.std * math.sqrt(max(variance, 0.0)),
        max(low, law.low),
        min(high, law.high),
    )


def _erfinv_of_uniform(law: Law) -> Law | None:
    """The law of erfinv(U), U uniform on [p, q]: N(0, 1/2) truncated to [erfinv(p),
    erfinv(q)] (``trunc_normal_`` by the inverse CDF)."""
    if not math.isclose(law.std, (law.high - law.low) / math.sqrt(12), rel_tol=1e-9):
        return None
    p, q = (float(torch.erfinv(torch.tensor(v, dtype=torch.float64))) for v in (law.low, law.high))
    return _truncated(Law(0.0, math.sqrt(0.5)), p, q)


def _number(value: object) -> float | None:
    """A Python number, or a one-element tensor's value; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.device.type != "meta":
        return float(value.item())
    return None


def _real(value: object) -> bool:
    """A tensor with storage of its own kind (not meta, not empty)."""
    return isinstance(value, torch.Tensor) and value.device.type != "meta" and value.numel() > 0


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _whole(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers its whole storage (a fill of a slice is not the storage's law)."""
    return tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes()


class _InitLaws(TorchDispatchMode):
    """Follows the law of every tensor a constructor fills, by storage (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.laws: dict[int, Law] = {}
        #: masks of entries outside an interval: (low, high), -inf/inf for one side
        self.masks: dict[int, tuple[float, float]] = {}
        # Keeps the storages with a law (and so their keys) alive while the build runs: one
        # build's weights and the draws they were made from.
        self.kept: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        before = self._law_of(first) if first is not None else None
        result = func(*args, **kwargs)
        law = self._new_law(func, args, kwargs, before)
        if func.overloadpacket.__name__.endswith("_"):  # in place: args[0] now holds the law
            if first is not None and first.device.type != "meta":
                self._set(first, law if _whole(first) else None)
            return result
        inputs = {_key(a) for a in tree_flatten((args, kwargs))[0] if _real(a)}
        mask = self._new_mask(func.overloadpacket, args, before)
        for tensor in tree_flatten(result)[0]:
            if _real(tensor) and _key(tensor) not in inputs:  # a view keeps its storage's law
                self._set(tensor, law)
                self.masks.pop(_key(tensor), None)
                if mask is not None:
                    self.masks[_key(tensor)] = mask
        return result

    def _new_mask(self, packet: Any, args: tuple, before: Law | None) -> tuple[float, float] | None:
        """``trunc_normal_`` by rejection: ``x < a``, ``x > b`` and their ``|`` mark the
        entries outside [a, b] (which :meth:`_new_law`'s ``where`` draws again)."""
        bound = _number(args[1]) if len(args) > 1 else None
        if before is not None and bound is not None:
            if packet is aten.lt:
                return (bound, math.inf)
            if packet is aten.gt:
                return (-math.inf, bound)
        if packet is aten.bitwise_or and all(_real(a) for a in args[:2]):
            one, other = (self.masks.get(_key(a)) for a in args[:2])
            if one is not None and other is not None:
                return (max(one[0], other[0]), min(one[1], other[1]))
        return None

    def _set(self, tensor: torch.Tensor, law: Law | None) -> None:
        if law is None:
            self.laws.pop(_key(tensor), None)
        else:
            self.laws[_key(tensor)] = law
            self.kept.append(tensor)

    def _law_of(self, tensor: torch.Tensor) -> Law | None:
        return self.laws.get(_key(tensor)) if _real(tensor) else None

    def _new_law(self, func: Any, args: tuple, kwargs: dict, before: Law | None) -> Law | None:
        """The law of the result (or of ``args[0]`` after an in-place operation)."""
        packet = func.overloadpacket

        def arg(index: int, name: str, default: Any) -> Any:
            return args[index] if len(args) > index else kwargs.get(name, default)

        if packet in (aten.randn, aten.randn_like):
            return Law(0.0, 1.0)
        if packet in (aten.rand, aten.rand_like):
            return _uniform(0.0, 1.0)
        if packet is aten.normal_:
            return Law(float(arg(1, "mean", 0.0)), float(arg(2, "std", 1.0)))
        if packet is aten.uniform_:
            return _uniform(float(arg(1, "from", 0.0)), float(arg(2, "to", 1.0)))
        if packet in (
            aten.fill_,
            aten.zero_,
            aten.zeros,
            aten.ones,
            aten.full,
            aten.zeros_like,
            aten.ones_like,
            aten.full_like,
        ):
            value = 0.0 if packet in (aten.zero_, aten.zeros, aten.zeros_like) else None
            if packet in (aten.ones, aten.ones_like):
                value = 1.0
            if value is None:
                value = _number(arg(1, "fill_value", None))
            return None if value is None else Law(value, 0.0, value, value)
        if packet is aten.where and len(args) == 3 and all(_real(a) for a in args):
            outside = self.masks.get(_key(args[0]))
            fresh = self._law_of(args[1])
            if outside is not None and fresh is not None and -fresh.low == fresh.high == math.inf:
                return _truncated(fresh, *outside)  # exact once no entry is left outside
            return None
        if packet is aten.copy_:
            source = arg(1, "src", None)
            return self._law_of(source) if isinstance(source, torch.Tensor) else None
        if before is None:
            return None
        if packet in _COPIES:
            return before
        if packet is aten.erfinv_:
            return _erfinv_of_uniform(before)
        number = _number(arg(1, "other", None))
        if packet in (aten.mul, aten.mul_) and number is not None:
            return before.scaled(number)
        if packet in (aten.div, aten.div_) and number:
            return before.scaled(1 / number)
        if packet in (aten.add, aten.add_, aten.sub, aten.sub_) and number is not None:
            alpha = _number(kwargs.get("alpha", 1))
            sign = -1.0 if packet in (aten.sub, aten.sub_) else 1.0
            return None if alpha is None else before.shifted(sign * alpha * number)
        if packet is aten.neg:
            return before.scaled(-1.0)
        if packet in (aten.clamp_, aten.clamp):
            low, high = _number(arg(1, "min", None)), _number(arg(2, "max", None))
            inside = (low is None or before.low >= low - 1e-6 * abs(low)) and (
                high is None or before.high <= high + 1e-6 * abs(high)
            )
            return before if inside else None
        return None


@dataclass(frozen=True)
class InitScales:
    """Each parameter's weight in the twin's kernel, s^2 (1 for a constant-initialised one).

    Attributes:
        weights: parameter name -> s^2, in ``named_parameters()`` order.
        estimated: parameters whose law the watch could not follow: s^2 is their entries'
            mean square over two builds.
    """

    weights: tuple[tuple[str, float], ...]
    estimated: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)


def init_scales(member: Callable[[int], nn.Module], n: int, seed: int) -> InitScales:
    """s^2 of each of ``member(n)``'s parameters, from two watched builds (module
    docstring); builds from seeds derived from ``seed``, the global RNG left as it was."""
    builds = []
    for index in range(2):
        watch = _InitLaws()
        with torch.random.fork_rng(devices=[]), watch:
            torch.default_generator.manual_seed(derive_seed(seed, SCALE_BUILDS, index))
            module = member(n)
        builds.append((module, watch))
    (first, watch), (second, _) = builds
    others = dict(second.named_parameters())
    weights, estimated = [], []
    for name, parameter in first.named_parameters():
        law = watch.laws.get(_key(parameter)) if parameter.numel() else None
        if law is None:
            pair = torch.cat([parameter.detach().flatten(), others[name].detach().flatten()])
            mean_square = float(pair.double().square().mean()) if pair.numel() else 1.0
            estimated.append(name)
            weights.append((name, mean_square if mean_square > 0 else 1.0))
        else:
            weights.append((name, law.std**2 if law.std > 0 else 1.0))
    return InitScales(tuple(weights), tuple(estimated))
