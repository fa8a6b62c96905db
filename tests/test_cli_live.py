"""Every command on a service's data works while the service runs (through its admin socket) and
without it (on its files), with the same output: real `liberation` processes, real sockets."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runtime.admin import SOCKET_NAME
from tests.servers import METRICS_ANY_PORT, Process

ENV = {**METRICS_ANY_PORT, "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0"}


def liberation(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "liberation", *args], input=stdin, capture_output=True, text=True, timeout=180,
        env={**os.environ, **ENV},
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def history(days: int, per_day: int) -> str:
    """Events of the last `days` whole UTC days, and one of a day long gone (refused as too old)."""
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    lines = [
        json.dumps({"app": "runway-calculator", "action": "start", "session_id": f"hist-{d}-{i:04d}",
                    "timestamp": (today - timedelta(days=d)).isoformat()})
        for d in range(1, days + 1) for i in range(per_day)
    ]
    lines.append(json.dumps({"app": "runway-calculator", "action": "start", "session_id": "too-old-00001",
                             "timestamp": (today - timedelta(days=400)).isoformat()}))
    return "\n".join(lines) + "\n"


def serve(kind: str, data_dir: Path, log: Path, **env: str) -> Process:
    prefix = f"LIBERATION_{kind.upper()}_"
    return Process([kind, "serve"], log, env={prefix + "DATA_DIR": str(data_dir), prefix + "PORT": "0",
                                             **{prefix + k: v for k, v in env.items()}})


def wait_until(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


@pytest.mark.slow
def test_node_commands_while_it_runs_and_while_it_does_not(tmp_path: Path) -> None:
    data, source = tmp_path / "node", tmp_path / "history.jsonl"
    source.write_text(history(days=3, per_day=40))
    imported_offline = liberation("node", "import", str(source), "--data-dir", str(data)).stdout
    assert "read 121 lines: 120 events accepted, 1 rejected" in imported_offline

    node = serve("node", data, tmp_path / "node.log", EXPORT_GRACE_SECONDS="0", EXPORT_INTERVAL_SECONDS="0.5")
    try:
        sock = data / SOCKET_NAME
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        wait_until(lambda: len(get_json(node.url + "/v1/snapshots")["snapshots"]) >= 3)
        yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        # The node holds its data dir: these can only have run through its socket.
        budget_live = liberation("node", "budget", "-v", "--data-dir", str(data)).stdout
        assert budget_live.count("epsilon 0.5000") >= 3  # a node without keepers: the community epsilon
        envelope_live = tmp_path / "live.bin"
        liberation("node", "export", "--window", yesterday, "--out", str(envelope_live), "--data-dir", str(data))
        # `node import` into the running node: the live ingest path, a published window refuses its events.
        now = datetime.now(UTC)
        late = "\n".join(json.dumps({"app": "runway-calculator", "action": "start", "session_id": f"live-{i:05d}",
                                     "timestamp": moment.isoformat()})
                         for i, moment in enumerate([now] * 5 + [now - timedelta(days=1)] * 2)) + "\n"
        result = liberation("node", "import", "-", "--data-dir", str(data), stdin=late).stdout
        assert "read 7 lines: 5 events accepted, 2 rejected" in result and "window-closed" in result
        pushed = liberation("node", "push", "--data-dir", str(data), check=False)
        assert pushed.returncode == 1 and pushed.stderr == (
            "liberation: push.hub_url is not set: snapshots stay here (`liberation node export` carries one by hand)\n"
        )
        # The public port serves none of it.
        request = urllib.request.Request(node.url + "/budget", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback only
        assert missing.value.code == 404
        missing.value.close()
    finally:
        assert node.stop() == 0
    assert not (data / SOCKET_NAME).exists()

    # The same commands on the files, the node stopped: the same output, the same bytes.
    assert liberation("node", "budget", "-v", "--data-dir", str(data)).stdout == budget_live
    envelope_files = tmp_path / "files.bin"
    liberation("node", "export", "--window", yesterday, "--out", str(envelope_files), "--data-dir", str(data))
    assert envelope_files.read_bytes() == envelope_live.read_bytes()

    # And an import through a running node says what the same import on the files said.
    fresh = tmp_path / "fresh"
    node = serve("node", fresh, tmp_path / "fresh.log")
    try:
        assert liberation("node", "import", str(source), "--data-dir", str(fresh)).stdout == imported_offline
    finally:
        node.stop()


@pytest.mark.slow
def test_hub_commands_while_it_runs_and_while_it_does_not(tmp_path: Path) -> None:
    node_key = liberation("node", "key", "--data-dir", str(tmp_path / "node")).stdout
    public = node_key.split("public key:")[1].split()[0]
    key_file = tmp_path / "node.pub"
    key_file.write_text(node_key.split("public key:")[1].split(None, 1)[1])  # the PEM block
    carried = tmp_path / "day.bin"  # a snapshot carried by hand (of a node with no events)
    # Two days back: yesterday is in its export grace during the first hour after midnight UTC.
    day = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%d")
    liberation("node", "export", "--window", day, "--out", str(carried), "--data-dir", str(tmp_path / "node"))

    data = tmp_path / "hub"
    hub = serve("hub", data, tmp_path / "hub.log")  # no admin token: the socket is the way
    try:
        live = [
            liberation("hub", "enroll", "--name", "berlin", "--key", public, "--data-dir", str(data)).stdout,
            liberation("hub", "enroll", "--name", "lagos", "--key", str(key_file), "--data-dir", str(data),
                       check=False).stderr,
            liberation("hub", "nodes", "--data-dir", str(data)).stdout,
            liberation("hub", "import", str(carried), str(carried), "--data-dir", str(data)).stdout,
            liberation("hub", "revoke", "berlin", "--data-dir", str(data)).stdout,
            liberation("hub", "revoke", "nobody", "--data-dir", str(data), check=False).stderr,
            liberation("hub", "import", str(carried), str(key_file), "--data-dir", str(data), check=False).stdout,
        ]
        nodes_live = liberation("hub", "nodes", "--data-dir", str(data)).stdout
    finally:
        assert hub.stop() == 0
    assert live[0].startswith("enrolled berlin (node): key id ")
    assert live[1] == "liberation: this key is already enrolled\n"
    assert live[2].endswith("active   node  berlin\n")
    assert live[3].startswith(f"{carried}: accepted (node ") and f"{carried}: duplicate (node " in live[3]
    assert live[4].startswith("revoked berlin: key id ")
    assert live[5] == "liberation: no enrolled node has that key id or name\n"
    assert live[6].startswith(f"{carried}: refused (revoked-key): ")  # a revoked key sends no more
    assert f"{key_file}: refused (malformed-envelope): " in live[6]
    assert nodes_live.endswith("revoked  node  berlin\n")

    assert liberation("hub", "nodes", "--data-dir", str(data)).stdout == nodes_live
    other = tmp_path / "other"
    offline = [
        liberation("hub", "enroll", "--name", "berlin", "--key", public, "--data-dir", str(other)).stdout,
        liberation("hub", "enroll", "--name", "lagos", "--key", str(key_file), "--data-dir", str(other),
                   check=False).stderr,
        liberation("hub", "nodes", "--data-dir", str(other)).stdout,
        liberation("hub", "import", str(carried), str(carried), "--data-dir", str(other)).stdout,
        liberation("hub", "revoke", "berlin", "--data-dir", str(other)).stdout,
        liberation("hub", "revoke", "nobody", "--data-dir", str(other), check=False).stderr,
        liberation("hub", "import", str(carried), str(key_file), "--data-dir", str(other), check=False).stdout,
    ]
    assert offline == live


def test_keeper_commands_while_it_runs_and_while_it_does_not(tmp_path: Path) -> None:
    """A share keeper's enrollments, through its socket while it serves, on its files when stopped: the same lines."""
    node_key = liberation("node", "key", "--data-dir", str(tmp_path / "node")).stdout
    public = node_key.split("public key:")[1].split()[0]

    def commands(data: Path) -> list[str]:
        return [
            liberation("keeper", "enroll", "--name", "berlin", "--key", public, "--data-dir", str(data)).stdout,
            liberation("keeper", "enroll", "--name", "lagos", "--key", public, "--data-dir", str(data),
                       check=False).stderr,
            liberation("keeper", "revoke", "berlin", "--data-dir", str(data)).stdout,
            liberation("keeper", "nodes", "--data-dir", str(data)).stdout,
        ]

    data = tmp_path / "keeper"
    keeper = serve("keeper", data, tmp_path / "keeper.log")  # no admin token: the socket is the way
    try:
        wait_until(lambda: (data / SOCKET_NAME).exists())
        live = commands(data)
    finally:
        assert keeper.stop() == 0
    assert "admin socket listening" in (tmp_path / "keeper.log").read_text()
    assert live[0].startswith("enrolled berlin: key id ")
    assert live[1] == "liberation: this key is already enrolled\n"
    assert live[2].startswith("revoked berlin: key id ")
    assert live[3].endswith("revoked  node  berlin\n")
    assert commands(tmp_path / "other") == live


