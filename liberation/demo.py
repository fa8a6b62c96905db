"""`liberation demo`: a hub and community nodes on loopback, from synthetic history or from your own files.

The demo runs the real parts, as an operator would. By default it generates
keys, imports synthetic history into three nodes through `node import`'s
code path, starts `liberation hub serve`, two `liberation keeper serve` (the
share keepers of federation rounds) and three `liberation node serve`
processes, enrolls the keepers at the hub and the nodes at the hub and at
both keepers through their admin APIs, lets the nodes export and push their
closed windows and round contributions, keeps a trickle of live events going,
and prints the dashboard's URL. With `--import DIR` it builds one node per
`<community>.jsonl` in DIR (the format `node import` takes) and nothing
else: each node imports its file and publishes every closed window (and its
contribution to the window's round), the hub enrolls them and takes their
snapshots and contributions over HTTP, two keepers answer the rounds, and the
hub serves the federation views of that history. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from liberation.traffic import COMMUNITIES, Community, Traffic
from protocol.errors import LiberationError
from protocol.files import make_private_dir

URL_PATTERN = re.compile(r'"url": "(http://[^"]+)"')
HISTORY_DAYS = 30


class DemoError(LiberationError):
    """A part of the demo could not start."""


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    key_id: str = ""


KEEPERS = 2
"""Share keepers the demo runs: any one honest keeper protects a round; every one must answer."""
ROUNDS_ENV = {
    # The demo's rounds close 20 s after their first contribution (history arrives at once) and
    # right at a live window's end: the hub's defaults wait hours for nodes' pushes.
    "LIBERATION_HUB_ROUNDS__CLOSE_AFTER_SECONDS": "0", "LIBERATION_HUB_ROUNDS__COLLECT_SECONDS": "20",
    "LIBERATION_HUB_ROUNDS__INTERVAL_SECONDS": "1",
}


def _start_keepers(root: Path, hub: Service, token: str, *, fixed_ports: bool, catalog: Path | None = None) -> list[Service]:
    """Two keepers answering this hub only, enrolled at it (kind keeper, with their URL)."""
    hub_key = (root / "hub" / "keys" / "signing.pub").read_text().strip()
    keepers = [
        _start(f"keeper-{k}", ["keeper", "serve"], root / f"keeper-{k}.log", {
            "LIBERATION_KEEPER_DATA_DIR": str(root / f"keeper-{k}"),
            "LIBERATION_KEEPER_PORT": str(_free_port(8710 + k) if fixed_ports else 0),
            "LIBERATION_KEEPER_METRICS_PORT": str(_free_port(9710 + k) if fixed_ports else 0),
            "LIBERATION_KEEPER_ADMIN_TOKEN": token, "LIBERATION_KEEPER_HUB_KEYS": json.dumps([hub_key]),
            **({} if catalog is None else {"LIBERATION_KEEPER_CATALOGS": json.dumps([str(catalog)])}),
        })
        for k in range(KEEPERS)
    ]
    for keeper in keepers:
        _wait_url(keeper)
        statement = _request(keeper.url + "/v1/keeper")
        keeper.key_id = statement["key_id"]
        _request(hub.url + "/v1/admin/nodes", {"name": keeper.name, "public_key": statement["public_key"],
                                               "kind": "keeper", "url": keeper.url}, token)
    return keepers


def _enroll(name: str, public: str, hub: Service, keepers: list[Service], token: str) -> None:
    """A community at the hub and at every keeper (a keeper opens seeds only of nodes it enrolled)."""
    for service in (hub, *keepers):
        _request(service.url + "/v1/admin/nodes", {"name": name, "public_key": public}, token)


def _wait_for_rounds(hub: Service, wanted: int, stop: list[bool], timeout: float = 90) -> list[dict[str, Any]]:
    """The hub's rounds once `wanted` are published (or none is left open or checking, or the timeout)."""
    deadline = time.monotonic() + timeout
    rounds: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not stop[0]:
        rounds = _request(hub.url + "/v1/rounds")["rounds"]
        published = sum(r["state"] == "published" for r in rounds)
        if published >= wanted or (rounds and all(r["state"] in ("published", "failed") for r in rounds)):
            break
        time.sleep(0.5)
    return rounds


