"""Abusive clients: slow and oversized bodies, a flood from one client, a cardinality attack.

    slow        a client that sends headers and then dribbles or stalls its body gets a 408
                within the body deadline; one that dribbles its headers is dropped by the
                keep-alive timeout; meanwhile others are served and memory stays flat
    oversized   a declared 100 MB body is refused (413) before a byte of it is read; a
                chunked body past the limit is refused once it passes it
    flood       one client over its rate gets 429s with Retry-After; another is untouched
    cardinality 50,000 events of random apps, actions, attribute names and values: unknown
                apps/actions refused, the rest stored only as catalog domain values

The fast variants run the node in-process; the `slow` ones run `liberation node
serve` as a process (the real server settings of liberation/server.py) and
watch its resident memory.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

import runtime.problems
from liberation.server import KEEPALIVE_TIMEOUT_SECONDS, LINGERING_SECONDS
from protocol.catalog import load_catalog
from protocol.countries import COUNTRY_DOMAIN
from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from tests.servers import Process, RunningNode, node_settings, run_node

CATALOG = load_catalog()
APPS = sorted(CATALOG.apps)


def event(i: int, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "app": "runway-calculator", "action": "calculate", "attributes": {"runway_months": 8.5, "industry": "tech"},
        "timestamp": datetime.now(UTC).isoformat(), "session_id": f"session-{i:08d}",
    }
    data.update(changes)
    return data


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    return parts.hostname, parts.port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---- raw HTTP: what a hostile client sends ---------------------------------------------------


@dataclass
class RawAnswer:
    status: int | None  # None: closed without an answer
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent until the answer (or the close)
    sent: int = 0  # body bytes the client managed to send


async def read_answer(reader: asyncio.StreamReader) -> tuple[int | None, dict[str, str], bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def slow_request(
    url: str, head: bytes, *, drip: bytes = b"", every: float = 0.0, chunks: list[bytes] | None = None, limit: float = 60.0
) -> RawAnswer:
    """Send `head`, then `drip` every `every` seconds (or `chunks` at once), until the server answers or closes."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    started = time.monotonic()
    answer = asyncio.create_task(read_answer(reader))
    sent = 0

    def left() -> float:
        return max(0.1, limit - (time.monotonic() - started))

    try:
        writer.write(head)
        for chunk in chunks or []:
            if answer.done():
                break
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), timeout=left())
            sent += len(chunk)
        while drip and not answer.done() and time.monotonic() - started < limit:
            await asyncio.wait([answer], timeout=every)
            if not answer.done():
                writer.write(drip)
                await asyncio.wait_for(writer.drain(), timeout=left())
                sent += len(drip)
    except (ConnectionError, TimeoutError):
        pass
    try:
        status, headers, body = await asyncio.wait_for(answer, timeout=left())
    except TimeoutError:
        status, headers, body = None, {}, b""  # no answer within `limit`
    finally:
        answer.cancel()
        writer.close()
    return RawAnswer(status, headers, body, time.monotonic() - started, sent)


