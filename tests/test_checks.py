"""The static checks, as part of the suite: lint and format (ruff), types (mypy, strict on
``ce_ray``) and the layer contracts (import-linter, ``pyproject.toml``). So the README's one
test command runs everything CI runs, and CI installs the project once."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "check",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"], ["lint-imports"]],
    ids=" ".join,
)
def test_the_code_passes(check):
    done = subprocess.run(
        [str(BIN / check[0]), *check[1:]], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_module_imports_itself_through_others():
    """No import circle (type-only imports aside): each module can be read after the ones it
    imports. (``ce_ray.theory.spaces`` once imported ``member`` lazily, which imported it.)"""
    import grimp

    graph = grimp.build_graph("ce_ray", exclude_type_checking_imports=True)
    circles = [
        (module, imported)
        for module in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(module))
        if graph.chain_exists(importer=imported, imported=module)
    ]
    assert not circles


def test_only_ray_compat_uses_ray_s_private_api():
    """``ce_ray.experiments.ray_compat`` holds every use (tests/experiments/test_ray_compat.py
    tests each); a private name anywhere else is a use nobody checks on an upgrade."""
    import re

    private = re.compile(
        r"^\s*(from|import) ray[\w.]*\._\w+|\._local_tuner|class_cache|_create_default_callbacks",
        re.M,
    )
    users = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "ce_ray").rglob("*.py"))
        if path.name != "ray_compat.py" and private.search(path.read_text())
    ]
    assert not users
