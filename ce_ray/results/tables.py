"""A sweep's result tables, as pandas frames in the schemas of ``ce_ray.results.storage``.

* :func:`trials_frame` and :func:`epochs_frame` -- one row per (point, seed index) and one per
  trained epoch, from each trial's record (``ce_ray.worker.records``) and its Tune status;
* :func:`curves_frame` -- both curves of the preset, long form, for the report.

No Ray here: the Ray layer (``ce_ray.experiments.sweep``) passes what Tune returned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ce_ray.configs import TUNABLE, SweepConfig
from ce_ray.results import storage

#: The recipe's fields a candidate may draw (``ce_ray.configs.TUNABLE``), in candidates.parquet.
TUNED_COLUMNS = TUNABLE

#: The paper reports "test errors averaged over the last 10 epochs over 10 runs".
LAST_EPOCHS = 10


def last_epochs_mean(errors: pd.Series, count: int = LAST_EPOCHS) -> float:
    """The mean of the last ``count`` values (all of them when there are fewer).

    >>> last_epochs_mean(pd.Series([9.0, 5.0, 4.0, 3.0]), count=2)
    3.5
    """
    return float(errors.iloc[-count:].mean())


@dataclass(frozen=True)
class TrialOutcome:
    """What Tune says of one seed index of a trial: the trial's id, the (point, seed index),
    the trial's error, if any, and how many seed indices the trial packed into one model."""

    trial_id: str
    n: int
    m: int
    seed_index: int
    error: str | None
    packed_seeds: int = 1


def _last(history: pd.DataFrame, column: str) -> float | None:
    if column not in history or history[column].isna().all():
        return None
    return float(history[column].iloc[-1])


def _trial_row(
    outcome: TrialOutcome,
    history: pd.DataFrame,
    point: pd.Series,
    config: SweepConfig,
    experiment: str,
    architecture: str,
    chosen: dict[tuple[int, int], Chosen] | None = None,
) -> dict:
    done = int(history["epoch"].max()) if len(history) else 0
    choice = (chosen or {}).get((outcome.n, outcome.m))
    recipe = dataclasses.replace(config.recipe, **choice.recipe) if choice else config.recipe
    if outcome.error:
        status = "error"
    else:
        status = "finished" if done >= config.epochs else "stopped_early"
    return {
        "experiment": experiment,
        "formulation": config.formulation,
        "space": config.space.name,
        "member": config.space.member_name,
        "architecture": architecture,
        "label": config.space.label(outcome.m, outcome.n),
        "n": outcome.n,
        "m": outcome.m,
        "params": int(point["params"]),
        "flops": int(point["flops"]),
        "rho": float(point["rho"]),
        "var_ensemble": float(point["var_ensemble"]),
        "alpha": config.alpha,
        "role": point["role"],
        "seed_index": outcome.seed_index,
        "packed_seeds": outcome.packed_seeds,
        "final_test_error": _last(history, "test_error") if done else math.nan,
        "best_test_error": float(history["test_error"].min()) if done else math.nan,
        "mean_test_error_last_epochs": last_epochs_mean(history["test_error"])
        if done
        else math.nan,
        "last_epochs_averaged": min(done, LAST_EPOCHS),
        "final_test_error_top5": _last(history, "test_error_top5"),
        "final_val_error": _last(history, "val_error"),
        "final_train_loss": _last(history, "train_loss") if done else math.nan,
        "epochs_completed": done,
        "epochs_planned": config.epochs,
        **{column: getattr(recipe, column) for column in storage.RECIPE_COLUMNS},
        "recipes_tried": len(config.candidates) if config.candidates else None,
        "search_val_error": choice.val_error if choice else None,
        "wall_time_s": _last(history, "time_total_s") if done else math.nan,
        "status": status,
        "retries": int(history["attempt"].max()) if done else 0,
        "trial_id": outcome.trial_id,
        "error": outcome.error,
    }


Histories = dict[tuple[str, int], pd.DataFrame]  # (trial id, seed index) -> its epochs


@dataclass(frozen=True)
class Chosen:
    """A tuned point's choice: the candidate recipe's fields and its validation error."""

    candidate: int
    recipe: dict
    val_error: float


