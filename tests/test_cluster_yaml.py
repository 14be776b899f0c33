"""cluster.yaml against Ray's own autoscaler schema."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
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


def test_schema_rejects_a_broken_config():
    broken = dict(CONFIG, max_workers="many")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
