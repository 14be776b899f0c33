"""A sweep in MLflow: each (point, seed index) is one MLflow run, logged from the driver as
Tune hears of each epoch (``ce-ray sweep ... --mlflow URI``; ``pip install 'ce-ray[mlflow]'``).

Why not Ray's ``MLflowLoggerCallback``: it makes one run per Tune trial, so the seeds a trial
packs into one model would share a run (only their mean visible). Here a run is found again
by its tags --
``ce_ray.sweep`` (the experiment's location), ``ce_ray.point`` and ``ce_ray.seed_index`` --
and continued: a trial retried from its checkpoint, or a sweep submitted again, logs the
epochs after the run's last one, each step once, read from the trial's record
(``ce_ray.worker.records``, the source of epochs.parquet: a run holds the same figures).
The calls go from a thread of their own, a batch per run at a time, so that Tune's loop never
waits on the server (a call took 0.2-0.5 s on a busy 2-core machine); the sweep's end waits
for them (at most ``DRAIN_S``).

Everything goes from the driver: the trials need neither MLflow nor its credentials
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` stay in the driver's environment; a URI
holding a password is refused). If MLflow stops answering mid-sweep, one line says so and the
sweep goes on without it: its results are in Parquet whatever happens here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from ce_ray.configs import SweepConfig
from ce_ray.experiments.tasks import Log
from ce_ray.results import storage
from ce_ray.theory.seeds import derive_seed
from ce_ray.worker import records

#: A dead or unreachable server fails a call in seconds, not after MLflow's default of seven
#: retries with back-off (minutes in which Tune's loop would wait); the environment may
#: override both.
CLIENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # MLflow prints two "View run ... at" lines whenever a run ends.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
#: Each seed's per-epoch figures that become MLflow metrics (those it reports).
SEED_METRICS = ("train_loss", "test_error", "test_error_top5")
#: MLflow takes at most 1000 metrics in one ``log_batch``.
MAX_BATCH = 1000
#: Runs of one (point, seed index) that one experiment may hold: one per sweep logged there.
MAX_RUNS_PER_POINT = 1000
#: How long the sweep's end waits for the calls still queued (seconds).
DRAIN_S = 120.0


def _mlflow_client(uri: str) -> Any:
    """``MlflowClient(uri)`` with ``CLIENT_SETTINGS`` (unless the environment sets them)."""
    for name, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; a one-line error when MLflow is missing or does not
    answer there (checked before Ray starts)."""
    try:
        tracking = _mlflow_client(uri)
    except ImportError:
        raise ValueError(
            "--mlflow needs MLflow in the driver's environment: pip install 'ce-ray[mlflow]'"
        ) from None
    retries = os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # a wrong URI is said at once
    try:
        tracking.search_experiments(max_results=1)
    except Exception as error:  # MlflowException, requests' errors, SQLAlchemy's ...
        raise ValueError(
            f"--mlflow {uri}: no MLflow tracking server answers there ({storage.first_line(error)})"
        ) from None
    finally:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries
    return tracking


def point_params(config: SweepConfig, n: int, m: int, seed_index: int) -> dict[str, str]:
    """What an MLflow run of (point, seed index) records as its parameters."""
    row = config.point_rows.set_index("n").loc[n]
    params = {
        "preset": config.preset,
        "formulation": config.formulation,
        "label": config.space.label(m, n),
        "m": m,
        "n": n,
        "alpha": config.alpha,
        "var_ensemble": float(row["var_ensemble"]),
        "rho": float(row["rho"]),
        "params": int(row["params"]),
        "role": row["role"],
        "seed_index": seed_index,
        "seed": derive_seed(config.seed, n, m, seed_index),
        "epochs": config.epochs,
        "member": config.space.member_name,  # empty, and so left out, for a preset's space
    }
    return {key: str(value) for key, value in params.items() if value != ""}


@dataclass(frozen=True)
class RunKey:
    """What one MLflow run stands for: a point and a seed index of the sweep."""

    label: str
    n: int
    m: int
    seed_index: int


def _keys(config: SweepConfig, trial: Trial) -> list[RunKey]:
    """The runs of a trial: one per seed index it trains."""
    n, m = int(trial.config["point"]["n"]), int(trial.config["point"]["m"])
    label = config.space.label(m, n)
    return [RunKey(label, n, m, int(index)) for index in trial.config["seed_indices"]]


