"""A sweep's own recipe: its fields over the preset's, the optimizer and schedule they make,
label smoothing, what sweep.json keeps of it, and a resume with another recipe refused; a
tuned sweep's candidate recipes: drawn once, packed as each alone, the best on validation
chosen."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ce_ray import cli
from ce_ray.configs import SweepConfig, draw_candidates
from ce_ray.presets import SWEEP_PRESETS, Recipe
from ce_ray.results import storage
from ce_ray.results.tables import TrialOutcome, candidates_frame, chosen_recipes
from ce_ray.theory.models import PackedSeeds
from ce_ray.worker.loop import keep_copies, lr_factor, make_optimizer, rungs, seed_losses
from ce_ray.worker.pipeline import RepeatedBatches

DIGITS = SWEEP_PRESETS["digits-mlp"].recipe


def sweep(**recipe) -> SweepConfig:
    return SweepConfig.from_preset("digits-mlp", alpha=2.4, **({"num_points": 3} | recipe))


def test_the_recipe_is_the_preset_s_with_the_fields_given():
    assert sweep().recipe == DIGITS
    given = sweep(optimizer="adamw", lr=0.01, epochs=4, schedule="cosine", warmup_epochs=1)
    assert given.recipe == dataclasses.replace(
        DIGITS, optimizer="adamw", lr=0.01, epochs=4, schedule="cosine", warmup_epochs=1
    )
    # sweep.json keeps the fields given only: a preset-recipe sweep stores what it always did.
    assert not {"optimizer", "lr", "schedule"} & set(sweep().to_json())
    stored = given.to_json()
    assert (stored["optimizer"], stored["lr"], stored["warmup_epochs"]) == ("adamw", 0.01, 1)
    assert SweepConfig.from_json(stored).recipe == given.recipe


def test_each_schedule_s_factors():
    def factors(**fields) -> list[float]:
        recipe = dataclasses.replace(DIGITS, epochs=6, **fields)
        return [lr_factor(recipe, steps) for steps in range(6)]

    assert factors(schedule="constant") == [1.0] * 6
    assert factors(schedule="step", milestones=(2, 4), lr_decay=0.5) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert factors(schedule="constant", warmup_epochs=2) == pytest.approx(
        [1 / 3, 2 / 3, 1, 1, 1, 1]
    )
    cosine = factors(schedule="cosine", warmup_epochs=2)
    assert cosine[:2] == pytest.approx([1 / 3, 2 / 3])
    assert cosine[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_the_optimizer_and_schedule_follow_the_recipe():
    model = torch.nn.Linear(4, 2)
    optimizer, schedule = make_optimizer(model, dataclasses.replace(DIGITS, optimizer="adamw"))
    assert type(optimizer) is torch.optim.AdamW
    assert type(schedule) is torch.optim.lr_scheduler.MultiStepLR  # the presets' own
    recipe = Recipe(
        optimizer="sgd", lr=0.2, epochs=4, batch_size=8, momentum=0.5, schedule="cosine"
    )
    optimizer, schedule = make_optimizer(model, dataclasses.replace(recipe, warmup_epochs=1))
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.5
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.1, 0.2, 0.2 * 0.5 * (1 + math.cos(math.pi / 3)), 0.05])


def test_label_smoothing_is_each_packed_seed_s_own_cross_entropy():
    torch.manual_seed(0)
    members = [torch.nn.Linear(5, 3) for _ in range(2)]
    x, y = torch.randn(2, 7, 5), torch.randint(0, 3, (2, 7))
    packed = PackedSeeds(members)(x)
    got = seed_losses(packed, y, label_smoothing=0.2)
    alone = [F.cross_entropy(m(x[i]), y[i], label_smoothing=0.2) for i, m in enumerate(members)]
    torch.testing.assert_close(got, torch.stack(alone))
    assert not torch.allclose(got, seed_losses(packed, y))
    (one,) = seed_losses(members[0](x[0]), y[0], label_smoothing=0.2)
    torch.testing.assert_close(one, alone[0])


def test_a_resume_with_another_recipe_is_refused(tmp_path):
    """sweep.json leaves the preset's recipe out; a stored --lr left out now is a change too."""
    directory = str(tmp_path)
    fields = ("optimizer", "lr", "weight_decay", "momentum", "batch_size", "schedule")
    omitted = (*fields, "warmup_epochs", "label_smoothing")
    storage.check_or_write_config(directory, sweep(lr=0.01).to_json(), "sweep.json", omitted)
    storage.check_or_write_config(directory, sweep(lr=0.01).to_json(), "sweep.json", omitted)
    for other in (sweep(lr=0.02), sweep()):
        with pytest.raises(ValueError, match="different configuration \\(lr: 0.01 -> "):
            storage.check_or_write_config(directory, other.to_json(), "sweep.json", omitted)
    assert json.loads((tmp_path / "sweep.json").read_text())["lr"] == 0.01