async def closed_by_server(url: str, head: bytes, drip: bytes, every: float, limit: float) -> float | None:
    """Seconds until the server closes a connection that keeps dribbling; None if it never does within `limit`."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    started = time.monotonic()
    try:
        writer.write(head)
        while (left := limit - (time.monotonic() - started)) > 0:
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=min(every, left))
            except TimeoutError:
                writer.write(drip)
                await asyncio.wait_for(writer.drain(), timeout=max(0.1, left))
                continue
            if not data:
                return time.monotonic() - started
        return None
    except TimeoutError:
        return None  # the server stopped reading, and kept the connection
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


def post_head(length: int | None, content_type: str = "application/json", path: str = "/v1/events") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def assert_problem(answer: RawAnswer, status: int, slug: str | None = None) -> dict[str, Any]:
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body = json.loads(answer.body)
    assert body["status"] == status and {"type", "title", "detail"} <= set(body)
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug
    return body


def rows(running: RunningNode) -> int:
    return running.node.store.row_count()


# ---- slow and oversized bodies (in-process) ----------------------------------------------------


async def test_a_stalled_or_dribbling_body_gets_408(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.problems, "BODY_DEADLINE_SECONDS", 0.5)
    async with run_node(node_settings(tmp_path)) as running:
        stalled = await slow_request(running.url, post_head(1000) + b'{"app": ', limit=10)
        dribbled = await slow_request(running.url, post_head(1000) + b"[", drip=b" ", every=0.05, limit=10)
        for answer in (stalled, dribbled):
            assert_problem(answer, 408, "body-timeout")
            assert answer.headers.get("connection", "").lower() == "close"
            assert answer.seconds < 0.5 + 1.5
        assert dribbled.sent > 3  # it was still sending when it was cut off
        async with aiohttp.ClientSession() as session, session.post(running.url + "/v1/events", json=event(1)) as resp:
            assert resp.status == 202  # the node is fine
        assert rows(running) == 1


async def test_oversized_bodies_get_413_without_being_read(tmp_path: Path) -> None:
    async with run_node(node_settings(tmp_path)) as running:
        limit = running.settings.max_body_bytes
        declared = await slow_request(running.url, post_head(100 * 1024 * 1024), limit=10)
        assert_problem(declared, 413, "payload-too-large")
        assert declared.seconds < 1.0 and declared.sent == 0
        # 2 MiB of a chunked body that never ends: refused once past the limit, not at its end
        chunked = await slow_request(running.url, post_head(None), chunks=[chunk(b" " * 65536)] * 32, limit=10)
        assert_problem(chunked, 413)
        honest = json.dumps([event(i) for i in range(1000)]).encode()
        assert len(honest) < limit  # the largest batch fits: the limit does not bite real clients
        async with aiohttp.ClientSession() as session, session.post(
            running.url + "/v1/events", data=honest, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 202
        assert rows(running) == 1000


async def test_broken_and_nested_bodies_are_400_and_hang_ups_are_harmless(tmp_path: Path) -> None:
    async with run_node(node_settings(tmp_path)) as running:
        gzip = post_head(5).replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1) + b"abcde"
        assert_problem(await slow_request(running.url, gzip, limit=10), 400, "malformed-body")
        for _ in range(20):  # clients that hang up half-way through their body
            reader, writer = await asyncio.open_connection(*host_port(running.url))
            writer.write(post_head(1000) + b'[{"app": "runway-calc')
            await writer.drain()
            writer.close()
        deep = "[" * 100_000  # past Python's recursion limit when parsed
        for path, body in (("/v1/events", deep), ("/api/event", json.dumps({"n": "pageview", "u": "https://a.org/", "p": deep}))):
            answer = await slow_request(running.url, post_head(len(body), "text/plain", path) + body.encode(), limit=10)
            assert_problem(answer, 400)
        async with aiohttp.ClientSession() as session, session.post(running.url + "/v1/events", json=event(1)) as resp:
            assert resp.status == 202


# ---- a flood from one client -------------------------------------------------------------------


async def test_a_flood_from_one_client_leaves_others_served(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path, rate_limit={"requests_per_second": 20, "burst": 60}, trusted_proxies=("127.0.0.1/32",)
    )
    flood: Counter[int] = Counter()
    retry_after: list[int] = []
    calm: list[tuple[int, float]] = []
    async with run_node(settings) as running, aiohttp.ClientSession() as session:
        url = running.url + "/v1/events"

        async def flooder(worker: int, stop: float) -> None:
            i = 0
            while time.monotonic() < stop and sum(flood.values()) < 3000:
                async with session.post(
                    url, json=event(worker * 10_000 + i), headers={"X-Forwarded-For": "198.51.100.66"}
                ) as resp:
                    flood[resp.status] += 1
                    if resp.status == 429:
                        problem = await resp.json(content_type=None)
                        assert resp.content_type == PROBLEM_CONTENT_TYPE and problem["type"] == PROBLEM_BASE + "rate-limited"
                        retry_after.append(int(resp.headers["Retry-After"]))
                i += 1

        async def calm_client(stop: float) -> None:
            i = 0
            while time.monotonic() < stop:
                started = time.monotonic()
                async with session.post(url, json=event(900_000 + i), headers={"X-Forwarded-For": "203.0.113.7"}) as resp:
                    calm.append((resp.status, time.monotonic() - started))
                i += 1
                await asyncio.sleep(0.1)  # 10 requests a second: half its allowance

        started = time.monotonic()
        stop = started + 3.0
        await asyncio.gather(*(flooder(w, stop) for w in range(8)), calm_client(stop))
        elapsed = time.monotonic() - started
    assert len(calm) >= 20 and all(status == 202 for status, _ in calm), calm
    assert max(seconds for _, seconds in calm) < 1.0
    allowed = 60 + 20 * elapsed
    assert flood[202] <= allowed + 5, (flood, elapsed)
    assert flood[429] >= sum(flood.values()) - allowed - 5 and flood[429] > 100, flood
    assert set(flood) <= {202, 429}
    assert retry_after and all(1 <= r <= 5 for r in retry_after)


# ---- cardinality ----------------------------------------------------------------------------


def _slug(rng: random.Random) -> str:
    return rng.choice(string.ascii_lowercase) + "".join(
        rng.choices(string.ascii_lowercase + string.digits + "_-", k=rng.randint(4, 30))
    )


def hostile_event(rng: random.Random, i: int, kind: str) -> dict[str, Any]:
    """An event crafted to create new values: a random app, a random action, or random attributes."""
    app = rng.choice(APPS)
    data = event(i, app=app, action=rng.choice(CATALOG.apps[app].actions), session_id=f"s-{rng.getrandbits(64):016x}")
    data["geo_hint"] = rng.choice([_slug(rng)[:2].upper(), _slug(rng), "ZZ", "us", None])
    if kind == "app":
        data["app"] = _slug(rng)
    elif kind == "action":
        data["action"] = _slug(rng)
    else:
        attributes: dict[str, Any] = {_slug(rng): rng.random() for _ in range(rng.randint(0, 8))}  # undeclared names
        for name, spec in CATALOG.attributes.items():
            if rng.random() < 0.6:
                number = rng.choice([rng.uniform(-1e12, 1e12), rng.randint(-(10**15), 10**15), rng.random()])
                attributes[name] = number if spec.edges is not None else _slug(rng)
        data["attributes"] = dict(list(attributes.items())[:32])
    return data


@dataclass
class Attack:
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: int = 0
    dropped: int = 0


async def cardinality_attack(url: str, total: int, *, seed: int = 7, batch: int = 500) -> Attack:
    """`total` hostile events in batches: a fifth with random apps, a fifth random actions, the rest random attributes."""
    rng = random.Random(seed)
    attack = Attack()
    kinds = ["app", "action", "attributes", "attributes", "attributes"]
    async with aiohttp.ClientSession() as session:
        for start in range(0, total, batch):
            kind = kinds[(start // batch) % len(kinds)]
            events = [hostile_event(rng, start + i, kind) for i in range(batch)]
            async with session.post(url + "/v1/events", json=events) as resp:
                body = await resp.json(content_type=None)
                attack.statuses[resp.status] += 1
                if resp.status == 202:
                    attack.accepted += body["accepted"]
                    attack.dropped += body["dropped_attributes"]
                else:
                    assert resp.content_type == PROBLEM_CONTENT_TYPE and kind in ("app", "action"), body
    return attack


def assert_inside_domains(cursor: Any) -> None:
    """Every stored value of every column lies in the catalog's public domain."""
    app_actions = {(a, act) for a, spec in CATALOG.apps.items() for act in spec.actions}
    assert set(cursor.execute("SELECT DISTINCT app, action FROM events").fetchall()) <= app_actions
    assert {c for (c,) in cursor.execute("SELECT DISTINCT country FROM events").fetchall()} <= set(COUNTRY_DOMAIN)
    for name, spec in CATALOG.attributes.items():
        column = '"a_' + name.replace("-", "_") + '"'
        stored = {v for (v,) in cursor.execute(f"SELECT DISTINCT {column} FROM events").fetchall()}
        assert stored - {None} <= set(spec.domain), name
        assert len(stored) <= len(spec.domain) + 1


