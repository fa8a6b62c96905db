"""The hub at scale: intake of 1,000 nodes x 30 days next to raw Ed25519, views latency over that data, fuzzing.

Targets (2-core machine): intake >= 500 snapshots/s; p95 of every views
endpoint <= 20 ms; >= 10,000 hypothesis-generated and bit-flipped envelopes
answered 4xx only (never a 5xx, never an accepted forgery).

The hub runs as its own process (`python -m liberation hub serve`), so the
load generator does not share its interpreter. Envelope generation is not
measured: each node's day is a seeded noisy snapshot from a small pool per
window, re-signed as that node (every envelope is a genuine snapshot of its
own key). Intake posts window by window, as nodes do after midnight: a
third of the days each over 16, 64 and 256 connections (1,000 nodes pushing
after midnight are many concurrent clients; the hub group-commits whatever
is in flight, so more clients make bigger, cheaper batches). The target is
read on the best of the three, as the node bench reads its best connection
count; all three are printed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import secrets
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgpack  # type: ignore[import-untyped]

from bench.bench_ingest import _busy_seconds, _cpu_seconds, wait_for_quiet
from protocol.catalog import load_catalog
from protocol.envelope import SIGNING_PREFIX, sign_snapshot, verify_envelope
from protocol.keys import PublicKey, SigningKey
from tests.servers import Process
from tests.snapshots import DAY, node_snapshot
from views.ranges import VIEWS

NODES = 1_000
DAYS = 30
VARIANTS = 6  # noisy snapshots per window that nodes are re-signed from
INTAKE_CONNECTIONS = (16, 64, 256)  # one run each, over consecutive thirds of the days
INTAKE_SECONDS = 90.0  # each intake run stops here, whatever is left of its days
VIEW_HITS = 200  # requests per endpoint to one URL (cache hits where the endpoint caches)
VIEW_COLD = 50  # requests per endpoint to distinct ranges or windows (renders)
FUZZ_CASES = 10_000
TARGET_RATE = 500.0
TARGET_P95_MS = 20.0
TOKEN = secrets.token_urlsafe(32)  # the hub refuses weaker admin tokens


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    target: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


# ---- data -------------------------------------------------------------------------------------


def _busy(variant: int) -> Callable[[str, int], int]:
    """True counts of a busy node: every third cell, shifted and scaled by the variant."""
    return lambda metric, i: 300 + 40 * variant if (i + variant) % 3 == 0 else 0


def generate(nodes: int, days: int) -> tuple[list[SigningKey], list[int], list[list[bytes]]]:
    """Keys, windows (oldest first, the last ending today at 00:00 UTC) and envelopes[window][node]."""
    catalog = load_catalog()
    today = int(time.time()) // DAY * DAY
    windows = [today - d * DAY for d in range(days, 0, -1)]
    keys = [SigningKey.from_seed(hashlib.sha256(b"bench-hub/%d" % i).digest()) for i in range(nodes)]
    envelopes: list[list[bytes]] = []
    for d, window in enumerate(windows):
        pool = [
            node_snapshot(
                keys[0], window, seed=1000 * d + v, catalog=catalog,
                counts=_busy(v),
            )
            for v in range(VARIANTS)
        ]
        envelopes.append(
            [sign_snapshot(pool[(i + d) % VARIANTS].model_copy(update={"node": key.public.key_id}), key)
             for i, key in enumerate(keys)]
        )
    return keys, windows, envelopes


def raw_verify_rate(envelopes: list[bytes]) -> float:
    """Ed25519 verifications per second of the envelopes' (prefix + body), one core, nothing else."""
    parts = []
    keys: dict[bytes, PublicKey] = {}
    for data in envelopes:
        env = msgpack.unpackb(data)
        key = keys.setdefault(env["pk"], PublicKey.from_raw(env["pk"]))
        parts.append((key, env["sig"], SIGNING_PREFIX + env["body"]))
    started = time.perf_counter()
    ok = sum(key.verify(sig, message) for key, sig, message in parts)
    elapsed = time.perf_counter() - started
    assert ok == len(parts)
    return len(parts) / elapsed


