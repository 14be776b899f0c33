"""Sizes of any PyTorch module, found by building it and tracing one forward pass.

For a block the user writes, ce-ray needs what the built-in spaces give in closed form:
the number of parameters, the multiply-accumulates per example and

    S(n) = sum over the contractions c that read a parameter of 1 / fan_in(c)       (Eq. 9)

where a contraction is a linear map applied to the activations -- ``F.linear``, a
convolution, ``matmul``/``mm``/``bmm`` -- and its fan-in is the length of the sum it takes:
``in_features`` for a linear layer, ``k * k * in_channels / groups`` for a convolution, the
contracted dimension for a matrix product. Parameters are followed through views, transposes,
reshapes and scalings (``x @ W.t() * c`` reads ``W``); products of two activations
(attention's ``Q K^T`` and ``softmax(.) V``) read no parameter and so add nothing.
Parameters that enter no contraction (norm scales, biases, embeddings) are listed and left
out of S(n).

The module is built and run on PyTorch's ``meta`` device: shapes only, no memory for the
weights and no arithmetic, so tracing a ResNeXt-101 takes well under a second.

>>> from ce_ray.theory.spaces import FCSpace
>>> found = trace(FCSpace(input_dim=64, depth=4).build(1, 32), (64,))
>>> found.num_params == FCSpace(input_dim=64, depth=4).num_params(1, 32)
True
>>> [(c.parameter, c.fan_in) for c in found.contractions]
[('input_weight', 64), ('hidden_weights.0', 32), ('hidden_weights.1', 32), ('readout_weight', 32)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

#: Contractions: function -> (index of the operand read from the left, of the right one).
_MATRIX_PRODUCTS: set[Callable[..., Any]] = {
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.Tensor.matmul,
    torch.Tensor.mm,
    torch.Tensor.bmm,
    torch.Tensor.__matmul__,
}
_CONVOLUTIONS: set[Callable[..., Any]] = {F.conv1d, F.conv2d, F.conv3d}
#: Functions whose result is the same parameter seen differently (a view, a copy, a scaling).
_SAME_PARAMETER: set[str] = {
    "t",
    "T",
    "mT",
    "transpose",
    "permute",
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "expand",
    "contiguous",
    "__getitem__",
    "narrow",
    "select",
    "to",
    "float",
    "double",
    "half",
    "bfloat16",
    "clone",
    "detach",
    "mul",
    "__mul__",
    "__rmul__",
    "div",
    "__truediv__",
    "neg",
    "__neg__",
    "chunk",
    "split",
    "unbind",
}


@dataclass(frozen=True)
class Contraction:
    """One linear map a forward pass applied to its activations with a parameter."""

    parameter: str  # the parameter's name in ``module.named_parameters()``
    operation: str  # linear | conv1d | conv2d | conv3d | matmul | mm | bmm
    fan_in: int  # the length of the sum it takes per output


@dataclass(frozen=True)
class Trace:
    """What one forward pass of a module on one example showed."""

    parameters: dict[str, tuple[int, ...]]  # name -> shape, in ``named_parameters()`` order
    contractions: tuple[Contraction, ...]  # in the order the forward pass ran them
    macs: int  # multiply-accumulates per example (torch.utils.flop_counter: 2 FLOPs each)

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in self.parameters.values())

    @property
    def fan_in_sum(self) -> float:
        """S of Eq. 9: the sum of 1 / fan-in over the contractions."""
        return math.fsum(1.0 / c.fan_in for c in self.contractions)

    @property
    def outside_contractions(self) -> list[str]:
        """Parameters no contraction read (biases, norm scales, embeddings): not in S."""
        read = {c.parameter for c in self.contractions}
        return [name for name in self.parameters if name not in read]


class _ParameterReads(TorchFunctionMode):
    """Records each contraction that reads a parameter, following parameters through views."""

    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.source: dict[int, str] = dict(names)  # id(tensor) -> parameter it shows
        self.kept: list[torch.Tensor] = []  # keeps ids unique while the pass runs
        self.contractions: list[Contraction] = []

    def _parameter(self, value: object) -> str | None:
        return self.source.get(id(value)) if isinstance(value, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is F.linear:
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            self._read(weight, "linear", int(weight.shape[-1]))
        elif func in _CONVOLUTIONS:
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            self._read(weight, func.__name__, math.prod(int(d) for d in weight.shape[1:]))
        elif func in _MATRIX_PRODUCTS and len(args) >= 2:
            left, right = args[0], args[1]
            operation = getattr(func, "__name__", "matmul").strip("_")
            self._read(right, operation, int(left.shape[-1]))
            self._read(left, operation, int(left.shape[-1]))
        else:
            self._follow(func, args, kwargs, result)
        return result

    def _read(self, operand: object, operation: str, fan_in: int) -> None:
        name = self._parameter(operand)
        if name is not None:
            self.contractions.append(Contraction(name, operation, fan_in))

    def _follow(
        self, func: Callable[..., Any], args: Sequence, kwargs: dict, result: object
    ) -> None:
        if _short_name(func) not in _SAME_PARAMETER:
            return
        inputs = [self._parameter(a) for a in tree_flatten((args, kwargs))[0]]
        sources = {s for s in inputs if s is not None}
        if len(sources) != 1:
            return
        (source,) = sources
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.source[id(value)] = source
                self.kept.append(value)


def _short_name(func: Callable[..., Any]) -> str:
    """``transpose`` for ``torch.Tensor.transpose``, ``T`` for the ``Tensor.T`` property."""
    name = resolve_name(func) or getattr(func, "__name__", "")
    parts = name.split(".")
    return parts[-2] if parts[-1] == "__get__" and len(parts) > 1 else parts[-1]


def trace(module: nn.Module, input_shape: Sequence[int]) -> Trace:
    """Run ``module`` once on a meta tensor of shape ``(1, *input_shape)``: its parameters,
    the contractions that read them and its multiply-accumulates.

    The module is moved to the ``meta`` device and put in eval mode first (build it under
    ``torch.device("meta")`` to allocate nothing at all).
    """
    module = module.to("meta").eval()  # BatchNorm with running statistics: one example does
    names = {id(p): name for name, p in module.named_parameters()}
    parameters = {name: tuple(int(d) for d in p.shape) for name, p in module.named_parameters()}
    example = torch.empty((1, *input_shape), device="meta")
    reads = _ParameterReads(names)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter, reads:
            module(example)
    except Exception as error:  # the module's own code: one line, as for any bad input
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"the module does not run on one example of shape {tuple(input_shape)}: "
            f"{type(error).__name__}: {first}"
        ) from None
    return Trace(parameters, tuple(reads.contractions), counter.get_total_flops() // 2)


def trace_member(member: Callable[[int], nn.Module], n: int, input_shape: Sequence[int]) -> Trace:
    """:func:`trace` of ``member(n)``, built on the meta device."""
    with torch.device("meta"):
        module = member(n)
    return trace(module, input_shape)
