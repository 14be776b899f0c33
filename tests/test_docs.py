"""The README and docs/ match the code: commands, printed outputs, options, presets, Parquet
columns, module layout, named tests; and every docstring example in the package runs."""

import argparse
import doctest
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ce_ray
from ce_ray.cli import build_parser
from ce_ray.presets import FIT_PRESETS, SWEEP_PRESETS
from ce_ray.results import storage

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in (ROOT / "docs").glob("*.md")}
REFERENCE = DOCS["reference.md"]
MODULES = sorted(m.name for m in pkgutil.walk_packages(ce_ray.__path__, "ce_ray.") if not m.ispkg)


def test_ci_runs_the_readme_test_command_once_and_the_suite_runs_the_checks():
    lines = (ROOT / ".ci/run").read_text().splitlines()
    test_command = re.search(r"Tests:\n\n```bash\n(.*)\n```", README)
    assert test_command and lines[-1] == test_command.group(1)
    assert sum("pip install" in line for line in lines) == 1
    checks = (ROOT / "tests" / "test_checks.py").read_text()
    for check in ('"ruff", "check"', '"ruff", "format", "--check"', '"mypy"', '"lint-imports"'):
        assert check in checks, check


def test_main_command_is_the_local_submit_of_the_sweep():
    """tests/jobs/test_run_local.py runs this same script end to end with tiny settings."""
    command = re.search(r"```bash\n(python3 -m venv .*)\n```", README)
    assert command and command.group(1).endswith(".venv/bin/python jobs/run_local.py")
    assert (ROOT / "jobs/run_local.py").exists()


@pytest.mark.parametrize("formulation", ["primal", "dual"])
def test_paper_doc_shows_the_real_curve_output(formulation):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ce_ray.cli",
            "curve",
            "--space",
            "cifar-resnext29",
            "--baseline",
            "128",
            "--alpha",
            "1.6",
            "--formulation",
            formulation,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"```text\n{result.stdout.rstrip()}\n```" in DOCS["paper.md"]