def _rounds_line(rounds: list[dict[str, Any]]) -> str:
    published = sum(r["state"] == "published" for r in rounds)
    failed = [r for r in rounds if r["state"] == "failed"]
    line = f"  rounds: {published} published by {KEEPERS} share keepers (noise once, on the federation-wide sums)"
    if failed:
        line += f"; {len(failed)} failed ({failed[0]['note']})"
    return line


def _import_history(community: Community, data_dir: str, seed: int, days: int, catalog: str | None = None) -> str:
    """One node's history through the import path (run in a worker process)."""
    from node.importer import import_lines
    from node.service import close_node, open_node
    from node.settings import NodeSettings

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    node = open_node(NodeSettings(data_dir=Path(data_dir), retention_days=days + 1, catalog=catalog))
    try:
        summary = import_lines(node, Traffic(community, seed).history_lines(days, today))
    finally:
        close_node(node)
    return f"{community.name}: {summary.accepted:,} events imported"


IMPORT_RETENTION_DAYS = 400
"""How far back `--import` history may go: the hub's default window horizon."""


def _publish_file(
    path: str, data_dir: str, keepers: list[str], listing: dict[str, Any], catalog: str | None = None
) -> tuple[str, str, list[bytes], list[bytes], str]:
    """One community's file through a node of its own: import, export every closed window (run in a worker).

    The node seals its round contributions to `keepers`, whose keys it takes from the hub's `listing`.
    Returns the node's name, public key, envelopes, contributions and a summary line.
    """
    from node.importer import import_lines
    from node.service import close_node, open_node
    from node.settings import NodeSettings

    name = Path(path).stem
    # No grace: a history file is complete, nothing late can still arrive for its last day,
    # so yesterday publishes also in the hour after midnight UTC.
    settings = NodeSettings(data_dir=Path(data_dir), retention_days=IMPORT_RETENTION_DAYS, export_grace_seconds=0,
                            rounds={"keepers": keepers}, catalog=catalog)
    node = open_node(settings)
    try:
        if node.publisher.keepers is not None:
            node.publisher.keepers.learn(listing)
        with open(path, encoding="utf-8") as lines:
            summary = import_lines(node, lines)
        node.export_due()
        windows = sorted(node.windows.exported)
        envelopes = [e for w in windows if (e := node.publisher.stored(w)) is not None]
        contributions = [c for w in windows if (c := node.publisher.contribution(w)) is not None]
        public = node.key.public.b64
    finally:
        close_node(node)
    refused = sum(summary.rejected.values())
    return name, public, envelopes, contributions, (
        f"{name}: {summary.accepted:,} events imported"
        + (f", {refused:,} refused" if refused else "") + f", {len(envelopes)} windows published"
    )


