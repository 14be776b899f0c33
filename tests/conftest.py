"""Shared fixtures. Ray binds to loopback only: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray
takes 127.0.0.1 as the node address (its single-machine mode) instead of the routable one."""

import os

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU Ray cluster in this process for one test module, shut down afterwards."""
    import ray

    # The dashboard serves the State API, which Ray Train's placement-group cleaner needs to
    # free the workers' CPUs when Tune stops a trial early (ASHA); without it they leak.
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", include_dashboard=True, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
