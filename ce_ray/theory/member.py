"""A user's own member, ``member(n) -> nn.Module``, named ``module.path:callable``: loading
it, and the checks that must pass before its sizes, S(n) and alpha mean anything.

The checks, each a one-line error (``ValueError``) or a warning returned to be printed:

* ``member(n)`` returns an ``nn.Module`` whose parameter count grows with ``n``;
* two members share no parameter storage (a module-level tensor would tie the ensemble);
* no dropout: a random forward pass has no single NTK;
* at least one contraction reads a parameter (else S(n) is 0 and there is nothing to fit);
* BatchNorm is a warning: its NTK is sampled with running statistics (eval mode);
* a matrix parameter no contraction reads (an embedding, an operation the trace does not
  know) is a warning naming it: it is left out of S(n);
* an architecture that changes with n (parameters or contractions that appear or vanish
  between two widths) is a warning: S(n) and alpha then compare different blocks.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ce_ray.choices import (
    PARAMETERISATIONS,
    Method,
    Metric,
    Parameterisation,
    Readout,
    check_choice,
)
from ce_ray.theory.member_draws import Member
from ce_ray.theory.member_ntk import bytes_per_draw, member_inputs, sample_member_ntk
from ce_ray.theory.models import MemberEnsemble, Reshaped
from ce_ray.theory.spaces import IntLike, Space
from ce_ray.theory.traced import Trace, trace_member

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def load_member(name: str, role: str = "member", signature: str = "member(n) -> nn.Module") -> Any:
    """The callable ``name`` = ``"module.path:attribute"`` names, imported from the Python path
    or the current directory (where ``ray job submit --working-dir .`` puts a job's files).
    ``role`` and ``signature`` say in an error what the callable was wanted for."""
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{role} {name!r} must be MODULE:CALLABLE, e.g. mypkg.blocks:{role}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{role} {name}: cannot import {module_name!r} ({error})") from None
    except Exception as error:  # the user's module raised while it was imported
        raise ValueError(
            f"{role} {name}: importing {module_name!r} raised {type(error).__name__}: {error}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{role} {name}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{role} {name} is a {type(target).__name__}, not a callable {signature}")
    return target


def build(member: Member, n: int, device: str | torch.device = "cpu") -> nn.Module:
    """``member(n)`` built on ``device`` (``"meta"``: shapes only), checked to be a module."""
    with torch.device(device):
        try:
            module = member(n)
        except Exception as error:  # the user's constructor: one line, naming the width
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(f"member({n}) raised {type(error).__name__}: {first}") from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"member({n}) returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def check_network(
    build_network: Callable[[int, int], nn.Module],
    input_shape: Sequence[int],
    classes: int,
    n: int,
) -> None:
    """One-line errors, before any training, for a network that cannot train on the data:
    ``build_network(1, n)`` and ``build_network(2, n)`` are built on the meta device (no
    memory) and must map a batch of examples of ``input_shape`` to ``(batch, classes)``
    logits, with no dropout, the two-member one holding more parameters."""
    sizes = []
    for m in (1, 2):
        try:
            with torch.device("meta"):
                network = build_network(m, n)
        except Exception as error:  # the user's builder: a wrong signature, a bad size
            raise ValueError(
                f"building the network of {m} member(s) of width {n} raised "
                f"{type(error).__name__}: {str(error).splitlines()[0]}"
            ) from None
        if not isinstance(network, nn.Module):
            raise ValueError(
                f"the network of {m} member(s) of width {n} is a {type(network).__name__}, "
                "not a torch.nn.Module"
            )
        dropout = [name for name, layer in network.named_modules() if isinstance(layer, _DROPOUT)]
        if dropout:
            raise ValueError(
                f"the network has dropout ({dropout[0]}): a sweep's points train "
                "without it, as the NTK the curve rests on has none"
            )
        batch = torch.zeros(2, math.prod(input_shape), device="meta")
        try:
            with torch.no_grad():
                output = network.eval()(batch)
        except Exception as error:  # the user's forward pass on the dataset's examples
            raise ValueError(
                f"the network of {m} member(s) of width {n} fails on examples of shape "
                f"{tuple(input_shape)}: {type(error).__name__}: {str(error).splitlines()[0]}"
            ) from None
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, classes):
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"the network of {m} member(s) of width {n} returns {got} for 2 examples; a "
                f"sweep needs (2, {classes}) logits: give --network MODULE:CALLABLE, a "
                "network(m, n) with a head on the members"
            )
        sizes.append(sum(p.numel() for p in network.parameters()))
    if sizes[1] <= sizes[0]:
        raise ValueError(
            f"the network of 2 members of width {n} holds {sizes[1]:,} parameters, 1 member "
            f"{sizes[0]:,}: network(m, n) must build m members"
        )


@dataclass(frozen=True)
class Inspection:
    """What ce-ray found in a member at each width, and what it warns about."""

    widths: tuple[int, ...]
    traces: tuple[Trace, ...]  # one per width
    warnings: tuple[str, ...]


def inspect_member(member: Member, widths: Sequence[int], input_shape: Sequence[int]) -> Inspection:
    """Trace ``member`` at each width and run the checks in this module's docstring."""
    widths = tuple(sorted(set(int(w) for w in widths)))
    warnings: list[str] = []
    smallest = build(member, widths[0])
    for label, module in smallest.named_modules():
        if isinstance(module, _DROPOUT) and module.p > 0:
            raise ValueError(
                f"member has dropout ({label or 'the member'}, p={module.p:g}): a random "
                "forward pass has no single NTK; build the member without it"
            )
    norms = [label for label, m in smallest.named_modules() if isinstance(m, _BATCH_NORM)]
    if norms:
        warnings.append(
            f"member has BatchNorm ({_some(norms)}): its NTK is sampled in eval mode, with "
            "running statistics"
        )
    _check_no_shared_storage(smallest, build(member, widths[0]), widths[0])
    traces = []
    for n in widths:
        build(member, n, "meta")  # a clear error before tracing
        traces.append(trace_member(member, n, input_shape))
    if not traces[0].contractions:
        raise ValueError(
            "no linear layer, convolution or matrix product of the member reads a parameter: "
            "S(n) would be 0"
        )
    warnings += _unplaced_warnings(traces[0])
    warnings += _changes_with_n(widths, traces)
    counts = [t.num_params for t in traces]
    for i in range(1, len(widths)):
        (n0, c0), (n1, c1) = (widths[i - 1], counts[i - 1]), (widths[i], counts[i])
        if c1 <= c0:
            raise ValueError(
                f"member parameters do not grow with n: {c0:,} at n={n0}, {c1:,} at n={n1}"
            )
    return Inspection(widths, tuple(traces), tuple(warnings))


def _unplaced_warnings(found: Trace) -> list[str]:
    """A warning for each matrix parameter no contraction read (:attr:`Trace.unplaced`)."""
    return [
        f"member parameter {name} {found.parameters[name]} enters no contraction ce-ray can "
        f"see (read by {', '.join(readers) or 'no operation'}): it is left out of S(n); give "
        "--fan-in-sum if it should count"
        for name, readers in found.unplaced.items()
    ]


def _layers(found: Trace) -> list[str]:
    """A member's layers as the trace saw them: parameter names, then the contractions'."""
    return [*found.parameters, *(f"{c.operation}({c.parameter})" for c in found.contractions)]


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names`` and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _changes_with_n(widths: Sequence[int], traces: Sequence[Trace]) -> list[str]:
    """A warning at the first two widths whose layers differ (torchvision's
    ``InvertedResidual`` drops its expansion layer at expansion ratio 1)."""
    for (n0, t0), (n1, t1) in zip(
        zip(widths, traces, strict=True), zip(widths[1:], traces[1:], strict=True), strict=False
    ):
        before, after = _layers(t0), _layers(t1)
        if before == after:
            continue
        gone = [layer for layer in before if layer not in after]
        new = [layer for layer in after if layer not in before]
        change = (
            "; ".join(
                part
                for part in (
                    f"{', '.join(gone)} at n={n0} only" if gone else "",
                    f"{', '.join(new)} at n={n1} only" if new else "",
                )
                if part
            )
            or "the same layers in another order"
        )
        return [
            f"member's architecture changes with n ({change}): S(n), the sizes and alpha then "
            "compare different blocks; build the same layers at every width"
        ]
    return []


def _check_no_shared_storage(first: nn.Module, second: nn.Module, n: int) -> None:
    pointers = {p.untyped_storage().data_ptr(): name for name, p in first.named_parameters()}
    for name, parameter in second.named_parameters():
        if parameter.untyped_storage().data_ptr() in pointers:
            raise ValueError(
                f"two members built by member({n}) share parameter {name!r}: each call must "
                "create its own tensors (not a module-level one)"
            )


def architecture_fingerprint(traces: Sequence[Trace]) -> str:
    """12 hex digits of SHA-256 over what a member's sizes, S(n) and sampled kernel depend on,
    at each traced width: its parameters' names and shapes and its contractions' parameters,
    operations and fan-ins. Stored with a fit, so that a rerun whose member changed under the
    same name is refused instead of mixing two architectures' samples."""
    described = [
        [
            sorted(t.parameters.items()),
            [(c.parameter, c.operation, c.fan_in) for c in t.contractions],
        ]
        for t in traces
    ]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4096)
