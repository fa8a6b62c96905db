"""`liberation demo` (what `make run` runs): history workers, hub, keepers, nodes, rounds, the lines it prints."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())  # type: ignore[no-any-return]


def demo(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "liberation", "demo", "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_demo_serves_the_federation_of_its_communities_history(tmp_path: Path) -> None:
    proc = demo(tmp_path / "demo", "--days", "2")
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "Ctrl-C stops." in line:
                break
        output = "".join(lines)
        assert "a hub, 2 share keepers and 3 communities, 2 days of history" in output
        for community in ("berlin-collective", "nairobi-commons", "sao-paulo-cooperative"):
            assert f"  {community}: " in output and f"  node {community}: http://127.0.0.1:" in output
        assert output.count(" events imported") == 3
        assert "  hub: 2 windows merged from 3 nodes" in output
        assert "  rounds: 2 published by 2 share keepers" in output and "failed" not in output
        url = next(line for line in lines if "dashboard:" in line).split("dashboard:", 1)[1].strip().rstrip("/")
        windows = get(url + "/v1/windows")["windows"]
        assert isinstance(windows, list) and len(windows) == 2 and all(w["nodes"] == 3 for w in windows)
        rounds = get(url + "/v1/rounds")["rounds"]
        assert isinstance(rounds, list) and len(rounds) == 2
        # Every node's contribution made it into every round: the nodes pushed their history at once.
        assert all(r["state"] == "published" and r["nodes"] == 3 and len(r["keepers"]) == 2 for r in rounds), rounds
        for line in lines:
            if line.startswith("  node "):
                node = line.split(": ", 1)[1].split("/  (", 1)[0]
                assert get(node + "/healthz")["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in "".join(lines) + rest
    assert rest.rstrip().endswith("stopped.")
    for log in (tmp_path / "demo").glob("*.log"):  # nothing went wrong on the way, in any service
        assert '"level": "error"' not in log.read_text(), log.name


def test_a_signal_while_the_history_imports_stops_the_demo_at_once(tmp_path: Path) -> None:
    proc = demo(tmp_path / "demo", "--days", "30")
    assert proc.stdout is not None
    assert "30 days of history" in proc.stdout.readline()
    time.sleep(1)  # the workers are importing
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert time.monotonic() - started < 15, rest  # not after the month of history is in
    assert proc.returncode == 0 and "Traceback" not in rest and rest.rstrip().endswith("stopped."), rest
