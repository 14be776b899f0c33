"""Every bad value is one line on stderr and exit status 2, before Ray starts, with nothing
written: a table of bad inputs across every command (values out of range or of the wrong
kind, work no machine can hold, unsafe names and locations, files that are not what they
should be). Each case runs ``ce-ray`` in this process, so the test also sees that Ray was
never initialised."""

import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ce_ray import cli
from ce_ray.results import storage

BIG = "99999999999999999999"

# (command line, text the one stderr line must contain). {tmp} is this test's directory,
# where the files named below are made first; --results defaults to {tmp}/results.
CASES = [
    # params
    ("params --space fc --m 0 --n 4", "argument --m: must be an integer >= 1"),
    ("params --space fc --m 4 --n -3", "argument --n: must be an integer >= 1"),
    ("params --space fc --m abc --n 4", "argument --m: must be an integer"),
    ("params --space nope --m 1 --n 4", "argument --space: invalid choice"),
    ("params --space fc --spatial 3 --m 1 --n 4", "does not take --spatial"),
    ("params --space fc --m 1 --n 100000000", "argument --n: must be an integer <= 65536"),
    ("params --space fc --m 10000000000 --n 4", "argument --m: must be an integer <="),
    ("params --space fc --classes 0 --m 1 --n 4", "argument --classes"),
    ("params --space fc --depth 1 --m 1 --n 4", "depth must be >= 2"),
    ("params --space fc --input-dim 0 --m 1 --n 4", "argument --input-dim"),
    ("params --space fc --m 1", "the following arguments are required: --n"),
    # curve
    (
        "curve --space fc --baseline 64 --alpha 1e308",
        "argument --alpha: must be a finite number <=",
    ),
    ("curve --space fc --baseline 64 --alpha nan", "argument --alpha: must be a finite number"),
    ("curve --space fc --baseline 64 --alpha -1", "argument --alpha: must be a finite number > 0"),
    ("curve --space fc --baseline 64 --alpha 0", "argument --alpha: must be a finite number > 0"),
    (
        "curve --space fc --baseline 1000000000 --alpha 2",
        "argument --baseline: must be an integer <=",
    ),
    ("curve --space fc --baseline 0 --alpha 2", "argument --baseline: must be an integer >= 1"),
    (f"curve --space fc --baseline 64 --alpha 2 --widths {BIG}:{BIG}0", "argument --widths"),
    ("curve --space fc --baseline 64 --alpha 2 --widths 1:100000000", "at most 4096 values"),
    ("curve --space fc --baseline 64 --alpha 2 --widths 5:2", "argument --widths: widths must be"),
    ("curve --space fc --baseline 64 --alpha 2 --widths a,b", "argument --widths: widths must be"),
    ("curve --space fc --baseline 64 --alpha 2 --widths 0:10", "argument --widths: widths must be"),
    (
        "curve --space fc --baseline 64 --alpha 2 --widths 1:3:0",
        "argument --widths: widths must be",
    ),
    ("curve --space fc --baseline 64 --alpha 2 --formulation x", "argument --formulation"),
    ("curve --space fc --baseline 64 --alpha 2 --metric x", "argument --metric"),
    ("curve --space fc --baseline 64 --alpha 2 --cost x", "argument --cost"),
    ("curve --space fc --baseline 64 --alpha 2 --widths 100:200", "baseline width 64"),
    # fit-alpha
    ("fit-alpha --preset nope", "argument --preset: invalid choice"),
    ("fit-alpha --space nomodule", "argument --space: must be MODULE:CALLABLE"),
    ("fit-alpha --space ce_ray_nope:member --input-shape 3", "cannot import 'ce_ray_nope'"),
    ("fit-alpha --space examples.transformer_mlp:member", "needs the shape of one example"),
    ("fit-alpha --input-shape 8,8", "--input-shape is for your own member"),
    ("fit-alpha --fan-in-sum a:b", "--fan-in-sum is for your own member"),
    ("fit-alpha --parameterisation standard", "--parameterisation is for your own member"),
    (
        "fit-alpha --space tests.theory.zoo:kaiming_mlp --input-shape 64 --parameterisation mup",
        "argument --parameterisation: invalid choice: 'mup'",
    ),
    (
        "fit-alpha --space examples.transformer_mlp:member --input-shape 8,8 "
        "--fan-in-sum tests.theory.test_member:negative_fan_in_sum",
        "gave -1.0 at n=4; it must give a positive finite number",
    ),
    (
        "curve --space examples.transformer_mlp:member --input-shape 8,8 --baseline 8 --alpha 1 "
        "--fan-in-sum examples.transformer_mlp:nothing",
        "S(n) examples.transformer_mlp:nothing: module 'examples.transformer_mlp' has no",
    ),
    (
        "fit-alpha --space examples.transformer_mlp:member --preset resnext-block",
        "argument --preset: not allowed with argument --space",
    ),
    ("fit-alpha --space examples.transformer_mlp:member --input-shape 8,0", "--input-shape"),
    (
        "fit-alpha --space examples.transformer_mlp:member --input-shape 8,8 --widths 4,8 "
        "--memory-budget 0.0001",
        "too small for one sample at width 8",
    ),
    (
        "params --space examples.transformer_mlp:member --input-shape 9 --m 1 --n 4",
        "does not run on one example of shape (9,)",
    ),
    ("fit-alpha --widths 1:100000000", "argument --widths: a width grid holds at most 4096"),
    ("fit-alpha --widths 4", "need at least two widths"),
    ("fit-alpha --widths 4,100000", "argument --widths: widths must be integers from 1 to 65536"),
    ("fit-alpha --samples 1", "argument --samples: must be an integer >= 2"),
    ("fit-alpha --samples 1000000000000", "argument --samples: must be an integer <="),
    ("fit-alpha --samples 10000000 --shard-size 1", "Ray tasks; at most 100,000"),
    ("fit-alpha --shard-size 0", "argument --shard-size: must be an integer >= 1"),
    ("fit-alpha --bootstrap 0", "argument --bootstrap: must be an integer >= 1"),
    ("fit-alpha --bootstrap 1000000000000", "argument --bootstrap: must be an integer <="),
    ("fit-alpha --samples 1000000 --bootstrap 100000", "resamples"),
    ("fit-alpha --device cuda:banana", "argument --device: must be cpu, cuda or cuda:N"),
    ("fit-alpha --device tpu", "argument --device"),
    ("fit-alpha --memory-budget 1e12", "argument --memory-budget: must be a finite number <="),
    ("fit-alpha --memory-budget 500000", "--memory-budget must be > 0 and at most half"),
    ("fit-alpha --memory-budget 0", "argument --memory-budget: must be a finite number > 0"),
    ("fit-alpha --preset resnext-block --method exact", "--method exact samples MLP blocks only"),
    ("fit-alpha --method bogus", "argument --method: invalid choice"),
    ("fit-alpha --readout bogus", "argument --readout: invalid choice"),
    ("fit-alpha --dtype float16", "argument --dtype: invalid choice"),
    ("fit-alpha --experiment ../../x", "argument --experiment: must be one path segment"),
    ("fit-alpha --experiment ..", "argument --experiment: must be one path segment"),
    ("fit-alpha --experiment /abs", "argument --experiment: must be one path segment"),
    ("fit-alpha --experiment a/b", "argument --experiment: must be one path segment"),
    (f"fit-alpha --experiment {'a' * 300}", "(300 characters)"),
    ("fit-alpha --experiment .hidden", "argument --experiment: must be one path segment"),
    ("fit-alpha --results s3://b/x?endpoint_override=h", "must not have a query or fragment"),
    ("fit-alpha --results s3://AKIA:SeCrEt@bucket/x", "must not carry credentials"),
    ("fit-alpha --workers 0", "argument --workers: must be an integer >= 1"),
    ("fit-alpha --seed -1", "argument --seed: must be an integer >= 0"),
    ("fit-alpha --results {tmp}/file/below", "is a file, not a directory"),
    ("fit-alpha --intercept --widths 1,2,x", "argument --widths"),
    # sweep
    # sweep of your own member (the example's)
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8 --alpha 1",
        "returns (2, 8, 8) for 2 examples; a sweep needs (2, 10) logits: give --network",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8",
        "needs --alpha or --alpha-from (fit it first",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 9 --alpha 1",
        "--input-shape 9 holds 9 values; digits's examples (digits-mlp's data) hold 64",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8 --alpha 1 "
        "--network examples.transformer_mlp:member",
        "building the network of 1 member(s) of width 64 raised TypeError",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8 --alpha 1 "
        "--network tests.theory.test_member:one_member_network",
        "network(m, n) must build m members",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8 --alpha 1 "
        "--network tests.theory.test_member:network_with_dropout",
        "the network has dropout",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8 --alpha 1 "
        "--network ce_ray_nope:network",
        "network ce_ray_nope:network: cannot import 'ce_ray_nope'",
    ),
    ("sweep primal --network a:b --alpha 1", "--network is for your own member"),
    ("sweep primal --input-shape 8,8 --alpha 1", "--input-shape is for your own member"),
    (
        "sweep primal --space examples.transformer_mlp:member --input-shape 8,8 "
        "--network examples.transformer_mlp:network --alpha-from {tmp}/alpha.parquet",
        "fitted for a preset block, not for examples.transformer_mlp:member",
    ),
    ("sweep primal --points 1", "argument --points: must be an integer >= 2"),
    ("sweep primal --points 100000", "argument --points: must be an integer <= 256"),
    ("sweep primal --seeds 0", "argument --seeds: must be an integer >= 1"),
    ("sweep primal --seeds 1000000", "argument --seeds: must be an integer <= 1000"),
    ("sweep primal --epochs 0", "argument --epochs: must be an integer >= 1"),
    # the recipe: each flag, and --recipe's file
    ("sweep primal --optimizer lion", "argument --optimizer: invalid choice: 'lion'"),
    ("sweep primal --lr 0", "argument --lr: must be a finite number > 0"),
    ("sweep primal --lr nan", "argument --lr: must be a finite number"),
    ("sweep primal --lr 100", "argument --lr: must be a finite number <= 10"),
    ("sweep primal --weight-decay -1", "argument --weight-decay: must be a finite number >= 0"),
    ("sweep primal --momentum 1", "argument --momentum: must be a finite number <= 0.999"),
    ("sweep primal --batch-size 0", "argument --batch-size: must be an integer >= 1"),
    ("sweep primal --schedule linear", "argument --schedule: invalid choice: 'linear'"),
    ("sweep primal --warmup-epochs 15", "--warmup-epochs must be from 0 to --epochs - 1 (14)"),
    ("sweep primal --label-smoothing 1", "argument --label-smoothing: must be a finite number"),
    ("sweep primal --recipe {tmp}/missing.json", "missing.json: no such file (a JSON object"),
    ("sweep primal --recipe {tmp}/folder", "no such file (a JSON object of recipe fields)"),
    ("sweep primal --recipe {tmp}/not_parquet.txt", "not_parquet.txt: not JSON"),
    ("sweep primal --recipe {tmp}/recipe_list.json", "not a JSON object of epochs, optimizer"),
    ("sweep primal --recipe {tmp}/recipe_key.json", "unknown field 'learning_rate' (allowed:"),
    ("sweep primal --recipe {tmp}/recipe_kind.json", "batch_size must be a int; got 32.5"),
    ("sweep primal --recipe {tmp}/recipe_range.json", "--lr must be a finite number > 0"),
    ("sweep primal --recipe s3://AKIA:SeCrEt@bucket/r.json", "must not carry credentials"),
    ("sweep primal --recipe {tmp}/recipe_tune.json", "tune must be an object like"),
    # your own data (--data): one line each, before Ray, nothing written
    ("sweep primal --data table.parquet", "argument --data: 'table.parquet': must be parquet:"),
    ("sweep primal --data parquet:{tmp}/table.parquet", "a table needs --label-column COLUMN"),
    ("sweep primal --label-column y", "--label-column is for --data (your own data) only"),
    ("sweep primal --data tests.data_callables:table --image-size 8", "--image-size is for"),
    ("sweep primal --data tests.data_callables:table --validation-fraction 1", "below 1"),
    ("sweep primal --data parquet:{tmp}/missing.parquet --label-column y", "no such file or"),
    ("sweep primal --data parquet:{tmp}/not_parquet.txt --label-column y", "not a Parquet table"),
    ("sweep primal --data parquet:{tmp}/table.parquet --label-column y", "'y' is not a column"),
    ("sweep primal --data parquet:{tmp}/one_class.parquet --label-column label", "has 1 class"),
    ("sweep primal --data parquet:{tmp}/text.parquet --label-column label", "is string, not"),
    ("sweep primal --data parquet:{tmp}/nan.parquet --label-column label", "row 2 is nan"),
    ("sweep primal --data parquet:{tmp}/ragged.parquet --label-column label", "different shape"),
    ("sweep primal --data imagefolder:{tmp}/broken_images", "b/1.png does not decode"),
    ("sweep primal --data imagefolder:{tmp}/empty_class", "class folder"),
    ("sweep primal --data imagefolder:{tmp}/file", "file: no such directory"),
    ("sweep primal --data tests.nowhere:data", "cannot import 'tests.nowhere'"),
    ("sweep primal --data tests.data_callables:a_list", "returned a list; it must return"),
    ("sweep primal --data tests.data_callables:raises", "raised RuntimeError: the data server"),
    ("sweep primal --data tests.data_callables:ragged", "examples of different shapes: [4]"),
    ("sweep primal --data tests.data_callables:untrained_class", "class 2 has no training"),
    (
        "sweep primal --preset cifar10-resnext29 --data tests.data_callables:table",
        "examples of shape [16] do not suit the cifar-resnext29 preset",
    ),
    (
        "sweep primal --space examples.transformer_mlp:member --alpha 2 --input-shape 8,8 "
        "--data tests.data_callables:table",
        "--input-shape 8,8 holds 64 values; the examples of --data tests.data_callables:table",
    ),
    # a tuned sweep (--tune-trials, --tune)
    ("sweep primal --tune lr=0.01..0.1", "--tune needs --tune-trials K"),
    ("sweep primal --tune-trials 4", "--tune-trials 4 needs a search space: --tune FIELD="),
    ("sweep primal --tune-trials 0", "argument --tune-trials: must be an integer >= 1"),
    ("sweep primal --tune-trials 2 --tune depth=1..4", "'depth': not a field a search can"),
    ("sweep primal --tune-trials 2 --tune lr=0.1..0.01", "must be LOW < HIGH within 0..10"),
    ("sweep primal --tune-trials 2 --tune lr=0..0.1:log", "a log scale needs LOW > 0"),
    ("sweep primal --tune-trials 2 --tune lr=0.01..0.1:cubic", "scale must be log; got 'cubic'"),
    ("sweep primal --tune-trials 2 --tune lr=a..b", "must be FIELD=LOW..HIGH or FIELD=LOW.."),
    ("sweep primal --tune-trials 2 --tune momentum=0..0.9", "--tune momentum is SGD's"),
    ("sweep primal --tune-trials 2 --tune lr=0.01..0.1 --precision fp16", "not --precision fp16"),
    ("sweep primal --epochs 100000000", "argument --epochs: must be an integer <="),
    ("sweep primal --alpha -1", "argument --alpha: must be a finite number > 0"),
    ("sweep primal --alpha 1e308", "argument --alpha: must be a finite number <="),
    ("sweep primal --alpha inf", "argument --alpha: must be a finite number"),
    ("sweep primal --alpha-from {tmp}/missing.parquet", "no such file"),
    ("sweep primal --alpha-from {tmp}/folder", "a directory, not an alpha.parquet"),
    ("sweep primal --alpha-from {tmp}/nan_alpha.parquet", "its alpha nan cannot be used"),
    ("sweep primal --alpha-from {tmp}/negative_alpha.parquet", "its alpha -1.5 cannot be used"),
    ("sweep primal --alpha-from {tmp}/not_parquet.txt", "not a Parquet file"),
    ("sweep primal --alpha-from {tmp}/other.parquet", "not an alpha.parquet written by"),
    ("sweep primal --alpha 2 --alpha-from {tmp}/x", "not allowed with argument --alpha"),
    ("sweep primal --precision fp16 --pack-seeds", "--pack-seeds cannot train with --precision"),
    ("sweep primal --precision fp8", "argument --precision: invalid choice"),
    ("sweep primal --gpus-per-worker 1.5", "a fraction below 1 or a whole number"),
    ("sweep primal --gpus-per-worker -1", "argument --gpus-per-worker: must be a finite number"),
    ("sweep primal --gpus-per-worker 1000", "argument --gpus-per-worker: must be a finite number"),
    ("sweep primal --cpus-per-worker 0.000001", "argument --cpus-per-worker: must be a finite"),
    ("sweep primal --cpus-per-worker 100000", "argument --cpus-per-worker: must be a finite"),
    ("sweep primal --loader-workers 100000", "argument --loader-workers: must be an integer <="),
    ("sweep primal --loader-workers 100", "--loader-workers must be from 0 to 4"),
    ("sweep primal --workers-per-trial 100000", "argument --workers-per-trial: must be an"),
    ("sweep primal --workers-per-trial 0", "argument --workers-per-trial: must be an integer"),
    ("sweep primal --max-failures -1", "argument --max-failures: must be an integer >= 0"),
    ("sweep primal --max-failures 100000", "argument --max-failures: must be an integer <="),
    ("sweep primal --max-concurrent-trials 0", "argument --max-concurrent-trials"),
    ("sweep primal --scheduler bogus", "argument --scheduler: invalid choice"),
    ("sweep primal --preset nope", "argument --preset: invalid choice"),
    ("sweep primal --experiment ../x", "argument --experiment: must be one path segment"),
    ("sweep primal --preset mnist-mlp --data-root {tmp}/nodata", "mnist not found: put MNIST/"),
    ("sweep primal --results s3://b/x?region=us-east-1", "must not have a query or fragment"),
    ("sweep sideways", "argument formulation: invalid choice"),
    ("sweep primal --preset cifar10-resnext29 --seeds 1000 --pack-seeds", "GiB of model state"),
    ("sweep primal --results {tmp}/file", "is a file, not a directory"),
    ("sweep primal --mlflow ftp://host/x", "argument --mlflow: must be a tracking URI with"),
    ("sweep primal --mlflow localhost:5000", "argument --mlflow: must be a tracking URI with"),
    ("sweep primal --mlflow http://me:pw@host:5000", "must not carry credentials"),
    ("sweep primal --mlflow http://127.0.0.1:9", "no MLflow tracking server answers there"),
    # report
    ("report {tmp}/missing", "has no trials.parquet"),
    ("report {tmp}/foreign", "not a trials.parquet of ce-ray sweep"),
    ("report {tmp}/garbled", "not a Parquet file"),
    ("report {tmp}/listed", "not a sweep configuration written by ce-ray"),
    ("report {tmp}/blocked", "Is a directory"),
    ("report {tmp}/sideways", "formulation 'sideways' is not one ce-ray writes (allowed: primal"),
    ("report s3://AKIA:SeCrEt@bucket/x", "must not carry credentials"),
    ("curve --space fc --baseline 64 --alpha-from s3://AKIA:SeCrEt@b/a", "must not carry cred"),
    ("sweep primal --alpha-from s3://AKIA:SeCrEt@bucket/a.parquet", "must not carry credentials"),
    ("sweep primal --data-root s3://AKIA:SeCrEt@bucket/data", "must not carry credentials"),
    # nmk
    ("nmk --depth 1", "argument --depth: must be an integer >= 2"),
    ("nmk --wide-width 100000000", "argument --wide-width: must be an integer <="),
    ("nmk --gammas 1000000000", "argument --gammas: must be an integer <="),
    ("nmk --widths 0,4", "argument --widths: widths must be"),
    ("nmk --multiplicities 1", "multiplicities must be at least two values"),
    ("nmk --draws 1", "argument --draws: must be an integer >= 2"),
    ("nmk --bootstrap 0", "argument --bootstrap: must be an integer >= 1"),
    ("nmk --wide-width 8 --widths 16", "wide_width must exceed every width"),
    ("nmk --block-members 0", "argument --block-members: must be an integer >= 1"),
    ("nmk --draws 100000 --multiplicities 1,64", "members per width"),
    ("nmk --experiment ../x", "argument --experiment: must be one path segment"),
    # drift
    ("drift --multiplicities 0,1", "argument --multiplicities: widths must be"),
    ("drift --widths 1:100000000", "argument --widths: a width grid holds at most"),
    ("drift --seeds 0", "argument --seeds: must be an integer >= 1"),
    ("drift --step 0", "argument --step: must be a finite number > 0"),
    ("drift --step 2", "argument --step: must be a finite number <= 1"),
    ("drift --flow-times 1,-2", "argument --flow-times: must be a finite number > 0"),
    ("drift --train-points 100000000", "argument --train-points: must be an integer <="),
    ("drift --probe-points 0", "argument --probe-points: must be an integer >= 1"),
    ("drift --depth 1", "argument --depth: must be an integer >= 2"),
    ("drift --multiplicities 1,65536 --widths 4096,8192", "GiB; at most half this machine"),
    ("drift --seeds 1000 --widths 1:200", "at most 100,000 runs"),
    ("drift --results s3://u:p@bucket/x", "must not carry credentials"),
]