class MlflowRuns(tune.Callback):
    """Tune callback: log each (point, seed index) of the sweep at ``directory`` to MLflow.

    ``uri``: the tracking URI; ``experiment``: the MLflow experiment the runs go under
    (created when missing); ``log``: where this callback's few lines go (a failure, which
    switches MLflow off for the rest of the sweep).
    """

    def __init__(
        self, uri: str, experiment: str, directory: str, config: SweepConfig, log: Log
    ) -> None:
        self.uri, self.experiment, self.directory = uri, experiment, directory
        self.config, self.log = config, log
        self._reset()

    def _reset(self) -> None:
        self.tracking: Any = None
        self.experiment_id: str | None = None
        self.runs: dict[RunKey, tuple[str, int]] = {}  # -> (run id, last logged epoch)
        self.off = False
        self.calls: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment: the settings, not the client,
        the queue or the run ids (found again by their tags)."""
        keep = ("uri", "experiment", "directory", "config", "log")
        return {name: self.__dict__[name] for name in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # Tune's side: queue the call, never wait on it.

    def _queue(self, item: tuple) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="mlflow-runs", daemon=True)
            self.thread.start()
        self.calls.put(item)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any
    ) -> None:
        self._queue(("epochs", trial.trial_id, _keys(self.config, trial)))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._queue(("end", _keys(self.config, trial), "FINISHED"))

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._queue(("end", _keys(self.config, trial), "FAILED"))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Wait (at most ``DRAIN_S``) until every queued call has gone to MLflow."""
        if self.thread is None:
            return
        self.calls.put(None)
        self.thread.join(timeout=DRAIN_S)
        if self.thread.is_alive():
            self.log(f"[mlflow] calls still queued after {DRAIN_S:.0f} s were dropped")

    # The thread's side: a run's new epochs, from its trial's record, in one call.

    def _work(self) -> None:
        while True:
            items = [self.calls.get()]
            while not self.calls.empty():
                items.append(self.calls.get())
            trials = {item[1]: item[2] for item in items if item and item[0] == "epochs"}
            for trial_id, keys in trials.items():
                self._log_epochs(trial_id, keys)
            for item in items:
                if item is not None and item[0] == "end":
                    self._end(item[1], item[2])
            if None in items:
                return

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)``, or None -- after one line, and with MLflow switched
        off for the rest of the sweep -- when MLflow fails."""
        if self.off:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as error:
            self.log(
                f"[mlflow] {what} failed ({storage.first_line(error)}); MLflow logging is off "
                "for the rest of this sweep (its results are in Parquet as always)"
            )
            self.off = True
            return None

    def _experiment(self) -> str | None:
        if self.experiment_id is None and not self.off:
            if self.tracking is None:
                self.tracking = _mlflow_client(self.uri)
            found = self._call(
                "finding the experiment", self.tracking.get_experiment_by_name, self.experiment
            )
            if found is not None:
                self.experiment_id = str(found.experiment_id)
            else:
                created = self._call(
                    "creating the experiment", self.tracking.create_experiment, self.experiment
                )
                self.experiment_id = None if created is None else str(created)
        return self.experiment_id

    def _run(self, key: RunKey) -> tuple[str, int] | None:
        """(run id, last logged epoch) of ``key``: found by its tags, or created."""
        if key in self.runs:
            return self.runs[key]
        experiment_id = self._experiment()
        if experiment_id is None:
            return None
        tags = {
            "ce_ray.sweep": self.directory,
            "ce_ray.point": key.label,
            "ce_ray.seed_index": str(key.seed_index),
        }
        # The point and seed in MLflow's filter; the sweep's directory, which may hold any
        # character (a quote would end the filter's string), compared here.
        query = " and ".join(
            f"tags.`{name}` = '{tags[name]}'" for name in ("ce_ray.point", "ce_ray.seed_index")
        )
        runs = self._call(
            "finding the run",
            self.tracking.search_runs,
            [experiment_id],
            query,
            max_results=MAX_RUNS_PER_POINT,
        )
        if runs is None:
            return None
        found = [run for run in runs if run.data.tags.get("ce_ray.sweep") == self.directory]
        if found:
            run_id = found[0].info.run_id
            history = self._call(
                "reading the run", self.tracking.get_metric_history, run_id, "test_error"
            )
            last = max((metric.step for metric in history or []), default=0)
            self._call("reopening the run", self.tracking.update_run, run_id, status="RUNNING")
        else:
            from mlflow.entities import Param

            run = self._call(
                "creating the run",
                self.tracking.create_run,
                experiment_id,
                tags=tags,
                run_name=f"{key.label} seed {key.seed_index}",
            )
            if run is None:
                return None
            run_id, last = run.info.run_id, 0
            params = point_params(self.config, key.n, key.m, key.seed_index)
            batch = [Param(name, value) for name, value in params.items()]
            self._call("logging the parameters", self.tracking.log_batch, run_id, params=batch)
        self.runs[key] = (run_id, last)
        return self.runs[key]

    def _log_epochs(self, trial_id: str, keys: list[RunKey]) -> None:
        """Log each seed's epochs that its run lacks, from the trial's record (the source of
        epochs.parquet): epochs up to a run's last were logged before the trial was retried
        or the sweep resumed; the record also holds those a stopped driver never logged."""
        from mlflow.entities import Metric

        if self.off:
            return
        rows = records.read_epochs(records.record_location(self.directory, trial_id))
        stamp = int(time.time() * 1000)
        for key in keys:
            run = self._run(key)
            if run is None:
                return
            run_id, last = run
            new = [r for r in rows if r["seed_index"] == key.seed_index and r["epoch"] > last]
            metrics = [
                Metric(name, float(row[name]), stamp, int(row["epoch"]))
                for row in new
                for name in SEED_METRICS
                if row.get(name) is not None
            ]
            for start in range(0, len(metrics), MAX_BATCH):  # MLflow's limit per call
                batch = metrics[start : start + MAX_BATCH]
                self._call("logging epochs", self.tracking.log_batch, run_id, batch)
            if new and not self.off:
                self.runs[key] = (run_id, max(int(row["epoch"]) for row in new))

    def _end(self, keys: list[RunKey], status: str) -> None:
        for key in keys:
            run = self._run(key)
            if run is not None:
                self._call("ending the run", self.tracking.set_terminated, run[0], status)