def test_a_held_data_dir_without_a_socket_is_one_clear_line(tmp_path: Path) -> None:
    """The service runs but its socket is gone: the command says so, and never touches the files."""
    data = tmp_path / "hub"
    hub = serve("hub", data, tmp_path / "hub.log")
    try:
        (data / SOCKET_NAME).unlink()
        result = liberation("hub", "nodes", "--data-dir", str(data), check=False)
    finally:
        hub.stop()
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"liberation: the hub's data dir {data} is in use by another process")
    assert "admin socket" in result.stderr


def test_the_socket_is_the_data_dir_owners_only(tmp_path: Path) -> None:
    """The 0700 data dir keeps others out; a peer of another user that got through all the same is refused."""
    nobody = 65534
    python = "/usr/bin/python3"  # the test's own interpreter may sit where that user cannot reach it
    if os.getuid() != 0 or not os.access(python, os.X_OK):
        pytest.skip("needs root, to run a client as another user, and a system python3")
    parent = Path(tempfile.mkdtemp(prefix="liberation-socket-", dir="/tmp"))
    os.chmod(parent, 0o755)  # others may reach the data dir: only its own mode keeps them out
    data = parent / "node"
    node = serve("node", data, tmp_path / "node.log")
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('refused', e.errno); sys.exit()\n"
        "s.sendall(b'POST /budget HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\n{}')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    )

    def as_nobody() -> str:
        return subprocess.run([python, "-c", probe, str(data / SOCKET_NAME)], user=nobody,
                              capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        assert as_nobody() == f"refused {errno.EACCES}"  # the data dir's 0700
        os.chmod(data, 0o711)
        os.chmod(data / SOCKET_NAME, 0o666)
        assert as_nobody() == "HTTP/1.1 403 Forbidden"  # past the modes: the peer's uid is checked too
    finally:
        node.stop()
        shutil.rmtree(parent)


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = liberation("hub", "serve", "--port", str(port), "--data-dir", str(tmp_path / "hub"), check=False)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"liberation: cannot listen on http://127.0.0.1:{port}: Address already in use")
    assert "choose another with --port" in last
    # It let go of everything it opened: the next start takes the data dir at once.
    hub = serve("hub", tmp_path / "hub", tmp_path / "hub.log")
    hub.stop()


