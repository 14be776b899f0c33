"""The sweep's console lines, on stand-ins for Tune's trials (no Ray cluster): the progress
line's counts and estimate, durations, and when --verbose is on."""

from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial

from ce_ray.experiments import console


def trial(status: str, epoch: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(status=status, last_result={} if epoch is None else {"epoch": epoch})


def test_the_progress_line_counts_trials_and_epochs_and_estimates_the_rest():
    trials = [
        trial(Trial.TERMINATED, 10),
        trial(Trial.TERMINATED, 4),  # stopped early by a scheduler: its plan is over
        trial(Trial.RUNNING, 6),
        trial(Trial.PENDING),
    ]
    line = console.progress_line(trials, epochs=10, elapsed_s=65)
    # 26 of 40 epochs in 65 s: 14 more take ~35 s.
    assert line == (
        "[sweep] 2/4 trials done, 1 running, 1 pending; epochs 26/40; 1 min 05 s elapsed, "
        "~35 s left"
    )


def test_no_estimate_before_the_first_epoch():
    line = console.progress_line([trial(Trial.RUNNING), trial(Trial.PENDING)], 5, 12.4)
    assert line == "[sweep] 0/2 trials done, 1 running, 1 pending; epochs 0/10; 12 s elapsed"


def test_trials_tune_has_not_created_yet_count_as_pending():
    line = console.progress_line([trial(Trial.RUNNING, 2), trial(Trial.RUNNING, 3)], 5, 10, 5)
    assert line == (
        "[sweep] 0/5 trials done, 2 running, 3 pending; epochs 5/25; 10 s elapsed, ~40 s left"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59.6, "1 min 00 s"), (3725, "1 h 02 min")]
)
def test_durations_read_as_a_person_says_them(seconds, text):
    assert console._duration(seconds) == text


@pytest.mark.parametrize(
    ("flag", "env", "verbose"),
    [(False, None, False), (True, None, True), (False, "1", True), (False, "0", False)],
)
def test_verbose_is_the_flag_or_the_environment(monkeypatch, flag, env, verbose):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(console.VERBOSE_ENV, env)
    assert console.verbose_from_env(flag) is verbose


def test_a_trial_line_names_the_point_and_says_how_it_ended():
    lines: list[str] = []
    sweep = console.SweepConsole(lines.append, lambda t: "4x6d seeds [0]", epochs=8, total=2)
    done = SimpleNamespace(
        trial_id="a",
        num_failures=0,
        last_result={"epoch": 8, "test_error": 12.345, "time_total_s": 75.2},
    )
    stopped = SimpleNamespace(
        trial_id="b",
        num_failures=1,
        last_result={"epoch": 3, "test_error": 40.0, "time_total_s": 9},
    )
    sweep.on_trial_start(0, [], stopped)
    sweep.on_trial_complete(0, [], done)
    sweep.on_trial_complete(0, [], stopped)
    assert lines == [
        "[sweep] trial 4x6d seeds [0] started again, from its checkpoint (retry 1)",
        "[sweep] trial 4x6d seeds [0] finished: last-epoch test error 12.35 %, 8/8 epochs, "
        "1 min 15 s",
        "[sweep] trial 4x6d seeds [0] stopped early by the scheduler: last-epoch test error "
        "40.00 %, 3/8 epochs, 9 s",
    ]


def test_a_fit_inside_a_sweep_prints_its_first_and_last_task_and_every_other_line(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 25.0, 26.0, 27.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    log = console.sparse_progress(lines.append, every_s=20)
    for line in [
        "[fit-alpha] 1/5 shards: a",
        "[fit-alpha] 2/5 shards: b",  # 1 s after the last line shown: dropped
        "[fit-alpha] a task stalled: running 9 s",  # not a k/N line: shown
        "[fit-alpha] 3/5 shards: c",  # 25 s after: shown
        "[fit-alpha] 4/5 shards: d",
        "[fit-alpha] 5/5 shards: e",  # the last: shown
    ]:
        log(line)
    assert lines == [
        "[fit-alpha] 1/5 shards: a",
        "[fit-alpha] a task stalled: running 9 s",
        "[fit-alpha] 3/5 shards: c",
        "[fit-alpha] 5/5 shards: e",
    ]


def test_the_kept_log_holds_what_the_quiet_console_leaves_out(tmp_path, capsys):
    """Ray's console handler shows warnings, not Tune's INFO lines or a failed start's
    traceback; the sweep's kept log has those and ce-ray's lines, time-stamped."""
    import logging
    import sys

    ray_console = logging.getLogger("ray").handlers[0]  # Ray's own handler, on stderr
    level, filters = ray_console.level, list(ray_console.filters)
    stream = ray_console.setStream(sys.stderr)  # pytest's capture of this test
    ray_console.setLevel(logging.WARNING)  # as cluster.init_ray(quiet=True) sets it
    console.quiet_tune()
    location = tmp_path / "logs/sweep-x.log"
    lines: list[str] = []
    try:
        with console.kept_log(str(location), lines.append) as log:
            log("[sweep] trial 4x6d seeds [0] started")
            logging.getLogger("ray.tune.tune").info("Wrote the experiment state")
            logging.getLogger(console.TUNE_CONTROLLER).error("Trial task failed\nTraceback")
            logging.getLogger("ray.tune.tune").warning("a warning the user must see")
            logging.getLogger(console.TUNE_TIMING).warning("may be a performance bottleneck")
    finally:
        ray_console.setLevel(level)
        ray_console.filters[:] = filters
        ray_console.setStream(stream)
    printed = capsys.readouterr().err
    assert "a warning the user must see" in printed
    assert "Wrote the experiment state" not in printed and "Trial task failed" not in printed
    assert "performance bottleneck" not in printed
    assert lines == ["[sweep] trial 4x6d seeds [0] started"]
    kept = location.read_text().splitlines()
    assert kept[0].endswith("INFO ce_ray: [sweep] trial 4x6d seeds [0] started")
    assert any(line.endswith("INFO ray.tune.tune: Wrote the experiment state") for line in kept)
    assert "Trial task failed" in kept[2] and "Traceback" in kept[3]
    assert "a warning the user must see" in kept[4]
    assert "performance bottleneck" in kept[5]
    logging.getLogger("ray.tune.tune").info("after the sweep")
    assert "after the sweep" not in location.read_text()  # the handler is gone


def test_a_restart_by_ray_train_is_one_line_and_a_start_by_tune_is_not_said_twice():
    lines: list[str] = []
    sweep = console.SweepConsole(lines.append, lambda t: "4x6d seeds [0]", epochs=8, total=1)
    trial = SimpleNamespace(trial_id="a", num_failures=0)
    sweep.on_trial_start(0, [], trial)
    for epoch, attempt, start in ((1, 0, 1), (2, 0, 1), (3, 1, 3), (4, 1, 3)):
        sweep.on_trial_result(
            0, [], trial, {"epoch": epoch, "attempt": attempt, "start_epoch": start}
        )
    trial.num_failures = 1  # Tune retries it: its own line, not a second one
    sweep.on_trial_start(0, [], trial)
    sweep.on_trial_result(0, [], trial, {"epoch": 5, "attempt": 2, "start_epoch": 5})
    assert lines == [
        "[sweep] trial 4x6d seeds [0] started",
        "[sweep] trial 4x6d seeds [0] restarted by Ray Train from its checkpoint after epoch 2 "
        "(a training worker or its node was lost; start 2)",
        "[sweep] trial 4x6d seeds [0] started again, from its checkpoint (retry 1)",
    ]
