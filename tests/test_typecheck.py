"""`mypy --strict` holds on every package (pyproject's [tool.mypy]: protocol, runtime, views, node, federation, liberation)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_every_package_is_strictly_typed() -> None:
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
