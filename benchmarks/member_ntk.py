"""Your own member against the hand-written code, side by side in one run.

    python benchmarks/member_ntk.py [--samples T] [--repeats R]

1. NTK samples per second of the generic sampler (``ce_ray.theory.member_ntk``: the member's
   own initialisation, ``vmap(grad)`` over stacked parameters, the first-layer law found by
   tracing) against the built-in batched sampler (``ce_ray.theory.ntk.sample_ntk``: one
   block-diagonal ensemble per chunk, the first-layer law written by hand) on the MLP block
   (L = 6, n0 = 784; n = 16, 64, 256) and the Fig. 5 bottleneck (256 channels, 8x8; n = 4,
   16, 64). Ratio = generic time / built-in time (above 1: the generic sampler is slower).
   "warm": the call a worker makes once it has sampled the member at that width (its plan --
   the checks behind the law and the vectorised draws -- found); "cold": a process's first
   call, the plan included.
2. One training step (forward, loss, backward, Adam) of the vectorised ensemble of m separate
   members (``MemberEnsemble``) against the hand-written one-model ensemble
   (``CollegialMLP`` / ``CollegialBottleneck``) at the same (m, n).

Best of ``--repeats`` timings each; prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.theory import member_ntk
from ce_ray.theory.member_ntk import sample_member_ntk
from ce_ray.theory.models import MemberEnsemble
from ce_ray.theory.ntk import ntk_inputs, sample_ntk
from ce_ray.theory.spaces import FCSpace, ResNeXtBlockSpace

BLOCKS = [
    ("mlp", FCSpace(input_dim=784, depth=6), (16, 64, 256)),
    ("bottleneck", ResNeXtBlockSpace(256, 256, 8), (4, 16, 64)),
]
STEPS = [
    ("mlp", FCSpace(input_dim=784, depth=6, num_classes=10), (784,), 20, 10, 128),
    ("bottleneck", ResNeXtBlockSpace(64, 64, 8), (64, 8, 8), 8, 4, 32),
]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def step_time(model: torch.nn.Module, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, *shape)

    def step() -> None:
        optimizer.zero_grad()
        out = model(x)
        out.flatten(1).pow(2).mean().backward()
        optimizer.step()

    step()  # warm-up
    return best_of(repeats, step)


def sampler_times(space, n: int, samples: int, repeats: int) -> tuple[float, float, float]:
    """Seconds of the built-in sampler and of the generic one, warm and cold, for
    ``samples`` draws at width n."""
    block = space.ntk_block()
    inputs = ntk_inputs(block, 0)

    def member(width: int) -> torch.nn.Module:
        return block.build(1, width)

    def cold() -> None:
        member_ntk._PLANS.clear()
        sample_member_ntk(member, n, samples, 1, inputs)

    built_in = best_of(repeats, lambda: sample_ntk(space, n, samples, 1, inputs))
    first = best_of(repeats, cold)
    warm = best_of(repeats, lambda: sample_member_ntk(member, n, samples, 1, inputs))
    return built_in, warm, first


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    figures: dict[str, dict] = {"sampler": {}, "training_step": {}}
    print(f"NTK samples ({args.samples} per width), best of {args.repeats}")
    print(
        f"{'block':<11} {'n':>4} {'built-in s':>11} {'generic s':>10} {'ratio':>6}"
        f" {'cold s':>8} {'cold ratio':>10}"
    )
    for name, space, widths in BLOCKS:
        for n in widths:
            built_in, warm, cold = sampler_times(space, n, args.samples, args.repeats)
            figures["sampler"][f"{name}-{n}"] = {
                "built_in_s": round(built_in, 4),
                "generic_s": round(warm, 4),
                "ratio": round(warm / built_in, 2),
                "cold_s": round(cold, 4),
                "cold_ratio": round(cold / built_in, 2),
            }
            print(
                f"{name:<11} {n:>4} {built_in:>11.3f} {warm:>10.3f} {warm / built_in:>6.2f}"
                f" {cold:>8.3f} {cold / built_in:>10.2f}"
            )
    print("\nOne training step (forward, backward, Adam), best of", args.repeats)
    header = f"{'ensemble':<11} {'m x n':>7} {'batch':>5} {'hand-written s':>15}"
    print(f"{header} {'vmap s':>8} {'ratio':>6}")
    for name, space, shape, m, n, batch in STEPS:
        torch.manual_seed(0)
        hand = step_time(space.build(m, n), shape, batch, args.repeats)
        vectorised = step_time(
            MemberEnsemble([space.build(1, n) for _ in range(m)]), shape, batch, args.repeats
        )
        ratio = vectorised / hand
        figures["training_step"][name] = {
            "m": m,
            "n": n,
            "hand_written_s": round(hand, 5),
            "vectorised_s": round(vectorised, 5),
            "ratio": round(ratio, 2),
        }
        print(
            f"{name:<11} {f'{m}x{n}':>7} {batch:>5} {hand:>15.4f} {vectorised:>8.4f} {ratio:>6.2f}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
