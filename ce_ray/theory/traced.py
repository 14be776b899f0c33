"""Sizes of any PyTorch module, found by building it and tracing one forward pass.

For a block the user writes, ce-ray needs what the built-in spaces give in closed form:
the number of parameters, the multiply-accumulates per example and

    S(n) = sum over the contractions c that read a parameter of 1 / fan_in(c)       (Eq. 9)

where a contraction is a linear map applied to the activations -- a matrix product or a
convolution -- and its fan-in is the length of the sum it takes: ``in_features`` for a linear
layer, ``k * k * in_channels / groups`` for a convolution, the contracted dimension for a
matrix product. The pass is watched at the ATen level (``TorchDispatchMode``), so the
products inside composite functions are seen too: ``F.multi_head_attention_forward``'s
projections, ``nn.TransformerEncoderLayer``'s, an ``einsum``'s. Parameters are followed through
views, transposes, reshapes, splits and scalings by a number (``x @ W.t() * c`` reads ``W``);
products of two activations (attention's ``Q K^T`` and ``softmax(.) V``) read no parameter and
so add nothing. Parameters that enter no contraction (norm scales, biases, embeddings) are
listed and left out of S(n); a matrix among them is named by :attr:`Trace.unplaced`, with the
operations that read it, so that it is a warning rather than a silent "no".

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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

#: ATen matrix products: the operand indices of the left and the right factor.
_PRODUCTS: dict[Any, tuple[int, int]] = {
    aten.mm: (0, 1),
    aten.bmm: (0, 1),
    aten.mv: (0, 1),
    aten.dot: (0, 1),
    aten.addmm: (1, 2),
    aten.baddbmm: (1, 2),
    aten.addbmm: (1, 2),
    aten.addmv: (1, 2),
}
_CONVOLUTIONS = {aten.convolution, aten._convolution}
#: ATen operations whose result is the same parameter seen differently (a view, a copy).
_SAME_PARAMETER = {
    aten.t,
    aten.transpose,
    aten.permute,
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten._reshape_alias,
    aten.expand,
    aten.squeeze,
    aten.unsqueeze,
    aten.select,
    aten.slice,
    aten.narrow,
    aten.split,
    aten.split_with_sizes,
    aten.unbind,
    aten.chunk,
    aten.as_strided,
    aten.unflatten,
    aten.flatten,
    aten.clone,
    aten.contiguous,
    aten._to_copy,
    aten.detach,
    aten.alias,
    aten.lift_fresh,
}
#: ATen operations that scale a parameter when every other operand is a number.
_SCALINGS = {aten.mul, aten.div, aten.neg}
#: The names the trace gives the contractions of these functions (a function's own name
#: rather than the ATen product it runs: ``linear``, not ``addmm``).
_FUNCTION_NAMES: dict[Callable[..., Any], str] = {
    F.linear: "linear",
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
    torch.matmul: "matmul",
    torch.Tensor.matmul: "matmul",
    torch.Tensor.__matmul__: "matmul",
    torch.mm: "mm",
    torch.Tensor.mm: "mm",
    torch.bmm: "bmm",
    torch.Tensor.bmm: "bmm",
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
    #: name -> the ATen operations that read it, for each parameter no contraction read
    readers: dict[str, tuple[str, ...]] = field(default_factory=dict)

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

    @property
    def unplaced(self) -> dict[str, tuple[str, ...]]:
        """The matrices (2 or more dimensions) among :attr:`outside_contractions`, with the
        operations that read them: an embedding's lookup, or a contraction the trace does
        not know -- either way left out of S(n), which the user should hear."""
        return {
            name: self.readers.get(name, ())
            for name in self.outside_contractions
            if len(self.parameters[name]) >= 2
        }


class _FunctionNames(TorchFunctionMode):
    """Names the function a contraction runs in (:data:`_FUNCTION_NAMES`), for the trace's
    operations; inside a function it does not name (attention), the ATen product's name."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = _FUNCTION_NAMES.get(func)
        if name is None:
            return func(*args, **(kwargs or {}))
        self.current = name
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.current = None


