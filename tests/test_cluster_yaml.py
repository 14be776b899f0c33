"""cluster.yaml against Ray's own autoscaler schema."""

import json
import os
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG_PATH = Path(__file__).resolve().parent.parent / "cluster.yaml"
CONFIG = yaml.safe_load(CONFIG_PATH.read_text())
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


def test_nodes_use_their_own_profiles_and_ssh_is_open_to_one_address():
    types = CONFIG["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    assert profiles == {"head": "ce-ray-head", "gpu-worker": "ce-ray-worker"}
    (rule,) = CONFIG["provider"]["security_group"]["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"]) == (22, 22)
    assert all(not r["CidrIp"].endswith("/0") for r in rule["IpRanges"])
    assert not any("AWS_SECRET" in line for line in Path(CONFIG_PATH).read_text().splitlines())


def test_head_creates_the_token_and_every_node_joins_with_it():
    (token,) = [c for c in CONFIG["head_setup_commands"] if "get-auth-token --generate" in c]
    assert "umask 077" in token and "chmod 600 ~/.ray/auth_token" in token
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