def candidates_frame(
    outcomes: list[TrialOutcome], histories: Histories, config: SweepConfig, experiment: str
) -> pd.DataFrame:
    """candidates.parquet: one row per (point, candidate) of a tuned sweep's search (each
    outcome's ``seed_index`` is its candidate), ``chosen`` the lowest final validation error
    of its point among candidates that finished (the first on a tie)."""
    rows = []
    for o in outcomes:
        history = histories[o.trial_id, o.seed_index]
        done = int(history["epoch"].max()) if len(history) else 0
        recipe = dataclasses.replace(config.recipe, **config.candidates[o.seed_index])
        status = "error" if o.error else "finished" if done >= config.epochs else "stopped"
        if status == "stopped" and config.scheduler == "asha":
            status = "stopped_early"  # halved out at a rung
        rows.append(
            {
                "experiment": experiment,
                "n": o.n,
                "m": o.m,
                "label": config.space.label(o.m, o.n),
                "candidate": o.seed_index,
                **{f: float(getattr(recipe, f)) for f in TUNED_COLUMNS},
                "final_val_error": _last(history, "val_error") if done else math.nan,
                "epochs_completed": done,
                "chosen": False,
                "status": status,
                "trial_id": o.trial_id,
            }
        )
    frame = pd.DataFrame(rows, columns=storage.CANDIDATES_SCHEMA.names)
    frame = frame.sort_values(["n", "candidate"]).reset_index(drop=True)
    finished = frame[frame["status"] == "finished"].dropna(subset=["final_val_error"])
    best = finished.sort_values(["final_val_error", "candidate"]).groupby(["n", "m"]).head(1)
    frame.loc[best.index, "chosen"] = True
    return frame


def chosen_recipes(candidates: pd.DataFrame, config: SweepConfig) -> dict[tuple[int, int], Chosen]:
    """(n, m) -> the chosen candidate of each point whose search finished."""
    return {
        (int(row.n), int(row.m)): Chosen(
            int(row.candidate), config.candidates[int(row.candidate)], float(row.final_val_error)
        )
        for row in candidates[candidates["chosen"]].itertuples()
    }


def trials_frame(
    outcomes: list[TrialOutcome],
    histories: Histories,
    config: SweepConfig,
    experiment: str,
    chosen: dict[tuple[int, int], Chosen] | None = None,
) -> pd.DataFrame:
    """trials.parquet: one row per outcome, i.e. per (point, seed index); ``chosen``: a
    tuned sweep's recipe per point (n, m)."""
    by_width = config.point_rows.set_index("n")
    architecture = config.architecture
    rows = [
        _trial_row(
            o,
            histories[o.trial_id, o.seed_index],
            by_width.loc[o.n],
            config,
            experiment,
            architecture,
            chosen,
        )
        for o in outcomes
    ]
    # A column added to the schema and not to the row would be written all null.
    differ = set(storage.TRIALS_SCHEMA.names) ^ set(rows[0]) if rows else set()
    if differ:
        raise ValueError(f"trials.parquet's rows and schema differ in {sorted(differ)}")
    frame = pd.DataFrame(rows, columns=storage.TRIALS_SCHEMA.names)
    return frame.sort_values(["n", "seed_index"]).reset_index(drop=True)


def epochs_frame(
    outcomes: list[TrialOutcome],
    histories: Histories,
    experiment: str,
    searched: Sequence[TrialOutcome] = (),
) -> pd.DataFrame:
    """epochs.parquet: one row per trained epoch of each (point, seed index) (its trial's
    latest training), then of each (point, candidate) of a tuned sweep's search
    (``searched``: its ``seed_index`` is the candidate, the row's seed index 0)."""
    frames = []
    rows = [(o, None) for o in outcomes] + [(o, o.seed_index) for o in searched]
    for outcome, candidate in rows:
        history = histories[outcome.trial_id, outcome.seed_index].copy()
        if not len(history):
            continue
        history = history.assign(
            experiment=experiment,
            trial_id=outcome.trial_id,
            n=outcome.n,
            m=outcome.m,
            seed_index=outcome.seed_index if candidate is None else 0,
            packed_seeds=outcome.packed_seeds,
            candidate=candidate,
        )
        frames.append(history.reindex(columns=storage.EPOCHS_SCHEMA.names))
    columns = storage.EPOCHS_SCHEMA.names
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    # As pandas reads the column back (int64 with nulls: float64, NaN for the seeds' rows).
    frame["candidate"] = frame["candidate"].astype("float64")
    order = ["candidate", "n", "seed_index", "epoch"]  # the seeds' epochs first
    return frame.sort_values(order, na_position="first").reset_index(drop=True)


def curves_frame(config: SweepConfig) -> pd.DataFrame:
    """Both curves of the sweep's preset around its baseline, long form (curves.parquet)."""
    baseline = config.baseline_width
    frames = [
        result.table.assign(formulation=formulation, alpha=config.alpha, baseline=baseline)
        for formulation, result in config.curves.items()
    ]
    return pd.concat(frames, ignore_index=True)
