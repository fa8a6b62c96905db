"""`protocol` is the contract at the bottom: importing it pulls in neither node, hub nor duckdb."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import protocol


def test_protocol_imports_nothing_above_it() -> None:
    modules = sorted(f"protocol.{m.name}" for m in pkgutil.iter_modules(protocol.__path__))
    assert "protocol.wire" in modules and "protocol.catalog" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'node', 'federation', 'duckdb', 'liberation'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"protocol pulled in: {result.stdout.strip()}"
