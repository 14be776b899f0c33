"""Training one point of a curve: the per-worker loop that Ray Train runs (one process per
GPU, DDP over NCCL; gloo on CPU). Ordinary PyTorch plus ``ray.train.report`` once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ce_ray import own_data
from ce_ray.configs import SweepConfig
from ce_ray.presets import Recipe
from ce_ray.theory.models import PackedSeeds
from ce_ray.theory.seeds import derive_seed
from ce_ray.worker.pipeline import Execution, RepeatedBatches, StackedBatches, train_loader

if TYPE_CHECKING:
    import ray

from ce_ray.worker.records import Heartbeat, TrialRecord, beating, wait_for_decision

# Plain fp32, no layout change, no compile: what the loop does unless told otherwise.
FP32 = Execution()
# The one file of a training checkpoint (torch.save of model, optimizer, schedule, epoch, RNGs).
CHECKPOINT_FILE = "state.pt"


def _no_beat() -> None:
    """Ranks other than 0 do not beat (rank 0 stops too when any rank stops: collectives)."""


def make_optimizer(
    model: torch.nn.Module, recipe: Recipe, copies: Sequence[Recipe] = ()
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer and its lr schedule, stepped once per epoch
    (:class:`~ce_ray.presets.Recipe`; :func:`lr_factor`).

    ``copies``: one recipe per copy of a :class:`~ce_ray.theory.models.PackedSeeds` (or the
    one network's): each copy's parameters are a group of their own with its recipe's
    ``lr``, ``weight_decay`` and ``momentum`` -- an elementwise optimizer steps each copy as it
    would alone. The optimizer and schedule are ``recipe``'s.
    """
    if copies:
        modules = list(model.seeds) if isinstance(model, PackedSeeds) else [model]
        groups = [
            {"params": list(module.parameters()), "lr": copy.lr}
            | {"weight_decay": copy.weight_decay}
            | ({"momentum": copy.momentum} if recipe.optimizer == "sgd" else {})
            for module, copy in zip(modules, copies, strict=True)
        ]
    else:
        groups = [{"params": list(model.parameters())}]
    optimizer: torch.optim.Optimizer
    if recipe.optimizer in ("adam", "adamw"):
        adam = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
        optimizer = adam(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            groups,
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=False,
        )
    schedule: torch.optim.lr_scheduler.LRScheduler
    if recipe.schedule == "step" and not recipe.warmup_epochs:
        # The presets' schedule, as it always was (the same numbers, the same checkpoints).
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(recipe.milestones), recipe.lr_decay
        )
    else:
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(lr_factor, recipe)
        )
    return optimizer, schedule


