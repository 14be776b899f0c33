"""Sweeps on your own data, and tuned sweeps, through Ray on the shared 2-CPU cluster: a
Parquet table, a ``Dataset`` callable and an image folder each sweep end to end; the same
rows as a table and as a callable train to the same numbers; a tuned sweep with one candidate
reproduces the untuned one; a tuned sweep chooses on validation alone, is stopped mid-way and
resumed without training anything twice. (Parquet on S3 on several nodes:
tests/experiments/test_cluster.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from ce_ray import cli
from ce_ray.worker import records
from tests import data_callables
from tests.conftest import epochs_by_trial
from tests.test_own_data import write_table

SMALL = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--no-report"]
#: What a trial's numbers are: the columns of epochs.parquet that do not say when or where.
NUMBERS = ["n", "m", "seed_index", "epoch", "train_loss", "test_error", "val_error", "lr"]


def sweep(results: Path, experiment: str, *args: str) -> int:
    argv = ["sweep", "primal", *SMALL, *args, "--results", str(results)]
    return cli.main([*argv, "--experiment", experiment])


def read(results: Path, experiment: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(results / experiment / f"{name}.parquet")


def test_a_table_a_callable_and_an_image_folder_sweep_and_the_same_rows_train_alike(
    ray_cluster, tmp_path
):
    """A Parquet table of plain columns (text labels) sweeps untuned; the same rows from a
    Dataset callable, tuned with ONE candidate (the recipe as given), train every seed to the
    same numbers to the last bit: the two forms hold the same splits and batches, and the
    tuned path with K = 1 reproduces the untuned sweep. An ImageFolder of PNGs sweeps
    ResNeXt-29 sized to its 3 classes and 8x8 images."""
    table = write_table(tmp_path / "table.parquet", "columns")
    epochs_args = ["--seeds", "2", "--epochs", "2"]
    data = ["--data", f"parquet:{table}", "--label-column", "label"]
    assert sweep(tmp_path, "table", *epochs_args, *data) == 0
    assert (
        sweep(
            tmp_path,
            "callable",
            *epochs_args,
            "--data",
            "tests.data_callables:table",
            "--tune-trials",
            "1",
        )
        == 0
    )
    untuned, tuned = read(tmp_path, "table", "epochs"), read(tmp_path, "callable", "epochs")
    assert untuned["candidate"].isna().all() and len(untuned) == 2 * 2 * 2
    seeds = tuned[tuned["candidate"].isna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(untuned[NUMBERS], seeds[NUMBERS])
    assert untuned["val_error"].notna().all() and untuned["test_error"].notna().all()
    candidates = read(tmp_path, "callable", "candidates")
    assert len(candidates) == 2 and candidates["chosen"].all()
    trials = read(tmp_path, "callable", "trials")
    assert (trials["recipes_tried"] == 1).all() and trials["search_val_error"].notna().all()
    assert read(tmp_path, "table", "trials")["recipes_tried"].isna().all()

    for name, count in (("cat", 10), ("dog", 8), ("owl", 8)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for k in range(count):
            colour = (40 * k % 256, 90 if name == "dog" else 10, 200 if name == "owl" else 30)
            Image.new("RGB", (12, 9), colour).save(tmp_path / "images" / name / f"{k}.png")
    images = ["--data", f"imagefolder:{tmp_path / 'images'}", "--image-size", "8"]
    resnext = ["--preset", "cifar10-resnext29", "--alpha", "1.6", "--baseline", "8"]
    argv = ["sweep", "primal", *resnext, "--points", "2", "--seeds", "1", "--epochs", "1"]
    assert cli.main([*argv, *images, "--results", str(tmp_path), "--experiment", "img"]) == 0
    trials = read(tmp_path, "img", "trials")
    assert len(trials) == 2 and (trials["status"] == "finished").all()
    assert trials["final_val_error"].notna().all() and trials["final_test_error_top5"].isna().all()


def _final_stage_trained(experiment_dir: Path) -> bool:
    """Whether a trial of the sweep's final stage (not a search) has trained an epoch."""
    candidates = experiment_dir / "candidates.parquet"
    if not candidates.exists():
        return False
    searched = set(pd.read_parquet(candidates)["trial_id"])
    return any(n >= 1 for t, n in epochs_by_trial(experiment_dir).items() if t not in searched)


