"""A Ray head on this machine, started and stopped as one process group.

`jobs/run_local.py` and the tests start real heads with ``ray start --head --block`` so that
``ray job submit`` has something to talk to. ``--block`` keeps the ``ray start`` process alive
as the parent of the GCS, the raylet, the dashboard and the workers, all in one new process
group: stopping that group stops exactly this head, never another cluster on the machine
(``ray stop`` would stop every Ray process here).

Token authentication is on by default in Ray 2.60 and ``ray start`` never creates a token, so
on a fresh machine it refuses to start. :func:`ensure_auth_token` creates one the way Ray
supports (``ray get-auth-token --generate``: ``~/.ray/auth_token``) when none exists.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent

# Ray looks for a token in this order; any one of them is enough.
TOKEN_SOURCES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ensure_auth_token(env: dict[str, str]) -> None:
    """Create ``~/.ray/auth_token`` (of ``env``'s HOME) unless a token is already given, and
    keep it private: 0600 in a 0700 ``~/.ray``, whoever created it (``ray get-auth-token
    --generate`` and Ray's own ``ray.init()`` leave it 0644 in a 0755 directory, where any
    local user could read it and drive the cluster)."""
    if any(env.get(name) for name in TOKEN_SOURCES):
        return
    directory = Path(env.get("HOME", str(Path.home()))) / ".ray"
    if not (directory / "auth_token").exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        previous = os.umask(0o077)
        try:
            subprocess.run(
                [str(BIN / "ray"), "get-auth-token", "--generate"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            os.umask(previous)
    make_token_private(directory)


def make_token_private(directory: Path) -> None:
    """0700 on ``directory`` (``~/.ray``) and 0600 on its ``auth_token``, where this user
    owns them."""
    for path, mode in ((directory, 0o700), (directory / "auth_token", 0o600)):
        if path.exists() and path.stat().st_uid == os.getuid():
            path.chmod(mode)


def head_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a loopback-only head with token authentication."""
    return (
        os.environ
        | {
            # Ray's single-machine mode: every Ray process binds to 127.0.0.1 only.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # The head's workers and the job's `python` are this environment's.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        | (extra or {})
    )


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def listener_pid(port: int, host: str = "127.0.0.1") -> int | None:
    """The process listening on ``host:port`` (None: nothing does, or it is not one this user
    may see -- another user's)."""
    for connection in psutil.net_connections(kind="tcp"):
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.laddr.ip in (host, "0.0.0.0")
        ):
            return connection.pid
    return None


def _listens_for(head_pgid: int, port: int) -> bool:
    """Whether the listener on ``port`` is a process of the head's own process group."""
    pid = listener_pid(port)
    try:
        return pid is not None and os.getpgid(pid) == head_pgid
    except ProcessLookupError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Head:
    """A Ray head started by :func:`start_head`: its ``ray start`` process (the leader of its
    process group), its GCS address and its RAY_TMPDIR (for :func:`stop_head`'s clean-up)."""

    process: subprocess.Popen
    gcs_address: str
    ray_tmpdir: str


def start_head(
    gcs_port: int,
    dashboard_port: int,
    env: dict[str, str],
    extra_args: list[str] | None = None,
    log_path: str | None = None,
    timeout_s: float = 120.0,
) -> Head:
    """Start ``ray start --head --block`` in a new process group; return once its dashboard
    and its dashboard agent (which runs submitted jobs) listen: the dashboard alone answers
    `ray job submit` with "No available agent" while the agent is starting (seen on a busy
    2-core machine). Raises RuntimeError with the head's last output on failure."""
    ensure_auth_token(env)
    agent_port = free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            "--disable-usage-stats",
            *(extra_args or []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    head = Head(process, f"127.0.0.1:{gcs_port}", env.get("RAY_TMPDIR", tempfile.gettempdir()))
    deadline = time.monotonic() + timeout_s
    while not (listening(dashboard_port) and listening(agent_port)):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_head(head)
            tail = Path(log_path).read_text()[-2000:] if log_path else ""
            raise RuntimeError(f"the Ray head did not start (exit {process.returncode}): {tail}")
        time.sleep(0.25)
    # The ports were free when chosen; another process may have taken one since. Nothing is
    # sent (a job, the token) to a listener that is not this head's.
    taken = [p for p in (dashboard_port, agent_port) if not _listens_for(process.pid, p)]
    if taken:
        stop_head(head)
        raise RuntimeError(
            f"port {taken[0]} on 127.0.0.1 is held by a process that is not the Ray head just "
            "started (another user's?); run again to choose other ports"
        )
    return head


def stop_head(head: Head, grace_s: float = 3.0) -> None:
    """Stop the head's whole process group: SIGTERM, then SIGKILL after ``grace_s``.

    (Ray drains a node for up to 30 s on SIGTERM; nothing of ours needs that.) Like
    ``ray stop``, it then removes the head's entry in ``<RAY_TMPDIR>/ray/ray_current_cluster``;
    left behind, it makes the next ``ray.init()`` on this machine try to join the dead head.
    """
    process = head.process
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    else:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(process.pid):
            process.poll()
            time.sleep(0.2)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    current = Path(head.ray_tmpdir) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip() == head.gcs_address:
        current.unlink()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
