"""Run independent work items as Ray tasks: at most ``workers`` at a time, Ray's own retries
for a worker or node that dies, one progress line per finished item, and the first failure
turned into one line. The caller connects to Ray; the items' functions know nothing of it.

:func:`run_missing` is how fit-alpha, nmk and drift resume: each work item writes one Parquet
file, and only the items whose file is not whole on storage run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from ce_ray.limits import DEFAULT_STALL_TIMEOUT_S, stall_limit_s
from ce_ray.results import storage

#: Where progress lines go (``print``, ``list.append``, stderr under ``--json``).
Log = Callable[[str], None]


def print_line(line: str) -> None:
    """The default :data:`Log`: stdout, flushed (a job's log shows it at once)."""
    print(line, flush=True)


@dataclass(frozen=True)
class WorkItem:
    """One work item: the arguments of its task function, the file the task writes, and the
    rows a whole file holds."""

    args: tuple
    filename: str
    rows: int


def run_missing(
    function: Callable[..., Any],
    items: Sequence[WorkItem],
    directory: str,
    workers: int,
    describe: Callable[[tuple, Any], str],
    log: Log = print_line,
    prefix: str = "[tasks]",
    unit: str = "items",
    **task_options: Any,
) -> list[Any]:
    """Run, as Ray tasks (:func:`run_tasks`), the items whose file in ``directory`` is not
    whole; returns their results.

    First it removes the temporary files that killed writers left behind and deletes any
    item file without its ``rows`` (e.g. cut short by a failed copy), so those items run
    again; items whose files are whole are skipped, and the count is logged.
    """
    if removed := storage.remove_temporaries(directory):
        log(f"{prefix} removed {removed} unfinished write(s) in {directory}")
    present = set(storage.list_files(directory, ".parquet"))
    todo = []
    for item in items:
        location = storage.join(directory, item.filename)
        if item.filename in present and storage.parquet_rows(location) != item.rows:
            log(f"{prefix} {item.filename} is damaged (not a whole file): recomputing it")
            storage.delete(location)
            present.discard(item.filename)
        if item.filename not in present:
            todo.append(item)
    done = len(items) - len(todo)
    if done:
        log(f"{prefix} resuming: {done}/{len(items)} {unit} already on storage")
    args = [item.args for item in todo]
    return run_tasks(
        function, args, workers, describe, log, prefix, unit, done_before=done, **task_options
    )


# A task stalls by the one rule of ``ce_ray.limits.stall_limit_s``: the longest a finished task
# took sets it. The first task on each worker does not count: its time holds the start of a
# worker process (importing torch: seconds), which a 5x factor would turn into a limit that
# has nothing to do with the work.
#: How often the running tasks are checked for stalls (seconds).
STALL_POLL_S = 2.0
#: How long the stall watch waits for Ray's State API to say whether a task has begun to run.
STATE_API_TIMEOUT_S = 5


@dataclass
class _Running:
    item: tuple
    started: float  # its stall clock: from its submission, or from when Ray says it began to run
    attempt: int
    first_on_its_worker: bool  # one of the first ``workers`` tasks, or a stalled task's rerun:
    # it may pay for a worker's start


def task_state(ref: ray.ObjectRef) -> tuple[str, float | None]:
    """What Ray's State API says of ``ref``'s task (its latest attempt): ``("waiting", None)``
    -- it has not begun to run (it waits for a CPU, or for a node the autoscaler is adding:
    minutes on a cloud); ``("running", since)`` -- it began to run at ``since`` (on
    ``time.monotonic``'s clock; None when Ray does not say); ``("unknown", None)`` -- the State
    API did not answer (no dashboard, a timeout)."""
    from ray.util.state import get_task

    try:
        # A list of the task's attempts, although typed as one TaskState.
        found: Any = get_task(ref, timeout=STATE_API_TIMEOUT_S)
    except Exception:  # the State API's errors vary with what is missing
        return "unknown", None
    attempts = found if isinstance(found, list) else [found] if found else []
    if not attempts:
        return "unknown", None
    latest = max(attempts, key=lambda attempt: attempt.attempt_number)
    if str(latest.state).startswith("PENDING"):
        return "waiting", None
    started_ms = getattr(latest, "start_time_ms", None)
    if not started_ms:
        return "running", None
    return "running", time.monotonic() - max(0.0, time.time() - started_ms / 1000)


def run_tasks(
    function: Callable[..., Any],
    items: Sequence[tuple],
    workers: int,
    describe: Callable[[tuple, Any], str],
    log: Log = print_line,
    prefix: str = "[tasks]",
    unit: str = "items",
    done_before: int = 0,
    max_retries: int = 3,
    num_gpus: float = 0,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> list[Any]:
    """``function(*item)`` for every item, each a Ray task holding 1 CPU (and ``num_gpus``).

    Returns the results in the order the tasks finished. Progress lines read ``PREFIX k/N
    UNIT: describe(item, result) [elapsed]``, counting ``done_before`` items that an earlier
    run finished. A task that raises cancels the rest and raises a ``ValueError`` with the
    last line of its error (the cause's message for a ValueError). A worker that dies is
    Ray's to retry (``max_retries``); a task that has run longer than ``stall_limit_s(
    stall_timeout_s, the longest finished task)`` (the first ``workers`` tasks aside: they
    include starting the worker processes) -- a worker stopped or hung, not dead -- is
    killed and run again, one line each time, up to ``max_retries`` times. Its time counts
    from when Ray's State API says it began to run (:func:`task_state`): a task that waits
    for a CPU or a node (``workers`` may count CPUs that an autoscaler has still to add) has
    not stalled, and while the State API does not answer no task is taken for stalled.
    Items are deterministic, so a rerun computes the same result.
    """
    task = ray.remote(function).options(max_retries=max_retries, num_cpus=1, num_gpus=num_gpus)
    # (item, attempt, whether its task starts a worker process)
    queue, results = [(item, 0, False) for item in items], []
    running: dict[ray.ObjectRef, _Running] = {}
    started, total = time.perf_counter(), done_before + len(items)
    longest, checked, submitted = 0.0, time.monotonic(), 0
    state_api_silent = False
    while queue or running:
        while queue and len(running) < workers:
            item, attempt, starts_a_worker = queue.pop(0)
            first = starts_a_worker or submitted < workers
            running[task.remote(*item)] = _Running(item, time.monotonic(), attempt, first)
            submitted += 1
        ready, _ = ray.wait(list(running), num_returns=1, timeout=STALL_POLL_S)
        # Checked every poll, not only when nothing finished: one stopped worker must not
        # wait for the others to run out of work.
        if time.monotonic() - checked >= STALL_POLL_S:
            checked = time.monotonic()
            limit = stall_limit_s(stall_timeout_s, longest)
            for ref, run in list(running.items()):
                if ref in ready or time.monotonic() - run.started <= limit:
                    continue
                state, since = task_state(ref)
                if state == "waiting":  # its clock starts again: it has not run yet
                    run.started = time.monotonic()
                    continue
                if state == "unknown":  # no answer is not a stall: asked again next poll
                    if not state_api_silent:
                        state_api_silent = True
                        log(
                            f"{prefix} Ray's State API does not answer: a task past its stall "
                            "limit is left running until it does"
                        )
                    continue
                if since is not None:  # timed from when Ray says it began to run
                    run.started = since
                seconds = time.monotonic() - run.started
                if seconds <= limit:
                    continue
                ray.cancel(ref, force=True)
                del running[ref]
                if run.attempt >= max_retries:
                    for other in running:
                        ray.cancel(other, force=True)
                    raise ValueError(
                        f"{prefix} a task stalled {run.attempt + 1} times (limit {limit:.0f} s)"
                    )
                log(
                    f"{prefix} a task stalled: running {seconds:.0f} s (limit {limit:.0f} s); "
                    f"killed, running it again (retry {run.attempt + 1}/{max_retries})"
                )
                # Its worker was killed with it: the rerun may start a new one.
                queue.insert(0, (run.item, run.attempt + 1, True))
        if not ready:
            continue
        [ref] = ready
        run = running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            for other in running:
                ray.cancel(other)
            cause = error.cause if isinstance(error.cause, ValueError) else error
            raise ValueError(str(cause).strip().splitlines()[-1]) from None
        if not run.first_on_its_worker:
            longest = max(longest, time.monotonic() - run.started)
        results.append(result)
        log(
            f"{prefix} {done_before + len(results)}/{total} {unit}: "
            f"{describe(run.item, result)} [{time.perf_counter() - started:.1f}s elapsed]"
        )
    return results
