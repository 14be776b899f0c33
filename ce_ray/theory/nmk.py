"""Lemma 1 and Fig. 2: the ensemble NTK converges to the Neural Mean Kernel as m grows.

A collegial ensemble's NTK is the mean of its members' NTKs, ``K_e = (1/m) sum_j K_j``; the
Neural Mean Kernel (NMK) is their expectation, ``E[K_j]``. So ``K_e -> NMK`` as m grows, with
``E||K_e - NMK||^2 = Var(K_j) / m`` (slope -1 against m on log axes), and the NMK itself
barely depends on the width n. Fig. 2 shows it for an L = 4 ReLU MLP on the unit circle,
``x_gamma = [cos gamma, sin gamma]``: the entries ``K(x_0, x_gamma)`` ("off_diagonal") and
``K(x_gamma, x_gamma)`` ("diagonal") as functions of gamma.

This module draws member kernels (:func:`member_kernels_on_circle`) and turns them into
ensemble kernels, NMK estimates and the convergence statistics. Pure PyTorch and NumPy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ce_ray.theory.ntk import make_generator, mlp_member_kernels
from ce_ray.theory.spaces import FCSpace

ENTRIES = ("diagonal", "off_diagonal")


def circle_inputs(gammas: np.ndarray) -> torch.Tensor:
    """``(G, 2)`` float64: the unit-circle points ``[cos gamma, sin gamma]``.

    >>> circle_inputs(np.array([0.0, np.pi / 2])).round(decimals=6).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    angles = torch.as_tensor(gammas, dtype=torch.float64)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def member_kernels_on_circle(
    depth: int, width: int, members: int, gammas: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """``{"diagonal": (members, G), "off_diagonal": (members, G)}``: for each of ``members``
    independent L-layer MLPs of width n (``CollegialMLP`` weights iid N(0, 1) from ``seed``),
    its NTK entries ``K(x_gamma, x_gamma)`` and ``K(x_0, x_gamma)`` with ``x_0 = [1, 0]``.

    >>> kernels = member_kernels_on_circle(3, 8, 4, np.array([0.0, 1.0]), seed=0)
    >>> kernels["off_diagonal"].shape
    (4, 2)
    >>> bool(np.allclose(kernels["diagonal"][:, 0], kernels["off_diagonal"][:, 0]))  # gamma = 0
    True
    """
    module = FCSpace(input_dim=2, depth=depth, num_classes=1).build(members, width)
    generator = make_generator(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(generator=generator)
        inputs = torch.cat([circle_inputs(np.zeros(1)), circle_inputs(gammas)]).float()
        kernel = mlp_member_kernels(module, inputs)  # (members, 1 + G, 1 + G)
    return {
        "diagonal": torch.diagonal(kernel, dim1=1, dim2=2)[:, 1:].double().numpy(),
        "off_diagonal": kernel[:, 0, 1:].double().numpy(),
    }


def ensemble_kernels(member_kernels: np.ndarray, m: int) -> np.ndarray:
    """``(members // m, G)``: consecutive groups of m member kernels averaged, one ensemble of
    multiplicity m each (the ensemble NTK is the members' mean).

    >>> ensemble_kernels(np.array([[1.0], [3.0], [5.0], [7.0]]), 2).ravel().tolist()
    [2.0, 6.0]
    """
    draws = member_kernels.shape[0] // m
    return member_kernels[: draws * m].reshape(draws, m, -1).mean(axis=1)


def squared_distance(kernels: np.ndarray, nmk: np.ndarray) -> np.ndarray:
    """Per ensemble, the mean over gamma of ``(K_e(gamma) - NMK(gamma))^2``."""
    return ((kernels - nmk[None, :]) ** 2).mean(axis=1)


def distance_to_nmk(member_kernels: np.ndarray, m: int) -> np.ndarray:
    """Per ensemble of m consecutive members, an unbiased estimate of ``E||K_e - NMK||^2``
    (mean over gamma), the NMK estimated by the mean of all N members.

    The ensembles are among those N members, so ``E||K_e - mean||^2 = Var(K_j) (1/m - 1/N)``;
    dividing by ``1 - m/N`` gives ``Var(K_j) / m``, Lemma 1's quantity.
    """
    mean = member_kernels.mean(axis=0)
    correction = 1.0 - m / member_kernels.shape[0]
    return squared_distance(ensemble_kernels(member_kernels, m), mean) / correction


def fit_log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y on log x.

    >>> round(fit_log_slope(np.array([1.0, 2.0, 4.0]), np.array([8.0, 4.0, 2.0])), 6)
    -1.0
    """
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def convergence_summary(
    distances: pd.DataFrame, bootstrap: int, rng: np.random.Generator, level: float = 0.95
) -> pd.DataFrame:
    """Per (n, entry): the slope of log mean squared distance against log m, with a percentile
    bootstrap interval (the draws of every m resampled with replacement).

    ``distances`` has columns n, m, entry, draw, squared_distance.
    """
    rows = []
    tail = (1 - level) / 2
    for (n, entry), group in distances.groupby(["n", "entry"], sort=True):
        by_m = [g["squared_distance"].to_numpy() for _, g in group.groupby("m", sort=True)]
        ms = np.array(sorted(group["m"].unique()), dtype=float)
        slope = fit_log_slope(ms, np.array([d.mean() for d in by_m]))
        replicates = [
            fit_log_slope(ms, np.array([rng.choice(d, d.size).mean() for d in by_m]))
            for _ in range(bootstrap)
        ]
        low, high = np.quantile(replicates, [tail, 1 - tail])
        rows.append({"n": n, "entry": entry, "slope_m": slope, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def relative_gap(nmk: np.ndarray, reference: np.ndarray) -> float:
    """``||nmk - reference|| / ||reference||`` over gamma: how far the NMK at one width is from
    the NMK of a much wider model.

    >>> relative_gap(np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    0.0
    """
    return float(np.linalg.norm(nmk - reference) / np.linalg.norm(reference))


def diagonal_mean(depth: int) -> float:
    """The NMK's diagonal, E[K(x, x)] = L |x|^2 / n_0 (Eq. 3's scaling): L / 2 on the unit
    circle, whatever the width and gamma."""
    return depth / 2.0