@pytest.mark.slow
def test_a_snapshot_pushed_before_enrollment_arrives_once_enrolled(tmp_path: Path) -> None:
    """Review: a node that pushed before the hub enrolled it lost that snapshot for good (403, never retried)."""
    hub = serve("hub", tmp_path / "hub", tmp_path / "hub.log")
    source = tmp_path / "history.jsonl"
    source.write_text(history(days=2, per_day=20))
    nodes: list[Process] = []
    try:
        for name, retry in (("early", "1"), ("patient", "3600")):
            data = tmp_path / name
            liberation("node", "import", str(source), "--data-dir", str(data))
            nodes.append(serve("node", data, tmp_path / f"{name}.log", EXPORT_GRACE_SECONDS="0",
                               PUSH__HUB_URL=hub.url, PUSH__INTERVAL_SECONDS="0.2",
                               PUSH__ENROLLMENT_RETRY_SECONDS=retry))

        def refused(log: Path) -> bool:
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            return any(line.get("problem") == "unknown-key" and line.get("status") == 403 for line in lines)

        wait_until(lambda: all(refused(tmp_path / f"{n}.log") for n in ("early", "patient")))
        for name in ("early", "patient"):
            public = liberation("node", "key", "--data-dir", str(tmp_path / name)).stdout.split("public key:")[1].split()[0]
            liberation("hub", "enroll", "--name", name, "--key", public, "--data-dir", str(tmp_path / "hub"))

        def merged() -> dict[str, int]:
            return {w["window_start"]: w["nodes"] for w in get_json(hub.url + "/v1/windows")["windows"]}

        # The early node offers its snapshots again by itself, within its retry interval.
        wait_until(lambda: len(merged()) >= 2 and all(n >= 1 for n in merged().values()))
        # The patient one would wait an hour: its operator pushes now, through the running node's socket.
        pushed = liberation("node", "push", "--data-dir", str(tmp_path / "patient")).stdout.splitlines()
        assert len(pushed) >= 2 and all(line.endswith(": sent (202)") for line in pushed), pushed
        assert all(n == 2 for n in merged().values())
        assert liberation("node", "push", "--data-dir", str(tmp_path / "patient")).stdout == (
            "nothing to push: every snapshot is at the hub\n"
        )
    finally:
        for node in nodes:
            node.stop()
        hub.stop()
