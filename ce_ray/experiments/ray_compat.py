"""Every use of Ray's private API, and every workaround of a Ray behaviour, in one place.

Each was read against the source of ``ray==2.60.0`` (:data:`RAY_VERSION`, the version
``pyproject.toml`` pins) and has a test that fails when an upgrade changes what it relies on
(``tests/experiments/test_ray_compat.py``). The rest of ce-ray uses Ray's public API only.

==========================================  ==============================================
what                                        why
==========================================  ==============================================
:func:`recorded_cluster_file`              where ``ray start`` records this node's cluster
:data:`SUBMITTED_JOB_MARKER`                a submitted job's driver already has its env
:func:`autoscaler_limits`                   the cluster at its largest (no public call)
:func:`placement_groups`                    groups whose creator died, which Ray keeps
:func:`set_train_environment`               Train V2's report poll, no preemption watcher
:func:`torch_trainer_without_ray_data`      no Ray Data actor per trial
:func:`controller_state_callback`          a frozen start-up told from a wait
:func:`worker_group_start_timeout_s`       Train's wait for a worker group's resources

:data:`WORKER_GROUP_START_ATTEMPTS`         a worker group that never starts fails
:func:`keep_credentials_out_of_trials`      Tune copies AWS keys into trial runtime envs
:func:`use_callbacks_on_restore`            a restored Tuner keeps its pickled callbacks
:func:`quiet_tune_output`                   Tune's new output engine prints regardless
:data:`TRIAL_FUNCTION_RESOURCES`            a trial's function holds no CPU (no deadlock)
==========================================  ==============================================
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The Ray version every entry here was checked against.
RAY_VERSION = "2.60.0"

# --- the cluster ---

#: Set by Ray's job manager in the driver of a submitted job
#: (``ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR``).
SUBMITTED_JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def recorded_cluster_file() -> str:
    """Where ``ray start`` records this node's cluster and ``ray.init()`` without an address
    reads it (``ray._common.utils.get_ray_address_file``: ``ray_current_cluster`` in the Ray
    temporary directory, by default ``/tmp/ray``, which Ray makes writable by every user)."""
    from ray._common.utils import get_ray_address_file

    return str(get_ray_address_file(None))


def autoscaler_limits() -> dict[str, float] | None:
    """The most resources the cluster's node types allow, from the GCS's cluster config where
    an autoscaler reports one (autoscaler v2, KubeRay): ``ray._private.state``, which Ray Data
    reads the same way; None when there is none."""
    from ray._private.state import state

    limits = state.get_max_resources_from_cluster_config()
    return {key: float(value) for key, value in limits.items()} if limits else None


@dataclass(frozen=True)
class PlacementGroupRecord:
    """A placement group as the GCS records it, with what Ray's public table leaves out."""

    group_id: bytes
    job_id: str  # hex
    creator_dead: bool | None  # None: no creator actor (the driver's own group), or unknown
    resources: dict[str, float]


