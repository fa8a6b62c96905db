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
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import Pipe, Process
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TextIO

from liberation.traffic import COMMUNITIES, Community, Traffic
from protocol.errors import LiberationError
from protocol.files import make_private_dir

URL_PATTERN = re.compile(r'"url": "(http://[^"]+)"')
HISTORY_DAYS = 14
"""Days of synthetic history `liberation demo` imports: two weeks, the demo at the dashboard in seconds."""


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
    # The demo's rounds close 5 s after their first contribution (its nodes push their history at
    # once, and export a live window within seconds of each other) and right at a live window's
    # end: the hub's defaults wait hours for nodes' pushes.
    "LIBERATION_HUB_ROUNDS__CLOSE_AFTER_SECONDS": "0", "LIBERATION_HUB_ROUNDS__COLLECT_SECONDS": "5",
    "LIBERATION_HUB_ROUNDS__INTERVAL_SECONDS": "1",
}


def _start_keepers(
    root: Path, hub: Service, token: str, services: list[Service], *, fixed_ports: bool, catalog: Path | None = None,
    stop: list[bool] | None = None,
) -> list[Service]:
    """Two keepers answering this hub only, enrolled at it (kind keeper, with their URL).

    They join `services` as soon as they are started, so that the demo stops them whatever happens next.
    """
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
    services += keepers
    for keeper in keepers:
        _wait_url(keeper, stop=stop)
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


def _demo_node_settings(data_dir: str, days: int, catalog: str | None, **more: Any) -> Any:
    """A demo community's node settings in its history worker, as its `node serve` gets them (`_node_env`)."""
    from node.settings import NodeSettings

    return NodeSettings(data_dir=Path(data_dir), retention_days=days + 1, export_grace_seconds=0, catalog=catalog, **more)


def _node_env(data_dir: str, days: int, hub: Service, keepers: list[str], catalog: Path | None, i: int) -> dict[str, str]:
    """The environment of a demo community's `node serve`."""
    return {
        "LIBERATION_NODE_DATA_DIR": data_dir, "LIBERATION_NODE_PORT": str(_free_port(8701 + i)),
        "LIBERATION_NODE_METRICS_PORT": str(_free_port(9701 + i)),
        "LIBERATION_NODE_RETENTION_DAYS": str(days + 1),
        # No grace: yesterday is published at midnight UTC, so the history's last
        # day is there at start also in the hour after midnight.
        "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0",
        # Closed windows are looked for every few seconds: the nodes' contributions to a
        # live window's round all reach the hub within its collection time.
        "LIBERATION_NODE_EXPORT_INTERVAL_SECONDS": "2",
        "LIBERATION_NODE_PUSH__HUB_URL": hub.url, "LIBERATION_NODE_PUSH__INTERVAL_SECONDS": "1",
        "LIBERATION_NODE_CORS_ORIGINS": json.dumps([hub.url]), **_catalog_env("NODE", catalog),
        "LIBERATION_NODE_ROUNDS__KEEPERS": json.dumps(keepers),
    }


