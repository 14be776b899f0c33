"""Sweeps on your own data, and tuned sweeps, through Ray on the shared 2-CPU cluster: a
Parquet table and a ``Dataset`` callable each sweep end to end, and the same rows in either
form train to the same numbers; a tuned sweep with one candidate reproduces the untuned one;
a tuned sweep chooses on validation alone, is stopped after its search and resumed without
training anything twice. (An image folder's sweep: tests/experiments/test_sweep.py; Parquet
on S3 on several nodes: tests/experiments/test_cluster.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd

from ce_ray import cli
from ce_ray.worker import records
from tests.test_own_data import write_table

SMALL = ["--preset", "synthetic-mlp", "--alpha", "2.0", "--points", "2", "--no-report"]
#: What a trial's numbers are: the columns of epochs.parquet that do not say when or where.
NUMBERS = ["n", "m", "seed_index", "epoch", "train_loss", "test_error", "val_error", "lr"]


def sweep(results: Path, experiment: str, *args: str) -> int:
    argv = ["sweep", "primal", *SMALL, *args, "--results", str(results)]
    return cli.main([*argv, "--experiment", experiment])


def read(results: Path, experiment: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(results / experiment / f"{name}.parquet")


def test_a_table_and_a_callable_sweep_and_the_same_rows_train_alike(ray_cluster, tmp_path):
    """A Parquet table of plain columns (text labels) sweeps untuned; the same rows from a
    Dataset callable, tuned with ONE candidate (the recipe as given), train every seed to the
    same numbers to the last bit: the two forms hold the same splits and batches, and the
    tuned path with K = 1 reproduces the untuned sweep. (An image folder's sweep:
    experiments/test_sweep.py::test_a_sweep_trains_with_its_own_recipe.)"""
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


def stop_once_its_seeds_are_due(experiment: Path) -> threading.Thread:
    """A thread that stops the sweep (SIGUSR1: Tune's own stop signal, as Ctrl+C) once its
    search is over and Tune runs its seeds' stage -- whose experiment state Tune writes after
    it took the signal over -- before any seed has trained."""

    def stop() -> None:
        deadline = time.monotonic() + 300
        while not list(experiment.glob("tune/experiment_state-*.json")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def test_a_tuned_sweep_chooses_on_validation_alone_and_resumes_where_it_was_stopped(
    ray_cluster, tmp_path, capsys
):
    """Every point tries the same 3 recipes, halved by ASHA inside its search (rungs after
    epochs 1 and 2: 3 -> 2 -> 1); each chooses its lowest validation error among those that
    finished, and its seed 0 then trains exactly as that candidate did in the shrinking pack.
    Stopped (as Ctrl+C stops Tune) after its search, the sweep resumes: the search is kept,
    not run again, and no epoch is trained twice. The same sweep with adversarial test labels
    chooses the same recipes."""
    tuned = ["--seeds", "1", "--epochs", "4", "--tune-trials", "3", "--tune", "lr=0.002..0.3:log"]
    tuned += ["--scheduler", "asha"]
    experiment = tmp_path / "tuned"
    stopper = stop_once_its_seeds_are_due(experiment)
    sweep(tmp_path, "tuned", *tuned, "--data", "tests.data_callables:split_table")
    stopper.join(timeout=5)
    assert "[sweep] stopped before every trial ended; run the same command" in (
        capsys.readouterr().out
    )
    assert (read(tmp_path, "tuned", "trials")["epochs_completed"] < 4).all()
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
    seeds = epochs[epochs["candidate"].isna()]
    assert (seeds.groupby("trial_id").size() == 4).all()  # every point's seeds: all epochs
    trained = epochs.dropna(subset=["candidate"]).groupby(["n", "candidate"]).size()
    assert (trained.groupby("n").apply(sorted) == pd.Series([[1, 2, 4]] * 2).values).all()

    candidates = read(tmp_path, "tuned", "candidates")
    assert candidates.groupby("candidate")["lr"].nunique().eq(1).all()  # the same 3 per point
    assert candidates.groupby(["n", "m"]).size().eq(3).all()
    assert (
        candidates.groupby(["n", "m"])["status"]
        .apply(sorted)
        .map(lambda s: s == ["finished", "stopped_early", "stopped_early"])
        .all()
    )
    for (n, m), point in candidates.groupby(["n", "m"]):
        finished = point[point["status"] == "finished"]
        best = finished.sort_values(["final_val_error", "candidate"]).iloc[0]
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
    assert len(set(candidates["final_val_error"])) > 1  # the candidates differ

    # Adversarial test labels never change the choice (stopped once it is made).
    stopper = stop_once_its_seeds_are_due(tmp_path / "adversarial")
    sweep(tmp_path, "adversarial", *tuned, "--data", "tests.data_callables:shuffled_test_labels")
    stopper.join(timeout=5)
    adversarial = read(tmp_path, "adversarial", "candidates")
    same = ["n", "m", "candidate", "lr", "final_val_error", "chosen"]
    pd.testing.assert_frame_equal(adversarial[same], candidates[same])