def placement_groups() -> Iterator[PlacementGroupRecord]:
    """The live, non-detached placement groups, each with its creator actor's fate read from
    the actor table (the group's own ``creator_actor_dead`` stayed False for the groups of Train
    controllers that Tune's stopped trials took with them); a creator the table does not hold
    is unknown (None), not dead. The GCS tables through ``ray._private.state``: Ray's public
    placement-group table names no creator."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    table_data: Any = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]  # no stubs
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = table_data.FromString(raw)
        if group.state == table_data.REMOVED or group.is_detached:
            continue
        creator = ray.ActorID(group.creator_actor_id) if group.creator_actor_id else None
        dead = None
        if creator is not None and not creator.is_nil():
            dead = creator_is_dead(state.actor_table(creator.hex()))
        held: dict[str, float] = {}
        for bundle in group.bundles:
            for key, value in bundle.unit_resources.items():
                held[key] = held.get(key, 0.0) + value
        job = ray.JobID(group.creator_job_id).hex()
        yield PlacementGroupRecord(group.placement_group_id, job, dead, held)


def creator_is_dead(actor_record: dict) -> bool | None:
    """From the actor table's record of a group's creator: dead, alive, or None -- unknown
    (no record: evicted, or not yet written), which is no reason to free its group.

    >>> creator_is_dead({"State": "DEAD"}), creator_is_dead({"State": "ALIVE"}), creator_is_dead({})
    (True, False, None)
    """
    return actor_record.get("State") == "DEAD" if actor_record else None


# --- Ray Train V2, inside a trial ---

# Train V2's controller collects reports when it polls the workers (every 2 s by default),
# and a worker's report waits for that: with short epochs the poll, not the training, sets
# the pace (0.03 s epochs took 2 s each). benchmarks/sweep_overhead.py: 15 reports with
# checkpoints took 4.3 s at 0.25 s, 1.7 s at 0.05 s.
REPORT_POLL_S = "0.05"
# Train V2 starts a PreemptionWatcher actor per run (one more process importing Ray Train:
# ~2.6 CPU-s per trial, measured) to react to a node's drain notice. A ce-ray trial
# checkpoints every epoch and Tune retries a trial whose node went away from that checkpoint,
# so the watcher saves at most one epoch; on one machine it only logs an object-store error
# line per trial.
PREEMPTION_WATCHER = "0"
#: Train V2's environment variables for the two (``ray.train.v2._internal.constants``).
TRAIN_ENVIRONMENT = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": REPORT_POLL_S,
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": PREEMPTION_WATCHER,
}


def set_train_environment() -> None:
    """:data:`TRAIN_ENVIRONMENT` in the trial's process, where its Train controller reads it;
    the environment may override each."""
    for name, value in TRAIN_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


@functools.cache  # one class per process, not one per trial
def torch_trainer_without_ray_data() -> type:
    """``TorchTrainer`` less the Ray Data set-up of Train V2, which ce-ray does not use.

    Its ``DatasetsCallback`` starts a ``DatasetManager`` actor for every run, with or without
    datasets (``ray/train/v2/_internal/callbacks/datasets.py``): one more Python process per
    trial that imports Ray Data (~3 CPU-seconds here, ~10 % of a trial's start-up). ce-ray's
    workers read their data from the object store, not through ``ray.train.get_dataset_shard``,
    which is the only reader of what that callback provides.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    class TorchTrainerWithoutRayData(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            # Train V2's method; mypy resolves ray.train.torch's TorchTrainer to V1's.
            callbacks = super()._create_default_callbacks()  # type: ignore[misc]
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return TorchTrainerWithoutRayData


# A worker group that cannot start times out after 60 s (Train's default) and Train tries
# again -- forever, by default (``controller_failure_limit=-1``, Train V2's FailureConfig): a
# trial whose CPUs were taken by a placement group that Train's cleaner missed waited 15
# minutes and more (such groups are now freed: ``cluster.free_orphaned_placement_groups``).
# After this many timeouts (~10 minutes) the trial fails in one line and Tune retries it
# under the sweep's retry budget.
WORKER_GROUP_START_ATTEMPTS = 10


def train_failure_config(max_failures: int) -> Any:
    """Train V2's ``FailureConfig``: ``max_failures`` restarts of a lost worker group, and at
    most :data:`WORKER_GROUP_START_ATTEMPTS` worker groups that never start."""
    import ray.train

    # Train V2's FailureConfig at run time; mypy resolves ray.train's to V1's.
    return ray.train.FailureConfig(  # type: ignore[call-arg]
        max_failures=max_failures, controller_failure_limit=WORKER_GROUP_START_ATTEMPTS
    )


def controller_state_callback(location: str) -> Any:
    """A callback for a run's Train controller that writes its state on every change --
    ``{"state": "RunningState", "since": time.time()}`` -- to ``location``: whether the worker
    group waits to be scheduled (CPUs, GPUs, a node the autoscaler adds) or has started, which
    a trial's stall watch needs to tell a frozen start-up from a wait for resources. Train V2
    has no public hook on its controller: ``ray.train.v2._internal.execution.callback.
    ControllerCallback``, handed over in ``RunConfig.callbacks`` (which Train appends to its own).
    A failed write is dropped: an error in a controller callback would fail the run."""
    import json
    import time

    from ray.train.v2._internal.execution.callback import ControllerCallback

    from ce_ray.results import storage

    class ControllerStateToFile(ControllerCallback):
        def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
            written = {"state": type(current_state).__name__, "since": time.time()}
            try:
                storage.write_bytes(json.dumps(written).encode(), location)
            except Exception:  # the watch reads no state then; the run goes on
                pass

    return ControllerStateToFile()


def worker_group_start_timeout_s() -> float:
    """How long Train V2 waits for a worker group's resources before it tries again
    (``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 60 s by default:
    ``ray.train.v2._internal.constants``)."""
    from ray.train.v2._internal.constants import (
        DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
        WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
    )

    return float(
        os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR, DEFAULT_WORKER_GROUP_START_TIMEOUT_S)
    )


# --- Ray Tune, in the sweep's driver ---

# A trial's function only waits on its Train controller (which Ray Train V2 also runs with
# num_cpus=0), so it reserves no CPU. Reserving one deadlocks a small machine: Tune stages the
# placement groups of PENDING trials ahead of time, and a staged 1-CPU group can take the CPU
# the running trial's training worker is waiting for (seen on 2 CPUs: the worker group timed
# out after 60 s, again and again). Tune refuses an empty request, so the trial asks for
# 1 MiB of Ray's logical memory instead, which nothing else competes for.
TRIAL_FUNCTION_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 2**20}

#: What Tune copies from the driver's environment into every trial actor's runtime
#: environment (``ray/tune/execution/class_cache.py``, ``ENV_VARS_TO_PROPAGATE``), from where
#: it reaches the command line of Ray's ``setup_worker.py`` and the runtime-env agent's log.
TUNE_PROPAGATED_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_SESSION_TOKEN",
)


def keep_credentials_out_of_trials() -> None:
    """Stop Tune from copying the driver's AWS keys into its trials' runtime environments.

    A trial's node has credentials of its own (the shell that started the local head, or an
    instance profile), as every fit-alpha task does; a runtime environment is readable by any
    local user (a process's command line) and logged on every node.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(TUNE_PROPAGATED_SECRETS)


def use_callbacks_on_restore(tuner: Any, callbacks: list) -> None:
    """A restored ``Tuner`` runs with ``callbacks``, not the ones it pickled at the first run
    (this run's console and MLflow URI): Ray has no public way
    (``Tuner._local_tuner.get_run_config()``)."""
    tuner._local_tuner.get_run_config().callbacks = callbacks


def quiet_tune_output() -> None:
    """Tune's legacy reporter (silent at ``verbose=0``) instead of its new output engine,
    which prints the experiment's box and a TensorBoard hint whatever its verbosity, unless
    the environment says otherwise (``RAY_AIR_NEW_OUTPUT``, ``ray/tune/experimental/output.py``)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
