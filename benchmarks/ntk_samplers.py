"""Samples/s of the NTK samplers against a plain per-sample autograd loop, and peak memory.

    python benchmarks/ntk_samplers.py [--quick]

The loop is what one would write by hand: build a fresh member, forward, autograd.grad,
sum of squares. Ratios are measured in the same run, on the same thread count. Peak memory
is the growth of this process's resident set over the timed call (Linux VmHWM, reset first).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ce_ray.theory.ntk import chunk_size, member_kernels, ntk_inputs, sample_ntk
from ce_ray.theory.spaces import FCSpace, ResNeXtBlockSpace

BUDGET = 256 * 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure(fn, samples: int) -> tuple[float, float]:
    """(samples per second, peak resident growth in MiB) of one call of ``fn``."""
    fn(max(2, samples // 10))  # warm-up
    resident = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    fn(samples)
    seconds = time.perf_counter() - start
    return samples / seconds, (_status("VmHWM") - resident) / 2**20


def loop_sampler(block, n: int, inputs: torch.Tensor):
    """The baseline: one freshly built member per sample."""

    def run(samples: int) -> None:
        for _ in range(samples):
            member = block.build(1, n)
            member_kernels(member, inputs)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (noisier)")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    torch.manual_seed(0)
    cases = [
        ("fc", FCSpace(784, 6, 1), n, samples)
        for n, samples in ((16, 2000), (64, 1000), (256, 300))
    ] + [
        ("bottleneck", ResNeXtBlockSpace(256, 256, 8), n, samples)
        for n, samples in ((4, 1000), (16, 500), (64, 200))
    ]
    rows = []
    print(f"threads: {torch.get_num_threads()}, memory budget {BUDGET // 2**20} MiB")
    print(
        f"{'space':<11}{'n':>5}{'sampler':>9}{'chunk':>7}{'samples/s':>12}{'x loop':>9}"
        f"{'peak MiB':>10}"
    )
    for name, space, n, samples in cases:
        samples = max(20, int(samples * scale))
        block = space.ntk_block()
        x = ntk_inputs(block, 0)
        loop_rate, loop_peak = measure(loop_sampler(block, n, x), samples)
        row = {"space": name, "n": n, "loop_per_s": loop_rate, "loop_peak_mib": loop_peak}
        print(f"{name:<11}{n:>5}{'loop':>9}{1:>7}{loop_rate:>12.0f}{1.0:>9.2f}{loop_peak:>10.1f}")
        methods = ["batched", "exact"] if name == "fc" else ["batched"]
        for method in methods:
            many = samples * (20 if method == "exact" else 1)

            def sample(t: int, space=space, n=n, x=x, method=method) -> None:
                sample_ntk(space, n, t, 1, x, method, BUDGET)

            rate, peak = measure(sample, many)
            chunk = min(many, chunk_size(block, n, 1, method, BUDGET))
            row |= {
                f"{method}_per_s": rate,
                f"{method}_x_loop": rate / loop_rate,
                f"{method}_peak_mib": peak,
                f"{method}_chunk": chunk,
            }
            print(
                f"{'':<11}{'':>5}{method:>9}{chunk:>7}{rate:>12.0f}"
                f"{rate / loop_rate:>9.2f}{peak:>10.1f}"
            )
        rows.append(row)
    print(
        json.dumps({"benchmark": "ntk_samplers", "threads": torch.get_num_threads(), "rows": rows})
    )


if __name__ == "__main__":
    main()
