"""Theorem 1: under gradient flow a collegial ensemble's NTK moves by ``O_p(1/(m n))``.

:func:`measure_drift` trains one ensemble of m NTK-parameterised ReLU MLPs of width n by
full-batch gradient descent on the squared loss ``1/2 ||F_e - y||^2`` (the theorem's cost)
with a step small enough to follow gradient flow, and records the relative change of the
ensemble NTK on fixed probe inputs, ``||K_e(t) - K_e(0)||_F / ||K_e(0)||_F``, at fixed
gradient-flow times t (learning rate x steps). :func:`fit_exponents` fits
``log drift = a log m + b log n + c`` (the theorem predicts a = b = -1; it assumes analytic
activations, and ReLU is not one). Pure PyTorch and NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from scipy import stats

from ce_ray.theory.models import CollegialMLP
from ce_ray.theory.ntk import make_generator, mlp_member_kernels
from ce_ray.theory.seeds import derive_seed
from ce_ray.theory.spaces import FCSpace

# Identities of the draws: the task (inputs, targets, probes) and a run's initial weights.
TASK_STREAM, WEIGHTS_STREAM = 0x7A5C, 0x3E16


@dataclass(frozen=True)
class Task:
    """A fixed small regression task: ``inputs`` (N, d) and ``targets`` (N,), and ``probes``
    (P, d) where the kernel is measured; every point on the sphere |x|^2 = d."""

    inputs: torch.Tensor
    targets: torch.Tensor
    probes: torch.Tensor


def make_task(samples: int, features: int, probes: int, seed: int) -> Task:
    """A seeded task: targets ``sin`` of a random projection, so a network must bend to fit it.

    >>> task = make_task(8, 4, 3, seed=0)
    >>> tuple(task.inputs.shape), tuple(task.probes.shape)
    ((8, 4), (3, 4))
    >>> round(float(task.inputs[0].norm() ** 2), 6)
    4.0
    """
    generator = make_generator(derive_seed(seed, TASK_STREAM))

    def sphere(count: int) -> torch.Tensor:
        x = torch.randn(count, features, generator=generator, dtype=torch.float64)
        return x * math.sqrt(features) / x.norm(dim=1, keepdim=True)

    inputs, probe_points = sphere(samples), sphere(probes)
    direction = torch.randn(features, generator=generator, dtype=torch.float64)
    targets = torch.sin(inputs @ direction / math.sqrt(features) * 2.0)
    return Task(inputs, targets, probe_points)


def ensemble_ntk(module: CollegialMLP, probes: torch.Tensor) -> torch.Tensor:
    """``(P, P)``: the ensemble NTK, the mean of the members' (Eq. 4)."""
    with torch.no_grad():
        return mlp_member_kernels(module, probes).mean(dim=0)


def learning_rate(samples: int, depth: int, step: float) -> float:
    """A step ``step / (N L)``: the kernel's top eigenvalue is at most its trace, about N L
    (E[K(x, x)] = L on these inputs), so ``lr * lambda_max <= step`` and, for a small
    ``step``, gradient descent follows gradient flow."""
    return step / (samples * depth)


def measure_drift(
    m: int, n: int, depth: int, task: Task, lr: float, record_steps: list[int], seed: int
) -> pd.DataFrame:
    """Train the ensemble ``m x n`` from weights drawn from ``seed``; one row per recorded
    step: steps, time (lr x steps), drift and train_loss (``1/2 ||F_e - y||^2 / N``).

    >>> task = make_task(8, 4, 3, seed=0)
    >>> rows = measure_drift(2, 8, 3, task, lr=0.01, record_steps=[0, 5], seed=1)
    >>> rows["drift"].tolist()[0], bool(rows["drift"].iloc[1] > 0)
    (0.0, True)
    """
    space = FCSpace(input_dim=task.inputs.shape[1], depth=depth, num_classes=1)
    module = space.build(m, n).double()
    generator = make_generator(derive_seed(seed, WEIGHTS_STREAM))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(generator=generator)
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    initial = ensemble_ntk(module, task.probes)
    rows = []
    for step in range(max(record_steps) + 1):
        loss = 0.5 * ((module(task.inputs)[:, 0] - task.targets) ** 2).sum()
        if step in record_steps:
            kernel = ensemble_ntk(module, task.probes)
            drift = float(torch.linalg.norm(kernel - initial) / torch.linalg.norm(initial))
            rows.append(
                {
                    "steps": step,
                    "time": lr * step,
                    "drift": drift,
                    "train_loss": float(loss.detach()) / len(task.targets),
                }
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ExponentFit:
    """``log drift = exponent_m log m + exponent_n log n + intercept`` by least squares, with
    ``level`` confidence intervals from the t distribution."""

    exponent_m: float
    exponent_m_ci: tuple[float, float]
    exponent_n: float
    exponent_n_ci: tuple[float, float]
    intercept: float
    r2: float
    runs: int


def fit_exponents(m: ArrayLike, n: ArrayLike, drift: ArrayLike, level: float = 0.95) -> ExponentFit:
    """Ordinary least squares on logs (runs with zero drift cannot be logged: ValueError).

    >>> m = np.array([1, 2, 4, 1, 2, 4]); n = np.array([8, 8, 8, 16, 16, 16])
    >>> fit = fit_exponents(m, n, 3.0 / (m * np.sqrt(n)))
    >>> round(fit.exponent_m, 6), round(fit.exponent_n, 6)
    (-1.0, -0.5)
    """
    drift = np.asarray(drift, dtype=np.float64)
    if not np.all(drift > 0):
        raise ValueError("every run needs a positive drift to fit exponents on a log scale")
    design = np.column_stack([np.log(m), np.log(n), np.ones(len(drift))])
    y = np.log(drift)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ coefficients
    dof = max(len(y) - 3, 1)
    sigma2 = float(residuals @ residuals) / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.pinv(design.T @ design)))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(residuals @ residuals) / total if total > 0 else float("nan")
    low, high = coefficients - half, coefficients + half
    return ExponentFit(
        float(coefficients[0]),
        (float(low[0]), float(high[0])),
        float(coefficients[1]),
        (float(low[1]), float(high[1])),
        float(coefficients[2]),
        r2,
        len(y),
    )
