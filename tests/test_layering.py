"""The layering rules: each package imports only the packages below it.

    protocol   the contract: nothing of ours, and neither aiohttp nor duckdb
    runtime    server plumbing (problem middleware, logs, config, store base): protocol
    views      what node page and hub both serve: protocol, runtime
    node       protocol, runtime, views; never federation or liberation
    federation protocol, runtime, views; never node or liberation
    liberation the CLI and demo: anything

Checked twice: every import statement in the source (the direct edges, with a
precise message) and each package imported alone in a fresh interpreter (what
it really pulls in, transitively).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"protocol", "runtime", "views", "node", "federation", "liberation", "keeper"}
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "runtime": {"protocol"},
    "views": {"protocol", "runtime"},
    "node": {"protocol", "runtime", "views"},
    "federation": {"protocol", "runtime", "views"},
    "keeper": {"protocol", "runtime"},
}
FORBIDDEN_THIRD_PARTY = {"protocol": {"aiohttp", "duckdb"}}
PACKAGES = sorted(p for p in ALLOWED if (ROOT / p).is_dir())


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", PACKAGES)
def test_direct_imports_follow_the_layers(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        roots = _imported_roots(path)
        bad = (roots & OURS) - ALLOWED[package] - {package}
        bad |= roots & FORBIDDEN_THIRD_PARTY.get(package, set())
        wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(bad)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package: str) -> None:
    module = __import__(package)
    names = sorted(f"{package}.{m.name}" for m in pkgutil.walk_packages(module.__path__) if not m.ispkg)
    assert names, f"{package} has no modules"
    forbidden = (OURS - ALLOWED[package] - {package}) | FORBIDDEN_THIRD_PARTY.get(package, set())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(forbidden)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"{package} pulled in: {result.stdout.strip()}"


def test_the_rules_catch_a_wrong_edge(tmp_path: Path) -> None:
    """The checker itself: a node module importing federation is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from federation.app import create_app\n\ndef f():\n    import liberation.cli\n")
    assert _imported_roots(bad) == {"federation", "liberation"}
