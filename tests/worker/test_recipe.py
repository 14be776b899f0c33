"""A sweep's own recipe: its fields over the preset's, the optimizer and schedule they make,
label smoothing, what sweep.json keeps of it, and a resume with another recipe refused."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ce_ray import cli
from ce_ray.configs import SweepConfig
from ce_ray.presets import SWEEP_PRESETS, Recipe
from ce_ray.results import storage
from ce_ray.theory.models import PackedSeeds
from ce_ray.worker.loop import lr_factor, make_optimizer, seed_losses

DIGITS = SWEEP_PRESETS["digits-mlp"].recipe


def sweep(**recipe) -> SweepConfig:
    return SweepConfig.from_preset("digits-mlp", alpha=2.4, num_points=3, **recipe)


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
