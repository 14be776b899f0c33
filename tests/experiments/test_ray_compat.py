"""A test for each entry of ``ce_ray.experiments.ray_compat``: the private names and the
behaviours of Ray that ce-ray relies on, as Ray 2.60 has them. An upgrade that changes one
fails here, in the fast tier, with the entry's name -- not in a hung sweep. (The placement
groups' records are read on a real cluster: ``experiments/test_sweep.py::
test_the_driver_frees_placement_groups_that_dead_actors_left``.)"""

import os

import pytest
import ray
import ray.train
from ray import tune

from ce_ray.experiments import ray_compat
from ce_ray.experiments.ray_compat import torch_trainer_without_ray_data


def test_ray_is_the_version_every_entry_was_checked_against():
    assert ray.__version__ == ray_compat.RAY_VERSION


def test_a_submitted_job_s_marker_is_the_one_ray_s_job_manager_sets():
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    assert ray_compat.SUBMITTED_JOB_MARKER == RAY_JOB_CONFIG_JSON_ENV_VAR


def test_the_recorded_cluster_is_the_file_ray_init_reads(tmp_path, monkeypatch):
    from ray._private.services import get_ray_address_from_environment

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    record = tmp_path / "ray" / "ray_current_cluster"
    assert ray_compat.recorded_cluster_file() == str(record)
    record.parent.mkdir()
    record.write_text("127.0.0.1:6390")
    assert get_ray_address_from_environment(None, None) == "127.0.0.1:6390"


def test_the_autoscaler_s_limits_come_from_ray_s_state():
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config)


def test_the_placement_group_records_hold_what_is_read_of_them():
    from ray.core.generated import gcs_pb2

    table = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]
    fields = set(table.DESCRIPTOR.fields_by_name)
    wanted = {"placement_group_id", "creator_job_id", "creator_actor_id", "is_detached"}
    assert wanted | {"state", "bundles"} <= fields
    assert table.REMOVED != table.CREATED


def test_a_creator_the_actor_table_does_not_hold_is_unknown_not_dead():
    assert ray_compat.creator_is_dead({}) is None
    assert ray_compat.creator_is_dead({"State": "DEAD"}) is True
    assert ray_compat.creator_is_dead({"State": "ALIVE"}) is False


def test_train_v2_reads_the_environment_ce_ray_sets():
    from ray.train.v2._internal import constants

    assert set(ray_compat.TRAIN_ENVIRONMENT) == {
        constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR,
        constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR,
    }


def test_a_trial_s_trainer_is_ray_s_less_its_ray_data_set_up(tmp_path):
    """Train V2 2.60 starts a DatasetManager actor per run from its DatasetsCallback, datasets
    or none; ce-ray's trainer drops that callback and nothing else. (Should Ray rename or drop
    it, the stock list below changes and this test says so.)"""
    from ray.train.torch import TorchTrainer

    settings = {
        "scaling_config": ray.train.ScalingConfig(num_workers=1),
        "run_config": ray.train.RunConfig(name="t", storage_path=str(tmp_path)),
    }

    def names(trainer_class: type) -> list[str]:
        trainer = trainer_class(lambda config: None, **settings)
        return [type(callback).__name__ for callback in trainer._create_default_callbacks()]

    stock = names(TorchTrainer)
    assert "DatasetsCallback" in stock
    assert names(torch_trainer_without_ray_data()) == [
        name for name in stock if name != "DatasetsCallback"
    ]


def test_train_v2_s_failure_config_bounds_worker_groups_that_never_start():
    config = ray_compat.train_failure_config(3)
    assert config.max_failures == 3
    assert config.controller_failure_limit == ray_compat.WORKER_GROUP_START_ATTEMPTS


def test_tune_no_longer_copies_aws_keys_into_trials(monkeypatch):
    import inspect

    from ray.tune.execution import class_cache

    # Tune 2.60 copies them (its source says so; an earlier sweep in this process has already
    # taken them out of the live set): the workaround is still needed.
    source = inspect.getsource(class_cache)
    assert all(f'"{name}"' in source for name in ray_compat.TUNE_PROPAGATED_SECRETS)
    propagated = set(class_cache.ENV_VARS_TO_PROPAGATE) | set(ray_compat.TUNE_PROPAGATED_SECRETS)
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", propagated)
    ray_compat.keep_credentials_out_of_trials()
    assert not set(ray_compat.TUNE_PROPAGATED_SECRETS) & class_cache.ENV_VARS_TO_PROPAGATE
    assert class_cache.ENV_VARS_TO_PROPAGATE  # the rest still propagates


def test_a_restored_tuner_runs_with_the_callbacks_it_is_given(tmp_path):
    def trainable(config: dict) -> None:
        return None

    run_config = tune.RunConfig(name="t", storage_path=str(tmp_path), callbacks=[tune.Callback()])
    tuner = tune.Tuner(trainable, run_config=run_config)
    fresh = [tune.Callback()]
    ray_compat.use_callbacks_on_restore(tuner, fresh)
    assert tuner._local_tuner.get_run_config().callbacks is fresh


def test_tune_s_new_output_engine_is_off_where_ce_ray_turns_it_off(monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    assert get_air_verbosity(0) is not None  # the new engine, by default
    ray_compat.quiet_tune_output()
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0" and get_air_verbosity(0) is None


def test_a_trial_function_asks_for_no_cpu_yet_tune_accepts_it():
    def trial(config: dict) -> None:
        return None

    with pytest.raises(ValueError):  # Tune refuses an empty request: hence the MiB of memory
        tune.with_resources(trial, {"cpu": 0})
    wrapped = tune.with_resources(trial, ray_compat.TRIAL_FUNCTION_RESOURCES)
    request = wrapped._resources.required_resources  # type: ignore[attr-defined]
    assert request.get("CPU", 0) == 0 and request["memory"] == 2**20


def test_the_controller_s_state_is_written_by_a_callback_train_runs(tmp_path, monkeypatch):
    """The callback is one of Train V2's controller callbacks (which ``RunConfig.callbacks``
    hands to the controller), writes the state's class name, and drops a failed write."""
    from ray.train.v2._internal.execution.callback import ControllerCallback
    from ray.train.v2._internal.execution.controller.state import RunningState

    from ce_ray.worker import records

    record = str(tmp_path / "trial")
    callback = ray_compat.controller_state_callback(records.controller_location(record))
    assert isinstance(callback, ControllerCallback)
    callback.after_controller_state_update(None, RunningState())
    assert records.read_controller(record)[0] == "RunningState"
    unwritable = ray_compat.controller_state_callback(str(tmp_path / "missing" / "dir" / "x"))
    (tmp_path / "missing").write_text("a file where a directory should be")
    unwritable.after_controller_state_update(None, RunningState())  # no error


def test_train_s_wait_for_a_worker_group_s_resources(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", raising=False)
    assert ray_compat.worker_group_start_timeout_s() == 60.0
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    assert ray_compat.worker_group_start_timeout_s() == 15.0
