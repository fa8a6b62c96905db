"""Loopback HTTP load: pre-built event bodies, `wrk` when installed, else a lean asyncio client in its own process.

Every run is bounded by a duration (and the Python client also by a request
count) and stops by itself; the target is always a 127.0.0.1 URL.

`python -m bench.load URL BODIES_FILE --connections N --seconds S [--rate R]`
is the Python fallback: it prints one JSON line with the same fields that the
wrk script prints, so both generators feed the same `LoadResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EVENTS_PATH = "/v1/events"
MAX_REQUESTS = 5_000_000  # hard cap of the Python client, whatever the duration

# ---- bodies -----------------------------------------------------------------------

_SHAPES: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    (
        "runway-calculator",
        ("start", "calculate", "complete"),
        lambda r: {
            "runway_months": round(r.uniform(0, 40), 1),
            "savings_band": r.choice(["<1k", "1k-5k", "5k-10k", "10k-25k", "25k-50k"]),
            "monthly_expenses": r.randrange(500, 9000),
            "industry": r.choice(["tech", "finance", "retail", "education"]),
        },
    ),
    (
        "real-wage-calculator",
        ("start", "reveal", "complete"),
        lambda r: {
            "salary": r.randrange(15_000, 220_000),
            "real_wage_gap_pct": round(r.uniform(-15, 55), 1),
            "industry": r.choice(["tech", "healthcare", "government", "creative"]),
        },
    ),
    (
        "cognitive-debt-assessment",
        ("start", "answer", "complete"),
        lambda r: {"debt_level": r.choice(["low", "moderate", "high"]), "questions_answered": r.randrange(0, 30)},
    ),
)
_COUNTRIES = ("US", "DE", "FR", "BR", "IN", "KE", "GB", None)


def make_events(count: int, *, tag: str, start: int = 0, seed: int = 1) -> list[dict[str, Any]]:
    """`count` valid events stamped now, each with its own session id (`bench-<tag>-<n>`)."""
    rng = random.Random(seed)
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out: list[dict[str, Any]] = []
    for n in range(start, start + count):
        app, actions, attributes = _SHAPES[n % len(_SHAPES)]
        event: dict[str, Any] = {
            "app": app,
            "action": rng.choice(actions),
            "attributes": attributes(rng),
            "timestamp": stamp,
            "session_id": f"bench-{tag}-{n:09d}",
        }
        country = rng.choice(_COUNTRIES)
        if country is not None:
            event["geo_hint"] = country
        out.append(event)
    return out


def batch_bodies(batches: int, size: int, *, tag: str) -> list[bytes]:
    """`batches` JSON arrays of `size` events; no session id repeats across them."""
    return [
        json.dumps(make_events(size, tag=tag, start=b * size, seed=b), separators=(",", ":")).encode()
        for b in range(batches)
    ]


def single_bodies(count: int, *, tag: str) -> list[bytes]:
    """`count` single-event JSON objects, one session each."""
    return [json.dumps(e, separators=(",", ":")).encode() for e in make_events(count, tag=tag)]


def write_bodies(bodies: list[bytes], directory: Path, name: str) -> Path:
    """One body per line (compact JSON has no newline), for wrk's Lua script and the Python client."""
    path = directory / f"{name}.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


# ---- results ----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """One bounded load run: what the generator saw."""

    generator: str
    connections: int
    rate: float  # requested req/s; 0 = closed loop, as fast as answers come
    requests: int  # answered requests (any status)
    errors: int  # non-2xx answers, timeouts and socket errors
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# ---- wrk --------------------------------------------------------------------------

# LuaJIT's ffi gives wrk a monotonic clock, so `delay()` can hold a schedule:
# each request claims the next slot of one global timetable (1/rate apart),
# which sends at `rate` req/s whatever the answers take, as long as enough
# connections are idle. wrk's timer has 1 ms resolution: slots closer than
# that go out at once, so the rate holds on average, in 1 ms bursts.
_WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local requests = {}
local lines = {}  -- the bodies as read, kept only to renew their session ids (BENCH_RENEW)
local renew = tonumber(os.getenv("BENCH_RENEW") or "0")
local count = 0
local index = 0
local interval = 0
local next_slot = nil

