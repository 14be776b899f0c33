"""Input pipeline against the model: can each preset's loader feed its model's training?

    python benchmarks/input_pipeline.py [--seconds S]

For every dataset format (MNIST's IDX files, CIFAR images through its transforms, the
downsampled ImageNet pickles at 32 and 64, an ImageFolder of JPEGs), generated on the spot in
that format: images/s of the preset's training loader (``ce_ray.worker.pipeline.train_loader``: its
transforms, per-item seeding) with 0 and with ``cpu_count - 1`` loader processes, against
images/s of one training step (forward, loss, backward, optimizer) of the preset's baseline
model at the recipe's batch size (capped at 64 on a CPU). The ratio loader / model must stay
above 1: below it the model waits for data. Same machine, same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ce_ray.presets import SWEEP_PRESETS
from ce_ray.worker import data
from ce_ray.worker.loop import make_optimizer
from ce_ray.worker.pipeline import train_loader
from tests.worker.test_loop import (
    PILImages,
    write_downsampled_imagenet,
    write_image_folder,
    write_mnist,
)

SECONDS = 4.0  # per measurement; --seconds overrides
CPU_BATCH_CAP = 64


def timed(run_once, seconds: float) -> float:
    """Calls of ``run_once`` (each returning how many images it handled) per second."""
    run_once()  # warm-up
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        images += run_once()
    return images / (time.perf_counter() - started)


def loader_rate(dataset, batch: int, workers: int) -> float:
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader, tagged = train_loader(dataset, batch, sampler, 0, workers, False, True)
    state = {"epoch": 0, "iterator": iter(())}

    def next_batch() -> int:
        try:
            x, _ = next(state["iterator"])
        except StopIteration:
            state["epoch"] += 1
            tagged.set_epoch(state["epoch"])
            state["iterator"] = iter(loader)
            x, _ = next(state["iterator"])
        return len(x)

    return timed(next_batch, SECONDS)


def model_rate(preset, example: torch.Tensor, batch: int) -> float:
    model = preset.space.build(1, preset.baseline)
    optimizer, _ = make_optimizer(model, preset.recipe)
    x = example.unsqueeze(0).expand(batch, *example.shape).contiguous()
    y = torch.zeros(batch, dtype=torch.long)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return batch

    return timed(step, SECONDS)


def datasets(root: Path) -> dict[str, object]:
    write_mnist(root, train=1024, test=8)
    write_downsampled_imagenet(root, "imagenet32", 32, per_batch=100)
    write_downsampled_imagenet(root, "imagenet64", 64, per_batch=50)
    write_image_folder(root, size=(375, 500), per_class=40)
    return {
        "mnist-mlp": data.load("mnist", str(root))[0],
        "cifar10-resnext29": PILImages(1024, data.cifar_transforms()[0], seed=0),
        "imagenet32-resnext29": data.load("imagenet32", str(root))[0],
        "imagenet64-resnext29": data.load("imagenet64", str(root))[0],
        "imagenet-resnext50": data.load("imagenet", str(root))[0],
    }


def main() -> None:
    global SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per measurement (4)")
    SECONDS = parser.parse_args().seconds
    torch.set_num_threads(os.cpu_count() or 1)
    workers = max(1, (os.cpu_count() or 2) - 1)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name, dataset in datasets(Path(directory)).items():
            preset = SWEEP_PRESETS[name]
            batch = min(preset.recipe.batch_size, CPU_BATCH_CAP)
            alone, parallel = loader_rate(dataset, batch, 0), loader_rate(dataset, batch, workers)
            model = model_rate(preset, dataset[0][0], batch)
            rows.append(
                {
                    "preset": name,
                    "batch": batch,
                    "loader_0": alone,
                    f"loader_{workers}": parallel,
                    "model": model,
                    "loader_over_model": max(alone, parallel) / model,
                }
            )
            print(
                f"{name:22} batch {batch:4}: loader {alone:8.0f} img/s (0 workers), "
                f"{parallel:8.0f} ({workers} workers); model {model:8.1f} img/s; "
                f"loader/model {rows[-1]['loader_over_model']:8.1f}",
                flush=True,
            )
    print(
        json.dumps(
            {
                "benchmark": "input_pipeline",
                "loader_workers": workers,
                "cpus": os.cpu_count(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
