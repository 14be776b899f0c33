"""The few facts about the Ray cluster that the jobs need: connecting to it (a new local
cluster binds to 127.0.0.1), what it can hold now or after autoscaling, and which node a piece
of work ran on."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Callable, Sequence

from ce_ray.configs import SweepConfig
from ce_ray.experiments import local_head, ray_compat
from ce_ray.results import storage


def init_ray(
    results: str,
    quiet: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
    also: Sequence[str] = (),
) -> None:
    """``ray.init()`` once, in the entry point: join the cluster the user chose
    (:func:`cluster_to_join`), or start one of its own bound to 127.0.0.1 (nothing listens on
    the machine's network address) in a private temporary directory; ``log`` gets one line
    saying which.

    A plain-script driver passes the non-secret location of ``s3://`` results (endpoint,
    region: ``storage.forwarded_env``) to its tasks and workers; credentials never travel
    through Ray (``also``: other locations it reads, such as ``--data`` on S3). A submitted job
    already has its runtime environment (``ray job submit --runtime-env-json``); Ray refuses
    the same variable twice, so nothing is passed again.
    ``quiet``: the workers' output stays in Ray's logs instead of reaching this process, and
    Ray's console handler prints only warnings and errors (Ray's log records still reach
    other handlers at INFO: a sweep keeps them in its results, ``console.kept_log``).
    """
    import ray

    if ray.is_initialized():
        return
    options: dict = {}
    if quiet:
        options["log_to_driver"] = False
        for handler in logging.getLogger("ray").handlers:  # Ray's own: its stderr
            handler.setLevel(logging.WARNING)
    env = storage.forwarded_env(results)
    for location in also:
        env |= storage.forwarded_env(location)
    if env and ray_compat.SUBMITTED_JOB_MARKER not in os.environ:
        options["runtime_env"] = {"env_vars": env}
    joined, line = cluster_to_join(address)
    if joined is None:
        temp_dir = tempfile.mkdtemp(prefix="ce-ray-", dir=os.environ.get("RAY_TMPDIR"))
        options |= {"address": "local", "_node_ip_address": "127.0.0.1", "_temp_dir": temp_dir}
        local_head.ensure_auth_token(dict(os.environ))  # private, not Ray's 0644 default
        line = f"{line} (its logs: {temp_dir})"
    else:
        options["address"] = joined
    log(f"[cluster] {line}")
    ray.init(**options)


def cluster_to_join(address: str | None) -> tuple[str | None, str]:
    """The cluster a command joins -- only one the user chose -- and the words that say so;
    None: it starts one of its own.

    Chosen: ``address`` (``--address``); ``RAY_ADDRESS`` (which Ray's job manager sets for a
    submitted job's driver); or the cluster this user's ``ray start`` recorded on this node
    (:func:`own_recorded_cluster`). Ray itself would join whatever address its record names,
    in a directory every user may write: another user's cluster -- or a listener of theirs --
    would get this user's Ray token, code and data, and send back objects this process
    unpickles.
    """
    if address:
        return address, f"joining the Ray cluster at {address} (--address)"
    from_env = os.environ.get("RAY_ADDRESS", "")
    if from_env:
        whose = "this job's cluster" if ray_compat.SUBMITTED_JOB_MARKER in os.environ else "set"
        return from_env, f"joining the Ray cluster at {from_env} (RAY_ADDRESS: {whose})"
    record = ray_compat.recorded_cluster_file()
    recorded, refused = own_recorded_cluster(record)
    if recorded:
        return recorded, f"joining the Ray cluster at {recorded} (your `ray start`, {record})"
    starting = "starting a Ray cluster of its own on 127.0.0.1"
    if refused:
        starting += (
            f"; not joining the one recorded in {record}: {refused} (to join a cluster, give "
            "--address or RAY_ADDRESS)"
        )
    return None, starting


def own_recorded_cluster(record: str) -> tuple[str | None, str]:
    """``(address, "")`` when ``record`` is this user's own (:func:`read_own_file`);
    ``(None, why)`` when it is there but not; ``(None, "")`` when there is none."""
    text, refused = read_own_file(record)
    if text is None:
        return None, refused
    address = text.strip()[:256]
    return (address, "") if address else (None, "it is empty")


def read_own_file(path: str) -> tuple[str | None, str]:
    """``(text, "")`` when ``path`` is a plain file this user owns and no one else may write,
    read through the descriptor that was checked (so it cannot be swapped in between);
    ``(None, why)`` when it is there but fails that; ``(None, "")`` when there is none."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, ""
    except OSError as error:  # a link, or unreadable
        return None, f"it cannot be read as a plain file ({error.strerror})"
    with os.fdopen(descriptor) as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None, "it is not a plain file"
        if status.st_uid != os.getuid():
            return None, f"it belongs to another user (uid {status.st_uid})"
        if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None, "other users may write it"
        return stream.read(), ""


def max_resources() -> dict[str, float]:
    """What the cluster can hold: on an autoscaling cluster, the most its node types allow
    (max workers x resources per type, capped by the cluster's max_workers); on a fixed
    cluster, its current total.

    Ray 2.60 has no public call for this. The limits come from the GCS's cluster config where
    an autoscaler reports one (``ray_compat.autoscaler_limits``), else from the autoscaling
    config of the v1 autoscaler running on this node (the head; `ray up` and `ray job submit`
    drivers run there), else the cluster is taken as fixed.
    """
    import ray

    current = ray.cluster_resources()
    try:
        limits = ray_compat.autoscaler_limits() or _local_autoscaler_limits()
    except Exception:  # no readable limits: treat the cluster as fixed
        limits = None
    if not limits:
        return current
    keys = set(limits) | set(current)
    return {key: max(float(limits.get(key, 0)), current.get(key, 0.0)) for key in keys}


def largest_node() -> dict[str, float]:
    """The most CPUs and GPUs one node has, among the live nodes and, on an autoscaling
    cluster whose config this node reads, its node types ({} when unknown)."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    try:
        types = _local_autoscaler_node_types() or []
    except Exception:  # no readable autoscaler config: the live nodes alone
        types = []
    candidates = nodes + types
    if not candidates:
        return {}
    return {key: max(float(node.get(key, 0.0)) for node in candidates) for key in ("CPU", "GPU")}


def default_workers() -> int:
    """Concurrent fit-alpha tasks when --workers is not given: the cluster's CPUs at its
    largest (at least 1)."""
    return max(1, int(max_resources().get("CPU", 1)))


def _local_autoscaler_config() -> dict | None:
    """The ``--autoscaling-config`` of a Ray monitor on this node, if one of this user's runs
    here and the file is this user's and no one else may write it (another user's monitor, or
    a file they could change, would set how many trials run and which the sweep refuses)."""
    import psutil
    import yaml

    for process in psutil.process_iter(["cmdline", "uids"]):
        command = process.info["cmdline"] or []
        if not any(part.endswith("autoscaler/_private/monitor.py") for part in command):
            continue
        uids = process.info["uids"]
        if uids is None or uids.real != os.getuid():
            continue
        for part in command:
            if part.startswith("--autoscaling-config="):
                text, _ = read_own_file(os.path.expanduser(part.split("=", 1)[1]))
                return yaml.safe_load(text) if text is not None else None
    return None


def _local_autoscaler_limits() -> dict[str, float] | None:
    """Resource limits from the autoscaling config of a Ray monitor on this node."""
    config = _local_autoscaler_config()
    return autoscaling_limits(config) if config else None


def _local_autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type of the autoscaling config of a monitor on this node."""
    config = _local_autoscaler_config()
    if not config:
        return None
    return [dict(t.get("resources", {})) for t in config["available_node_types"].values()]


