"""`ruff` holds on the whole tree with the rules pyproject's [tool.ruff.lint] selects (E, F, I, B, BLE)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_is_clean() -> None:
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
