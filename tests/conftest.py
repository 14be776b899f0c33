"""Shared fixtures. Ray binds to loopback only: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray
takes 127.0.0.1 as the node address (its single-machine mode) instead of the routable one.

* ``ray_cluster`` -- a 2-CPU cluster in this process, shared by every test that uses it (they
  run last, after the tests that start clusters of their own).
* ``multi_node`` -- a head with 0 CPUs and two 1-CPU worker nodes (separate raylets) in their
  own RAY_TMPDIR, started with S3 credentials (as a cloud node has its instance profile's) but
  no endpoint: the driver passes only the endpoint, as on a real cluster.
* ``s3`` -- a real S3 API (moto's server) on 127.0.0.1 with an empty bucket, and the standard
  AWS variables pointing at it in this process.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ce_ray.experiments import local_head

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Token authentication, as on a fresh machine: every cluster of the suite uses the token that
# `ray get-auth-token --generate` creates in this HOME (CI runs with a new, empty HOME) --
# created before the first test marked `ray`, and by nothing else.
os.environ["RAY_AUTH_MODE"] = "token"
# Ray Train's Prometheus metrics (two callbacks per run, that no test reads) cost a trial
# ~2 s on these 2 CPUs; every cluster of the suite inherits this process's environment.
os.environ["RAY_TRAIN_METRICS_ENABLED"] = "0"


#: Fixtures that start Ray: a test using one is marked `ray` without saying so.
RAY_FIXTURES = {"ray_cluster", "multi_node", "ray_tmpdir"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
    # The users of the shared in-process cluster last (in their order), so that it starts once
    # and no cluster of another test meets it; of those, the tests that kill or stop training
    # workers at the very end: Ray Train's cleaner of a dead controller's placement group can
    # miss one (it asks the State API, which times out on 2 busy CPUs), and a leaked group's
    # CPUs are lost to that cluster until its job ends (seen once: the next test's worker group
    # then never started).
    items.sort(
        key=lambda item: (
            "ray_cluster" in getattr(item, "fixturenames", ()),
            item.get_closest_marker("kills_workers") is not None,
        )
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("ray"):
        local_head.ensure_auth_token(dict(os.environ))


@pytest.fixture(autouse=True)
def _only_ray_tests_start_ray(request: pytest.FixtureRequest):
    """A test that is not marked `ray` must leave no Ray connection behind (the fast tier,
    ``pytest -m "not ray"``, runs without Ray)."""
    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    if request.node.get_closest_marker("ray") is None and not before and "ray" in sys.modules:
        started = sys.modules["ray"].is_initialized()
        assert not started, f"{request.node.nodeid} started Ray: mark it `ray`"


def epochs_by_trial(experiment_dir) -> dict[str, int]:
    """Trial id -> epochs it has trained so far in a running sweep, from the trial records
    that rank 0 writes (atomically) before each report -- sooner and surer than Tune's files."""
    counts = {}
    for record in Path(experiment_dir).glob("records/*.json"):
        try:
            counts[record.stem] = len(json.loads(record.read_text())["epochs"])
        except (OSError, ValueError):  # replaced while being read
            continue
    return counts


def epochs_so_far(experiment_dir) -> list[int]:
    """The epochs of :func:`epochs_by_trial`, one number per trial."""
    return list(epochs_by_trial(experiment_dir).values())


def training_worker_pids() -> list[int]:
    """The pids of every live Ray Train worker process on this machine."""
    return sorted(training_workers())


def training_workers() -> dict[int, str]:
    """pid -> the Train run's name (ce-ray names it after the Tune trial) of every live Ray
    Train worker process on this machine; "" until it trains (Train then runs it in a
    directory named after the run)."""
    import psutil

    found = {}
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker"):
            try:
                directory = Path(p.cwd())
            except psutil.Error:  # gone meanwhile
                continue
            found[p.pid] = directory.name if directory.parent.name == "artifacts" else ""
    return found


def damage_one_file(directory: Path) -> str:
    """Leave what a killed writer leaves (a temporary file) and cut one Parquet file short;
    returns the damaged file's name."""
    victim = sorted(directory.glob("*.parquet"))[-1]
    (directory / ".tmp-killed-writer").write_bytes(b"PAR1" + bytes(100))
    victim.write_bytes(victim.read_bytes()[:200])
    return victim.name


def short_tmpdir() -> str:
    """A new directory under /tmp with a short name: a RAY_TMPDIR must keep Ray's socket paths
    under the 107 bytes of AF_UNIX (pytest's tmp_path is too deep)."""
    return tempfile.mkdtemp(prefix="ce-", dir="/tmp")


@pytest.fixture
def ray_tmpdir():
    path = short_tmpdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-CPU Ray cluster in this process, shut down after the last test (starting one costs
    ~10 CPU-s; the tests that use it leave no work running)."""
    import ray

    # The dashboard serves the State API, which Ray Train's placement-group cleaner needs to
    # free the workers' CPUs when Tune stops a trial early (ASHA); without it they leak.
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", include_dashboard=True, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _free_what_dead_controllers_left(request: pytest.FixtureRequest):
    """Before each test on the shared cluster, the placement groups that an earlier test's
    dead Train controllers left are freed (Ray Train's cleaner misses some on 2 busy CPUs; a
    sweep frees them while it runs, not after): they would hold the CPUs this test's trials
    wait for."""
    if "ray_cluster" in request.fixturenames:
        from ce_ray.experiments.cluster import free_orphaned_placement_groups

        request.getfixturevalue("ray_cluster")
        free_orphaned_placement_groups()
    yield


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def multi_node():
    """``(cluster, [worker nodes])``: head 0 CPUs + two 1-CPU workers on 127.0.0.1.

    ``RAY_ADDRESS`` points at it while the module runs, so the jobs' own ``ray.init()`` joins
    it as a submitted job's driver joins its cluster.
    """
    import ray
    from ray.cluster_utils import Cluster

    previous = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS", *S3_ENV)}
    os.environ["RAY_TMPDIR"] = tmpdir = short_tmpdir()
    os.environ.update(S3_ENV)  # the nodes' own credentials
    # The dashboard (State API) lets Train free a dead trial's worker group (see the notes).
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1"},
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmpdir, ignore_errors=True)


class S3Server:
    """moto's S3 API as a child process on 127.0.0.1."""

    def __init__(self, env: dict[str, str] | None = None):
        self.port = local_head.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ | (env or {}),
        )
        deadline = time.monotonic() + 30
        while not local_head.listening(self.port):
            assert self.process.poll() is None and time.monotonic() < deadline, "no moto"
            time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """``(server, bucket)``: a new empty bucket; the AWS variables set in this process."""
    bucket = f"ce-ray-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    for key, value in (S3_ENV | {"AWS_ENDPOINT_URL": s3_server.endpoint}).items():
        monkeypatch.setenv(key, value)
    return s3_server, bucket
