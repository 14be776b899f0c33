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


def test_nodes_use_their_own_profiles_and_a_security_group_made_beforehand():
    types = CONFIG["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    assert profiles == {"head": "ce-ray-head", "gpu-worker": "ce-ray-worker"}
    groups = {name: t["node_config"]["SecurityGroupIds"] for name, t in types.items()}
    assert groups == {"head": ["YOUR-SECURITY-GROUP"], "gpu-worker": ["YOUR-SECURITY-GROUP"]}
    assert "security_group" not in CONFIG["provider"]  # Ray would add SSH from anywhere to it
    assert not any("AWS_SECRET" in line for line in Path(CONFIG_PATH).read_text().splitlines())


def test_ray_configures_no_security_group_and_none_is_open_to_the_world(monkeypatch):
    """Against moto's EC2: the group made as cluster.yaml's comments say, then Ray's own
    security-group step on the file. (Why a group made beforehand: a group Ray makes always
    gets SSH from 0.0.0.0/0, whatever rules the file adds -- checked first.)"""
    import re

    import boto3
    from moto import mock_aws
    from ray.autoscaler._private.aws import config as aws_config

    world = {"CidrIp": "0.0.0.0/0"}
    rays_own = aws_config._create_default_inbound_rules({"sg-1"}, [])
    assert any(world in rule.get("IpRanges", []) for rule in rays_own if rule["FromPort"] == 22)

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    text = CONFIG_PATH.read_text()
    (cidr,) = re.findall(r"--port 22 \\\n\s*#\s+--cidr (\S+)", text)
    assert "--protocol -1 --source-group $SG" in text and not cidr.endswith("/0")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=CONFIG["provider"]["region"])
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        made = ec2.create_security_group(
            GroupName="ce-ray", VpcId=vpc, Description="ce-ray: SSH from one address"
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=made, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp=cidr
        )
        ec2.authorize_security_group_ingress(
            GroupId=made,
            IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": made}]}],
        )
        before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
        config = yaml.safe_load(text.replace("YOUR-SECURITY-GROUP", made))
        configured = aws_config._configure_security_group(config)
        groups = ec2.describe_security_groups()["SecurityGroups"]
    assert {g["GroupId"] for g in groups} == before  # Ray made no group
    for node_type in configured["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == [made]
    open_rules = [p for g in groups for p in g["IpPermissions"] if world in p.get("IpRanges", [])]
    assert not open_rules


def test_the_head_may_end_only_this_cluster_s_instances():
    """docs/design.md's policy: TerminateInstances and CreateTags on the cluster's tag only
    (the tag Ray's AWS provider puts on every node it launches)."""
    import re

    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

    design = (CONFIG_PATH.parent / "docs" / "design.md").read_text()
    (policy,) = re.findall(r"```json\n(.*?)```", design, re.S)
    statements = json.loads(f"[{policy}]")
    ending = [s for s in statements if "ec2:TerminateInstances" in s["Action"]]
    assert ending and all(
        s["Condition"]["StringEquals"] == {f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}": "ce-ray"}
        for s in ending
    )
    assert CONFIG["cluster_name"] == "ce-ray"
    tagging = [s for s in statements if "ec2:CreateTags" in s["Action"]]
    assert all("Condition" in s for s in tagging)


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