def test_a_tuned_sweep_chooses_on_validation_alone_and_resumes_where_it_was_stopped(
    ray_cluster, tmp_path, capsys
):
    """Every point tries the same 3 recipes; each chooses its lowest validation error, whose
    seed 0 then trains exactly as the candidate did; stopped (as Ctrl+C stops Tune) once its
    seeds started training, the sweep resumes: the search is not run again and no epoch is
    trained twice. The same sweep with adversarial test labels chooses the same recipes."""
    # 8 epochs: a seed trial stopped after its first has most of its epochs to go.
    tuned = ["--seeds", "1", "--epochs", "8", "--tune-trials", "3", "--tune", "lr=0.002..0.3:log"]
    experiment = tmp_path / "tuned"

    def stop_once_its_seeds_train() -> None:
        deadline = time.monotonic() + 300
        while not _final_stage_trained(experiment) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own stop signal, as Ctrl+C

    stopper = threading.Thread(target=stop_once_its_seeds_train, daemon=True)
    stopper.start()
    sweep(tmp_path, "tuned", *tuned, "--data", "tests.data_callables:split_table")
    stopper.join(timeout=5)
    stopped = read(tmp_path, "tuned", "trials")
    assert (stopped["status"] != "finished").any(), "the sweep was not stopped mid-way"
    search_ids = set(read(tmp_path, "tuned", "candidates")["trial_id"])
    searched = {
        t: records.read_epochs(records.record_location(str(experiment), t)) for t in search_ids
    }

    assert sweep(tmp_path, "tuned", *tuned, "--data", "tests.data_callables:split_table") == 0
    out = capsys.readouterr().out
    assert f"resuming {experiment / 'search'}" in out and f"resuming {experiment / 'tune'}" in out
    for trial_id, rows in searched.items():  # the search trained nothing again
        assert records.read_epochs(records.record_location(str(experiment), trial_id)) == rows
    epochs = read(tmp_path, "tuned", "epochs")
    trials = read(tmp_path, "tuned", "trials")
    assert (trials["status"] == "finished").all()
    assert not epochs.duplicated(["trial_id", "candidate", "seed_index", "epoch"]).any()
    assert (epochs.groupby(["trial_id", "candidate"], dropna=False).size() == 8).all()

    candidates = read(tmp_path, "tuned", "candidates")
    assert candidates.groupby("candidate")["lr"].nunique().eq(1).all()  # the same 3 per point
    assert candidates.groupby(["n", "m"]).size().eq(3).all()
    for (n, m), point in candidates.groupby(["n", "m"]):
        best = point.sort_values(["final_val_error", "candidate"]).iloc[0]
        assert point.loc[point["chosen"], "candidate"].tolist() == [best["candidate"]]
        (row,) = trials[(trials["n"] == n) & (trials["m"] == m)].itertuples()
        assert (row.lr, row.search_val_error, row.recipes_tried) == (
            best["lr"],
            best["final_val_error"],
            3,
        )
        # The chosen candidate (seed index 0's weights and batches) and seed 0 trained alike.
        of_point = epochs[(epochs["n"] == n) & (epochs["m"] == m)]
        searched_curve = of_point[of_point["candidate"] == best["candidate"]]["val_error"]
        seed_curve = of_point[of_point["candidate"].isna()]["val_error"]
        assert searched_curve.tolist() == seed_curve.tolist()
    assert epochs.loc[epochs["candidate"].notna(), "test_error"].isna().all()

    # Adversarial test labels change the test errors, never the choice.
    assert (
        sweep(
            tmp_path, "adversarial", *tuned, "--data", "tests.data_callables:shuffled_test_labels"
        )
        == 0
    )
    adversarial = read(tmp_path, "adversarial", "candidates")
    same = ["n", "m", "candidate", "lr", "final_val_error", "chosen"]
    pd.testing.assert_frame_equal(adversarial[same], candidates[same])
    other = read(tmp_path, "adversarial", "trials")
    assert (other["final_test_error"] > trials["final_test_error"] + 20).all()
    assert data_callables.CLASSES == 4
