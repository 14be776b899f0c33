"""Run the main job on this machine the way a cluster runs it.

Starts a Ray head on 127.0.0.1 (unless one is already listening; on a fresh machine it first
creates Ray's auth token), submits ``jobs/primal_curve.py`` (or ``--job dual_curve``) with
``ray job submit --working-dir .``, streams its output -- the result table and where the
Parquet files and plots are -- and stops the head if it started it. Arguments after the
options go to the job unchanged. The storage variables of this shell (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...) go to the job's runtime environment, and so to every task and
training worker, for ``--results s3://...``.

    python jobs/run_local.py [--job primal_curve|dual_curve] [JOB ARGS...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# `python jobs/run_local.py` puts jobs/ on sys.path; the package sits one level up.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce_ray.experiments import local_head  # noqa: E402
from ce_ray.results import storage  # noqa: E402

DASHBOARD_PORT = 8265
GCS_PORT = 6379


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("primal_curve", "dual_curve"), default="primal_curve")
    args, job_args = parser.parse_known_args()
    if not any(a == "--results" or a.startswith("--results=") for a in job_args):
        # The job runs in a copy of the working directory: give it an absolute results path.
        job_args += ["--results", str(ROOT / "results")]
    env = local_head.head_env()
    local_head.ensure_auth_token(env)  # ray job submit needs it even against a running head
    head = None
    if not local_head.listening(DASHBOARD_PORT):
        print(f"[run_local] starting a Ray head on 127.0.0.1 (dashboard :{DASHBOARD_PORT})")
        log = Path(tempfile.gettempdir()) / "ce-ray-run-local-head.log"
        head = local_head.start_head(GCS_PORT, DASHBOARD_PORT, env, log_path=str(log))
    try:
        runtime_env = {"env_vars": storage.storage_env()}
        command = [
            str(local_head.BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{DASHBOARD_PORT}",
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            f"jobs/{args.job}.py",
            *job_args,
        ]
        return subprocess.run(command, env=env, cwd=ROOT).returncode
    finally:
        if head is not None:
            print("[run_local] stopping the Ray head it started")
            local_head.stop_head(head)


if __name__ == "__main__":
    sys.exit(main())