async def test_a_cardinality_attack_stays_inside_the_catalog(tmp_path: Path) -> None:
    async with run_node(node_settings(tmp_path)) as running:
        attack = await cardinality_attack(running.url, 50_000)
        assert attack.statuses == {422: 40, 202: 60}  # random apps and actions refused whole, 40 batches of 500
        assert attack.accepted == 30_000 == rows(running)
        assert attack.dropped > 30_000  # the undeclared attribute names
        running.node.store.drain()  # acked rows wait in a stage until drained
        assert_inside_domains(running.node.store.cursor())
        industries = dict(running.node.store.cursor().execute(
            "SELECT a_industry, count(*) FROM events WHERE a_industry IS NOT NULL GROUP BY 1").fetchall())
        assert set(industries) == {"other"}  # every random category value became `other`


# ---- whole process: memory and timeouts with the real server settings ---------------------------


def start_node(tmp_path: Path, **extra: str) -> Process:
    env = {
        "LIBERATION_NODE_DATA_DIR": str(tmp_path / "node"),
        "LIBERATION_NODE_PORT": "0", "LIBERATION_NODE_METRICS_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0",
        **extra,
    }
    return Process(["node", "serve"], tmp_path / "node.log", env=env)


async def warm_up(url: str, requests: int = 300) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(requests):
            async with session.post(url + "/v1/events", json=[event(i * 10 + j) for j in range(10)]) as resp:
                assert resp.status == 202