class _ParameterReads(TorchDispatchMode):
    """Records each ATen contraction that reads a parameter, following parameters through
    views, copies and scalings by numbers."""

    def __init__(self, names: dict[int, str], functions: _FunctionNames):
        super().__init__()
        self.source: dict[int, str] = dict(names)  # id(tensor) -> parameter it shows
        self.kept: list[torch.Tensor] = []  # keeps ids unique while the pass runs
        self.contractions: list[Contraction] = []
        self.readers: dict[str, list[str]] = {}
        self.functions = functions

    def _parameter(self, value: object) -> str | None:
        return self.source.get(id(value)) if isinstance(value, torch.Tensor) else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in _PRODUCTS:
            left, right = (args[i] for i in _PRODUCTS[packet])
            fan_in = int(left.shape[-1])
            self._read(right, packet.__name__, fan_in)
            self._read(left, packet.__name__, fan_in)
        elif packet in _CONVOLUTIONS:
            self._read(args[1], _convolution_name(args), _convolution_fan_in(args))
        elif not self._follow(packet, args, kwargs, result):
            for value in tree_flatten((args, kwargs))[0]:
                name = self._parameter(value)
                if name is not None:
                    self.readers.setdefault(name, []).append(f"aten.{packet.__name__}")
        return result

    def _read(self, operand: object, operation: str, fan_in: int) -> None:
        name = self._parameter(operand)
        if name is not None:
            operation = self.functions.current or operation
            self.contractions.append(Contraction(name, operation, fan_in))

    def _follow(self, packet: Any, args: Sequence, kwargs: dict, result: object) -> bool:
        """Mark ``result`` as the parameter an operation of :data:`_SAME_PARAMETER` (or a
        scaling by numbers) showed; whether it did."""
        if packet not in _SAME_PARAMETER and packet not in _SCALINGS:
            return False
        operands = tree_flatten((args, kwargs))[0]
        sources = {s for s in map(self._parameter, operands) if s is not None}
        if len(sources) != 1:
            return False
        if packet in _SCALINGS and any(
            isinstance(a, torch.Tensor) and self._parameter(a) is None and a.numel() != 1
            for a in operands
        ):
            return False  # times an activation (a gate, LayerScale): no longer the parameter
        (source,) = sources
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.source[id(value)] = source
                self.kept.append(value)
        return True


def _convolution_name(args: Sequence) -> str:
    """``conv2d`` (or ``conv_transpose2d``) for an ``aten.convolution`` call."""
    dims = args[1].dim() - 2
    return f"conv_transpose{dims}d" if len(args) > 6 and args[6] else f"conv{dims}d"


def _convolution_fan_in(args: Sequence) -> int:
    """``k * k * in_channels / groups``; for a transposed convolution (whose weight is
    ``(in, out / groups, k, k)``) the inputs one output sums, ``in / groups * k * k / stride^2``
    (on average over the outputs)."""
    weight = args[1]
    if not (len(args) > 6 and args[6]):
        return math.prod(int(d) for d in weight.shape[1:])
    groups = int(args[8]) if len(args) > 8 else 1
    stride = args[3] if len(args) > 3 else [1]
    kernel = math.prod(int(d) for d in weight.shape[2:])
    return max(1, int(weight.shape[0]) // groups * kernel // math.prod(int(s) for s in stride))


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
    functions = _FunctionNames()
    reads = _ParameterReads(names, functions)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter, functions, reads:
            module(example)
    except Exception as error:  # the module's own code: one line, as for any bad input
        raise ValueError(
            f"the module does not run on one example of shape {tuple(input_shape)}: "
            f"{_one_line(error)}"
        ) from None
    readers = {name: tuple(dict.fromkeys(ops)) for name, ops in reads.readers.items()}
    return Trace(parameters, tuple(reads.contractions), counter.get_total_flops() // 2, readers)


def _one_line(error: Exception) -> str:
    """``Type: first line of the message``."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}"


def trace_member(member: Callable[[int], nn.Module], n: int, input_shape: Sequence[int]) -> Trace:
    """:func:`trace` of ``member(n)``, built on the meta device."""
    with torch.device("meta"):
        try:
            module = member(n)
        except Exception as error:  # the user's constructor: one line, naming the width
            raise ValueError(f"member({n}) raised {_one_line(error)}") from None
    return trace(module, input_shape)
