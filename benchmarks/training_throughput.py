"""Training throughput of the one-model ensemble against a loop over m separate members,
and against the dense baseline with the same parameter count.

    python benchmarks/training_throughput.py

One step = forward, cross-entropy, backward, Adam step on a batch (default 128). The loop computes
the same function (sum of the members' outputs / sqrt(m)) with m separately built modules.
"""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ce_ray.theory.spaces import FCSpace, ResNeXtBlockSpace

BATCH = 128  # --batch overrides


class MemberLoop(nn.Module):
    """The collegial ensemble as a Python loop over separately built members."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(member(x) for member in self.members) / math.sqrt(len(self.members))


def steps_per_second(model: nn.Module, x: torch.Tensor, reduce, seconds: float = 3.0) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.randint(0, 10, (x.shape[0],))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(reduce(model(x)), target).backward()
        optimizer.step()

    for _ in range(3):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH, help="examples per step (128)")
    batch = parser.parse_args().batch
    torch.manual_seed(0)
    mlp = FCSpace(input_dim=784, depth=6, num_classes=10)
    block = ResNeXtBlockSpace(in_channels=256, out_channels=10, spatial=8)
    pool = lambda y: y.mean(dim=(2, 3)) if y.dim() == 4 else y  # noqa: E731
    rows = []
    print(f"threads: {torch.get_num_threads()}, batch {batch}")
    print(f"{'model':<26}{'params':>10}{'steps/s':>10}{'ratio':>9}")
    for name, space, m, n, shape in (
        ("mlp", mlp, 30, 48, (batch, 784)),
        ("bottleneck", block, 8, 16, (batch, 256, 8, 8)),
    ):
        x = torch.randn(shape)
        ensemble = space.build(m, n)
        loop = MemberLoop([space.build(1, n) for _ in range(m)])
        # The dense baseline: one member whose width gives the ensemble's parameter count.
        target = space.num_params(m, n)
        width = min(range(1, 4096), key=lambda w: abs(space.num_params(1, w) - target))
        dense = space.build(1, width)
        one = steps_per_second(ensemble, x, pool)
        looped = steps_per_second(loop, x, pool)
        baseline = steps_per_second(dense, x, pool)
        budget = space.num_params(m, n)
        rows.append(
            {
                "space": name,
                "m": m,
                "n": n,
                "ensemble_steps_s": one,
                "loop_steps_s": looped,
                "speedup_vs_loop": one / looped,
                "target_vs_loop": m / 3,
                "dense_width": width,
                "dense_steps_s": baseline,
                "ensemble_vs_dense": one / baseline,
            }
        )
        for label, params, rate in (
            (f"{name} {m}x{n}d one model", budget, one),
            (f"{name} {m}x{n}d loop", budget, looped),
            (f"{name} 1x{width}d dense", space.num_params(1, width), baseline),
        ):
            print(f"{label:<26}{params:>10,}{rate:>10.1f}{rate / one:>9.2f}")
        print(f"  one model vs loop: {one / looped:.1f}x (target m/3 = {m / 3:.1f}x)")
    print(json.dumps({"benchmark": "training_throughput", "batch": batch, "rows": rows}))


if __name__ == "__main__":
    main()