def verify_envelope_rate(envelopes: list[bytes]) -> float:
    started = time.perf_counter()
    for data in envelopes:
        verify_envelope(data)
    return len(envelopes) / (time.perf_counter() - started)


# ---- phases against the hub process -----------------------------------------------------------


async def enroll(url: str, keys: list[SigningKey]) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    queue = iter(enumerate(keys))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i, key in queue:
            async with session.post(url + "/v1/admin/nodes", json={"name": f"node-{i:04d}", "public_key": key.public.b64},
                                    headers=auth) as resp:
                assert resp.status == 201, await resp.text()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(8)))


@dataclass
class IntakeRun:
    posted: int
    seconds: float
    statuses: Counter[int]
    latencies: list[float]
    hub_cpu: float = 0.0  # CPU seconds of the hub process during the run
    client_cpu: float = 0.0  # of this process (the load generator)
    other_share: float = 0.0  # share of the machine's cores that other processes took


def post_measured(url: str, pid: int, envelopes: list[bytes], *, concurrency: int, seconds: float) -> IntakeRun:
    """`post_all`, with the CPU each side spent and what other processes took meanwhile."""
    hub0, busy0, mine0 = _cpu_seconds(pid), _busy_seconds(), os.times()
    run = asyncio.run(post_all(url, envelopes, concurrency=concurrency, seconds=seconds))
    hub1, busy1, mine1 = _cpu_seconds(pid), _busy_seconds(), os.times()
    run.hub_cpu = hub1 - hub0
    run.client_cpu = (mine1.user + mine1.system) - (mine0.user + mine0.system)
    others = max(0.0, (busy1 - busy0) - run.hub_cpu - run.client_cpu)
    run.other_share = others / (run.seconds * (os.cpu_count() or 1))
    return run