def _history_worker(conn: Connection, community: Community, data_dir: str, seed: int, days: int, catalog: str | None) -> None:
    """One community's history in a process of its own: import it; export once the keepers are known; push when told.

    Speaks with `_History` over `conn`: sends ("imported", line), receives (keeper ids,
    the hub's keeper listing, the hub's URL), sends ("exported", public key), receives
    "push", pushes the outbox as `liberation node push` does, closes the node and sends
    ("pushed", count). Any failure is sent as ("failed", its first line).
    """
    import asyncio

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops its workers itself (a terminal's ^C reaches all)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        from node.importer import import_events
        from node.service import close_node, open_node

        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        node = open_node(_demo_node_settings(data_dir, days, catalog))
        try:
            # The events as `node import` decodes them from its lines: the same filter, without a JSON round trip.
            summary = import_events(node, Traffic(community, seed).history(days, today))
        finally:
            close_node(node)
        conn.send(("imported", f"{community.name}: {summary.accepted:,} events imported"))
        keepers, listing, hub_url = conn.recv()
        node = open_node(_demo_node_settings(data_dir, days, catalog, rounds={"keepers": keepers},
                                             push={"hub_url": hub_url}))
        try:
            if node.publisher.keepers is not None:
                node.publisher.keepers.learn(listing)
            node.export_due()  # what the node's service would do first, here while the other histories import
            conn.send(("exported", node.key.public.b64))
            conn.recv()
            pushed = asyncio.run(_push(node))
        finally:
            close_node(node)
        conn.send(("pushed", pushed))
    except Exception as exc:  # noqa: BLE001 - reported by the demo as one line, never a traceback
        conn.send(("failed", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"))


async def _push(node: Any) -> int:
    """Send a node's outbox to the hub now (`liberation node push`'s code); how many entries the hub took."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return sum(attempt.outcome == "sent" for attempt in await node.outbox.push_now(session))


class _Histories:
    """The demo communities' history workers (`_history_worker`), one process each, driven step by step."""

    def __init__(self, root: Path, days: int, catalog: Path | None, stop: list[bool]) -> None:
        self.stop = stop
        self.data = {c.name: str(root / c.name) for c in COMMUNITIES}
        self.conns: dict[str, Connection] = {}
        self.procs: list[BaseProcess] = []
        for i, community in enumerate(COMMUNITIES):
            ours, theirs = Pipe()
            proc = Process(target=_history_worker, name=f"history-{community.name}", daemon=True,
                           args=(theirs, community, self.data[community.name], 1000 + i, days, _text(catalog)))
            proc.start()
            theirs.close()
            self.conns[community.name], self.procs = ours, [*self.procs, proc]

    def tell(self, message: Any) -> None:
        """Send every worker the next step's input (one that failed has said so, which `answers` reports)."""
        for conn in self.conns.values():
            try:
                conn.send(message)
            except OSError:
                pass

    def answers(self, step: str) -> Iterator[tuple[str, Any]]:
        """(community, answer) of each worker's `step`, as they come; DemoError for a failure, _Stopped on a signal."""
        waiting = {conn: name for name, conn in self.conns.items()}
        while waiting:
            if self.stop[0]:
                raise _Stopped
            ready = wait(list(waiting), timeout=0.2)
            for conn in [c for c in waiting if c in ready]:
                name = waiting.pop(conn)
                try:
                    kind, value = conn.recv()
                except EOFError:
                    raise DemoError(f"the demo's history worker of {name} stopped") from None
                if kind == "failed":
                    raise DemoError(f"the demo's history of {name} failed: {value}")
                if kind != step:
                    raise DemoError(f"the demo's history worker of {name} said {kind!r} for {step!r}")
                yield name, value

    def close(self) -> None:
        """Stop every worker still running (a signal, or a failure elsewhere) and reap them."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=10)
        for conn in self.conns.values():
            conn.close()


class _Stopped(Exception):
    """A signal asked the demo to stop while it was still setting up."""


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
        "LIBERATION_HUB_EXPORT_AFTER_SECONDS": "0", **ROUNDS_ENV,
        **_catalog_env("HUB", catalog),
    })
    services = [hub]
    try:
        _wait_url(hub)
        keepers = _start_keepers(root, hub, token, services, fixed_ports=False, catalog=catalog)
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


def _wait_url(service: Service, timeout: float = 60, stop: list[bool] | None = None) -> str:
    """The service's URL once it answers (`_Stopped` as soon as a signal in `stop` asks the demo to stop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop is not None and stop[0]:
            raise _Stopped
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
    """Set up and run the demo federation until SIGINT/SIGTERM (`catalog`: hub's and nodes', None = built in).

    Each community's history is made, imported and exported in a worker process while the hub
    and the keepers start; the nodes push at once, so that every round has all its contributions
    within a second or two, and then the nodes' services start.
    """
    started = time.monotonic()
    if fresh and root.exists():
        shutil.rmtree(root)
    make_private_dir(root)
    token = secrets.token_urlsafe(32)  # 32 random bytes: the hub refuses weaker admin tokens
    say = _sayer(out)

    say(f"Liberation Analytics demo: a hub, {KEEPERS} share keepers and {len(COMMUNITIES)} communities, "
        f"{days} days of history")
    services: list[Service] = []
    stop = _stop_on_signals()
    histories = _Histories(root, days, catalog, stop)
    try:
        hub = _start("hub", ["hub", "serve"], root / "hub.log", {
            "LIBERATION_HUB_DATA_DIR": str(root / "hub"), "LIBERATION_HUB_PORT": str(_free_port(8700)),
            "LIBERATION_HUB_METRICS_PORT": str(_free_port(9700)),
            "LIBERATION_HUB_ADMIN_TOKEN": token, "LIBERATION_HUB_EXPORT_AFTER_SECONDS": "0", **ROUNDS_ENV,
            **_catalog_env("HUB", catalog),
        })
        services.append(hub)
        _wait_url(hub, stop=stop)
        keepers = _start_keepers(root, hub, token, services, fixed_ports=True, catalog=catalog, stop=stop)
        keeper_ids = [k.key_id for k in keepers]
        histories.tell((keeper_ids, _request(hub.url + "/v1/keepers"), hub.url))
        imported = dict(histories.answers("imported"))
        for community in COMMUNITIES:
            say("  " + imported[community.name])
        for name, public in histories.answers("exported"):
            _enroll(name, public, hub, keepers, token)
        histories.tell("push")
        serving: dict[str, Service] = {}
        for name, _ in histories.answers("pushed"):  # each node's service starts once its worker let go of its files
            i = next(i for i, c in enumerate(COMMUNITIES) if c.name == name)
            serving[name] = _start(name, ["node", "serve"], root / f"{name}.log",
                                   _node_env(histories.data[name], days, hub, keeper_ids, catalog, i))
            services.append(serving[name])
        nodes = [serving[c.name] for c in COMMUNITIES]
        deadline, expected = time.monotonic() + 60, _closed_windows(days, catalog)
        windows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not stop[0]:
            windows = _request(hub.url + "/v1/windows")["windows"]
            if len(windows) >= expected and all(w["nodes"] == len(COMMUNITIES) for w in windows[-expected:]):
                break
            time.sleep(0.2)
        say(f"  hub: {len(windows)} windows merged from {len(COMMUNITIES)} nodes "
            f"({time.monotonic() - started:.0f} s after start)")
        rounds = _wait_for_rounds(hub, expected, stop)
        for node in nodes:
            _wait_url(node, stop=stop)
        say(_rounds_line(rounds))
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
    except _Stopped:
        pass
    finally:
        histories.close()
        _stop_services(services, say)
    return 0
