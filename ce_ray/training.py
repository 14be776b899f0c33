"""Training one point of a curve: the per-worker loop that Ray Train runs (one process per
GPU, DDP over NCCL; gloo on CPU). Ordinary PyTorch plus ``ray.train.report`` once per epoch.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ce_ray import data
from ce_ray.presets import PRESETS, Recipe


def make_optimizer(model: torch.nn.Module, recipe: Recipe):
    """The recipe's optimizer and a step-per-epoch lr schedule (divide by 10 at milestones)."""
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
            weight_decay=recipe.weight_decay, nesterov=False,
        )  # fmt: skip
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), 0.1)
    return optimizer, schedule


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def evaluate(model, test_set, batch_size: int, device, rank: int, world: int, top5: bool):
    """Top-1 (and top-5) test error in percent over the WHOLE test set: each rank scores the
    examples rank, rank + world, ... and the counts are summed (no padding, no repeats)."""
    loader = DataLoader(Subset(test_set, range(rank, len(test_set), world)), batch_size)
    model.eval()
    wrong1 = wrong5 = total = 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            wrong1 += (ranked[:, 0] != y).sum().item()
            wrong5 += (~(ranked == y[:, None]).any(dim=1)).sum().item()
            total += len(y)
    model.train()
    wrong1, wrong5, total = _all_reduce_sum([wrong1, wrong5, total], device)
    errors = {"test_error": 100.0 * wrong1 / total}
    if top5:
        errors["test_error_top5"] = 100.0 * wrong5 / total
    return errors


def train_point(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker`` for one (point, seed).

    ``config`` carries: preset, m, n, seed (the trial's derived seed), epochs, data_root,
    attempt. Reports ``epoch``, ``train_loss``, ``test_error`` (and ``test_error_top5`` when
    there are more than 5 classes), ``attempt`` after every epoch.
    """
    import ray.train  # noqa: PLC0415
    import ray.train.torch  # noqa: PLC0415

    preset = PRESETS[config["preset"]]
    recipe = preset.recipe
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])  # same initial weights on every rank (DDP checks)

    train_set, test_set = data.load(preset.dataset, config["data_root"])
    model = ray.train.torch.prepare_model(preset.space.build(config["m"], config["n"]))
    device = ray.train.torch.get_device()
    optimizer, schedule = make_optimizer(model, recipe)
    batch = max(1, recipe.batch_size // world)
    loader = DataLoader(
        train_set,
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(config["seed"]),
        drop_last=len(train_set) > batch * world,
    )
    loader = ray.train.torch.prepare_data_loader(loader)  # DistributedSampler + device moves
    classes = getattr(preset.space, "num_classes", 0)
    started = time.perf_counter()
    for epoch in range(1, config["epochs"] + 1):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a DistributedSampler when world > 1
            sampler.set_epoch(epoch)
        loss_sum = count = 0.0
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            count += len(y)
        schedule.step()
        loss_sum, count = _all_reduce_sum([loss_sum, count], device)
        metrics = {"epoch": epoch, "train_loss": loss_sum / count, "attempt": config["attempt"]}
        metrics |= evaluate(model, test_set, batch, device, rank, world, top5=classes > 5)
        metrics["train_time_s"] = time.perf_counter() - started  # this worker's own work
        ray.train.report(metrics)
