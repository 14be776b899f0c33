"""Mutation check: does the suite fail when the code is wrong?

Applies each named mutation (one plausible bug) to a temporary copy of the repository, runs the
test files that should catch it there, and reports the mutations the tests let through
("survivors"). Not part of CI (it runs the relevant tests once per mutation, several minutes
in all); run it before calling a change to the maths or the storage done:

    python tools/mutations.py [NAME ...]

Prints a table and, as its last line, a JSON object ``{"mutations": N, "survivors": [...]}``.
Exit status 1 when a mutation survives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file inside the repository
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments: files or node ids, "-k" expressions allowed


MUTATIONS = (
    # --- the generic sampler's vectorised draws ---
    Mutation(
        "a block's draws are all one initialisation",
        "ce_ray/theory/member_draws.py",
        'randomness="different")(torch.zeros(size))',
        'randomness="same")(torch.zeros(size))',
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "every block of draws has the same seed",
        "ce_ray/theory/member_draws.py",
        "        _seeded(derive_seed(seed, block))",
        "        _seeded(derive_seed(seed, 0))",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "tensors a constructor creates are not batched (in-place initialisers fail)",
        "ce_ray/theory/member_draws.py",
        "            and func in _FACTORIES\n",
        "            and False\n",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "a constructor that draws with NumPy is vectorised",
        "ce_ray/theory/member_draws.py",
        "        not torch.equal(drawn[name][0], drawn[name][1])",
        "        True",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "the first layer's share of K is left out under its law",
        "ce_ray/theory/first_layer.py",
        '    return torch.einsum("tir,ij,tjr->t", d[:, 0], gram, d[:, -1])',
        "    return torch.zeros(len(d), dtype=d.dtype)",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "the first-layer law is used without checking it against autograd",
        "ce_ray/theory/member_ntk.py",
        "    return found if torch.allclose(by_law, by_autograd, rtol=tolerance, atol=0) else None",
        "    return found",
        ("tests/theory/test_member_ntk.py",),
    ),
    # --- placement groups that dead Train controllers leave ---
    Mutation(
        "a placement group whose creator actor lives is freed",
        "ce_ray/experiments/ray_compat.py",
        "            dead = creator_is_dead(state.actor_table(creator.hex()))",
        "            dead = True",
        ("tests/experiments/test_sweep.py", "-k", "dead_actors"),
    ),
    Mutation(
        "a placement group whose creator actor died is kept",
        "ce_ray/experiments/ray_compat.py",
        "            dead = creator_is_dead(state.actor_table(creator.hex()))",
        "            dead = False",
        ("tests/experiments/test_sweep.py", "-k", "dead_actors"),
    ),
    Mutation(
        "the driver's own placement groups (Tune's trials') are freed",
        "ce_ray/experiments/ray_compat.py",
        "        dead = None\n",
        "        dead = True\n",
        ("tests/experiments/test_sweep.py", "-k", "dead_actors"),
    ),
    Mutation(
        "no sweep frees orphaned placement groups",
        "ce_ray/experiments/sweep.py",
        "        FreeOrphanedGroups(log),\n",
        "",
        ("tests/experiments/test_sweep.py", "-k", "dead_actors"),
    ),
    # --- the drawing half of the first-layer law ---
    Mutation(
        "a 1x1 convolution's output gradient read with pixels and channels swapped",
        "ce_ray/theory/first_layer.py",
        "            return outputs.reshape(t, e, self.rows, -1).transpose(-1, -2)",
        "            return outputs.reshape(t, e, -1, self.rows)",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "a Gaussian first weight's std taken as its scale alone (the draw's own std left out)",
        "ce_ray/theory/first_layer.py",
        "    return (index, abs(c) * std) if made_from_u and rest_unchanged else None",
        "    return (index, abs(c)) if made_from_u and rest_unchanged else None",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "W1's products are drawn with unit std whatever W1's",
        "ce_ray/theory/first_layer.py",
        "    products = (z @ root) * std  # (count, rows, E k)",
        "    products = z @ root  # (count, rows, E k)",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "pixels' products laid out as if they were tokens",
        "ce_ray/theory/first_layer.py",
        "        if self.conv:\n            products = products.transpose(-1, -2)\n",
        "",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "a first weight whose draw made another tensor is taken for an independent draw",
        "ce_ray/theory/first_layer.py",
        "    return (index, abs(c) * std) if made_from_u and rest_unchanged else None",
        "    return (index, abs(c) * std) if made_from_u else None",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "a first weight scaled by its own draw (v / |v|) is taken for a Gaussian one",
        "ce_ray/theory/first_layer.py",
        "    return (index, abs(c) * std) if made_from_u and rest_unchanged else None",
        "    return (index, abs(c) * std) if rest_unchanged else None",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "a normal draw of non-zero mean is taken for a zero-mean one",
        "ce_ray/theory/member_draws.py",
        "created.detach().clone() if law[0] == 0 else None",
        "created.detach().clone()",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "the drawn products are ignored (W1 left at zeros is multiplied)",
        "ce_ray/theory/first_layer.py",
        "        if self.product is None:\n            out = func(*args, **kwargs)",
        "        if True:\n            out = func(*args, **kwargs)",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "a block whose skipped draw missed W1 is used",
        "ce_ray/theory/member_draws.py",
        "    if undrawn and drawn[undrawn].any():\n        return False\n",
        "",
        ("tests/theory/test_member_ntk.py",),
    ),
    # --- a sweep of your own member ---
    Mutation(
        "a member's network is not checked for the dataset's logits",
        "ce_ray/theory/member.py",
        "        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, classes):",
        "        if not isinstance(output, torch.Tensor):",
        ("tests/test_bad_input.py", "-k", "sweep"),
    ),
    Mutation(
        "network(m, n) that ignores m is accepted",
        "ce_ray/theory/member.py",
        "    if sizes[1] <= sizes[0]:",
        "    if False:",
        ("tests/test_bad_input.py", "-k", "sweep"),
    ),
    Mutation(
        "--alpha-from takes a fit of another block for a member's sweep",
        "ce_ray/experiments/fit_alpha.py",
        "    if member and fitted != member:",
        "    if False:",
        ("tests/test_bad_input.py", "-k", "sweep"),
    ),
    Mutation(
        "a member's sweep.json has no architecture fingerprint",
        "ce_ray/configs.py",
        '        record |= {"architecture": self.architecture} if self.architecture else {}',
        "        pass",
        ("tests/test_member_sweep.py",),
    ),
    Mutation(
        "a member's examples are not reshaped to --input-shape",
        "ce_ray/theory/models.py",
        "        return self.network(x.reshape(len(x), *self.shape))",
        "        return self.network(x)",
        ("tests/test_member_sweep.py",),
    ),
    Mutation(
        "a member's trial trains the preset's network",
        "ce_ray/worker/loop.py",
        "        networks.append(sweep.space.network(m, n))",
        "        networks.append(sweep.spec.space.build(m, n))",
        ("tests/test_member_sweep.py",),
    ),
    Mutation(
        "a member's input shape is not checked against the dataset's examples",
        "ce_ray/theory/member.py",
        "        if math.prod(shape) != values:",
        "        if False:",
        ("tests/test_bad_input.py", "-k", "sweep"),
    ),
    Mutation(
        "a stored sweep's points are derived again from its curve when read back",
        "ce_ray/configs.py",
        '            config.__dict__["points"] = tuple((int(n), int(m)) for n, m in data["points"])',
        "            pass",
        ("tests/test_member_sweep.py", "-k", "read_back"),
    ),
    Mutation(
        "a help string states a default the command does not use",
        "ce_ray/options.py",
        'help="points on the curve (5)"',
        'help="points on the curve (6)"',
        ("tests/test_cli.py", "-k", "help_string"),
    ),
    Mutation(
        "a preset's sweep takes the member's path (alpha required, a network check)",
        "ce_ray/configs.py",
        "        return self.spec.space",
        "        return FIT_PRESETS[self.spec.fit_preset].space",
        ("tests/test_member_sweep.py", "tests/test_bad_input.py", "-k", "sweep"),
    ),
    # --- your own member: tracing, checks, the generic sampler, the ensemble ---
    Mutation(
        "traced: a convolution's fan-in ignores its kernel",
        "ce_ray/theory/traced.py",
        "math.prod(int(d) for d in weight.shape[1:])",
        "int(weight.shape[1])",
        ("tests/theory/test_traced.py",),
    ),
    Mutation(
        "traced: a parameter is not followed through a transpose",
        "ce_ray/theory/traced.py",
        "    aten.transpose,\n",
        "",
        ("tests/theory/test_traced.py",),
    ),
    Mutation(
        "traced: a parameter times an activation is still that parameter",
        "ce_ray/theory/traced.py",
        "            return False  # times an activation",
        "            pass  # times an activation",
        ("tests/theory/test_traced.py",),
    ),
    Mutation(
        "traced: the products inside composite functions are not seen (function level only)",
        "ce_ray/theory/traced.py",
        "            self.contractions.append(Contraction(name, operation, fan_in))",
        "            if self.functions.current:\n"
        "                self.contractions.append(Contraction(name, operation, fan_in))",
        ("tests/theory/test_zoo.py", "-k", "sizes"),
    ),
    Mutation(
        "traced: a matrix no contraction reads is not reported",
        "ce_ray/theory/traced.py",
        "            if len(self.parameters[name]) >= 2",
        "            if len(self.parameters[name]) >= 20",
        ("tests/theory/test_zoo.py", "-k", "unplaced"),
    ),
    Mutation(
        "members: an architecture that changes with n passes without a word",
        "ce_ray/theory/member.py",
        "    warnings += _changes_with_n(widths, traces)\n",
        "",
        ("tests/theory/test_zoo.py", "-k", "unplaced"),
    ),
    Mutation(
        "draws: nn.init.normal_ replaced in place under autograd (the crash)",
        "ce_ray/theory/member_draws.py",
        "                    with torch.no_grad():\n                        created = created.copy_(numbers)",
        "                    created = created.copy_(numbers)",
        ("tests/theory/test_zoo.py", "-k", "sampled or in_place"),
    ),
    Mutation(
        "twin: each parameter's share is taken as written (no s^2)",
        "ce_ray/theory/member_ntk.py",
        "        kernel = kernel + weight_of(name, 1.0) * _share(g)",
        "        kernel = kernel + _share(g)",
        ("tests/theory/test_zoo.py", "-k", "twin"),
    ),
    Mutation(
        "twin: the first layer's law share is not weighed",
        "ce_ray/theory/member_ntk.py",
        "weight_of(first.weight, 1.0) * law_share(",
        "law_share(",
        ("tests/theory/test_zoo.py", "-k", "twin or flagged"),
    ),
    Mutation(
        "twin: a uniform draw's std taken as its half-width",
        "ce_ray/theory/twin.py",
        "(high - low) / math.sqrt(12), low, high)",
        "(high - low) / 2, low, high)",
        ("tests/theory/test_zoo.py", "-k", "idiom"),
    ),
    Mutation(
        "twin: trunc_normal_'s rejection step is not followed",
        "ce_ray/theory/twin.py",
        "                return _truncated(fresh, *outside)",
        "                return fresh",
        ("tests/theory/test_zoo.py", "-k", "idiom"),
    ),
    Mutation(
        "twin: a scaling by a number is not followed",
        "ce_ray/theory/twin.py",
        "            return before.scaled(number)",
        "            return before",
        ("tests/theory/test_zoo.py", "-k", "idiom"),
    ),
    Mutation(
        "twin: the plan samples the member as written for standard",
        "ce_ray/theory/member_ntk.py",
        'scales = init_scales(member, n, seed) if parameterisation == "standard" else None',
        "scales = None",
        ("tests/theory/test_zoo.py", "-k", "plan_records or flagged"),
    ),
    Mutation(
        "a stored configuration field left out now (a fit's --parameterisation, a sweep's "
        "--lr) is not a change",
        "ce_ray/results/storage.py",
        "        keys = [*config, *(k for k in omitted if k in stored and k not in config)]",
        "        keys = list(config)",
        ("tests/worker/test_recipe.py", "-k", "resume"),
    ),
    Mutation(
        "the recipe's fields given are not trained with",
        "ce_ray/configs.py",
        "        return dataclasses.replace(self.spec.recipe, epochs=self.epochs, **given)",
        "        return dataclasses.replace(self.spec.recipe, epochs=self.epochs)",
        ("tests/worker/test_recipe.py",),
    ),
    Mutation(
        "a warm-up is not applied",
        "ce_ray/worker/loop.py",
        "    if steps < warmup:",
        "    if False:",
        ("tests/worker/test_recipe.py",),
    ),
    Mutation(
        "label smoothing is dropped",
        "ce_ray/worker/loop.py",
        "        return F.cross_entropy(logits, y, label_smoothing=one)[None]",
        "        return F.cross_entropy(logits, y)[None]",
        ("tests/worker/test_recipe.py",),
    ),
    # --- your own data and a tuned sweep ---
    Mutation(
        "own data: the validation split is not held out of the training split",
        "ce_ray/own_data.py",
        "    return np.sort(order[held:]), np.sort(order[:held])",
        "    return np.sort(order), np.sort(order[:held])",
        ("tests/test_own_data.py",),
    ),
    Mutation(
        "own data: the splits do not follow the experiment seed",
        "ce_ray/own_data.py",
        "    order = np.random.default_rng(derive_seed(seed, key)).permutation(count)",
        "    order = np.random.default_rng(derive_seed(key)).permutation(count)",
        ("tests/test_own_data.py", "-k", "seed"),
    ),
    Mutation(
        "own data: the files' contents are left out of the fingerprint",
        "ce_ray/own_data.py",
        "    digest.update(contents)",
        "    pass",
        ("tests/test_own_data.py", "-k", "fingerprint or resume"),
    ),
    Mutation(
        "tuning: the candidates' draws ignore the experiment seed",
        "ce_ray/configs.py",
        "    generator = np.random.default_rng(derive_seed(seed, CANDIDATES_KEY))",
        "    generator = np.random.default_rng(derive_seed(CANDIDATES_KEY))",
        ("tests/worker/test_recipe.py", "-k", "candidates"),
    ),
    Mutation(
        "tuning: every packed candidate steps with the sweep's lr",
        "ce_ray/worker/loop.py",
        '            {"params": list(module.parameters()), "lr": copy.lr}',
        '            {"params": list(module.parameters()), "lr": recipe.lr}',
        ("tests/worker/test_recipe.py", "-k", "packed_candidates"),
    ),
    Mutation(
        "tuning: a point chooses its highest validation error",
        "ce_ray/results/tables.py",
        '    best = finished.sort_values(["final_val_error", "candidate"]).groupby(["n", "m"]).head(1)',
        '    best = finished.sort_values(["final_val_error", "candidate"]).groupby(["n", "m"]).tail(1)',
        ("tests/worker/test_recipe.py", "-k", "chooses"),
    ),
    Mutation(
        "tuning: ASHA's halving keeps the worse half of a point's candidates",
        "ce_ray/worker/loop.py",
        "    return sorted(ranked[: math.ceil(len(alive) / 2)])",
        "    return sorted(ranked[-math.ceil(len(alive) / 2) :])",
        ("tests/test_docs.py", "-k", "docstring"),
    ),
    Mutation(
        "tuning: a halved candidate loses its optimizer state",
        "ce_ray/worker/loop.py",
        "                new_optimizer.state[parameter] = optimizer.state[parameter]",
        "                pass",
        ("tests/worker/test_recipe.py", "-k", "halved"),
    ),
    Mutation(
        "tuning: a search judges its candidates on the test split",
        "ce_ray/worker/loop.py",
        "        test_set = None\n",
        "        pass\n",
        ("tests/experiments/test_own_data_sweep.py", "-k", "tuned"),
    ),
    Mutation(
        "sampler: PyTorch's batching-rule warnings pass on, one per call",
        "ce_ray/theory/member_ntk.py",
        "        found = _NO_BATCHING_RULE.search(str(warning.message))",
        "        found = None",
        ("tests/theory/test_zoo.py", "-k", "note"),
    ),
    Mutation(
        "members that share a parameter are accepted",
        "ce_ray/theory/member.py",
        "    _check_no_shared_storage(smallest, build(member, widths[0]), widths[0])",
        "    pass",
        ("tests/theory/test_member.py",),
    ),
    Mutation(
        "generic sampler: every draw from the same seed",
        "ce_ray/theory/member_draws.py",
        "            _seeded(derive_seed(seed, index))",
        "            _seeded(seed)",
        ("tests/theory/test_member_ntk.py",),
    ),
    Mutation(
        "the vectorised ensemble is not scaled by 1/sqrt(m)",
        "ce_ray/theory/models.py",
        "return outputs.sum(dim=0) / math.sqrt(len(self.members))",
        "return outputs.sum(dim=0)",
        ("tests/theory/test_models.py", "-k", "member_ensemble"),
    ),
    Mutation(
        "law checks: E[K] growing with n is never flagged",
        "ce_ray/theory/alpha.py",
        "grows = slope - 2 * se > flat_slope",
        "grows = False",
        ("tests/theory/test_member_ntk.py", "-k", "law"),
    ),
    Mutation(
        "ASHA: training never waits for Tune's decision",
        "ce_ray/worker/records.py",
        "while epoch > 0 and read_decision(record) < epoch:",
        "while False:",
        ("tests/worker/test_records.py",),
    ),
    Mutation(
        "a trial never reports its decision to the worker",
        "ce_ray/experiments/trial.py",
        "            if decide:\n                records.write_decision(record, reported)",
        "            pass",
        (
            "tests/experiments/test_sweep.py::test_packed_seeds_and_loader_processes_change_no_number_and_asha_stops_losers_early",
        ),
    ),
    # --- the sweep's console ---
    Mutation(
        "the progress line counts only the trials Tune has created",
        "ce_ray/experiments/console.py",
        "total = max(total, len(trials))",
        "total = len(trials)",
        ("tests/experiments/test_console.py",),
    ),
    Mutation(
        "a sweep's fit of alpha drops its last task line",
        "ce_ray/experiments/console.py",
        "if match and last and match.group(1) != match.group(2) and now - last[0] < every_s:",
        "if match and last and now - last[0] < every_s:",
        ("tests/experiments/test_console.py",),
    ),
    Mutation(
        "a stopped trial reads as finished",
        "ce_ray/experiments/console.py",
        'how = "finished" if epoch >= self.epochs else "stopped early by the scheduler"',
        'how = "finished"',
        ("tests/experiments/test_console.py",),
    ),
    Mutation(
        "the test-error plot keeps matplotlib's minor log ticks",
        "ce_ray/results/plots.py",
        "    axes.xaxis.set_minor_locator(NullLocator())\n",
        "",
        ("tests/results/test_report.py",),
    ),
    # --- bookkeeping added with the layers, limits and the stall watch ---
    Mutation(
        "ResNeXt stages: no projection shortcut on a stage's first block",
        "ce_ray/theory/spaces.py",
        "if block == 0:  # every stage's first block changes the channels: a projection",
        "if False:",
        ("tests/theory/test_spaces.py",),
    ),
    Mutation(
        "width grids not bounded",
        "ce_ray/theory/curves.py",
        "if count > MAX_GRID_VALUES:",
        "if False:",
        ("tests/test_bad_input.py", "-k", "widths"),
    ),
    Mutation(
        "a trial's packed model state not checked against memory",
        "ce_ray/configs.py",
        "            self.check_trial_memory()",
        "            pass",
        ("tests/test_bad_input.py", "-k", "pack-seeds"),
    ),
    Mutation(
        "a location's credentials accepted",
        "ce_ray/options.py",
        'if "://" in text and "@" in urlsplit(text).netloc:',
        "if False:",
        ("tests/test_bad_input.py", "-k", "credentials or u:p or SeCrEt"),
    ),
    Mutation(
        "a plain command joins a record of ray start that another user may write",
        "ce_ray/experiments/cluster.py",
        "        if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):",
        "        if False:",
        ("tests/experiments/test_joining.py",),
    ),
    Mutation(
        "a plain command joins another user's record of ray start",
        "ce_ray/experiments/cluster.py",
        "        if status.st_uid != os.getuid():",
        "        if False:",
        ("tests/experiments/test_joining.py",),
    ),
    Mutation(
        "report imports the member that sweep.json names",
        "ce_ray/results/report.py",
        '    seed = record.get("seed") if isinstance(record, dict) else None',
        '    seed = record.get("seed") if isinstance(record, dict) else None\n'
        "    __import__(record['member'].split(':')[0]) if 'member' in record else None",
        ("tests/results/test_report.py", "-k", "runs_no_code"),
    ),
    Mutation(
        "a placement group whose creator the actor table does not hold is taken for dead",
        "ce_ray/experiments/ray_compat.py",
        '    return actor_record.get("State") == "DEAD" if actor_record else None',
        '    return actor_record.get("State", "DEAD") == "DEAD"',
        ("tests/experiments/test_ray_compat.py",),
    ),
    Mutation(
        "a failed look for orphaned groups ends the sweep",
        "ce_ray/experiments/sweep.py",
        "        except Exception as error:  # an RPC that failed, a changed private API: the sweep goes on",
        "        except ZeroDivisionError as error:",
        ("tests/experiments/test_sweep.py", "-k", "failed_look"),
    ),
    Mutation(
        "nothing beats while a worker waits alive (an upload, a decision)",
        "ce_ray/worker/records.py",
        "        while not done.wait(HEARTBEAT_S / 2):\n            beat()",
        "        while not done.wait(HEARTBEAT_S / 2):\n            pass",
        ("tests/worker/test_loop.py", "-k", "beats_while"),
    ),
    Mutation(
        "a worker group being set up holds the stall clock (a worker frozen in its start goes unseen)",
        "ce_ray/experiments/trial.py",
        '        if controlled in SETTING_UP:\n            return "setting up"',
        '        if controlled in SETTING_UP:\n            return "waiting"',
        ("tests/experiments/test_trial_watch.py",),
    ),
    Mutation(
        "the start-up allowance ignores the sweep's slowest start-up",
        "ce_ray/experiments/trial.py",
        "        startup = stall_limit_s(self.floor_s, records.longest_startup(os.path.dirname(self.record)))",
        "        startup = stall_limit_s(self.floor_s, 0.0)",
        ("tests/experiments/test_trial_watch.py",),
    ),
    Mutation(
        "a first beat records no start-up",
        "ce_ray/experiments/trial.py",
        "                records.write_startup(self.record, now - self.group_up_at)",
        "                pass",
        ("tests/experiments/test_trial_watch.py",),
    ),
    Mutation(
        "a fit's config.json stores the network a sweep trains",
        "ce_ray/configs.py",
        "        member = {k: v for k, v in self.space.stored().items() if k in FIT_MEMBER_FIELDS}",
        "        member = self.space.stored()",
        ("tests/test_member_sweep.py", "-k", "fit_stores"),
    ),
    Mutation(
        "a task is taken for stalled while the State API is silent",
        "ce_ray/experiments/tasks.py",
        '                if state == "unknown":  # no answer is not a stall: asked again next poll',
        "                if False:",
        ("tests/experiments/test_stalls.py", "-k", "silent"),
    ),
    Mutation(
        "a restart by Ray Train goes unsaid",
        "ce_ray/experiments/console.py",
        "if seen is not None and attempt > seen:",
        "if False:",
        ("tests/experiments/test_console.py", "-k", "restart"),
    ),
    Mutation(
        "the kept log misses Ray's records",
        "ce_ray/experiments/console.py",
        "    ray_logger.addHandler(handler)\n",
        "    pass\n",
        ("tests/experiments/test_console.py", "-k", "kept_log"),
    ),
    Mutation(
        "Tune's timing hints reach the quiet console",
        "ce_ray/experiments/console.py",
        "return not (record.name == TUNE_TIMING and record.levelno < logging.ERROR)",
        "return True",
        ("tests/experiments/test_console.py", "-k", "kept_log"),
    ),
    Mutation(
        "MLflow logs a resumed run's epochs again",
        "ce_ray/experiments/trackers.py",
        'r["seed_index"] == key.seed_index and r["epoch"] > last]',
        'r["seed_index"] == key.seed_index]',
        ("tests/jobs/test_submitted_jobs.py", "-k", "stopped_job"),
    ),
    Mutation(
        "an MLflow URI's credentials accepted",
        "ce_ray/options.py",
        "if parts.username or parts.password:",
        "if False:",
        ("tests/test_bad_input.py", "-k", "mlflow"),
    ),
    Mutation(
        "the unpickler allows every global",
        "ce_ray/worker/data.py",
        "        if (module, name) not in self.ALLOWED:",
        "        if False:",
        ("tests/worker/test_loop.py", "-k", "run_code"),
    ),
    Mutation(
        "the token left as Ray writes it",
        "ce_ray/experiments/local_head.py",
        "            path.chmod(mode)",
        "            pass",
        ("tests/jobs/test_submitted_jobs.py", "-k", "private"),
    ),
    # --- scaling constants of the models (Eq. 3, Fig. 5) ---
    Mutation(
        "bottleneck 3x3 scaled by sqrt(2/n), not sqrt(2/(9n))",
        "ce_ray/theory/models.py",
        "h = F.relu(h * math.sqrt(2.0 / (9 * n)))",
        "h = F.relu(h * math.sqrt(2.0 / n))",
        ("tests/theory/test_ntk.py",),
    ),
    Mutation(
        "bottleneck 3x3 scaled by sqrt(2/(8n)) (a factor 9/8)",
        "ce_ray/theory/models.py",
        "h = F.relu(h * math.sqrt(2.0 / (9 * n)))",
        "h = F.relu(h * math.sqrt(2.0 / (8 * n)))",
        ("tests/theory/test_ntk.py",),
    ),
    Mutation(
        "bottleneck ReLU after the 3x3 dropped",
        "ce_ray/theory/models.py",
        "h = F.relu(h * math.sqrt(2.0 / (9 * n)))",
        "h = h * math.sqrt(2.0 / (9 * n))",
        ("tests/theory/test_ntk.py",),
    ),
    Mutation(
        "bottleneck first layer scaled by sqrt(1/n_in)",
        "ce_ray/theory/models.py",
        "h = F.relu(product * math.sqrt(2.0 / self.in_channels))",
        "h = F.relu(product * math.sqrt(1.0 / self.in_channels))",
        ("tests/theory/test_ntk.py",),
    ),
    Mutation(
        "MLP first layer scaled by sqrt(1/n0)",
        "ce_ray/theory/models.py",
        "h = F.relu(product * math.sqrt(2.0 / self.in_features))",
        "h = F.relu(product * math.sqrt(1.0 / self.in_features))",
        ("tests/theory/test_models.py", "tests/theory/test_ntk.py"),
    ),
    Mutation(
        "MLP hidden layers scaled by sqrt(2/(2 fan-in))",
        "ce_ray/theory/models.py",
        "* math.sqrt(2.0 / fan_in))",
        "* math.sqrt(1.0 / fan_in))",
        ("tests/theory/test_models.py", "tests/theory/test_ntk.py"),
    ),
    # --- S(n) and the curves (Eqs. 9-14, Algorithm 2) ---
    Mutation(
        "fc S(n) without the 1/n0 term",
        "ce_ray/theory/spaces.py",
        "return 1.0 / self.input_dim + (self.depth - 1) / np.asarray(n, dtype=np.float64)",
        "return (self.depth - 1) / np.asarray(n, dtype=np.float64)",
        ("tests/theory/test_spaces.py", "tests/theory/test_curves.py"),
    ),
    Mutation(
        "bottleneck S(n) with 1/n for the 3x3 (not 1/(9n))",
        "ce_ray/theory/spaces.py",
        "return 1.0 / in_channels + 1.0 / (9.0 * width) + 1.0 / width",
        "return 1.0 / in_channels + 1.0 / width + 1.0 / width",
        ("tests/theory/test_spaces.py", "tests/theory/test_curves.py"),
    ),
    Mutation(
        "member variance exp(alpha S) instead of exp(alpha S) - 1",
        "ce_ray/theory/curves.py",
        "var_member = np.expm1(alpha * fan_in_sum)",
        "var_member = np.exp(alpha * fan_in_sum)",
        ("tests/theory/test_curves.py",),
    ),
    Mutation(
        "dual m rounded up, not to the nearest",
        "ce_ray/theory/curves.py",
        "m = np.maximum(1, np.floor(m_curve + 0.5)).astype(np.int64)",
        "m = np.maximum(1, np.ceil(m_curve)).astype(np.int64)",
        ("tests/theory/test_curves.py",),
    ),
    Mutation(
        "primal m: ties and near-ties to the larger m",
        "ce_ray/theory/curves.py",
        "return np.where(upper_gap < lower_gap, upper, lower)",
        "return np.where(upper_gap <= lower_gap + 1, upper, lower)",
        ("tests/theory/test_curves.py",),
    ),
    Mutation(
        "primal m always rounded down",
        "ce_ray/theory/curves.py",
        "return np.where(upper_gap < lower_gap, upper, lower)",
        "return lower",
        ("tests/theory/test_curves.py",),
    ),
    # --- the NTK sampler and the fit (Algorithm 1) ---
    Mutation(
        "first-layer products drawn from N(0, I), not N(0, Gram)",
        "ce_ray/theory/ntk.py",
        "    return (z @ root).reshape(rows, inputs.shape[0], *inputs.shape[2:]).movedim(0, 1)",
        "    return z.reshape(rows, inputs.shape[0], *inputs.shape[2:]).movedim(0, 1)",
        ("tests/theory/test_ntk.py", "tests/theory/test_ntk.py"),
    ),
    Mutation(
        "log-ratio E[K^2]/E[K] (mean not squared)",
        "ce_ray/theory/alpha.py",
        "log_ratio=float(np.log(m2 / m1**2)),",
        "log_ratio=float(np.log(m2 / m1)),",
        (
            "tests/theory/test_alpha.py",
            "tests/experiments/test_fit_alpha.py::test_outputs_are_plain_parquet_and_png",
        ),
    ),
    Mutation(
        "WLS weights ignored",
        "ce_ray/theory/alpha.py",
        "root_w = np.sqrt(w)",
        "root_w = np.ones_like(w)",
        ("tests/theory/test_alpha.py",),
    ),
    # --- seeds and determinism ---
    Mutation(
        "shard seed ignores the shard index",
        "ce_ray/experiments/shards.py",
        "seed = derive_seed(config.seed, shard.width, shard.index)",
        "seed = derive_seed(config.seed, shard.width)",
        ("tests/experiments/test_fit_alpha.py::test_every_shard_of_a_width_draws_its_own_weights",),
    ),
    Mutation(
        "trial seed ignores the seed index",
        "ce_ray/worker/loop.py",
        "seeds = [derive_seed(sweep.seed, n, m, index) for index in indices]",
        "seeds = [derive_seed(sweep.seed, n, m) for index in indices]",
        (
            "tests/experiments/test_sweep.py::test_sweep_writes_parquet_and_resumes_without_retraining",
        ),
    ),
    # --- storage: atomic writes, resume ---
    Mutation(
        "writes go straight to the target",
        "ce_ray/results/storage.py",
        "temporary = f\"{parent}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}\"",
        "temporary = path",
        ("tests/results/test_storage.py",),
    ),
    Mutation(
        "a truncated work-item file counts as done on resume",
        "ce_ray/experiments/tasks.py",
        "if item.filename in present and storage.parquet_rows(location) != item.rows:",
        "if False:",
        (
            "tests/experiments/test_fit_alpha.py::test_a_killed_writer_and_a_truncated_shard_are_repaired_on_resume",
        ),
    ),
    Mutation(
        "leftover temporaries are kept on resume",
        "ce_ray/experiments/tasks.py",
        "if removed := storage.remove_temporaries(directory):",
        "if removed := 0:",
        (
            "tests/experiments/test_fit_alpha.py::test_a_killed_writer_and_a_truncated_shard_are_repaired_on_resume",
        ),
    ),
    Mutation(
        "a rerun ignores a changed configuration",
        "ce_ray/results/storage.py",
        "        if changed:\n            details",
        "        if False:\n            details",
        (
            "tests/experiments/test_fit_alpha.py::test_a_different_configuration_is_refused_and_nothing_is_written",
        ),
    ),
    Mutation(
        "a results location is not checked",
        "ce_ray/results/storage.py",
        '            fail(f"bucket {bucket!r} does not exist")',
        "            pass",
        ("tests/results/test_storage.py",),
    ),
    # --- preset wiring ---
    Mutation(
        "digits-mlp fits alpha on a depth-6 MLP, its curve uses depth 4",
        "ce_ray/presets.py",
        "space=FCSpace(input_dim=64, depth=4, num_classes=1),",
        "space=FCSpace(input_dim=64, depth=6, num_classes=1),",
        (
            "tests/experiments/test_sweep.py::test_each_preset_fits_alpha_on_the_block_its_curve_uses",
        ),
    ),
    # --- training: checkpoints, resume, retries, evaluation ---
    Mutation(
        "a resumed trial re-trains its checkpoint's epoch",
        "ce_ray/worker/loop.py",
        'return state["epoch"] + 1, state["train_time_s"]',
        'return state["epoch"], state["train_time_s"]',
        (
            "tests/experiments/test_sweep.py::test_a_killed_and_a_stopped_worker_resume_from_their_checkpoints_with_the_same_result",
        ),
    ),
    Mutation(
        "a resumed trial does not restore the optimizer",
        "ce_ray/worker/loop.py",
        '    optimizer.load_state_dict(state["optimizer"])\n',
        "",
        (
            "tests/experiments/test_sweep.py::test_a_killed_and_a_stopped_worker_resume_from_their_checkpoints_with_the_same_result",
        ),
    ),
    Mutation(
        "restarts are not counted",
        "ce_ray/worker/records.py",
        '"starts": self.attempt + 1,',
        '"starts": self.attempt,',
        (
            "tests/experiments/test_sweep.py::test_a_killed_and_a_stopped_worker_resume_from_their_checkpoints_with_the_same_result",
        ),
    ),
    Mutation(
        "each rank's test error is not summed over ranks",
        "ce_ray/worker/loop.py",
        "counts = _all_reduce_sum([*wrong1.tolist(), *wrong5.tolist(), total], device)",
        "counts = [*wrong1.tolist(), *wrong5.tolist(), total]",
        (
            "tests/jobs/test_submitted_jobs.py::test_a_stopped_job_submitted_again_keeps_finished_trials_and_resumes_the_rest",
        ),
    ),
    # --- the rest of the paper: NMK, drift, the paper's metric, ImageNet32/64 ---
    Mutation(
        "hand-written member kernel misses the read-out layer",
        "ce_ray/theory/ntk.py",
        "kernel = out_scale**2 * torch.bmm(h[-1], h[-1].transpose(1, 2))",
        "kernel = 0 * torch.bmm(h[-1], h[-1].transpose(1, 2))",
        ("tests/theory/test_nmk.py::test_hand_written_member_kernels_equal_autograd",),
    ),
    Mutation(
        "distance to the NMK not corrected for the members it contains",
        "ce_ray/theory/nmk.py",
        "correction = 1.0 - m / member_kernels.shape[0]",
        "correction = 1.0",
        (
            "tests/theory/test_nmk.py::test_the_distance_to_the_nmk_is_unbiased_when_the_ensembles_are_among_the_members",
        ),
    ),
    Mutation(
        "drift exponents fitted with m and n swapped",
        "ce_ray/theory/drift.py",
        "design = np.column_stack([np.log(m), np.log(n), np.ones(len(drift))])",
        "design = np.column_stack([np.log(n), np.log(m), np.ones(len(drift))])",
        ("tests/test_docs.py::test_docstring_examples_run",),
    ),
    Mutation(
        "the paper's metric averages the first epochs",
        "ce_ray/results/tables.py",
        "return float(errors.iloc[-count:].mean())",
        "return float(errors.iloc[:count].mean())",
        ("tests/results/test_report.py",),
    ),
    Mutation(
        "the dual curve is ranked by Var(K_e)",
        "ce_ray/results/report.py",
        'PREDICTORS = {"primal": "var_ensemble", "dual": "rho"}',
        'PREDICTORS = {"primal": "var_ensemble", "dual": "var_ensemble"}',
        ("tests/results/test_report.py",),
    ),
    Mutation(
        "downsampled ImageNet labels kept 1-based",
        "ce_ray/worker/data.py",
        'labels = np.concatenate([np.asarray(p["labels"], np.int64) for p in parts]) - 1',
        'labels = np.concatenate([np.asarray(p["labels"], np.int64) for p in parts])',
        ("tests/worker/test_loop.py",),
    ),
    # --- how a training worker runs ---
    Mutation(
        "an item's augmentation ignores the epoch",
        "ce_ray/worker/pipeline.py",
        "generator.manual_seed(derive_seed(self.seed, epoch, index))",
        "generator.manual_seed(derive_seed(self.seed, index))",
        ("tests/test_docs.py::test_docstring_examples_run",),
    ),
    Mutation(
        "the loader leaves its seed in the training process's generator",
        "ce_ray/worker/pipeline.py",
        "            generator.set_state(state)\n",
        "            pass\n",
        ("tests/worker/test_pipeline.py",),
    ),
    Mutation(
        "fp16 trains without a loss scaler",
        "ce_ray/worker/pipeline.py",
        'return torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")',
        "return torch.amp.GradScaler(device.type, enabled=False)",
        ("tests/worker/test_pipeline.py",),
    ),
    # --- seeds packed into one model ---
    Mutation(
        "packed seeds read the first seed's data order",
        "ce_ray/worker/loop.py",
        "seed=seed),",
        "seed=seeds[0]),",
        (
            "tests/experiments/test_sweep.py::test_packed_seeds_and_loader_processes_change_no_number_and_asha_stops_losers_early",
        ),
    ),
    # --- stalls, the law's checks, a member's architecture ---
    Mutation(
        "a task's stall is checked only when no task finished in a poll",
        "ce_ray/experiments/tasks.py",
        "        if time.monotonic() - checked >= STALL_POLL_S:",
        "        if not ready and time.monotonic() - checked >= STALL_POLL_S:",
        (
            "tests/experiments/test_stalls.py::test_a_stalled_task_is_noticed_while_other_tasks_keep_finishing",
        ),
    ),
    Mutation(
        "the first task on each worker, its start-up included, sets the stall limit",
        "ce_ray/experiments/tasks.py",
        "        if not run.first_on_its_worker:",
        "        if True:",
        (
            "tests/experiments/test_stalls.py::test_a_stopped_task_is_killed_and_run_again_with_the_same_result",
        ),
    ),
    Mutation(
        "a task that waits for a CPU or a node counts as stalled",
        "ce_ray/experiments/tasks.py",
        '                if state == "waiting":  # its clock starts again: it has not run yet',
        "                if False:",
        (
            "tests/experiments/test_stalls.py::test_a_task_that_waits_for_a_cpu_past_the_stall_limit_has_not_stalled",
        ),
    ),
    Mutation(
        "--alpha-from takes a fit whose law checks warned",
        "ce_ray/experiments/fit_alpha.py",
        "    if warned and not accept_law_warnings:",
        "    if False:",
        ("tests/test_cli.py::test_a_curve_from_a_fit_that_breaks_the_law_needs_a_flag",),
    ),
    Mutation(
        "a rerun does not compare the member's architecture",
        "ce_ray/experiments/fit_alpha.py",
        "        directory, config.to_json() | architecture(config), omitted=FIT_MEMBER_FIELDS",
        "        directory, config.to_json(), omitted=FIT_MEMBER_FIELDS",
        (
            "tests/experiments/test_fit_alpha.py::test_your_member_is_fitted_by_ray_tasks_as_in_one_process",
        ),
    ),
    Mutation(
        "the R^2 with an intercept is the one through the origin",
        "ce_ray/theory/alpha.py",
        'r2_intercept = fit_line(moments["fan_in_sum"], moments["log_ratio"], weights, True).r2',
        'r2_intercept = fit_line(moments["fan_in_sum"], moments["log_ratio"], weights, False).r2',
        (
            "tests/theory/test_member_ntk.py::test_the_law_checks_flag_the_standard_parameterisation_only",
        ),
    ),
    Mutation(
        "your S(n) is ignored",
        "ce_ray/theory/member.py",
        "        if not self.fan_in_sum_from:\n            return self._per_width",
        "        if True:\n            return self._per_width",
        ("tests/theory/test_member.py::test_your_s_of_n_replaces_the_traced_one",),
    ),
    Mutation(
        "a JSON document cut short by its replacement is not read again",
        "ce_ray/results/storage.py",
        "JSON_READS = 5\n",
        "JSON_READS = 1\n",
        (
            "tests/results/test_storage.py::test_a_json_document_replaced_while_read_from_s3_is_read_whole",
        ),
    ),
    Mutation(
        "a trial's trainer keeps Train's Ray Data set-up",
        "ce_ray/experiments/ray_compat.py",
        "            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]\n",
        "            return callbacks\n",
        (
            "tests/experiments/test_ray_compat.py::test_a_trial_s_trainer_is_ray_s_less_its_ray_data_set_up",
        ),
    ),
    Mutation(
        "packed seeds drop their BatchNorm statistics",
        "ce_ray/theory/models.py",
        "                    own.copy_(updated)\n",
        "                    pass\n",
        ("tests/theory/test_models.py::test_packed_seeds_step_exactly_as_each_seed_alone",),
    ),
)


def copy_repository(destination: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as a fresh clone plus the change."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listing:
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run(mutation: Mutation) -> tuple[bool, float, str]:
    """(caught, seconds, last line of pytest) for one mutation applied to a fresh copy."""
    with tempfile.TemporaryDirectory(prefix="ce-mut-") as directory:
        copy = Path(directory)
        copy_repository(copy)
        target = copy / mutation.path
        text = target.read_text()
        if text.count(mutation.old) != 1:
            raise SystemExit(
                f"mutation {mutation.name!r}: its text occurs "
                f"{text.count(mutation.old)} times in {mutation.path}, not once"
            )
        target.write_text(text.replace(mutation.old, mutation.new))
        # The copy's package first on the path; Ray workers inherit PYTHONPATH too.
        env = os.environ | {"PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
        return result.returncode != 0, time.perf_counter() - started, lines[-1] if lines else ""


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    survivors = []
    print(f"{'mutation':70} {'result':8} {'s':>6}  tests")
    for mutation in chosen:
        caught, seconds, summary = run(mutation)
        if not caught:
            survivors.append(mutation.name)
        verdict = "caught" if caught else "SURVIVED"
        print(f"{mutation.name[:70]:70} {verdict:8} {seconds:6.1f}  {summary[:60]}", flush=True)
    print(json.dumps({"mutations": len(chosen), "survivors": survivors}))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