def _trials_row() -> dict:
    """One plausible row of trials.parquet."""
    values = {pa.string(): "x", pa.int64(): 1, pa.float64(): 1.0}
    row = {field.name: values[field.type] for field in storage.TRIALS_SCHEMA}
    return row | {"formulation": "primal", "status": "finished", "role": "baseline"}


def make_files(tmp: Path) -> None:
    """The files and folders the cases name."""
    (tmp / "results").mkdir()
    (tmp / "file").write_text("a file where a directory should be")
    (tmp / "folder").mkdir()
    (tmp / "not_parquet.txt").write_text("alpha = 2.4")
    for name, recipe in (
        ("list", [1, 2]),
        ("key", {"learning_rate": 0.1}),
        ("kind", {"batch_size": 32.5}),
        ("range", {"lr": 0, "optimizer": "sgd"}),
        ("tune", {"tune": {"lr": 5}}),
    ):
        (tmp / f"recipe_{name}.json").write_text(json.dumps(recipe))
    for name, alpha in (("nan_alpha", math.nan), ("negative_alpha", -1.5)):
        pq.write_table(pa.table({"alpha": [alpha]}), tmp / f"{name}.parquet")
    pq.write_table(pa.table({"beta": [1.0]}), tmp / "other.parquet")
    pq.write_table(pa.table({"alpha": [1.2], "member": [""]}), tmp / "alpha.parquet")
    (tmp / "foreign").mkdir()
    pq.write_table(pa.table({"n": [1], "error": [3.0]}), tmp / "foreign/trials.parquet")
    (tmp / "garbled").mkdir()
    (tmp / "garbled/trials.parquet").write_bytes(b"PAR1 but no more")
    trials = pa.Table.from_pylist([_trials_row()], schema=storage.TRIALS_SCHEMA)
    for name in ("listed", "blocked"):
        (tmp / name).mkdir()
        pq.write_table(trials, tmp / name / "trials.parquet")
    (tmp / "sideways").mkdir()
    sideways = _trials_row() | {"formulation": "sideways"}
    pq.write_table(
        pa.Table.from_pylist([sideways], schema=storage.TRIALS_SCHEMA),
        tmp / "sideways/trials.parquet",
    )
    (tmp / "listed/sweep.json").write_text("[1, 2, 3]")
    (tmp / "blocked/test_error.png").mkdir()  # the report cannot write its plot there
    # --data: tables and image folders that cannot train
    label = [0, 1, 0, 1]
    pq.write_table(pa.table({"x": [0.1, 0.2, 0.3, 0.4], "label": label}), tmp / "table.parquet")
    pq.write_table(
        pa.table({"x": [0.1, 0.2, 0.3, 0.4], "label": [3] * 4}), tmp / "one_class.parquet"
    )
    pq.write_table(pa.table({"x": ["a", "b", "c", "d"], "label": label}), tmp / "text.parquet")
    nan = [0.1, 0.2, math.nan, 0.4]
    pq.write_table(pa.table({"x": nan, "label": label}), tmp / "nan.parquet")
    ragged = pa.array([[1.0, 2.0], [1.0, 2.0], [1.0], [1.0, 2.0]])
    pq.write_table(pa.table({"x": ragged, "label": label}), tmp / "ragged.parquet")
    for name in ("broken_images/a", "broken_images/b", "empty_class/a", "empty_class/b"):
        (tmp / name).mkdir(parents=True)
    for name in ("broken_images/a/0.png", "broken_images/b/0.png", "empty_class/a/0.png"):
        Image.new("RGB", (4, 4)).save(tmp / name)
    (tmp / "broken_images/b/1.png").write_bytes(b"\x89PNG but not an image")


