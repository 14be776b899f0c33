"""The one-model ensemble equals (1/sqrt(m)) * sum of its members (Eq. 4), and trains; seeds
packed into one model train as they would alone."""

import copy
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from ce_ray.presets import SWEEP_PRESETS
from ce_ray.theory.models import CollegialBottleneck, CollegialMLP, MemberEnsemble, PackedSeeds
from ce_ray.theory.spaces import FCSpace, ResNeXtBlockSpace
from ce_ray.worker.loop import make_optimizer, seed_losses
from tests.theory.ensembles import bottleneck_members, mlp_members, split_members


def member_gradient_in_ensemble(ensemble, member_index: int) -> list[torch.Tensor]:
    """The slices of the ensemble's gradients that belong to one member."""
    j = member_index
    if isinstance(ensemble, CollegialMLP):
        m, widths = ensemble.multiplicity, ensemble.widths
        grads = [ensemble.input_weight.grad.view(m, widths[0], -1)[j]]
        grads += [w.grad[j : j + 1] for w in ensemble.hidden_weights]
        grads.append(ensemble.readout_weight.grad.view(ensemble.out_features, m, -1)[:, j])
        return grads
    n = ensemble.width
    return [
        ensemble.conv1_weight.grad[j * n : (j + 1) * n],
        ensemble.conv2_weight.grad[j * n : (j + 1) * n],
        ensemble.conv3_weight.grad[:, j * n : (j + 1) * n],
    ]


CASES = [
    (lambda: CollegialMLP(12, [7, 5, 6], out_features=3, multiplicity=4), (5, 12), mlp_members),
    (lambda: CollegialMLP(9, [4], out_features=1, multiplicity=3), (2, 9), mlp_members),
    (lambda: CollegialBottleneck(8, 3, 6, multiplicity=5), (2, 8, 5, 5), bottleneck_members),
]


@pytest.mark.parametrize(("make", "input_shape", "split"), CASES)
def test_ensemble_equals_scaled_sum_of_members(make, input_shape, split):
    torch.manual_seed(0)
    ensemble = make().double()
    x = torch.randn(input_shape, dtype=torch.double)
    members = [member.double() for member in split(ensemble)]
    m = ensemble.multiplicity

    expected = sum(member(x) for member in members) / math.sqrt(m)
    output = ensemble(x)
    torch.testing.assert_close(output, expected)

    # Same loss through both; member j's gradient must equal its slice of the ensemble's.
    target = torch.randn_like(output)
    F.mse_loss(output, target).backward()
    F.mse_loss(sum(member(x) for member in members) / math.sqrt(m), target).backward()
    for j, member in enumerate(members):
        ensemble_grads = member_gradient_in_ensemble(ensemble, j)
        member_grads = member_gradient_in_ensemble(member, 0)
        for theirs, mine in zip(ensemble_grads, member_grads, strict=True):
            torch.testing.assert_close(theirs, mine)


def test_member_is_eq3_network():
    """multiplicity=1 is F(x) = sqrt(1/n_{L-1}) W_L relu(... relu(sqrt(2/n_0) W_1 x))."""
    torch.manual_seed(1)
    net = CollegialMLP(6, [4, 5], out_features=2).double()
    x = torch.randn(3, 6, dtype=torch.double)
    h = F.relu(math.sqrt(2 / 6) * x @ net.input_weight.T)
    h = F.relu(math.sqrt(2 / 4) * h @ net.hidden_weights[0][0].T)
    torch.testing.assert_close(net(x), math.sqrt(1 / 5) * h @ net.readout_weight.T)


