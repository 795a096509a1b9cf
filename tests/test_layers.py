"""The package's layers are what its folders say (linmeta/__init__.py): checked by import-linter's
contracts in pyproject.toml, plus two rules import-linter does not express: no module of the
package imports the root package ``linmeta`` (which re-exports every layer), and an import of a
linmeta module inside a function is an exception that carries its reason."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "linmeta"


def _lint_imports(config: pathlib.Path):
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                           "lint_imports_command; sys.exit(lint_imports_command())",
                           "--config", str(config), "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter")
    proc = _lint_imports(ROOT / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """The contract can fail: a copy of the package where the core imports the engine."""
    pytest.importorskip("importlinter")
    import shutil

    shutil.copytree(PACKAGE, tmp_path / "linmeta", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "linmeta" / "core" / "metrics.py"
    target.write_text(target.read_text() + "\nfrom linmeta.engine import sweep  # noqa\n")
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                           "lint_imports_command; sys.exit(lint_imports_command())",
                           "--config", str(tmp_path / "pyproject.toml"), "--no-cache"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert proc.returncode != 0
    assert "linmeta.core.metrics -> linmeta.engine.sweep" in proc.stdout


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    top = set(id(n) for n in tree.body)
    lines = path.read_text().split("\n")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        yield node, names, id(node) in top, lines[node.lineno - 1]


def test_no_module_imports_the_root_package():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        for node, names, _, line in _imports(path):
            if any(n == "linmeta" for n in names) or (
                    isinstance(node, ast.ImportFrom) and node.module == "linmeta"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_function_local_imports_carry_a_reason():
    local = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node, names, is_top, line in _imports(path):
            internal = any(n.startswith(("linmeta", ".")) for n in names)
            if internal and not is_top and "# deferred:" not in line:
                local.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert not local, "function-local linmeta imports without a reason:\n" + "\n".join(local)