def _snapshot(tmp: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in tmp.rglob("*")}


def test_the_table_covers_every_command_with_over_ninety_cases():
    commands = {line.split()[0] for line, _ in CASES}
    assert commands == {"params", "curve", "fit-alpha", "sweep", "report", "nmk", "drift"}
    assert len(CASES) >= 90


@pytest.mark.parametrize(("line", "expected"), CASES, ids=[line for line, _ in CASES])
def test_a_bad_value_is_one_line_and_exit_2_before_ray_starts(
    tmp_path, capsys, monkeypatch, line, expected
):
    from ce_ray.experiments import cluster

    def reached_ray(*args: object, **kwargs: object) -> None:  # a case here fails, cheaply
        raise AssertionError(f"{line!r} reached ray.init")

    monkeypatch.setattr(cluster, "init_ray", reached_ray)
    make_files(tmp_path)
    argv = [part.replace("{tmp}", str(tmp_path)) for part in line.split()]
    if argv[0] not in ("params", "curve", "report") and "--results" not in argv:
        argv += ["--results", str(tmp_path / "results")]
    before = _snapshot(tmp_path)
    status = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert len(err) == 1 and expected in err[0], err
    assert "Traceback" not in err[0] and "SeCrEt" not in err[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing removed
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_data_root_from_the_environment_is_checked_as_if_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CE_RAY_DATA", "s3://AKIA:SeCrEt@bucket/data")
    status = cli.main(["sweep", "primal", "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "must not carry credentials" in err[0], err
    assert "SeCrEt" not in err[0] and not any(tmp_path.iterdir())