def test_readme_examples_print_what_it_says():
    params = subprocess.run(
        [
            sys.executable,
            "-m",
            "ce_ray.cli",
            "params",
            "--space",
            "cifar-resnext29",
            "--m",
            "37",
            "--n",
            "10",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "parameters      13,743,646" in params.stdout
    assert "# 13,743,646 parameters" in README
    assert "# 56x7d, 13,852,530 params" in README
    assert "optimum: n=7, m_curve=52.92 -> 56x7d: 13,852,530 params" in DOCS["paper.md"]


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def test_reference_documents_every_option_of_every_command_and_no_other():
    documented = set(re.findall(r"^\| `(-{0,2}[a-z][a-z0-9_-]*)`", REFERENCE, re.M))
    real = set()
    for name, parser in _commands().items():
        assert f"ce-ray {name}" in REFERENCE, name
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                real.update(action.option_strings or [action.dest])
    assert real <= documented, sorted(real - documented)
    columns = {f.name for s in _schemas() for f in s}
    spaces = {"fc", "resnext-block", "cifar-resnext29", "imagenet-resnext50", "imagenet-resnext101"}
    presets = set(FIT_PRESETS) | set(SWEEP_PRESETS)
    assert documented <= real | columns | spaces | presets, sorted(
        documented - real - columns - spaces - presets
    )


def test_reference_documents_every_preset():
    for name in [*FIT_PRESETS, *SWEEP_PRESETS]:
        assert f"`{name}`" in REFERENCE, name


def _schemas():
    return [
        storage.SHARD_SCHEMA,
        storage.MOMENTS_SCHEMA,
        storage.ALPHA_SCHEMA,
        storage.CURVES_SCHEMA,
        storage.TRIALS_SCHEMA,
        storage.EPOCHS_SCHEMA,
        storage.CANDIDATES_SCHEMA,
        storage.NMK_SHARD_SCHEMA,
        storage.NMK_SCHEMA,
        storage.NMK_SUMMARY_SCHEMA,
        storage.NMK_FIT_SCHEMA,
        storage.DRIFT_SCHEMA,
        storage.DRIFT_FIT_SCHEMA,
    ]


def test_reference_documents_every_parquet_column():
    for schema in _schemas():
        for field in schema:
            first_cell = rf"^\| (?:`\w+`, )*`{field.name}`(?:, `\w+`)* \|"
            assert re.search(first_cell, REFERENCE, re.M), field.name


def test_the_layout_names_every_module_once():
    layout = (ROOT / "docs" / "layout.md").read_text()
    listed = re.findall(r"^ *\* `ce_ray/([\w/]+)\.py` -- ", layout, re.M)
    assert sorted("ce_ray." + name.replace("/", ".") for name in listed) == MODULES
    assert "(docs/layout.md)" in README


def test_the_readme_stays_short():
    """Detail belongs in docs/: the README shows the two commands, first steps and links."""
    assert len(README) <= 15_000, len(README)


def test_every_package_says_what_it_may_import():
    for package in pkgutil.walk_packages(ce_ray.__path__, "ce_ray."):
        if package.ispkg:
            doc = importlib.import_module(package.name).__doc__ or ""
            assert "import" in doc.lower(), package.name


def test_every_test_the_docs_name_exists():
    """Statements of behaviour name the test that backs them; each name must be real."""
    text = README + "".join(DOCS.values())
    named = set(re.findall(r"(?:tests/)?((?:\w+/)?test_\w+\.py)(?:::(test_\w+))?", text))
    assert len(named) >= 20
    for filename, function in named:
        path = ROOT / "tests" / filename
        assert path.exists(), filename
        if function:
            assert re.search(rf"^def {function}\(", path.read_text(), re.M), (
                f"{filename}::{function}"
            )


def test_the_package_cites_the_paper_once():
    sources = [p.read_text() for p in (ROOT / "ce_ray").rglob("*.py")]
    assert sum("arXiv:2006.07678" in s for s in sources) == 1


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.failed == 0


def test_git_and_ray_job_submit_keep_every_package_file():
    """`ray job submit --working-dir .` uploads what .gitignore does not exclude: a pattern
    that matches a package folder (once: `results/` matched ce_ray/results/) would ship a
    broken package to the cluster."""
    sources = [str(p.relative_to(ROOT)) for p in (ROOT / "ce_ray").rglob("*.py")]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *sources], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.stdout == "", ignored.stdout


def test_the_own_member_guide_shows_what_inspect_prints(capsys):
    guide = DOCS["your-own-member.md"]
    shown = re.findall(r"\$ ce-ray (inspect .*)\n((?:.+\n)+?)```", guide)
    assert len(shown) == 2, "the guide's inspect transcripts: the example, a transformer"
    from ce_ray import cli

    for command, transcript in shown:
        assert cli.main(command.split()) == 0
        assert capsys.readouterr().out == transcript
    for command in re.findall(r"^(ce-ray (?:params|curve) --space .*)$", guide, re.M):
        assert cli.main(command.split()[1:]) == 0, command
    assert "docs/your-own-member.md" in README


def test_every_mutation_still_applies_once():
    """tools/mutations.py's texts follow the code: each occurs exactly once in its file, and
    the tests named to catch it exist."""
    sys.path.insert(0, str(ROOT))
    from tools.mutations import MUTATIONS

    for mutation in MUTATIONS:
        assert (ROOT / mutation.path).read_text().count(mutation.old) == 1, mutation.name
        for test in mutation.tests:
            if test.startswith("tests/"):
                assert (ROOT / test.split("::")[0]).exists(), (mutation.name, test)


def test_the_own_data_guide_matches_the_code(tmp_path, capsys, monkeypatch):
    """docs/your-own-data.md: its forms, defaults and image kinds are the code's, and the
    refusal it shows is what the command prints."""
    from ce_ray import cli, own_data

    guide = DOCS["your-own-data.md"]
    for prefix in own_data.DATA_PREFIXES:
        assert f"`{prefix}:" in guide, prefix
    assert all(f"`{suffix}`" in guide for suffix in own_data.IMAGE_SUFFIXES)
    assert f"`--test-fraction` (default {own_data.DEFAULT_TEST_FRACTION})" in guide
    assert f"`--validation-fraction` (default {own_data.DEFAULT_VALIDATION_FRACTION})" in guide
    assert f"`--image-size` (default {own_data.DEFAULT_IMAGE_SIZE})" in guide
    monkeypatch.chdir(tmp_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [0.5, 1.5], "label": [0, 1]}), "table.parquet")
    (line,) = re.findall(r"^ce-ray sweep: error: .*$", guide, re.M)
    argv = ["sweep", "primal", "--data", "parquet:table.parquet", "--label-column", "y"]
    assert cli.main([*argv, "--results", "results"]) == 2
    assert capsys.readouterr().err.strip() == line
    for command in re.findall(r"^ce-ray (sweep .*?)(?:  +#.*)?$", guide, re.M):
        build_parser().parse_args(command.split())  # every flag shown is real
    assert "docs/your-own-data.md" in README and "docs/a-fair-comparison.md" in README


def test_the_fair_comparison_guide_names_what_a_search_draws():
    from ce_ray.configs import TUNABLE

    guide = DOCS["a-fair-comparison.md"]
    drawn = re.search(r"The fields a search may draw are (.*?) while", guide, re.S)
    assert drawn and re.findall(r"`([a-z-]+)`", drawn.group(1)) == [
        field.replace("_", "-") for field in TUNABLE
    ]
    for command in re.findall(r"^ce-ray (sweep .*?)(?:  +#.*)?$", guide, re.M):
        build_parser().parse_args(command.split())