@pytest.mark.slow
async def test_slow_clients_are_cut_off_and_memory_stays_flat(tmp_path: Path) -> None:
    proc = start_node(tmp_path)
    try:
        await warm_up(proc.url)
        baseline = rss_bytes(proc.proc.pid)
        deadline = runtime.problems.BODY_DEADLINE_SECONDS
        limit = max(deadline, KEEPALIVE_TIMEOUT_SECONDS) + LINGERING_SECONDS + 10
        header_drip = [  # slowloris: the headers never end
            closed_by_server(proc.url, b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-a: b\r\n", 1.0, limit)
            for _ in range(100)
        ]
        body_drip = [closed_by_server(proc.url, post_head(100_000) + b"[", b" ", 1.0, limit) for _ in range(100)]
        stalled = [closed_by_server(proc.url, post_head(100_000) + b"[" + b" " * 50_000, b"", 3600.0, limit) for _ in range(50)]
        slow = asyncio.gather(*header_drip, *body_drip, *stalled)
        await asyncio.sleep(2.0)
        served: list[tuple[int, float]] = []
        async with aiohttp.ClientSession() as session:
            for i in range(50):  # a normal client, while 250 slow ones hold connections
                started = time.monotonic()
                async with session.post(proc.url + "/v1/events", json=[event(10_000 + i)]) as resp:
                    served.append((resp.status, time.monotonic() - started))
                await asyncio.sleep(0.05)
        during = rss_bytes(proc.proc.pid)
        # Broken framing is answered by aiohttp itself, which logs the peer's address unless told not to.
        framing = await slow_request(proc.url, post_head(None) + b"zz\r\nabc\r\n0\r\n\r\n", limit=5)
        closed = await slow
        after = rss_bytes(proc.proc.pid)
    finally:
        assert proc.stop() == 0
    assert framing.status == 400
    log = proc.log_path.read_text()
    # A client's fault: counted by the tally under route "?", with no traceback (only a DEBUG line).
    assert '"route": "?", "status": 400' in log and 'File \\"' not in log
    assert not [line for line in log.splitlines() if "127.0.0.1" in line and not re.search('"(metrics )?listening"', line)]
    assert all(status == 202 for status, _ in served) and max(s for _, s in served) < 1.0, served
    headers_closed, bodies_closed, stalled_closed = closed[:100], closed[100:200], closed[200:]
    assert all(t is not None and t <= KEEPALIVE_TIMEOUT_SECONDS + 2 for t in headers_closed), headers_closed
    assert all(t is not None and t <= deadline + LINGERING_SECONDS + 2 for t in bodies_closed + stalled_closed)
    mib = 1024 * 1024
    assert during - baseline < 40 * mib, (baseline / mib, during / mib)
    assert after - baseline < 40 * mib, (baseline / mib, after / mib)


@pytest.mark.slow
async def test_oversized_floods_and_cardinality_keep_memory_flat(tmp_path: Path) -> None:
    proc = start_node(tmp_path)
    mib = 1024 * 1024
    try:
        await warm_up(proc.url)
        await cardinality_attack(proc.url, 10_000, seed=1)  # the same kind of traffic, to settle allocations
        baseline = rss_bytes(proc.proc.pid)
        declared = await asyncio.gather(*(slow_request(proc.url, post_head(100 * 1024 * 1024), limit=10) for _ in range(50)))
        endless = [chunk(b" " * 65536)] * 32  # 2 MiB, and no last chunk
        chunked = await asyncio.gather(*(slow_request(proc.url, post_head(None), chunks=endless, limit=20) for _ in range(20)))
        after_oversized = rss_bytes(proc.proc.pid)
        attack = await cardinality_attack(proc.url, 50_000, seed=2)
        after_attack = rss_bytes(proc.proc.pid)
    finally:
        assert proc.stop() == 0
    for answer in declared:
        assert_problem(answer, 413)
        assert answer.seconds < 2.0 and answer.sent == 0
    for answer in chunked:
        assert_problem(answer, 413)
    assert attack.statuses == {422: 40, 202: 60}
    assert after_oversized - baseline < 30 * mib, (baseline / mib, after_oversized / mib)
    assert after_attack - baseline < 0.10 * baseline + 20 * mib, (baseline / mib, after_attack / mib)