def _post_envelope(url: str, envelope: bytes, path: str = "/v1/snapshots") -> None:
    request = urllib.request.Request(
        url + path, data=envelope, headers={"Content-Type": "application/msgpack"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - loopback only
        pass


def run_import_demo(
    root: Path, source: Path, *, hub_port: int = 8700, out: TextIO = sys.stdout, catalog: Path | None = None
) -> int:
    """A federation of the communities in `source` (one `<community>.jsonl` each), served by a hub until a signal.

    `catalog`: the federation's catalog TOML (hub and nodes), None for the built-in one.
    """
    started = time.monotonic()
    files = sorted(source.glob("*.jsonl"))
    if not files:
        print(f"liberation: no <community>.jsonl file in {source}", file=sys.stderr)
        return 1
    if root.exists():
        shutil.rmtree(root)
    make_private_dir(root)
    token = secrets.token_urlsafe(32)
    say = _sayer(out)
    say(f"Liberation Analytics demo: a hub, {KEEPERS} share keepers and {len(files)} communities from {source}")
    stop = _stop_on_signals()
    hub = _start("hub", ["hub", "serve"], root / "hub.log", {
        "LIBERATION_HUB_DATA_DIR": str(root / "hub"), "LIBERATION_HUB_PORT": str(hub_port),
        "LIBERATION_HUB_METRICS_PORT": "0", "LIBERATION_HUB_ADMIN_TOKEN": token,
        "LIBERATION_HUB_EXPORT_AFTER_SECONDS": "0", **ROUNDS_ENV, "LIBERATION_HUB_ROUNDS__COLLECT_SECONDS": "5",
        **_catalog_env("HUB", catalog),
    })
    services = [hub]
    try:
        _wait_url(hub)
        keepers = _start_keepers(root, hub, token, fixed_ports=False, catalog=catalog)
        services += keepers
        listing = _request(hub.url + "/v1/keepers")
        keeper_ids = [k.key_id for k in keepers]
        with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            jobs = [pool.submit(_publish_file, str(f), str(root / "nodes" / f.stem), keeper_ids, listing, _text(catalog))
                    for f in files]
            published = [job.result() for job in jobs]
        for *_, line in published:
            say("  " + line)
        for name, public, envelopes, contributions, _ in published:
            _enroll(name, public, hub, keepers, token)
            for envelope in envelopes:
                _post_envelope(hub.url, envelope)
            for contribution in contributions:
                _post_envelope(hub.url, contribution, "/v1/contributions")
        windows = _request(hub.url + "/v1/windows")["windows"]
        say(f"  hub: {len(windows)} windows merged from {len(published)} nodes "
            f"({time.monotonic() - started:.0f} s after start)")
        say(_rounds_line(_wait_for_rounds(hub, len(windows), stop)))
        say("")
        say(f"  dashboard:  {hub.url}/")
        say(f"  views API:  {hub.url}/v1/views   (OpenAPI: {hub.url}/openapi.json)")
        say(f"  logs and data: {root}")
        say("")
        say("Ctrl-C stops.")
        while not stop[0] and hub.proc.poll() is None:
            time.sleep(0.2)
    finally:
        _stop_services(services, say)
    return 0


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _catalog_env(service: str, catalog: Path | None) -> dict[str, str]:
    """The environment that gives a hub or node the federation's catalog (none for the built-in one)."""
    return {} if catalog is None else {f"LIBERATION_{service}_CATALOG": str(catalog)}


def _window_of(catalog: Path | None) -> str:
    from protocol.catalog import load_catalog

    return load_catalog(catalog).window


def _closed_windows(days: int, catalog: Path | None) -> int:
    """How many windows `days` of history ending today hold that have closed by now (no grace)."""
    from protocol.catalog import load_catalog
    from protocol.windows import DAY, window_start

    length = load_catalog(catalog).window_seconds
    today = int(datetime.now(UTC).timestamp()) // DAY * DAY
    first, now = window_start(today - days * DAY, length), int(time.time())
    return len(range(first, window_start(now, length), length))


def _sayer(out: TextIO) -> Callable[[str], None]:
    """A line printer for the demo's progress, flushed at once."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    return say


def _stop_on_signals() -> list[bool]:
    """A flag set by SIGINT or SIGTERM."""
    stop = [False]

    def on_signal(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _stop_services(services: list[Service], say: Callable[[str], None]) -> None:
    say("stopping ...")
    for service in reversed(services):
        if service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)
    for service in services:
        try:
            service.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.proc.kill()
    say("stopped.")


def _start(name: str, args: list[str], log: Path, env: dict[str, str]) -> Service:
    handle = open(log, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "liberation", *args], stdout=handle, stderr=handle,
        env={**os.environ, **env}, start_new_session=True,
    )
    handle.close()
    return Service(name, proc, log)


def _wait_url(service: Service, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise DemoError(f"the demo's {service.name} stopped at start: see {service.log}")
        found = URL_PATTERN.findall(service.log.read_text(errors="replace"))
        if found:
            try:
                with urllib.request.urlopen(found[-1] + "/healthz", timeout=2):  # noqa: S310 - loopback
                    service.url = found[-1]
                    return service.url
            except OSError:
                pass
        time.sleep(0.1)
    raise DemoError(f"the demo's {service.name} did not start within {timeout:g} s: see {service.log}")


def _request(url: str, data: Any = None, token: str | None = None, method: str | None = None) -> Any:
    body = json.dumps(data).encode() if data is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read() or b"null")


def _free_port(preferred: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return 0


def run_demo(
    root: Path, *, days: int = HISTORY_DAYS, out: TextIO = sys.stdout, fresh: bool = True, catalog: Path | None = None
) -> int:
    """Set up and run the demo federation until SIGINT/SIGTERM (`catalog`: hub's and nodes', None = built in)."""
    started = time.monotonic()
    if fresh and root.exists():
        shutil.rmtree(root)
    make_private_dir(root)
    token = secrets.token_urlsafe(32)  # 32 random bytes: the hub refuses weaker admin tokens
    say = _sayer(out)

    say(f"Liberation Analytics demo: a hub, {KEEPERS} share keepers and {len(COMMUNITIES)} communities, "
        f"{days} days of history")
    with ProcessPoolExecutor(max_workers=min(3, os.cpu_count() or 1)) as pool:
        jobs = [
            pool.submit(_import_history, c, str(root / c.name), 1000 + i, days, _text(catalog))
            for i, c in enumerate(COMMUNITIES)
        ]
        for job in jobs:
            say("  " + job.result())

    services: list[Service] = []
    stop = _stop_on_signals()
    try:
        hub = _start("hub", ["hub", "serve"], root / "hub.log", {
            "LIBERATION_HUB_DATA_DIR": str(root / "hub"), "LIBERATION_HUB_PORT": str(_free_port(8700)),
            "LIBERATION_HUB_METRICS_PORT": str(_free_port(9700)),
            "LIBERATION_HUB_ADMIN_TOKEN": token, "LIBERATION_HUB_EXPORT_AFTER_SECONDS": "0", **ROUNDS_ENV,
            **_catalog_env("HUB", catalog),
        })
        services.append(hub)
        _wait_url(hub)
        keepers = _start_keepers(root, hub, token, fixed_ports=True, catalog=catalog)
        services += keepers
        nodes: list[Service] = []
        for i, community in enumerate(COMMUNITIES):
            data = root / community.name
            from protocol.keys import load_or_create

            public = load_or_create(data / "keys" / "signing.key").public.b64
            _enroll(community.name, public, hub, keepers, token)
            node = _start(community.name, ["node", "serve"], root / f"{community.name}.log", {
                "LIBERATION_NODE_DATA_DIR": str(data), "LIBERATION_NODE_PORT": str(_free_port(8701 + i)),
                "LIBERATION_NODE_METRICS_PORT": str(_free_port(9701 + i)),
                "LIBERATION_NODE_RETENTION_DAYS": str(days + 1),
                # No grace: yesterday is published at midnight UTC, so the history's last
                # day is there at start also in the hour after midnight.
                "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0",
                "LIBERATION_NODE_PUSH__HUB_URL": hub.url, "LIBERATION_NODE_PUSH__INTERVAL_SECONDS": "1",
                "LIBERATION_NODE_CORS_ORIGINS": json.dumps([hub.url]), **_catalog_env("NODE", catalog),
                "LIBERATION_NODE_ROUNDS__KEEPERS": json.dumps([k.key_id for k in keepers]),
            })
            nodes.append(node)
        services += nodes
        for node in nodes:
            _wait_url(node)
        deadline, expected = time.monotonic() + 60, _closed_windows(days, catalog)
        while time.monotonic() < deadline and not stop[0]:
            windows = _request(hub.url + "/v1/windows")["windows"]
            if len(windows) >= expected and all(w["nodes"] == len(COMMUNITIES) for w in windows[-expected:]):
                break
            time.sleep(0.5)
        say(f"  hub: {len(windows)} windows merged from {len(COMMUNITIES)} nodes "
            f"({time.monotonic() - started:.0f} s after start)")
        say(_rounds_line(_wait_for_rounds(hub, days, stop)))
        say("")
        say(f"  dashboard:  {hub.url}/")
        say(f"  views API:  {hub.url}/v1/views   (OpenAPI: {hub.url}/openapi.json)")
        for node in nodes:
            say(f"  node {node.name}: {node.url}/  (events: POST {node.url}/v1/events)")
        for keeper in keepers:
            say(f"  share keeper {keeper.name}: {keeper.url}/v1/ledger")
        say(f"  logs and data: {root}")
        say("")
        current = "today's window is published after midnight UTC" if _window_of(catalog) == "day" else (
            "this week's window is published after Monday 00:00 UTC")
        say(f"A live trickle of events keeps going; {current}. Ctrl-C stops.")
        trickle = [Traffic(c, 9000 + i) for i, c in enumerate(COMMUNITIES)]
        while not stop[0]:
            now = datetime.now(UTC)
            for node, traffic in zip(nodes, trickle, strict=True):
                events = traffic.session(now - timedelta(minutes=1))
                for event in events:
                    event["timestamp"] = now.isoformat()
                try:
                    _request(node.url + "/v1/events", events)
                except (urllib.error.URLError, OSError):
                    pass  # a node restarting: the trickle simply goes on
            for _ in range(20):
                if stop[0]:
                    break
                time.sleep(0.1)
    finally:
        _stop_services(services, say)
    return 0
