"""Run the main job on this machine the way a cluster runs it.

Starts a Ray head of its own on 127.0.0.1, on free ports, with its session files and log in a
private temporary directory (on a fresh machine it first creates Ray's auth token, readable by
this user only), submits ``jobs/primal_curve.py`` (or ``--job dual_curve``) to that head with
``ray job submit --working-dir .``, streams its output -- the result table and where the
Parquet files and plots are -- and stops the head. Arguments after the options go to the job
unchanged. The head and its workers inherit this shell's environment, credentials included;
nothing secret goes into the job's runtime environment or onto a command line (for
``--results s3://...`` only the endpoint and region are passed).

    python jobs/run_local.py [--job primal_curve|dual_curve] [JOB ARGS...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
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


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--job", choices=("primal_curve", "dual_curve"), default="primal_curve")
    args, job_args = parser.parse_known_args()
    results = results_of(job_args)
    if not any(a == "--results" or a.startswith("--results=") for a in job_args):
        # The job runs in a copy of the working directory: give it an absolute results path.
        job_args += ["--results", results]
    # Private (0700): the head's log and Ray's session files, which name the job's settings.
    private = tempfile.mkdtemp(prefix="ce-ray-")
    env = local_head.head_env({"RAY_TMPDIR": private})
    dashboard = local_head.free_port()
    print(f"[run_local] starting a Ray head on 127.0.0.1 (dashboard :{dashboard}, logs {private})")
    head = local_head.start_head(
        local_head.free_port(), dashboard, env, log_path=f"{private}/head.log"
    )
    returncode = 1
    try:
        command = [
            str(local_head.BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--working-dir",
            str(ROOT),
        ]
        if forwarded := storage.forwarded_env(results):
            command += ["--runtime-env-json", json.dumps({"env_vars": forwarded})]
        command += ["--", "python", f"jobs/{args.job}.py", *job_args]
        returncode = subprocess.run(command, env=env, cwd=ROOT).returncode
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