def _traced(member: Member, input_shape: tuple[int, ...], n: int) -> Trace:
    # Keyed by the callable, not its name: a module reloaded (or an attribute replaced) in a
    # long-lived process is traced again.
    return trace_member(member, n, input_shape)


@dataclass(frozen=True)
class MemberSpace(Space):
    """Ensembles of your own ``member(n)``: m members of width n run as one
    :class:`~ce_ray.theory.models.MemberEnsemble` (outputs summed, scaled by 1/sqrt(m)).

    Parameters, multiply-accumulates and S(n) come from tracing the member at each width
    (:mod:`ce_ray.theory.traced`); the ensemble holds exactly m members' parameters and does
    m members' work, so ``num_params(m, n) = m * num_params(1, n)``. Its NTK is sampled by the
    generic sampler (:mod:`ce_ray.theory.member_ntk`) from the member's own initialisation.
    Build it by name (``ce_ray.theory.by_name.make_space``).

    Args:
        member: ``MODULE:CALLABLE`` naming ``member(n) -> nn.Module``.
        input_shape: one example's shape, without the batch.
        fan_in_sum_from: ``MODULE:CALLABLE`` naming ``S(n) -> float`` to use instead of the
            traced S(n) (for a block whose contractions the trace cannot see or should not
            count); empty: the traced one.
        network_from: ``MODULE:CALLABLE`` naming ``network(m, n) -> nn.Module``, what a
            sweep's trial trains; empty: the members' ensemble (it must give logits).
        parameterisation: ``ntk``, the member is sampled as written (NTK-parameterised, as
            ce-ray's blocks are); ``standard``, it is written in PyTorch's default
            parameterisation and its NTK twin is sampled (:mod:`ce_ray.theory.twin`).
    """

    name: ClassVar[str] = "member"
    default_baseline: ClassVar[int] = 64
    law_by_construction: ClassVar[bool] = False
    member: str
    input_shape: tuple[int, ...]
    fan_in_sum_from: str = ""
    network_from: str = ""
    parameterisation: Parameterisation = "ntk"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        check_choice("--parameterisation", self.parameterisation, PARAMETERISATIONS)
        load_member(self.member)  # one line now if it does not import
        if self.fan_in_sum_from:
            load_member(self.fan_in_sum_from, "S(n)", "S(n) -> float")

    def trace(self, n: int) -> Trace:
        return _traced(load_member(self.member), tuple(self.input_shape), int(n))

    def _per_width(self, n: IntLike, size: Callable[[int], float]) -> np.ndarray:
        widths = np.asarray(n, dtype=np.int64)
        sizes = [size(int(w)) for w in widths.ravel()]
        return np.asarray(sizes, dtype=np.float64).reshape(widths.shape)

    def build(self, m: int, n: int) -> nn.Module:
        make = load_member(self.member)
        return MemberEnsemble([make(n) for _ in range(m)])

    def num_params(self, m: IntLike, n: IntLike) -> IntLike:
        count = np.asarray(m, dtype=np.int64) * self._per_width(
            n, lambda w: self.trace(w).num_params
        )
        return count.astype(np.int64) if count.ndim else int(count)

    def flops(self, m: IntLike, n: IntLike) -> IntLike:
        count = np.asarray(m, dtype=np.int64) * self._per_width(n, lambda w: self.trace(w).macs)
        return count.astype(np.int64) if count.ndim else int(count)

    def fan_in_sum(self, n: IntLike) -> np.ndarray:
        if not self.fan_in_sum_from:
            return self._per_width(n, lambda w: self.trace(w).fan_in_sum)
        given = load_member(self.fan_in_sum_from, "S(n)", "S(n) -> float")

        def checked(w: int) -> float:
            value = given(w)
            if not (isinstance(value, int | float | np.floating) and 0 < value < math.inf):
                raise ValueError(
                    f"S(n) {self.fan_in_sum_from} gave {value!r} at n={w}; it must give a "
                    "positive finite number"
                )
            return float(value)

        return self._per_width(n, checked)

    def block_cost(self, n: IntLike, metric: Metric = "params") -> IntLike:
        return self.network_cost(1, n, metric)

    def ntk_inputs(
        self,
        seed: int,
        off_diagonal: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        return member_inputs(self.input_shape, seed, off_diagonal, device, dtype)

    def sample_ntk(
        self,
        n: int,
        num_samples: int,
        seed: int,
        inputs: torch.Tensor,
        method: Method = "batched",
        memory_budget: int = 256 * 2**20,
        readout: Readout = "pool",
    ) -> np.ndarray:
        make = load_member(self.member)
        return sample_member_ntk(
            make, n, num_samples, seed, inputs, memory_budget, readout, self.parameterisation
        )

    def check_sampling(
        self,
        widths: Sequence[int],
        inputs: int,
        method: Method,
        memory_budget: int,
        dtype_bytes: int,
    ) -> tuple[str, ...]:
        """The member's checks (:func:`inspect_member`; its warnings returned), S(n) given
        in its place, and one draw at the widest width within ``memory_budget``."""
        make = load_member(self.member)
        found = inspect_member(make, widths, self.input_shape)
        self.fan_in_sum(np.asarray(widths))  # yours, if given, checked now
        widest = max(widths)
        need = bytes_per_draw(build(make, widest, "meta"), inputs, dtype_bytes)
        if need > memory_budget:
            raise ValueError(
                f"memory budget {memory_budget / 2**20:g} MiB is too small for one sample at "
                f"width {widest} (needs {need / 2**20:.3g} MiB)"
            )
        return found.warnings

    def fingerprint(self, widths: Sequence[int]) -> str:
        return architecture_fingerprint([self.trace(n) for n in widths])

    def network(self, m: int, n: int) -> nn.Module:
        """``network(m, n)`` if given, else the members' ensemble, reading flat examples
        reshaped to ``input_shape``."""
        if self.network_from:
            make = load_member(self.network_from, "network", "network(m, n) -> nn.Module")
            return Reshaped(self.input_shape, make(m, n))
        return Reshaped(self.input_shape, self.build(m, n))

    def check_trains_on(
        self, example_shape: Sequence[int], classes: int, n: int, data: str
    ) -> None:
        """The member reads as many values as an example holds, and :meth:`network` maps a
        batch of them to ``classes`` logits (:func:`check_network`, on the meta device)."""
        shape, values = self.input_shape, math.prod(example_shape)
        if math.prod(shape) != values:
            raise ValueError(
                f"--input-shape {','.join(map(str, shape))} holds {math.prod(shape)} values; "
                f"{data} hold {values} ({','.join(map(str, example_shape))})"
            )
        check_network(self.network, shape, classes, n)

    @property
    def member_name(self) -> str:
        return self.member

    @property
    def sampled_parameterisation(self) -> Parameterisation:
        return self.parameterisation

    def describe(self) -> str:
        twin = ", its NTK twin" if self.parameterisation == "standard" else ""
        return f"{self.member} (your member{twin}, inputs of shape {self.input_shape})"

    def experiment_name(self, preset: str) -> str:
        """``MODULE-CALLABLE`` of your member.

        >>> MemberSpace("examples.transformer_mlp:member", (8, 8)).experiment_name("digits-mlp")
        'examples-transformer_mlp-member'
        """
        return self.member.replace(":", "-").replace(".", "-")

    def stored(self) -> dict:
        """The member's fields that are set (``input_shape`` as a list)."""
        fields = {
            "member": self.member,
            "input_shape": list(self.input_shape),
            "fan_in_sum_from": self.fan_in_sum_from,
            "network_from": self.network_from,
            # "ntk" is left out, as before the choice was offered: a fit's stored config
            # stays the same key for key.
            "parameterisation": "" if self.parameterisation == "ntk" else self.parameterisation,
        }
        return {key: value for key, value in fields.items() if value}

    def options(self) -> dict[str, int]:
        given = self.stored()
        given.pop("network_from", None)  # what is trained, not what the sizes are of
        return given