@pytest.mark.parametrize(
    ("make", "input_shape"),
    [
        (lambda: CollegialMLP(10, [16, 16], out_features=3, multiplicity=6), (64, 10)),
        (lambda: CollegialBottleneck(4, 2, 3, multiplicity=3), (16, 4, 4, 4)),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_trains_with_an_ordinary_optimizer(make, input_shape, seed):
    """Seed-robust: over seeds 0..19, 200 Adam steps left at most 0.0004 (MLP) and 0.29
    (bottleneck) of the first loss; the 0.5 threshold holds for any of them."""
    torch.manual_seed(seed)
    teacher, model = make(), make()  # the teacher makes a target the model can fit
    x = torch.randn(input_shape)
    with torch.no_grad():
        target = teacher(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # same initial weights on every rank
        model = DistributedDataParallel(CollegialMLP(8, [6, 6], out_features=2, multiplicity=4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
        for _ in range(3):
            x = torch.randn(4, 8, generator=generator)
            optimizer.zero_grad()
            F.mse_loss(model(x), torch.zeros(4, 2)).backward()
            optimizer.step()
        results[rank] = torch.cat([p.detach().flatten() for p in model.parameters()])
    finally:
        dist.destroy_process_group()


def test_trains_under_ddp_with_gloo():
    """Two gloo ranks with different data end with identical (all-reduced) weights."""
    world_size = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(world_size, _free_port(), results), nprocs=world_size)
        weights = [results[r] for r in range(world_size)]
    torch.testing.assert_close(weights[0], weights[1])
    torch.manual_seed(0)
    initial = torch.cat([p.flatten() for p in CollegialMLP(8, [6, 6], 2, 4).parameters()])
    assert not torch.allclose(weights[0], initial)


@pytest.mark.parametrize(
    ("preset", "point", "input_shape"),
    [("digits-mlp", (10, 13), (64,)), ("cifar10-resnext29", (2, 4), (3, 32, 32))],
)
def test_packed_seeds_step_exactly_as_each_seed_alone(preset, point, input_shape):
    """In float64 (float32 rounding differs between one batched and S separate programs): S
    seeds in one PackedSeeds, each fed its own batches, end three optimizer steps with the
    weights -- and BatchNorm running statistics -- each seed reaches alone."""
    torch.set_default_dtype(torch.float64)
    try:
        seeds, batch = 3, 8
        space, recipe = SWEEP_PRESETS[preset].space, SWEEP_PRESETS[preset].recipe
        networks = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            networks.append(space.build(*point))
        alone = [copy.deepcopy(network) for network in networks]
        packed = PackedSeeds(networks)
        generator = torch.Generator().manual_seed(0)
        xs = torch.randn(3, seeds, batch, *input_shape, generator=generator)
        ys = torch.randint(0, 10, (3, seeds, batch), generator=generator)
        optimizer, _ = make_optimizer(packed, recipe)
        for x, y in zip(xs, ys, strict=True):
            optimizer.zero_grad()
            seed_losses(packed(x), y).sum().backward()
            optimizer.step()
        for s, network in enumerate(alone):
            optimizer, _ = make_optimizer(network, recipe)
            for x, y in zip(xs[:, s], ys[:, s], strict=True):
                optimizer.zero_grad()
                F.cross_entropy(network(x), y).backward()
                optimizer.step()
            packed_state = packed.seeds[s].state_dict()
            assert packed_state.keys() == network.state_dict().keys()
            for name, value in network.state_dict().items():
                torch.testing.assert_close(packed_state[name], value, rtol=1e-8, atol=1e-10)
        assert not torch.equal(
            packed.seeds[0].state_dict()[name], packed.seeds[1].state_dict()[name]
        )
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    ("space", "input_shape"),
    [
        (FCSpace(input_dim=12, depth=4, num_classes=3), (12,)),
        (ResNeXtBlockSpace(16, 16, 6), (16, 6, 6)),
    ],
    ids=["mlp", "bottleneck"],
)
def test_member_ensemble_equals_the_hand_written_ensemble(space, input_shape):
    """The vectorised ensemble of any members, on the hand-written ensembles' weights: the
    same outputs, and the same multiply-accumulates as the closed form."""
    m, n = 5, 7
    torch.manual_seed(0)
    hand_written = space.build(m, n)
    ensemble = MemberEnsemble(split_members(hand_written))
    x = torch.randn(9, *input_shape)
    torch.testing.assert_close(ensemble(x), hand_written(x), rtol=1e-5, atol=1e-5)
    with FlopCounterMode(display=False) as counter:
        ensemble(x[:1])
    assert counter.get_total_flops() // 2 == space.flops(m, n)
    assert sum(p.numel() for p in ensemble.parameters()) == space.num_params(m, n)
