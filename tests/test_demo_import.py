"""`liberation demo --import DIR`: a federation of one's own history, one node per file, served by a hub."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from liberation.traffic import COMMUNITIES, Traffic
from protocol.windows import WEEK, is_window_start
from tests.factories import weekly_catalog


def write_history(directory: Path, *, communities: int, days: int, sessions_per_day: int) -> None:
    """One `<community>.jsonl` per community: small ones built on the demo's profiles."""
    directory.mkdir()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for i in range(communities):
        profile = replace(COMMUNITIES[i % len(COMMUNITIES)], sessions_per_day=sessions_per_day)
        lines = Traffic(profile, 500 + i).history_lines(days, today)
        (directory / f"community-{i:02d}.jsonl").write_text("\n".join(lines) + "\n")


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_demo_import_builds_the_federation_of_the_files_and_serves_it(tmp_path: Path) -> None:
    source = tmp_path / "history"
    write_history(source, communities=4, days=3, sessions_per_day=40)
    (source / "notes.txt").write_text("not a community file")
    proc = subprocess.Popen(
        [sys.executable, "-m", "liberation", "demo", "--import", str(source), "--data-dir", str(tmp_path / "demo"),
         "--hub-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "dashboard:" in line:
                break
        url = lines[-1].split("dashboard:", 1)[1].strip().rstrip("/")
        output = "".join(lines)
        assert "4 communities" in output and output.count("windows published") == 4
        windows = get(url + "/v1/windows")["windows"]
        assert isinstance(windows, list) and len(windows) >= 3
        assert all(w["nodes"] == 4 for w in windows)  # every node published every window, empty ones too
        headline = get(url + "/v1/views/headline")["data"]
        assert isinstance(headline, dict) and headline["nodes"] == 4
        # Two share keepers answered a round per window: noise once, on the federation-wide sums.
        rounds = get(url + "/v1/rounds")["rounds"]
        assert isinstance(rounds, list) and len(rounds) == len(windows)
        assert all(r["state"] == "published" and r["nodes"] == 4 and len(r["keepers"]) == 2 for r in rounds), rounds
        assert f"rounds: {len(windows)} published by 2 share keepers" in output
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in "".join(lines) + rest


def test_demo_import_of_an_empty_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "liberation", "demo", "--import", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "no <community>.jsonl file" in result.stderr and "Traceback" not in result.stderr


def test_demo_import_of_a_weekly_federation(tmp_path: Path) -> None:
    """`--catalog` with `window = "week"`: nodes publish ISO weeks, the hub merges and shows them."""
    source = tmp_path / "history"
    write_history(source, communities=2, days=15, sessions_per_day=20)
    catalog, _ = weekly_catalog(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "liberation", "demo", "--import", str(source), "--data-dir", str(tmp_path / "demo"),
         "--hub-port", "0", "--catalog", str(catalog)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "dashboard:" in line:
                break
        url = lines[-1].split("dashboard:", 1)[1].strip().rstrip("/")
        windows = get(url + "/v1/windows")["windows"]
        assert isinstance(windows, list) and len(windows) >= 2  # 15 days hold two closed ISO weeks at least
        for w in windows:
            assert w["end"] - w["start"] == WEEK and is_window_start(w["start"], WEEK) and w["nodes"] == 2
        view = get(url + "/v1/views/headline")
        assert view["window"] == "week" and view["windows"] == len(windows)
        assert datetime.strptime(str(view["from"]), "%Y-%m-%d").weekday() == 0  # the range is whole weeks
        assert get(url + "/v1/catalog")["window"] == "week"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in "".join(lines) + rest