async def post_all(url: str, envelopes: list[bytes], *, concurrency: int, seconds: float) -> IntakeRun:
    """Post in order over `concurrency` connections until done or `seconds` passed."""
    queue = iter(envelopes)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/msgpack"}

    async def worker(session: aiohttp.ClientSession) -> None:
        for data in queue:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            async with session.post(url + "/v1/snapshots", data=data, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return IntakeRun(sum(statuses.values()), elapsed, statuses, latencies)


@dataclass
class Latency:
    endpoint: str
    hit_p50: float
    hit_p95: float
    cold_p50: float | None
    cold_p95: float | None


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _p(values: list[float], q: int) -> float:
    """The q-th percentile of `values` (seconds), in milliseconds."""
    if len(values) < 2:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def _timed(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as resp:
        await resp.read()
        assert resp.status == 200, (url, resp.status)
    return time.perf_counter() - started


async def view_latencies(url: str, windows: list[int]) -> list[Latency]:
    """Per endpoint, one request at a time: one URL repeated, then distinct ranges (or windows)."""
    rng = random.Random(7)
    async with aiohttp.ClientSession() as session, session.get(url + "/v1/windows") as resp:
        stored = {int(w["start"]) for w in (await resp.json())["windows"]}
    # Windows intake did not reach (it stops at INTAKE_SECONDS on a busy machine) have no merged data.
    days = [_day(w) for w in windows if w in stored]
    pairs = [(a, b) for i, a in enumerate(days) for b in days[i:]]
    endpoints: list[tuple[str, str, list[str]]] = []
    for name in VIEWS:
        ranges = rng.sample(pairs, VIEW_COLD)
        endpoints.append((f"/v1/views/{name}", f"/v1/views/{name}", [f"/v1/views/{name}?from={a}&to={b}" for a, b in ranges]))
    endpoints.append(("/v1/windows", "/v1/windows", []))
    endpoints.append(("/v1/catalog", "/v1/catalog", []))
    endpoints.append(("/v1/merged/{day}", f"/v1/merged/{days[-1]}", [f"/v1/merged/{rng.choice(days)}" for _ in range(VIEW_COLD)]))
    out = []
    async with aiohttp.ClientSession() as session:
        for label, hit, cold in endpoints:
            await _timed(session, url + hit)  # the first one renders
            hits = [await _timed(session, url + hit) for _ in range(VIEW_HITS)]
            colds = [await _timed(session, url + path) for path in cold]
            out.append(Latency(label, _p(hits, 50), _p(hits, 95), _p(colds, 50) if colds else None,
                               _p(colds, 95) if colds else None))
    return out


def fuzz(url: str, key: SigningKey, valid: bytes, examples: int) -> tuple[Counter[str], str | None, float]:
    """The test module's campaign against the hub process: statuses seen, the first violation, seconds."""
    from tests.test_hub_fuzz import (  # hypothesis and pytest: test dependencies
        Client,
        campaign,
    )

    client = Client(url)
    started = time.perf_counter()
    try:
        seen, failure = campaign(client, key, valid, examples=examples), None
    except Exception as exc:  # noqa: BLE001 - a violation is a result to report (hypothesis shrank it)
        seen, failure = Counter(), f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        client.close()
    return seen, failure, time.perf_counter() - started


# ---- main -------------------------------------------------------------------------------------


def intake_phase(url: str, pid: int, by_window: list[list[bytes]], raw: float, full: float) -> list[Row]:
    """Intake of every window, a consecutive share of the days per connection count; rows for each and the best."""
    parts = len(INTAKE_CONNECTIONS)
    share = -(-len(by_window) // parts)
    rates: list[tuple[float, int, bool]] = []
    for k, concurrency in enumerate(INTAKE_CONNECTIONS):
        envelopes = [data for day in by_window[k * share : (k + 1) * share] for data in day]
        idle = wait_for_quiet()
        run = post_measured(url, pid, envelopes, concurrency=concurrency, seconds=INTAKE_SECONDS)
        accepted = run.statuses.get(202, 0)
        rate = accepted / run.seconds
        partial = "" if run.posted == len(envelopes) else f" (stopped after {INTAKE_SECONDS:.0f} s)"
        print(f"intake, {concurrency} connections: {accepted:,} accepted of {run.posted:,} posted in {run.seconds:.1f} s"
              f"{partial}, {rate:,.0f}/s, statuses {dict(run.statuses)}, latency p50 {_p(run.latencies, 50):.0f} ms "
              f"p95 {_p(run.latencies, 95):.0f} ms")
        per = 1e3 / max(1, run.posted)
        print(f"  CPU per snapshot: hub {run.hub_cpu * per:.2f} ms, load generator {run.client_cpu * per:.2f} ms; "
              f"other processes took {run.other_share:.0%} of the machine (idle before: {idle:.0%})")
        rates.append((rate, concurrency, accepted == len(envelopes)))
    complete = all(done for _, _, done in rates)
    rows = [Row(f"intake, {c} connections", f"{r:,.0f} snapshots/s", "", "", None) for r, c, _ in rates]
    best, at, _ = max(rates)
    rows.append(Row(f"intake, best ({at} connections)", f"{best:,.0f} snapshots/s",
                    f"raw Ed25519 verify {raw:,.0f}/s, verify_envelope {full:,.0f}/s (1 core)",
                    f">= {TARGET_RATE:,.0f}/s", best >= TARGET_RATE and complete))
    return rows


def views_phase(url: str, windows: list[int]) -> list[Row]:
    latencies = asyncio.run(view_latencies(url, windows))
    print(f"\n{'endpoint':<28}{'hit p50':>9}{'hit p95':>9}{'cold p50':>10}{'cold p95':>10}   "
          f"(ms; {VIEW_HITS} repeats of one URL, {VIEW_COLD} distinct ranges/windows)")
    for lat in latencies:
        cold = f"{lat.cold_p50:>10.1f}{lat.cold_p95:>10.1f}" if lat.cold_p50 is not None else f"{'-':>10}{'-':>10}"
        print(f"{lat.endpoint:<28}{lat.hit_p50:>9.1f}{lat.hit_p95:>9.1f}{cold}")
    hit = max(latencies, key=lambda lat: lat.hit_p95)
    cold_p95 = {lat.endpoint: lat.cold_p95 for lat in latencies if lat.cold_p95 is not None}
    worst = max(cold_p95, key=lambda endpoint: cold_p95[endpoint])
    target = f"<= {TARGET_P95_MS:.0f} ms"
    return [
        Row("views p95, repeated URL (worst)", f"{hit.hit_p95:.1f} ms {hit.endpoint}", f"{len(latencies)} endpoints",
            target, hit.hit_p95 <= TARGET_P95_MS),
        Row("views p95, distinct ranges (worst)", f"{cold_p95[worst]:.1f} ms {worst}", "each a render from DuckDB",
            target, cold_p95[worst] <= TARGET_P95_MS),
    ]


def fuzz_phase(url: str, key: SigningKey, valid: bytes) -> Row:
    seen, failure, seconds = fuzz(url, key, valid, FUZZ_CASES)
    total = sum(seen.values())
    fives = sum(n for label, n in seen.items() if label.startswith("5"))
    twos = sum(n for label, n in seen.items() if label.startswith("2"))
    print(f"\nfuzz: {total:,} cases in {seconds:.1f} s: " + ", ".join(f"{k} x{n}" for k, n in sorted(seen.items())))
    if failure:
        print(f"fuzz VIOLATION: {failure}")
    value = f"{fives} / 0 of {total:,}" if failure is None else failure[:60]
    return Row("fuzz cases: 5xx / accepted forgeries", value, f"{twos} genuine 2xx (enrolled key's own)",
               f">= {FUZZ_CASES:,}, 0 / 0", failure is None and fives == 0 and total >= FUZZ_CASES)


def main() -> None:
    started = time.perf_counter()
    keys, windows, by_window = generate(NODES, DAYS)
    everything = [data for day in by_window for data in day]
    print(f"generated {len(everything):,} envelopes ({len(keys):,} nodes x {len(windows)} days, "
          f"{statistics.mean(map(len, everything[:500])):,.0f} bytes each) in {time.perf_counter() - started:.1f} s")
    raw = raw_verify_rate(everything)
    full = verify_envelope_rate(everything[:3000])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        env = {
            "LIBERATION_HUB_DATA_DIR": str(Path(tmp) / "hub"),
            "LIBERATION_HUB_PORT": "0", "LIBERATION_HUB_METRICS_PORT": "0",
            "LIBERATION_HUB_HOST": "127.0.0.1",
            "LIBERATION_HUB_ADMIN_TOKEN": TOKEN,
        }
        hub = Process(["hub", "serve"], Path(tmp) / "hub.log", env=env)
        try:
            asyncio.run(enroll(hub.url, keys))
            rows += intake_phase(hub.url, hub.proc.pid, by_window, raw, full)
            rows += views_phase(hub.url, windows)
            rows.append(fuzz_phase(hub.url, keys[0], by_window[-1][0]))
        finally:
            code = hub.stop()
            if code:
                print(f"hub exited with {code}: {hub.log_path.read_text()[-1500:]}")
    header = Row("figure", "value", "baseline", "target", None)
    cells = [(r.figure, r.value, r.baseline, r.target, r.verdict) for r in [header, *rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    print()
    for c in cells:
        print("  ".join(text.ljust(width) for text, width in zip(c, widths, strict=False)).rstrip())

if __name__ == "__main__":
    main()