def test_a_recipe_file_gives_the_fields_the_flags_do_not(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"optimizer": "adamw", "lr": 0.02, "epochs": 3}))
    args = cli.build_parser().parse_args(
        ["sweep", "primal", "--alpha", "2.4", "--recipe", str(path), "--lr", "0.05"]
    )
    recipe = cli.sweep_config(args).recipe
    assert (recipe.optimizer, recipe.lr, recipe.epochs) == ("adamw", 0.05, 3)


def test_the_candidates_are_one_seeded_draw_within_their_ranges():
    space = {"lr": [1e-4, 1e-1, "log"], "weight_decay": [0.0, 1e-3, "linear"]}
    config = sweep(tune_trials=64, tune=space, num_points=5)
    drawn = config.candidates
    assert drawn == draw_candidates(space, 64, seed=0) != draw_candidates(space, 64, seed=1)
    lrs = np.array([c["lr"] for c in drawn])
    decays = np.array([c["weight_decay"] for c in drawn])
    assert ((1e-4 <= lrs) & (lrs <= 1e-1)).all() and ((0 <= decays) & (decays <= 1e-3)).all()
    # Log-uniform: about as many draws in each decade (uniform would put ~90% in the last).
    assert (lrs < 1e-2).sum() > 25
    assert sweep(tune_trials=1).candidates == ({},) and sweep().candidates == ()
    assert sweep(tune_trials=2, tune=space).validation == 0.1  # tuning holds validation out
    stored = config.to_json()
    assert stored["tune_trials"] == 64 and SweepConfig.from_json(stored).candidates == drawn


def test_packed_candidates_each_step_as_its_recipe_alone():
    """In float64, as the packed seeds' test: K copies of one network (one initialisation)
    with their own lr, weight decay, momentum and label smoothing, fed the same batches,
    end three steps where each alone, with its own recipe, ends."""
    torch.set_default_dtype(torch.float64)
    try:
        base = dataclasses.replace(DIGITS, optimizer="sgd")
        fields = [
            {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "label_smoothing": 0.0},
            {"lr": 0.01, "weight_decay": 1e-3, "momentum": 0.5, "label_smoothing": 0.1},
            {"lr": 0.3, "weight_decay": 1e-4, "momentum": 0.0, "label_smoothing": 0.2},
        ]
        recipes = [dataclasses.replace(base, **f) for f in fields]
        space = SWEEP_PRESETS["digits-mlp"].space
        networks = []
        for _ in recipes:
            torch.manual_seed(5)
            networks.append(space.build(3, 8))
        alone = [copy.deepcopy(network) for network in networks]
        packed = PackedSeeds(networks)
        generator = torch.Generator().manual_seed(0)
        xs, ys = torch.randn(3, 8, 64, generator=generator), torch.randint(0, 10, (3, 8))
        optimizer, _ = make_optimizer(packed, base, recipes)
        assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01, 0.3]
        smoothing = [r.label_smoothing for r in recipes]
        batches = RepeatedBatches(list(zip(xs, ys, strict=True)), len(recipes))
        for x, y in batches:
            optimizer.zero_grad()
            seed_losses(packed(x), y, smoothing).sum().backward()
            optimizer.step()
        for k, (network, recipe) in enumerate(zip(alone, recipes, strict=True)):
            optimizer, _ = make_optimizer(network, recipe)
            for x, y in zip(xs, ys, strict=True):
                optimizer.zero_grad()
                F.cross_entropy(network(x), y, label_smoothing=recipe.label_smoothing).backward()
                optimizer.step()
            for name, value in network.state_dict().items():
                torch.testing.assert_close(
                    packed.seeds[k].state_dict()[name], value, rtol=1e-8, atol=1e-10
                )
        first = packed.seeds[0].state_dict()["input_weight"]
        assert not torch.equal(first, packed.seeds[1].state_dict()["input_weight"])
    finally:
        torch.set_default_dtype(torch.float32)


