"""The README's commands and printed outputs match the code."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci_commands = [
        line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python3")
    ]
    assert len(ci_commands) == 1
    assert f"```bash\n{ci_commands[0]}\n```" in README


@pytest.mark.parametrize("formulation", ["primal", "dual"])
def test_readme_shows_the_real_curve_output(formulation):
    result = subprocess.run(
        [sys.executable, "-m", "ce_ray.cli", "curve", "--space", "cifar-resnext29",
         "--baseline", "128", "--alpha", "1.6", "--formulation", formulation],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"```text\n{result.stdout.rstrip()}\n```" in README


def test_main_command_is_the_local_submit_of_the_sweep():
    """tests/test_e2e_run_local.py runs this same script end to end with tiny settings."""
    command = re.search(r"```bash\n(python3 -m venv .*)\n```", README)
    assert command and command.group(1).endswith(".venv/bin/python jobs/run_local.py")
    assert (ROOT / "jobs/run_local.py").exists()


def test_every_test_the_readme_names_exists():
    """README statements of behaviour name the test that backs it; each name must be real."""
    named = set(re.findall(r"(test_\w+\.py)(?:::(test_\w+))?", README))
    assert len(named) >= 20
    for filename, function in named:
        path = ROOT / "tests" / filename
        assert path.exists(), filename
        if function:
            assert re.search(rf"^def {function}\(", path.read_text(), re.M), (
                f"{filename}::{function}"
            )