def lr_factor(recipe: Recipe, steps: int) -> float:
    """The learning rate over ``recipe.lr`` after ``steps`` epochs (epoch ``steps + 1``
    trains with it): a linear warm-up over ``warmup_epochs`` (epoch k of it at k / (warmup +
    1)), then the schedule -- ``step``: times ``lr_decay`` per milestone passed; ``cosine``:
    (1 + cos(pi t)) / 2, t the fraction of the epochs after the warm-up done; ``constant``.

    >>> recipe = Recipe(
    ...     optimizer="sgd", lr=0.1, epochs=5, batch_size=8, schedule="cosine", warmup_epochs=1
    ... )
    >>> [round(lr_factor(recipe, s), 3) for s in range(5)]
    [0.5, 1.0, 0.854, 0.5, 0.146]
    """
    warmup = recipe.warmup_epochs
    if steps < warmup:
        return (steps + 1) / (warmup + 1)
    if recipe.schedule == "step":
        return recipe.lr_decay ** sum(steps >= m for m in recipe.milestones)
    if recipe.schedule == "cosine":
        done = (steps - warmup) / max(1, recipe.epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * done))
    return 1.0


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def evaluate(
    model: nn.Module,
    test_set: Dataset,
    batch_size: int,
    device: torch.device,
    rank: int,
    world: int,
    top5: bool,
    execution: Execution = FP32,
    copies: int = 1,
    beat: Callable[[], None] = lambda: None,
    packed: bool | None = None,
) -> list[dict]:
    """Top-1 (and top-5) test error in percent over the WHOLE test set, one dict per copy of
    the network (``packed``, by default ``copies`` > 1: a
    :class:`~ce_ray.theory.models.PackedSeeds` model of ``copies`` copies -- one, once a search
    is halved to its last -- each copy fed the same test batch). Each rank scores the examples
    rank, rank + world, ... and the counts are summed (no padding, no repeats);
    ``test_examples`` is that sum."""
    size = len(test_set)  # type: ignore[arg-type]  # map-style datasets have a length
    loader: DataLoader = DataLoader(Subset(test_set, range(rank, size, world)), batch_size)
    model.eval()
    wrong1, wrong5, total = torch.zeros(copies), torch.zeros(copies), 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = execution.inputs(x.to(device)), y.to(device)
            if (copies > 1) if packed is None else packed:
                x = x.expand(copies, *x.shape)
            with execution.autocast(device):
                logits = model(x).view(copies, len(y), -1)
            ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (copies, B, k)
            wrong1 += (ranked[..., 0] != y).sum(dim=1).cpu()
            wrong5 += (~(ranked == y[:, None]).any(dim=-1)).sum(dim=1).cpu()
            total += len(y)
            beat()
    model.train()
    counts = _all_reduce_sum([*wrong1.tolist(), *wrong5.tolist(), total], device)
    total = counts[-1]
    errors = []
    for copy in range(copies):
        copy_errors = {"test_error": 100.0 * counts[copy] / total, "test_examples": int(total)}
        if top5:
            copy_errors["test_error_top5"] = 100.0 * counts[copies + copy] / total
        errors.append(copy_errors)
    return errors


def _rng_state() -> dict:
    """Every RNG's state, as tensors and plain values (a checkpoint loads with
    ``torch.load(weights_only=True)``, which builds nothing else)."""
    kind, keys, position, has_gauss, gauss = cast(tuple, np.random.get_state())
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trial_network(sweep: SweepConfig, m: int, n: int, seeds: list[int]) -> nn.Module:
    """The network a trial trains at point (m, n): ``sweep.space.network(m, n)`` (the preset's
    space's, or your member's ``network(m, n)``) once per seed, each initialised from its seed
    (so the same on every rank: DDP checks), packed into one model when there are several."""
    networks = []
    for seed in seeds:
        torch.manual_seed(seed)
        networks.append(sweep.space.network(m, n))
    return networks[0] if len(seeds) == 1 else PackedSeeds(networks)