function init(args)
  local path = os.getenv("BENCH_BODIES")
  local rate = tonumber(os.getenv("BENCH_RATE") or "0")
  for line in io.lines(path) do
    if #line > 0 then
      count = count + 1
      if renew > 0 then lines[count] = line end
      requests[count] = wrk.format("POST", os.getenv("BENCH_PATH"),
        {["Content-Type"] = "application/json"}, line)
    end
  end
  if rate > 0 then interval = 1000 / rate end
end

function request()
  index = index % count + 1
  return requests[index]
end

-- BENCH_RENEW = K > 0: every K passes through the bodies, their session ids
-- (`bench-<BENCH_RENEW_TAG>-<n>`) get a new prefix, so each session sends K
-- events and the node keeps meeting new sessions, as it would in real use.
if renew > 0 then
  local tag = os.getenv("BENCH_RENEW_TAG")
  local base = tonumber(os.getenv("BENCH_RENEW_BASE") or "0")
  local pattern = '"session_id":"bench%-' .. tag .. '%-'
  local sent = 0
  local made = {}
  function request()
    index = index % count + 1
    local generation = base + math.floor(sent / (count * renew))
    sent = sent + 1
    if made[index] ~= generation then
      made[index] = generation
      local body = string.gsub(lines[index], pattern, '"session_id":"bench-' .. tag .. 'r' .. generation .. '-')
      requests[index] = wrk.format("POST", os.getenv("BENCH_PATH"), {["Content-Type"] = "application/json"}, body)
    end
    return requests[index]
  end
end

if tonumber(os.getenv("BENCH_RATE") or "0") > 0 then
  function delay()
    local now = now_ms()
    if next_slot == nil then next_slot = now end
    next_slot = next_slot + interval
    local wait = next_slot - now
    if wait < 0 then return 0 end
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "seconds": %.6f, "errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass(frozen=True)
class Renewal:
    """New session ids every `every` passes through the bodies (wrk only): each session sends `every` events.

    `tag` is the bodies' tag (`make_events`); generations start at `base`, so
    consecutive runs that pass different bases never repeat a session.
    """

    every: int
    tag: str
    base: int = 0


def run_wrk(url: str, bodies: Path, *, connections: int, seconds: float, rate: float = 0.0,
            renew: Renewal | None = None) -> LoadResult:
    """One wrk run (one thread: the server needs the other core more than wrk does)."""
    assert urlsplit(url).hostname == "127.0.0.1", "load goes to loopback only"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT)
        env = dict(os.environ, BENCH_BODIES=str(bodies), BENCH_RATE=str(rate), BENCH_PATH=EVENTS_PATH)
        if renew is not None:
            env.update(BENCH_RENEW=str(renew.every), BENCH_RENEW_TAG=renew.tag, BENCH_RENEW_BASE=str(renew.base))
        proc = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
             "-s", str(script), url + EVENTS_PATH],
            env=env, capture_output=True, text=True, timeout=seconds + 30, check=False,
        )
    found = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1000:]} {proc.stderr[-1000:]}")
    data = json.loads(found[-1].removeprefix("BENCH_RESULT "))
    return LoadResult("wrk", connections, rate, data["requests"], data["errors"], data["seconds"],
                      data["p50_ms"], data["p99_ms"])


