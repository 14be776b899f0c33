"""ResNeXt-29 training throughput under each execution setting (issue 11, item 5).

    python benchmarks/resnext_execution.py [--device cuda] [--batch 128] [--seconds 2]
                                           [--no-compile]

Pure PyTorch (no Ray): images/s of a training step (forward under autocast, cross-entropy,
backward, SGD with momentum) on CIFAR-sized inputs for

* ``37x10d one model`` -- the collegial ensemble as ResNeXt-29 builds it (grouped 3x3 convs);
* ``37x10d loop``      -- the same function with every grouped conv split into a Python loop
                          over its 37 paths (one small conv each);
* ``1x128d dense``     -- the baseline of about the same parameter count;

at fp32 and bf16 (``ce_ray.worker.pipeline.Execution``), channels_last off and on, and (unless
``--no-compile``) compiled with ``torch.compile`` for the one model and the dense network.
Ratios are against the one model at fp32, NCHW, eager, in the same run. On a CPU use a small
``--batch``; the figures that matter are a GPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.theory.models import ResNeXtBlock
from ce_ray.theory.spaces import CifarResNeXt29Space
from ce_ray.worker.pipeline import Execution


class PathLoopConv(nn.Module):
    """A grouped convolution computed as a loop over its groups (the ensemble's paths); the
    same weights and the same function as ``conv``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.groups = conv.weight, conv.groups
        self.stride, self.padding = conv.stride, conv.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.chunk(self.groups, dim=1)
        weights = self.weight.chunk(self.groups, dim=0)
        return torch.cat(
            [
                F.conv2d(i, w, None, self.stride, self.padding)
                for i, w in zip(inputs, weights, strict=True)
            ],
            dim=1,
        )


def path_loop(network: nn.Module) -> nn.Module:
    for module in network.modules():
        if isinstance(module, ResNeXtBlock):
            module.conv2 = PathLoopConv(module.conv2)
    return network


def images_per_second(network, execution: Execution, device, batch: int, seconds: float):
    network = network.to(device)
    model = execution.model(network)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    x = execution.inputs(torch.randn(batch, 3, 32, 32, device=device))
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast(device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup = time.perf_counter() - started
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
        if device.type == "cuda" and steps % 5 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    space = CifarResNeXt29Space(num_classes=10)
    models = {
        "37x10d one model": lambda: space.build(37, 10),
        "37x10d loop": lambda: path_loop(space.build(37, 10)),
        "1x128d dense": lambda: space.build(1, 128),
    }
    rows = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch}")
    print(
        f"{'model':<18}{'params':>12}{'precision':>10}{'layout':>8}{'compiled':>9}"
        f"{'img/s':>10}{'x base':>8}{'warm-up s':>10}"
    )
    base = None
    for label, build in models.items():
        params = sum(p.numel() for p in build().parameters())
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                compiles = [False]
                if not args.no_compile and label != "37x10d loop" and channels_last:
                    compiles.append(True)
                for compiled in compiles:
                    torch.manual_seed(0)
                    execution = Execution(precision, channels_last, compiled)
                    rate, warmup = images_per_second(
                        build(), execution, device, args.batch, args.seconds
                    )
                    base = base or rate
                    rows.append(
                        {
                            "model": label,
                            "params": params,
                            "precision": precision,
                            "channels_last": channels_last,
                            "compile": compiled,
                            "images_s": rate,
                            "x_base": rate / base,
                            "warmup_s": warmup,
                        }
                    )
                    layout = "NHWC" if channels_last else "NCHW"
                    print(
                        f"{label:<18}{params:>12,}{precision:>10}{layout:>8}"
                        f"{str(compiled):>9}{rate:>10.1f}{rate / base:>8.2f}{warmup:>10.1f}",
                        flush=True,
                    )
    print(
        json.dumps(
            {"benchmark": "resnext_execution", "device": name, "batch": args.batch, "rows": rows}
        )
    )


if __name__ == "__main__":
    main()
