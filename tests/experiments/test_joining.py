"""Which Ray cluster a plain command joins: only one the user chose (``--address``,
``RAY_ADDRESS``, or a record of this user's own ``ray start`` that no one else may write).
Files only, no Ray; the run against a planted record naming a listener is in
``jobs/test_fit_alpha.py::test_plain_script_starts_its_own_cluster_writes_to_s3_and_leaks_no_credential``."""

import os

import pytest

from ce_ray.experiments import cluster


@pytest.fixture
def record(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir(mode=0o777)
    path = tmp_path / "ray" / "ray_current_cluster"
    path.write_text("127.0.0.1:6390\n")
    path.chmod(0o644)
    return path


def test_your_own_ray_start_is_joined(record):
    joined, line = cluster.cluster_to_join(None)
    assert joined == "127.0.0.1:6390" and "your `ray start`" in line


def test_a_record_others_may_write_is_not_joined(record):
    record.chmod(0o666)
    joined, line = cluster.cluster_to_join(None)
    assert joined is None and "other users may write it" in line and "--address" in line


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file away needs root")
def test_another_user_s_record_is_not_joined(record):
    os.chown(record, 65534, 65534)
    joined, line = cluster.cluster_to_join(None)
    assert joined is None and "belongs to another user (uid 65534)" in line


def test_a_linked_or_empty_record_is_not_joined(record, tmp_path):
    record.write_text("")
    assert cluster.cluster_to_join(None) == (
        None,
        "starting a Ray cluster of its own on 127.0.0.1; not joining the one recorded in "
        f"{record}: it is empty (to join a cluster, give --address or RAY_ADDRESS)",
    )
    target = tmp_path / "elsewhere"
    target.write_text("127.0.0.1:6390")
    record.unlink()
    record.symlink_to(target)
    assert cluster.cluster_to_join(None)[0] is None


def test_no_record_starts_a_cluster_of_its_own(record):
    record.unlink()
    assert cluster.cluster_to_join(None) == (None, "starting a Ray cluster of its own on 127.0.0.1")


def test_an_address_the_user_gave_is_joined_before_any_record(record, monkeypatch):
    record.chmod(0o666)
    assert cluster.cluster_to_join("127.0.0.2:6379")[0] == "127.0.0.2:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:7000")
    joined, line = cluster.cluster_to_join(None)
    assert joined == "127.0.0.1:7000" and "(RAY_ADDRESS: set)" in line
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert "(RAY_ADDRESS: this job's cluster)" in cluster.cluster_to_join(None)[1]


def monitor_like(config: str, **options: object):
    """A process whose command line reads as a Ray monitor's with ``config``."""
    import subprocess

    command = ["/bin/sh", "-c", "read line", "x/autoscaler/_private/monitor.py"]
    command += [f"--autoscaling-config={config}"]
    return subprocess.Popen(command, stdin=subprocess.PIPE, **options)  # type: ignore[call-overload]


def test_the_autoscaler_s_limits_come_only_from_this_user_s_own_monitor_and_file(tmp_path):
    config = tmp_path / "autoscaling.yaml"
    config.write_text("max_workers: 3\n")
    config.chmod(0o644)
    monitor = monitor_like(str(config))
    try:
        assert cluster._local_autoscaler_config() == {"max_workers": 3}
        config.chmod(0o666)  # a file others may change
        assert cluster._local_autoscaler_config() is None
    finally:
        monitor.communicate()
    if os.getuid() == 0:  # another user's monitor, naming a file of this user's
        config.chmod(0o644)
        tmp_path.chmod(0o755)
        theirs = monitor_like(str(config), user=65534)
        try:
            assert cluster._local_autoscaler_config() is None
        finally:
            theirs.communicate()


def test_run_local_sends_nothing_to_a_port_another_process_holds():
    import socket

    from ce_ray.experiments import local_head

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert local_head.listener_pid(port) == os.getpid()
        assert local_head._listens_for(os.getpgid(0), port)
        assert not local_head._listens_for(os.getpgid(0) + 1_000_000, port)  # not the head's