# ---- Python fallback: raw HTTP/1.1 keep-alive over asyncio protocols ----------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection that sends a request, waits for its answer, then asks for the next."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ready.set_result(None)

    def send(self, request: bytes, due: float | None = None) -> None:
        """Send; latency counts from `due` (the open-loop schedule) when given, so a late send shows."""
        assert self.transport is not None
        self.started = time.perf_counter() if due is None else due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[: end + 4 + length]
        self.client.answered(self, time.perf_counter() - self.started, 200 <= status < 300)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class _Client:
    def __init__(self, requests: list[bytes], connections: int, seconds: float, rate: float) -> None:
        self.requests = requests
        self.connections = connections
        self.seconds = seconds
        self.rate = rate
        self.latencies: list[float] = []
        self.errors = 0
        self.index = 0
        self.idle: list[_Connection] = []
        self.backlog: deque[float] = deque()  # open-loop send times that found every connection busy
        self.open = True
        self.finished: asyncio.Future[None] | None = None
        self.busy = 0

    def next_request(self) -> bytes:
        self.index = (self.index + 1) % len(self.requests)
        return self.requests[self.index]

    def answered(self, conn: _Connection, latency: float, ok: bool) -> None:
        self.busy -= 1
        self.latencies.append(latency)
        if not ok:
            self.errors += 1
        if self.open and len(self.latencies) < MAX_REQUESTS and (self.rate == 0 or self.backlog):
            self.busy += 1
            conn.send(self.next_request(), self.backlog.popleft() if self.rate else None)
        else:
            self.idle.append(conn)
            self._maybe_finish()

    def lost(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if self.open:
            self.errors += 1
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self.open and self.busy <= 0 and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    async def run(self, host: str, port: int) -> tuple[float, list[float], int]:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(self.connections):
            _, conn = await loop.create_connection(lambda: _Connection(self), host, port)
            await conn.ready
            conns.append(conn)
        self.finished = loop.create_future()
        started = time.perf_counter()
        deadline = started + self.seconds
        if self.rate == 0:
            for conn in conns:
                self.busy += 1
                conn.send(self.next_request())
            await asyncio.sleep(self.seconds)
        else:
            self.idle = list(conns)
            interval = 1.0 / self.rate
            due = started
            while (now := time.perf_counter()) < deadline:
                while due <= now:
                    if self.idle:
                        self.busy += 1
                        self.idle.pop().send(self.next_request(), due)
                    else:
                        self.backlog.append(due)
                    due += interval
                await asyncio.sleep(max(0.0, min(due - time.perf_counter(), 0.001)))
        self.open = False
        elapsed = time.perf_counter() - started
        if self.busy > 0:
            await asyncio.wait_for(self.finished, timeout=10)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        return elapsed, self.latencies, self.errors


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.hostname != "127.0.0.1":
        parser.error("load goes to 127.0.0.1 only")
    head = f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
    requests = [
        head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
        for body in args.bodies.read_bytes().splitlines()
        if body
    ]
    client = _Client(requests, args.connections, min(args.seconds, 120.0), args.rate)
    elapsed, latencies, errors = asyncio.run(client.run(parts.hostname, parts.port or 80))
    print("BENCH_RESULT " + json.dumps({
        "requests": len(latencies), "seconds": elapsed, "errors": errors,
        "p50_ms": _percentile(latencies, 0.50) * 1000, "p99_ms": _percentile(latencies, 0.99) * 1000,
    }), flush=True)
    return 0


def run_python(url: str, bodies: Path, *, connections: int, seconds: float, rate: float = 0.0) -> LoadResult:
    """The fallback generator, in its own process so it has its own interpreter lock."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.load", url, str(bodies), f"--connections={connections}",
         f"--seconds={seconds}", f"--rate={rate}"],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    found = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"load client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads(found[-1].removeprefix("BENCH_RESULT "))
    return LoadResult("python", connections, rate, data["requests"], data["errors"], data["seconds"],
                      data["p50_ms"], data["p99_ms"])


def run_load(url: str, bodies: Path, *, connections: int, seconds: float, rate: float = 0.0,
             generator: str | None = None) -> LoadResult:
    """wrk if installed (or asked for), else the Python client."""
    chosen = generator or ("wrk" if wrk_path() else "python")
    run = run_wrk if chosen == "wrk" else run_python
    return run(url, bodies, connections=connections, seconds=seconds, rate=rate)


if __name__ == "__main__":
    sys.exit(_client_main(sys.argv[1:]))