def train_point(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker`` for one point and one or more seed indices.

    ``config`` carries ``sweep`` (the sweep's ``SweepConfig.to_json()``: preset, epochs,
    execution settings, experiment seed), ``point`` (``{"n", "m"}``), ``seed_indices``,
    ``datasets`` (a Ray object reference to the (train, test) datasets) and ``record`` (the
    location of its :class:`~ce_ray.worker.records.TrialRecord`). Each seed index trains from
    its own seed, derived from (experiment seed, n, m, index); several seeds train together as
    one :class:`~ce_ray.theory.models.PackedSeeds` model, each with its own data order (its
    sampler and item transforms are seeded by its seed) and its own optimizer state, so each
    trains as it would alone. After every epoch it reports ``epoch``, ``train_loss`` and
    ``test_error`` (their means over the seeds: what Tune and a scheduler see), ``attempt`` (0
    for the first start of the trial), ``start_epoch`` and ``node_id``, each report with a
    checkpoint (model, optimizer, lr schedule, epoch, every RNG state); the record holds every
    seed's own figures.

    Resuming: when Ray Train hands back a checkpoint (a worker or node was lost, or the job
    was stopped and submitted again) training continues after its epoch. The data order of an
    epoch is a function of (seed, epoch) alone (``DistributedSampler.set_epoch``), so a
    resumed trial sees the same batches as an uninterrupted one and ends with the same
    weights.
    """
    import ray
    import ray.train
    import ray.train.torch

    sweep = SweepConfig.from_json(config["sweep"])
    n, m = config["point"]["n"], config["point"]["m"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    train_set, validation_set, test = trial_data(sweep, config["datasets"])
    test_set: Dataset | None = test
    execution = Execution(sweep.precision, sweep.channels_last, sweep.compile)
    # A tuned point trains its seeds with the recipe its search chose ("recipe": its fields).
    recipe = dataclasses.replace(sweep.recipe, **config.get("recipe", {}))
    candidates = [dataclasses.replace(recipe, **c) for c in config.get("candidates", [])]
    if candidates:
        # A point's search: its candidate recipes as the copies of one packed model, each
        # from seed index 0's initial weights and data order, so that only the recipe
        # differs; judged on the validation split (the test split is not even read).
        indices = list(range(len(candidates)))
        seeds = [derive_seed(sweep.seed, n, m, 0)] * len(candidates)
        test_set = None
    else:
        indices = config["seed_indices"]
        seeds = [derive_seed(sweep.seed, n, m, index) for index in indices]
    network = trial_network(sweep, m, n, seeds)  # the raw module is what is checkpointed
    optimizer, schedule = make_optimizer(network, recipe, candidates)
    halving = bool(candidates) and sweep.scheduler == "asha"  # successive halving
    device = ray.train.torch.get_device()
    scaler = execution.scaler(device)
    # A search with ASHA halves its candidates at rungs: the copies still training ("alive",
    # in a checkpoint) are the model's; a resumed search shrinks to them before it loads.
    alive = list(range(len(candidates)))
    if candidates and (kept := _checkpointed_alive()) is not None and kept != alive:
        network, optimizer, schedule = keep_copies(
            network, optimizer, schedule, recipe, candidates, kept
        )
        alive = kept
    start_epoch, train_time = _restore(network, optimizer, schedule, scaler, rank)
    record = TrialRecord(config["record"], start_epoch) if rank == 0 else None
    beat = Heartbeat(config["record"], record.attempt) if record else _no_beat
    beat()
    model = execution.model(ray.train.torch.prepare_model(network))
    batch = max(1, recipe.batch_size // world)
    samplers, loaders = [], []
    loader_seeds = seeds[:1] if candidates else seeds  # candidates read one seed's batches
    for seed in loader_seeds:
        loader, sampler = train_loader(
            train_set,
            batch,
            DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed),
            seed,
            sweep.loader_workers // len(loader_seeds),
            pin_memory=device.type == "cuda",
            drop_last=len(train_set) > batch * world,  # type: ignore[arg-type]  # map-style
        )
        samplers.append(sampler)
        # prepare_data_loader: device moves.
        loaders.append(ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False))
    batches: Iterable = loaders[0] if len(loaders) == 1 else StackedBatches(loaders)
    top5 = sweep.classes > 5
    for epoch in range(start_epoch, sweep.epochs + 1):
        smoothing: float | list[float] = recipe.label_smoothing
        if candidates:  # the candidates still training read the same batches
            packed = isinstance(network, PackedSeeds)
            batches = RepeatedBatches(loaders[0], len(alive)) if packed else loaders[0]
            smoothing = [candidates[k].label_smoothing for k in alive]
            indices = list(alive)
        if record is not None and sweep.scheduler_stops_trials:
            with beating(beat):
                wait_for_decision(config["record"], epoch - 2)
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])  # this epoch's, by the recipe's schedule
        group_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        # A first compiled step can take minutes: beat through this start's first epoch.
        first_compiled = execution.compile and epoch == start_epoch
        with beating(beat) if first_compiled else contextlib.nullcontext():
            losses = train_epoch(
                model,
                batches,
                optimizer,
                device,
                execution,
                scaler,
                beat,
                smoothing,
            )
        schedule.step()
        errors: list[dict] = [{} for _ in indices]
        if test_set is not None:
            errors = evaluate(
                model,
                test_set,
                batch,
                device,
                rank,
                world,
                top5,
                execution,
                len(indices),
                beat,
                isinstance(network, PackedSeeds),
            )
        if validation_set is not None:
            validation = evaluate(
                model,
                validation_set,
                batch,
                device,
                rank,
                world,
                False,
                execution,
                len(indices),
                beat,
                isinstance(network, PackedSeeds),
            )
            for seed_errors, seed_validation in zip(errors, validation, strict=True):
                seed_errors["val_error"] = seed_validation["test_error"]
        train_time += time.perf_counter() - started
        per_seed = [
            {"seed_index": index, "train_loss": loss} | seed_errors
            for index, loss, seed_errors in zip(indices, losses, errors, strict=True)
        ]
        if candidates:  # each candidate's own lr this epoch (its parameter group's)
            for entry, group_lr in zip(per_seed, group_lrs, strict=True):
                entry["lr"] = group_lr
        metrics = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            **{
                key: float(np.mean([e[key] for e in errors]))
                for key in ("test_error", "val_error")
                if key in errors[0]
            },
            "train_time_s": train_time,
            "lr": lr,
            "attempt": record.attempt if record else 0,
            "start_epoch": start_epoch,
            "node_id": ray.get_runtime_context().get_node_id(),  # rank 0's is reported
        }
        if record is not None:
            metrics["time_total_s"] = time.time() - record.first_started_at
            record.add(metrics | {"seeds": per_seed})
        if halving and len(alive) > 1 and epoch in rungs(sweep.epochs):
            # Successive halving: the better half (by validation error, the first on a tie)
            # goes on; the others stop here, their curves in the record ending at this rung.
            kept = better_half(alive, [e["val_error"] for e in errors])
            network, optimizer, schedule = keep_copies(
                network, optimizer, schedule, recipe, candidates, kept, alive
            )
            alive = kept
            model = execution.model(ray.train.torch.prepare_model(network))
        state = _state(network, optimizer, schedule, scaler, epoch, train_time)
        if candidates:
            state["alive"] = alive
        with beating(beat):  # the checkpoint's upload (S3: seconds to minutes)
            _report_with_checkpoint(metrics, state, world)


def rungs(epochs: int) -> list[int]:
    """The epochs after which a search with ASHA halves its candidates: the sweep's ASHA
    rungs -- grace period max(1, epochs // 4), then each twice the one before -- below the
    last epoch.

    >>> rungs(15), rungs(4), rungs(1)
    ([3, 6, 12], [1, 2], [])
    """
    found, rung = [], max(1, epochs // 4)
    while rung < epochs:
        found.append(rung)
        rung *= 2
    return found


def better_half(alive: Sequence[int], errors: Sequence[float]) -> list[int]:
    """The candidates ``alive`` that go on at a rung: the ceil(half) with the lowest
    validation ``errors`` (the lower index on a tie), in index order.

    >>> better_half([0, 2, 5, 7], [9.0, 3.0, 3.0, 1.0]), better_half([1, 4, 6], [2.0, 1.0, 5.0])
    ([2, 7], [1, 4])
    """
    error_of = dict(zip(alive, errors, strict=True))
    ranked = sorted(alive, key=lambda k: (error_of[k], k))
    return sorted(ranked[: math.ceil(len(alive) / 2)])


def keep_copies(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRScheduler,
    recipe: Recipe,
    candidates: Sequence[Recipe],
    kept: Sequence[int],
    alive: Sequence[int] | None = None,
) -> tuple[PackedSeeds, torch.optim.Optimizer, LRScheduler]:
    """The packed candidates ``kept`` (candidate indices; ``alive``: the candidates the
    model holds now, in order, default all) as a model of their own, with an optimizer and
    schedule that go on where these were: each kept parameter keeps its state (momentum,
    Adam's moments and step count), its group its current lr, the schedule its step."""
    alive = list(range(len(candidates))) if alive is None else list(alive)
    positions = [alive.index(k) for k in kept]
    modules = list(network.seeds) if isinstance(network, PackedSeeds) else [network]
    smaller = PackedSeeds([modules[p] for p in positions])
    new_optimizer, new_schedule = make_optimizer(smaller, recipe, [candidates[k] for k in kept])
    for group, p in zip(new_optimizer.param_groups, positions, strict=True):
        old = optimizer.param_groups[p]
        group["lr"], group["initial_lr"] = old["lr"], old.get("initial_lr", old["lr"])
        for parameter in group["params"]:
            if parameter in optimizer.state:
                new_optimizer.state[parameter] = optimizer.state[parameter]
    new_schedule.last_epoch = schedule.last_epoch
    new_schedule._last_lr = [g["lr"] for g in new_optimizer.param_groups]
    return smaller, new_optimizer, new_schedule


def _checkpointed_alive() -> list[int] | None:
    """The candidates a resumed search's checkpoint holds (None: no checkpoint, or not a
    search's)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)
    return state.get("alive")


def trial_data(
    sweep: SweepConfig, datasets: ray.ObjectRef
) -> tuple[Dataset, Dataset | None, Dataset]:
    """A trial's ``(train, validation, test)`` splits (validation None: none held out).

    Your own data (``--data``) is read here, by every training worker itself -- from its
    files, a shared file system or S3 -- and split as the driver split it (the same seeded
    permutations); nothing passes through the driver or the job's working directory. A
    preset's datasets come from Ray's object store (``datasets``: the driver's reference),
    their validation split held out when the sweep asks for one.
    """
    import ray

    if sweep.data is not None:
        splits = own_data.load(sweep.data_spec, sweep.seed)
        stored = (sweep.data_summary or {}).get("fingerprint")
        if splits.fingerprint != stored:
            raise ValueError(f"--data {sweep.data} changed since the sweep started")
        return splits.train, splits.validation, splits.test
    train, test = ray.get(datasets)
    if not sweep.validation:
        return train, None, test
    train, validation = own_data.hold_out_validation(train, sweep.validation, sweep.seed)
    return train, validation, test


def seed_losses(
    logits: torch.Tensor, y: torch.Tensor, label_smoothing: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """Each copy's mean cross-entropy: ``(copies,)``. ``logits`` is ``(batch, classes)`` for
    one network, ``(copies, batch, classes)`` for a :class:`~ce_ray.theory.models.PackedSeeds`;
    ``label_smoothing``: one for every copy, or each copy's own."""
    copies = 1 if logits.dim() == 2 else len(logits)
    smoothing = (
        [float(label_smoothing)] * copies
        if isinstance(label_smoothing, int | float)
        else list(label_smoothing)
    )
    if logits.dim() == 2:
        (one,) = smoothing
        return F.cross_entropy(logits, y, label_smoothing=one)[None]
    triples = zip(logits, y, smoothing, strict=True)
    return torch.stack(
        [F.cross_entropy(out, target, label_smoothing=eps) for out, target, eps in triples]
    )


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    execution: Execution = FP32,
    scaler: torch.amp.GradScaler | None = None,
    beat: Callable[[], None] = lambda: None,
    label_smoothing: float | Sequence[float] = 0.0,
) -> list[float]:
    """One pass over this rank's batches; each copy's mean loss over every rank's examples
    (one value for a single network). The forward runs under ``execution``'s autocast;
    ``scaler`` (fp16) scales the loss. Packed copies minimise the SUM of their losses, whose
    gradient for each copy is that copy's own. ``label_smoothing``: the recipe's, of the
    cross-entropy."""
    scaler = scaler or execution.scaler(device)
    loss_sums, count = torch.zeros(0, dtype=torch.float64), 0.0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        with execution.autocast(device):
            losses = seed_losses(model(execution.inputs(x)), y, label_smoothing)
        scaler.scale(losses.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        beat()
        batch_sums = losses.detach().double().cpu() * y.shape[-1]
        loss_sums = batch_sums if not loss_sums.numel() else loss_sums + batch_sums
        count += y.shape[-1]
    totals = _all_reduce_sum([*loss_sums.tolist(), count], device)
    return [loss_sum / totals[-1] for loss_sum in totals[:-1]]


def _restore(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRScheduler,
    scaler: torch.amp.GradScaler,
    rank: int,
) -> tuple[int, float]:
    """Load Ray Train's checkpoint, if it hands one back: ``(first epoch to train, training
    seconds so far)``; ``(1, 0.0)`` on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 1, 0.0
    with checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"][rank])
    return state["epoch"] + 1, state["train_time_s"]


def _state(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    train_time: float,
) -> dict:
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

    rng: list[dict | None] = [None] * world
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(rng, _rng_state())
    else:
        rng[0] = _rng_state()
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state | {"rng": rng}, os.path.join(directory, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
