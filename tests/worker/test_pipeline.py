"""How a training worker feeds and runs its model: loader workers that do not change the
batches, and each precision / layout / compile path training with the same metrics."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ce_ray.configs import SweepConfig
from ce_ray.presets import SWEEP_PRESETS
from ce_ray.theory.spaces import CifarResNeXt29Space
from ce_ray.worker import data
from ce_ray.worker.loop import evaluate, make_optimizer, train_epoch
from ce_ray.worker.pipeline import Execution, train_loader
from tests.worker.test_loop import PILImages

CPU = torch.device("cpu")


def epoch_batches(dataset, workers: int, epochs=(1, 2)) -> list[list[torch.Tensor]]:
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=11)
    loader, tagged = train_loader(
        dataset, 5, sampler, seed=11, workers=workers, pin_memory=False, drop_last=False
    )
    batches = []
    for epoch in epochs:
        tagged.set_epoch(epoch)
        batches.append([x for x, _ in loader])
    return batches


def test_batches_do_not_depend_on_the_number_of_loader_workers():
    """CIFAR's random crop and flip, in 0 or 2 loader processes: the same tensors."""
    images = PILImages(12, data.cifar_transforms()[0], seed=5)
    alone, with_workers = epoch_batches(images, 0), epoch_batches(images, 2)
    for first, second in zip(alone, with_workers, strict=True):
        for a, b in zip(first, second, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... while each epoch draws new augmentations (and a new order).
    assert not torch.equal(torch.cat(alone[0]).sum(0), torch.cat(alone[1]).sum(0)) or not all(
        torch.equal(a, b) for a, b in zip(alone[0], alone[1], strict=True)
    )


def test_the_loader_leaves_the_training_rng_alone():
    images = PILImages(6, data.cifar_transforms()[0], seed=2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    epoch_batches(images, 0, epochs=(1,))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_each_precision_and_layout_trains_and_reports_the_same_metrics(precision, channels_last):
    execution = Execution(precision, channels_last)
    recipe = SWEEP_PRESETS["cifar10-resnext29"].recipe
    torch.manual_seed(0)
    network = CifarResNeXt29Space(num_classes=10).build(2, 2)
    optimizer, _ = make_optimizer(network, recipe)
    images = PILImages(8, data.cifar_transforms()[1], seed=1)
    before = [p.detach().clone() for p in network.parameters()]
    [loss] = train_epoch(
        execution.model(network), DataLoader(images, batch_size=4), optimizer, CPU, execution
    )
    [metrics] = evaluate(network, images, 4, CPU, 0, 1, top5=True, execution=execution)
    assert np.isfinite(loss) and set(metrics) == {"test_error", "test_error_top5", "test_examples"}
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))


def test_fp16_scales_the_loss_and_the_others_do_not():
    assert Execution("fp16").scaler(CPU).is_enabled()
    assert not Execution("bf16").scaler(CPU).is_enabled()


def test_a_compiled_model_trains_the_raw_modules_parameters():
    """torch.compile's wrapper shares the raw module's parameters, which are checkpointed.
    (aot_eager: the compile path without a C++ toolchain, which CI machines may lack.)"""
    torch.manual_seed(0)
    network = SWEEP_PRESETS["synthetic-mlp"].space.build(2, 4)
    execution = Execution(compile=True, compile_backend="aot_eager")
    compiled = execution.model(network)
    assert compiled is not network
    before = network.state_dict()["readout_weight"].clone()
    optimizer, _ = make_optimizer(network, SWEEP_PRESETS["synthetic-mlp"].recipe)
    dataset = TensorDataset(torch.randn(16, 16), torch.randint(0, 4, (16,)))
    [loss] = train_epoch(compiled, DataLoader(dataset, batch_size=8), optimizer, CPU, execution)
    assert np.isfinite(loss)
    assert not torch.equal(network.state_dict()["readout_weight"], before)


@pytest.mark.parametrize(
    ("preset", "gpus", "cpus", "expected"),
    [
        ("cifar10-resnext29", 0.0, 1.0, ("fp32", False, 0)),
        ("cifar10-resnext29", 1.0, 4.0, ("bf16", True, 3)),
        ("digits-mlp", 1.0, 2.0, ("bf16", False, 1)),
    ],
)
def test_execution_defaults_follow_the_device(preset, gpus, cpus, expected):
    chosen = SweepConfig.from_preset(preset, gpus_per_worker=gpus, cpus_per_worker=cpus)
    assert (chosen.precision, chosen.channels_last, chosen.loader_workers) == expected
