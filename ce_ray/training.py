"""Training one point of a curve: the per-worker loop that Ray Train runs (one process per
GPU, DDP over NCCL; gloo on CPU). Ordinary PyTorch plus ``ray.train.report`` once per epoch.
"""

from __future__ import annotations

import os
import random
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ce_ray import data
from ce_ray.pipeline import Execution, train_loader
from ce_ray.presets import SWEEP_PRESETS, Recipe
from ce_ray.records import TrialRecord

# Plain fp32, no layout change, no compile: what the loop does unless told otherwise.
FP32 = Execution()
# The one file of a training checkpoint (torch.save of model, optimizer, schedule, epoch, RNGs).
CHECKPOINT_FILE = "state.pt"


def make_optimizer(model: torch.nn.Module, recipe: Recipe):
    """The recipe's optimizer and its lr schedule, stepped once per epoch (the lr is
    multiplied by ``recipe.lr_decay`` at each milestone)."""
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
            weight_decay=recipe.weight_decay, nesterov=False,
        )  # fmt: skip
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(recipe.milestones), recipe.lr_decay
    )
    return optimizer, schedule


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def evaluate(
    model, test_set, batch_size: int, device, rank: int, world: int, top5: bool,
    execution: Execution = FP32,
):  # fmt: skip
    """Top-1 (and top-5) test error in percent over the WHOLE test set: each rank scores the
    examples rank, rank + world, ... and the counts are summed (no padding, no repeats);
    ``test_examples`` is that sum."""
    loader = DataLoader(Subset(test_set, range(rank, len(test_set), world)), batch_size)
    model.eval()
    wrong1 = wrong5 = total = 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = execution.inputs(x.to(device)), y.to(device)
            with execution.autocast(device):
                logits = model(x)
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            wrong1 += (ranked[:, 0] != y).sum().item()
            wrong5 += (~(ranked == y[:, None]).any(dim=1)).sum().item()
            total += len(y)
    model.train()
    wrong1, wrong5, total = _all_reduce_sum([wrong1, wrong5, total], device)
    errors = {"test_error": 100.0 * wrong1 / total, "test_examples": int(total)}
    if top5:
        errors["test_error_top5"] = 100.0 * wrong5 / total
    return errors


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_point(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker`` for one (point, seed index).

    ``config`` carries: preset, m, n, seed (the trial's derived seed), epochs, data_root and
    ``record`` (the location of its :class:`~ce_ray.records.TrialRecord`). Reports ``epoch``,
    ``train_loss``, ``test_error`` (and ``test_error_top5`` when there are more than 5
    classes), ``attempt`` (0 for the first start of the trial), ``start_epoch`` and ``node_id``
    after every epoch, each report with a checkpoint (model, optimizer, lr schedule, epoch,
    every RNG state).

    Resuming: when Ray Train hands back a checkpoint (a worker or node was lost, or the job
    was stopped and submitted again) training continues after its epoch. The data order of an
    epoch is a function of (seed, epoch) alone (``DistributedSampler.set_epoch``), so a
    resumed trial sees the same batches as an uninterrupted one and ends with the same
    weights.
    """
    import ray
    import ray.train
    import ray.train.torch

    preset = SWEEP_PRESETS[config["preset"]]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])  # same initial weights on every rank (DDP checks)
    train_set, test_set = data.load(preset.dataset, data.resolve_root(config["data_root"]))
    execution = Execution(config["precision"], config["channels_last"], config["compile"])
    network = preset.space.build(config["m"], config["n"])  # the raw module: checkpointed
    optimizer, schedule = make_optimizer(network, preset.recipe)
    device = ray.train.torch.get_device()
    scaler = execution.scaler(device)
    start_epoch, train_time = _restore(network, optimizer, schedule, scaler, rank)
    record = TrialRecord(config["record"], start_epoch) if rank == 0 else None
    model = execution.model(ray.train.torch.prepare_model(network))
    batch = max(1, preset.recipe.batch_size // world)
    loader, sampler = train_loader(
        train_set, batch,
        DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                           seed=config["seed"]),
        config["seed"], config["loader_workers"], pin_memory=device.type == "cuda",
        drop_last=len(train_set) > batch * world,
    )  # fmt: skip
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)  # device moves
    top5 = getattr(preset.space, "num_classes", 0) > 5
    for epoch in range(start_epoch, config["epochs"] + 1):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        loss = train_epoch(model, loader, optimizer, device, execution, scaler)
        metrics = {"epoch": epoch, "train_loss": loss}
        schedule.step()
        metrics |= evaluate(model, test_set, batch, device, rank, world, top5, execution)
        train_time += time.perf_counter() - started
        metrics |= {
            "train_time_s": train_time,
            "attempt": record.attempt if record else 0,
            "start_epoch": start_epoch,
            "node_id": ray.get_runtime_context().get_node_id(),  # rank 0's is reported
        }
        if record is not None:
            metrics["time_total_s"] = time.time() - record.first_started_at
            record.add(metrics)
        state = _state(network, optimizer, schedule, scaler, epoch, train_time)
        _report_with_checkpoint(metrics, state, world)


def train_epoch(
    model, loader, optimizer, device, execution: Execution = FP32, scaler=None
) -> float:
    """One pass over this rank's batches; the mean loss over every rank's examples. The
    forward runs under ``execution``'s autocast; ``scaler`` (fp16) scales the loss."""
    scaler = scaler or execution.scaler(device)
    loss_sum = count = 0.0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast(device):
            loss = F.cross_entropy(model(execution.inputs(x)), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item() * len(y)
        count += len(y)
    loss_sum, count = _all_reduce_sum([loss_sum, count], device)
    return loss_sum / count


def _restore(model, optimizer, schedule, scaler, rank: int) -> tuple[int, float]:
    """Load Ray Train's checkpoint, if it hands one back: ``(first epoch to train, training
    seconds so far)``; ``(1, 0.0)`` on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 1, 0.0
    with checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"][rank])
    return state["epoch"] + 1, state["train_time_s"]


def _state(network, optimizer, schedule, scaler, epoch: int, train_time: float) -> dict:
    """What a checkpoint holds besides the RNG states (``network`` is the raw module, whose
    state_dict keys do not depend on DDP or compile wrappers)."""
    return {
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "train_time_s": train_time,
    }


def _report_with_checkpoint(metrics: dict, state: dict, world: int) -> None:
    """Report the epoch; rank 0 attaches the checkpoint (Ray Train keeps the last two).

    Every rank's RNG state goes in, gathered to rank 0, so a resumed rank continues its own
    stream.
    """
    import ray.train

    rng = [None] * world
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(rng, _rng_state())
    else:
        rng = [_rng_state()]
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state | {"rng": rng}, os.path.join(directory, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
