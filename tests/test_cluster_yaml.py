"""cluster.yaml against Ray's own autoscaler schema."""

import json
import os
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "cluster.yaml").read_text())
SCHEMA = json.loads(
    (Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text()
)


def test_cluster_yaml_matches_the_autoscaler_schema():
    jsonschema.validate(CONFIG, SCHEMA)
    validate_config(prepare_config(CONFIG))  # with the provider's defaults filled in


def test_cpu_head_and_autoscaling_gpu_workers():
    types = CONFIG["available_node_types"]
    head = types[CONFIG["head_node_type"]]
    assert head["max_workers"] == 0
    gpu = types["gpu-worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"]
    assert any("pip install" in c and "-e" in c for c in CONFIG["setup_commands"])
    # The dashboard listens on the head's loopback only; reach it through `ray dashboard`.
    assert "--dashboard-host=127.0.0.1" in " ".join(CONFIG["head_start_ray_commands"])


def test_head_creates_the_token_and_every_node_joins_with_it():
    assert any("get-auth-token --generate" in c for c in CONFIG["head_setup_commands"])
    assert "~/.ray/auth_token" in CONFIG["cluster_synced_files"]  # head -> workers, before start
    for commands in (CONFIG["head_start_ray_commands"], CONFIG["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token ray start" in start
    assert any("CE_RAY_RESULTS=s3://" in c for c in CONFIG["setup_commands"])


def test_default_concurrency_counts_the_cluster_at_full_size():
    from ce_ray.experiments.cluster import autoscaling_limits

    limits = autoscaling_limits(CONFIG)
    assert limits == {"CPU": 8 * 48, "GPU": 8 * 4}  # the head holds none
    capped = autoscaling_limits(dict(CONFIG, max_workers=3))
    assert capped == {"CPU": 3 * 48, "GPU": 3 * 4}