def test_each_point_chooses_its_lowest_validation_error_among_finished_candidates():
    config = sweep(tune_trials=3, tune={"lr": [1e-3, 1e-1, "log"]}, num_points=2, epochs=2)
    (n1, m1), (n2, m2) = config.points

    def history(errors: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"epoch": range(1, len(errors) + 1), "val_error": errors})

    outcomes = [TrialOutcome("a", n1, m1, k, None, 3) for k in range(3)]
    outcomes += [
        TrialOutcome("b", n2, m2, k, "RuntimeError: lost" if k == 0 else None, 3) for k in range(3)
    ]
    histories = {
        ("a", 0): history([50.0, 20.0]),
        ("a", 1): history([10.0, 12.0]),  # best at its first epoch: judged by its last
        ("a", 2): history([30.0, 12.0]),  # a tie with candidate 1: the first wins
        ("b", 0): history([1.0, 1.0]),  # failed: not a choice
        ("b", 1): history([9.0]),  # stopped before the last epoch: not a choice
        ("b", 2): history([40.0, 30.0]),
    }
    frame = candidates_frame(outcomes, histories, config, "e")
    assert frame[frame["chosen"]][["n", "candidate"]].values.tolist() == [[n1, 1], [n2, 2]]
    assert frame.groupby("candidate")["lr"].nunique().eq(1).all()  # the same K at each point
    chosen = chosen_recipes(frame, config)
    assert chosen[n1, m1].val_error == 12.0 and chosen[n2, m2].recipe == config.candidates[2]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_candidates_halved_at_a_rung_go_on_as_each_alone(optimizer):
    """ASHA's halving inside a search: 4 packed candidates step twice, the 2nd and 4th go on
    alone in a smaller model (their momentum or Adam moments and their lr schedule carried
    over) for two more steps, and end where each, alone with its recipe, ends (float64)."""
    torch.set_default_dtype(torch.float64)
    try:
        base = dataclasses.replace(
            DIGITS, optimizer=optimizer, schedule="cosine", warmup_epochs=1, epochs=4
        )
        recipes = [
            dataclasses.replace(base, lr=lr, weight_decay=wd, momentum=0.5)
            for lr, wd in ((0.01, 0.0), (0.02, 1e-3), (0.005, 0.0), (0.03, 1e-4))
        ]
        space = SWEEP_PRESETS["digits-mlp"].space
        networks = []
        for _ in recipes:
            torch.manual_seed(7)
            networks.append(space.build(2, 8))
        alone = [copy.deepcopy(network) for network in networks]
        generator = torch.Generator().manual_seed(1)
        xs, ys = torch.randn(4, 8, 64, generator=generator), torch.randint(0, 10, (4, 8))
        model: torch.nn.Module = PackedSeeds(networks)
        optimizer_, schedule = make_optimizer(model, base, recipes)
        alive = [0, 1, 2, 3]
        for step, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if step == 2:
                model, optimizer_, schedule = keep_copies(
                    model, optimizer_, schedule, base, recipes, [1, 3], alive
                )
                alive = [1, 3]
            optimizer_.zero_grad()
            seed_losses(
                model(x.expand(len(alive), *x.shape)), y.expand(len(alive), 8)
            ).sum().backward()
            optimizer_.step()
            schedule.step()
        for position, k in enumerate(alive):
            network = alone[k]
            optimizer_, schedule = make_optimizer(network, recipes[k])
            for x, y in zip(xs, ys, strict=True):
                optimizer_.zero_grad()
                F.cross_entropy(network(x), y).backward()
                optimizer_.step()
                schedule.step()
            for name, value in network.state_dict().items():
                torch.testing.assert_close(
                    model.seeds[position].state_dict()[name], value, rtol=1e-8, atol=1e-10
                )
    finally:
        torch.set_default_dtype(torch.float32)
    assert rungs(15) == [3, 6, 12] and rungs(4) == [1, 2] and rungs(1) == []
