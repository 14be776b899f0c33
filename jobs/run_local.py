"""Run the main job on this machine the way a cluster runs it.

Starts a Ray head of its own on 127.0.0.1, on free ports, with its session files and log in a
private temporary directory (on a fresh machine it first creates Ray's auth token, readable by
this user only), submits ``jobs/primal_curve.py`` (or ``--job dual_curve``) to that head as a
Ray job with the working directory uploaded -- what ``ray job submit --working-dir .`` does,
through Ray's Job SDK, without the CLI's two dozen lines of its own -- streams the job's log
(the result table and where the Parquet files and plots are) and stops the head. Arguments
after the options go to the job unchanged. The head and its workers inherit this shell's
environment, credentials included; nothing secret goes into the job's runtime environment or
onto a command line (for ``--results s3://...`` only the endpoint and region are passed).

    python jobs/run_local.py [--job primal_curve|dual_curve] [JOB ARGS...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

# `python jobs/run_local.py` puts jobs/ on sys.path; the package sits one level up.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce_ray.experiments import local_head  # noqa: E402
from ce_ray.results import storage  # noqa: E402


def results_of(job_args: list[str]) -> str:
    """The job's ``--results`` (``--results X`` or ``--results=X``), else ``./results``."""
    for index, arg in enumerate(job_args):
        if arg == "--results" and index + 1 < len(job_args):
            return job_args[index + 1]
        if arg.startswith("--results="):
            return arg.split("=", 1)[1]
    return str(ROOT / "results")


def submit_and_follow(
    address: str,
    env: dict[str, str],
    entrypoint: list[str],
    env_vars: dict[str, str],
    verbose: bool = False,
) -> int:
    """Submit ``entrypoint`` with this project as its working directory (uploaded as Ray does
    it: what .gitignore excludes stays here), print its log as it comes, and return 0 when
    the job succeeded. ``env_vars``: the job's runtime environment (never a secret);
    ``verbose``: the SDK's own INFO lines too."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not verbose:  # the SDK's INFO lines: each file .gitignore keeps out, the upload
        for handler in logging.getLogger("ray").handlers:
            handler.setLevel(logging.WARNING)
        # ... and Ray 2.60's notice that .git is no longer uploaded (nothing here needs it).
        logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    client = JobSubmissionClient(address)
    runtime_env: dict = {"working_dir": str(ROOT)}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env)
    print(f"[run_local] submitted {job_id}: {shlex.join(entrypoint)}", flush=True)

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"[run_local] job {job_id} {status.value.lower()}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--job", choices=("primal_curve", "dual_curve"), default="primal_curve")
    args, job_args = parser.parse_known_args()
    results = results_of(job_args)
    if not any(a == "--results" or a.startswith("--results=") for a in job_args):
        # The job runs in a copy of the working directory: give it an absolute results path.
        job_args += ["--results", results]
    # Private (0700): the head's log and Ray's session files, which name the job's settings.
    private = tempfile.mkdtemp(prefix="ce-ray-")
    env = local_head.head_env({"RAY_TMPDIR": private})
    # The Job SDK reads the auth mode and token from this process's environment when Ray is
    # first imported: set them before anything imports it.
    os.environ.update({k: v for k, v in env.items() if k.startswith("RAY_")})
    from ce_ray.experiments import console

    verbose = console.verbose_from_env("--verbose" in job_args)
    dashboard = local_head.free_port()
    print(f"[run_local] starting a Ray head on 127.0.0.1 (dashboard :{dashboard}, logs {private})")
    head = local_head.start_head(
        local_head.free_port(), dashboard, env, log_path=f"{private}/head.log"
    )
    returncode = 1
    try:
        returncode = submit_and_follow(
            f"http://127.0.0.1:{dashboard}",
            env,
            ["python", f"jobs/{args.job}.py", *job_args],
            storage.forwarded_env(results),
            verbose=verbose,
        )
        return returncode
    finally:
        print("[run_local] stopping the Ray head it started")
        local_head.stop_head(head)
        if returncode == 0:
            shutil.rmtree(private, ignore_errors=True)
        else:
            print(f"[run_local] the head's log and Ray's session files are kept in {private}")


if __name__ == "__main__":
    sys.exit(main())