def autoscaling_limits(config: dict) -> dict[str, float]:
    """Total resources of an autoscaler config at full size: the head plus every worker type
    at its ``max_workers``, the worker count capped by the top-level ``max_workers``."""
    types = config["available_node_types"]
    head_type = config["head_node_type"]
    budget = config.get("max_workers", float("inf"))
    totals: dict[str, float] = dict(types[head_type].get("resources", {}))
    for name, node_type in sorted(types.items()):
        if name == head_type:
            continue
        count = min(node_type.get("max_workers", 0), budget)
        budget -= count
        for key, value in node_type.get("resources", {}).items():
            totals[key] = totals.get(key, 0.0) + count * value
    return totals


def node_id() -> str:
    """The Ray node this process runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def free_orphaned_placement_groups() -> list[dict[str, float]]:
    """Remove this job's placement groups whose creating actor has died; return the
    resources each held.

    Ray frees a (non-detached) placement group only when both its creator actor and its job
    are gone. A Ray Train worker group's is created by the run's controller actor, and
    Train's PlacementGroupCleaner, which removes it when the controller dies (Tune stopping a
    trial early), asks the State API whether the controller lives: on two busy CPUs that can
    fail, the group is missed, and its CPUs are lost to the job -- the next trial's worker
    group then waits for them forever (seen in CI: an ASHA sweep hung, two such groups holding
    both CPUs). A group whose creator died has no user left. Ray's public table names no
    creator: ``ray_compat.placement_groups`` reads the GCS's own records.
    """
    import ray
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()
    freed = []
    for group in ray_compat.placement_groups():
        if group.job_id != job or not group.creator_dead:
            continue
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.group_id)))
        freed.append(group.resources)
    return freed


def default_concurrency(config: SweepConfig) -> int:
    """Trials whose training workers fit in the cluster at its largest: on an autoscaling
    cluster its node types at their max_workers (so that pending trials ask it to grow), on
    a fixed one what it holds now; at least 1, at most the number of trials."""
    resources = max_resources()
    fits = int(resources.get("CPU", 0) // (config.workers_per_trial * config.cpus_per_worker))
    if config.gpus_per_worker:
        per_trial_gpu = config.workers_per_trial * config.gpus_per_worker
        fits = min(fits, int(resources.get("GPU", 0) // per_trial_gpu))
    return max(1, min(fits, config.trials))


def check_schedulable(config: SweepConfig) -> None:
    """Refuse, in one line, a trial that the cluster can never hold (Tune would wait for it
    forever): its workers' CPUs and GPUs against the cluster at its largest (autoscaling
    included), and one worker against the largest node there is or can be."""
    resources = max_resources()
    per_worker = {"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker}
    largest = largest_node()
    for name, amount in per_worker.items():
        need = amount * config.workers_per_trial
        if need > resources.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"a trial needs {config.workers_per_trial} worker(s) x {amount:g} {name} = "
                f"{need:g} {name}; the cluster holds at most {resources.get(name, 0.0):g} "
                "(--workers-per-trial, --cpus-per-worker, --gpus-per-worker)"
            )
        if largest and amount > largest.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"a worker needs {amount:g} {name}; no node has more than "
                f"{largest.get(name, 0.0):g} (--cpus-per-worker, --gpus-per-worker)"
            )
