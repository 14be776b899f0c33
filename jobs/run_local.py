"""Run the main job on this machine the way a cluster runs it.

Starts a Ray head on 127.0.0.1 (unless one is already listening), submits
``jobs/primal_curve.py`` (or ``--job dual_curve``) with ``ray job submit --working-dir .``,
streams its output -- the result table and where the Parquet files and plots are -- and stops
the head if it started it. Arguments after the options go to the job unchanged.

    python jobs/run_local.py [--job primal_curve|dual_curve] [JOB ARGS...]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DASHBOARD_PORT = 8265
GCS_PORT = 6379


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("primal_curve", "dual_curve"), default="primal_curve")
    args, job_args = parser.parse_known_args()
    if not any(a == "--results" or a.startswith("--results=") for a in job_args):
        # The job runs in a copy of the working directory: give it an absolute results path.
        job_args += ["--results", str(ROOT / "results")]
    env = os.environ | {
        # Ray's single-machine mode: every Ray process binds to 127.0.0.1 only.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # The head's workers and the job's `python` are this environment's.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
    }
    started = False
    if not _listening(DASHBOARD_PORT):
        print(f"[run_local] starting a Ray head on 127.0.0.1 (dashboard :{DASHBOARD_PORT})")
        subprocess.run(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
             f"--port={GCS_PORT}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={DASHBOARD_PORT}", "--disable-usage-stats"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        started = True
    try:
        command = [
            str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}",
            "--working-dir", str(ROOT), "--", "python", f"jobs/{args.job}.py", *job_args,
        ]  # fmt: skip
        return subprocess.run(command, env=env, cwd=ROOT).returncode
    finally:
        if started:
            print("[run_local] stopping the Ray head it started")
            subprocess.run([str(BIN / "ray"), "stop"], env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
