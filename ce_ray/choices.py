"""The named choices of ce-ray's options, each defined once: a ``Literal`` type for the type
checker and its values (``typing.get_args``) for the command line and the checks.

Imports nothing but the standard library, so the command line can list choices without
loading PyTorch or Ray.

>>> FORMULATIONS
('primal', 'dual')
>>> check_choice("--formulation", "dual", FORMULATIONS)
'dual'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, get_args

#: Which curve: same budget, least variance (primal), or same variance, least budget (dual).
Formulation = Literal["primal", "dual"]
#: The budget beta(n) counts parameters or multiply-accumulates.
Metric = Literal["params", "flops"]
#: beta(n) from one fitted block (the paper) or from the whole network's count.
CostModel = Literal["block", "network"]
#: NTK samplers: many draws at once for any block, or the exact MLP recursion.
Method = Literal["batched", "exact"]
#: How a convolutional block's output map becomes the scalar whose NTK is sampled.
Readout = Literal["pool", "centre"]
#: How your member is written: as ce-ray's blocks are (sampled as written), or in PyTorch's
#: default parameterisation (its NTK twin is sampled: ce_ray.theory.twin).
Parameterisation = Literal["ntk", "standard"]
#: Floating-point type of the NTK sampling.
Dtype = Literal["float32", "float64"]
#: Autocast precision of a training worker.
Precision = Literal["fp32", "bf16", "fp16"]
#: A training recipe's optimizer and learning-rate schedule (``ce_ray.presets.Recipe``).
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "step", "cosine"]
#: Tune schedulers: run every trial to the end, or stop weak ones early.
Scheduler = Literal["fifo", "asha"]

FORMULATIONS: tuple[Formulation, ...] = get_args(Formulation)
METRICS: tuple[Metric, ...] = get_args(Metric)
COST_MODELS: tuple[CostModel, ...] = get_args(CostModel)
METHODS: tuple[Method, ...] = get_args(Method)
READOUTS: tuple[Readout, ...] = get_args(Readout)
PARAMETERISATIONS: tuple[Parameterisation, ...] = get_args(Parameterisation)
DTYPES: tuple[Dtype, ...] = get_args(Dtype)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)

T = TypeVar("T", bound=str)


def check_choice(name: str, value: str, allowed: Sequence[T]) -> T:
    """``value`` if it is one of ``allowed``, else a one-line ``ValueError`` naming both."""
    for choice in allowed:
        if value == choice:
            return choice
    raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
