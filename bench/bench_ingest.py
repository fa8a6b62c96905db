"""Ingest throughput and latency of the real node, each figure next to a baseline measured in the same run.

Servers run in their own processes (the node as `python -m liberation node
serve`); the load comes from wrk when it is installed, else from the asyncio
client of `bench.load` in a process of its own. Baselines:
  bare      an aiohttp handler that reads the body and answers 202;
  validate  a handler that parses + validates (the node's pydantic adapter,
            `validate_json`) + HMACs each session id of the same bodies, then 202;
  duckdb    Arrow tables of the same (filtered) rows inserted into a file DB,
            one transaction per 1,000 rows, commit included.
Rounds interleave baseline and node runs; each rate is the best of its runs,
and the p99 at half the node's best rate (paced, once per round after the
others) the lowest of its runs: other load on the machine only ever slows a
run down. Every run is printed. Everything goes to 127.0.0.1, every run is
bounded in time, and the whole bench takes about two minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.load import (
    LoadResult,
    batch_bodies,
    make_events,
    run_load,
    single_bodies,
    write_bodies,
    wrk_path,
)

BATCH = 100
BATCHES = 600  # 60,000 distinct sessions; the pool repeats after that (session-state upserts then update rows)
SINGLES = 60_000
SECONDS = 4.0  # one measured run
WARMUP_SECONDS = 1.0
ROUNDS = 2
BATCH_CONNECTIONS = (16, 32, 64)
BARE_CONNECTIONS = (16, 64)
SINGLE_CONNECTIONS = (64, 256, 1024)  # the node group-commits: more connections, bigger commits
PACED_CONNECTIONS = 64  # enough idle connections for the batch schedule at half the max rate
PACED_SINGLE_CONNECTIONS = 256  # single events at half the max: thousands a second, each waiting tens of ms
DUCKDB_ROWS_PER_COMMIT = 1_000
DUCKDB_SECONDS = 2.0

# Floors (simplification issue: one process, same-run baselines)
BATCH_RATIO_TARGET = 0.75
SINGLE_RATIO_TARGET = 0.60
HALF_RATE_P99_MS = 50.0

URL_PATTERN = re.compile(r'(?:^listening |"url": ")(http://127\.0\.0\.1:\d+)', re.MULTILINE)
METRICS_URL_PATTERN = re.compile(r'"metrics_url": "(http://127\.0\.0\.1:\d+)"')


def metrics_url(log: Path) -> str:
    """The metrics listener a service logged (never its public port)."""
    found = METRICS_URL_PATTERN.findall(log.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"no metrics_url in {log}")
    return str(found[-1])
ROOT = Path(__file__).resolve().parent.parent


# ---- servers in their own processes ------------------------------------------------


@contextmanager
def server_process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """Start a server process, wait for the URL it logs and for it to answer; SIGTERM it after."""
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, *args], stdout=sink, stderr=sink, cwd=ROOT, env=dict(os.environ, **(env or {}))
        )
        try:
            url = _wait_for_url(proc, log)
            yield url, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_url(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        found = URL_PATTERN.findall(log.read_text(errors="replace"))
        if found:
            try:
                with urllib.request.urlopen(found[-1] + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return str(found[-1])
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"no URL logged in {timeout}s: {log.read_text(errors='replace')[-2000:]}")


def serve_baseline(kind: str) -> None:
    """`python -m bench.bench_ingest serve KIND`: a baseline server on 127.0.0.1:0 (no access log)."""
    import asyncio

    from aiohttp import web

    from protocol.events import EVENTS_ADAPTER

    salt = secrets.token_bytes(32)

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, text='{"accepted":1}', content_type="application/json")

    async def validate(request: web.Request) -> web.Response:
        body = await request.read()
        events = EVENTS_ADAPTER.validate_json(body if body[:1] == b"[" else b"[" + body + b"]")
        for event in events:
            hmac.new(salt, event.session_id.encode(), hashlib.sha256).digest()
        return web.Response(status=202, text=f'{{"accepted":{len(events)}}}', content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def run() -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/events", bare if kind == "bare" else validate)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"listening http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())


def node_env(data_dir: Path) -> dict[str, str]:
    return {
        "LIBERATION_NODE_DATA_DIR": str(data_dir),
        "LIBERATION_NODE_HOST": "127.0.0.1",
        "LIBERATION_NODE_PORT": "0", "LIBERATION_NODE_METRICS_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0",
    }


# ---- measurements -------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live child processes (none today), all threads."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle, summed over cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measured:
    """A load run plus where the CPU went meanwhile."""

    load: LoadResult
    server_cpu: float  # seconds of CPU the server process used
    other_cpu: float  # seconds used by everything that is neither server nor load generator

    def cpu_us_per_item(self, per_request: int) -> float:
        items = self.load.requests * per_request
        return self.server_cpu / items * 1e6 if items else 0.0

    def other_share(self) -> float:
        """Share of the machine's cores taken by other processes during the run."""
        return self.other_cpu / (self.load.seconds * (os.cpu_count() or 1))


def measure(url: str, pid: int, bodies: Path, *, connections: int, seconds: float = SECONDS, rate: float = 0.0) -> Measured:
    server0, busy0, children0 = _cpu_seconds(pid), _busy_seconds(), os.times()
    load = run_load(url, bodies, connections=connections, seconds=seconds, rate=rate)
    server1, busy1, children1 = _cpu_seconds(pid), _busy_seconds(), os.times()
    generator = (children1.children_user + children1.children_system) - (children0.children_user + children0.children_system)
    mine = (children1.user + children1.system) - (children0.user + children0.system)
    server = server1 - server0
    return Measured(load, server, max(0.0, (busy1 - busy0) - server - generator - mine))


def wait_for_quiet(seconds: float = 20.0, idle: float = 0.9) -> float:
    """Wait (at most `seconds`) until other processes leave the machine mostly idle; the idle share seen."""
    deadline = time.monotonic() + seconds
    while True:
        busy0, started = _busy_seconds(), time.monotonic()
        time.sleep(1.0)
        share = 1 - (_busy_seconds() - busy0) / ((time.monotonic() - started) * (os.cpu_count() or 1))
        if share >= idle or time.monotonic() > deadline:
            return share


def best(runs: list[Measured]) -> Measured:
    """The fastest run: other processes share this machine and only ever slow a run down."""
    return max(runs, key=lambda m: m.load.rps)


def calmest(runs: list[Measured]) -> Measured:
    """The paced run with the lowest p99: outside load only ever makes a tail longer."""
    return min(runs, key=lambda m: m.load.p99_ms)


def duckdb_baseline(tmp: Path) -> tuple[float, float]:
    """Rows/s of (raw Arrow insert + commit) and of the store's stage-and-drain, on the same filtered rows."""
    import duckdb
    import pyarrow as pa

    from node.privacy import PrivacyFilter
    from node.schema import MIGRATIONS, attribute_column
    from node.store import Store
    from node.writer import DRAIN_ROWS
    from protocol.catalog import load_catalog
    from protocol.events import EVENTS_ADAPTER

    catalog = load_catalog(None)
    now = datetime.now(UTC)
    salt = secrets.token_bytes(32)
    raw = make_events(60_000, tag="duckdb")
    events = [e for i in range(0, len(raw), 1000) for e in EVENTS_ADAPTER.validate_python(raw[i : i + 1000])]
    privacy = PrivacyFilter(catalog, clock_skew=timedelta(minutes=10))
    rows = [privacy.apply(e, now=now, salt_for=lambda _w: salt).event for e in events]
    filtered = [r for r in rows if r is not None]
    chunks = [filtered[i : i + DUCKDB_ROWS_PER_COMMIT] for i in range(0, len(filtered), DUCKDB_ROWS_PER_COMMIT)]

    attrs = tuple(catalog.attributes)
    tables = []
    for n, chunk in enumerate(chunks):
        first = n * DUCKDB_ROWS_PER_COMMIT
        columns = {
            "seq": pa.array(range(first, first + len(chunk)), pa.int64()),
            "window_start": pa.array([int(e.window.timestamp()) for e in chunk], pa.int64()),
            "hour": pa.array([int(e.hour.timestamp()) for e in chunk], pa.int64()),
            "session": pa.array([e.session for e in chunk], pa.int64()),
            "app": pa.array([e.app for e in chunk], pa.string()),
            "action": pa.array([e.action for e in chunk], pa.string()),
            "country": pa.array([e.country for e in chunk], pa.string()),
        }
        for name in attrs:
            columns["a_" + name.replace("-", "_")] = pa.array([e.attributes.get(name) for e in chunk], pa.string())
        tables.append(pa.table(columns))

    con = duckdb.connect(str(tmp / "raw.duckdb"))
    for migration in MIGRATIONS:
        migration(con)
    for name in attrs:
        con.execute(f"ALTER TABLE events ADD COLUMN {attribute_column(name)} VARCHAR")
    column_list = ", ".join(tables[0].column_names)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < DUCKDB_SECONDS:
        for table in tables:
            con.register("incoming", table)
            con.execute("BEGIN")
            con.execute(f"INSERT INTO events ({column_list}) SELECT * FROM incoming")
            con.execute("COMMIT")
            con.unregister("incoming")
            done += table.num_rows
    raw_rate = done / (time.perf_counter() - started)
    con.close()

    # The writer's path: each commit to the active stage, a drain every DRAIN_ROWS rows
    # (here inline, in the node off the ack path), the last drain timed too.
    store = Store(tmp / "store.duckdb", catalog)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < DUCKDB_SECONDS:
        for chunk in chunks:
            store.stage_rows([store.layout.table([store.layout.block(chunk)])])
            done += len(chunk)
            if store.staged_rows >= DRAIN_ROWS:
                store.drain()
    store.drain()
    store_rate = done / (time.perf_counter() - started)
    store.close()
    return raw_rate, store_rate


def stored_rows(data_dir: Path) -> int:
    import duckdb

    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM events").fetchall()[0][0])
    finally:
        con.close()


# ---- report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def _fmt_run(m: Measured, per_request: int = 1) -> str:
    r = m.load
    return (f"{r.rps * per_request:,.0f}/s (c={r.connections}, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
            f"server {m.cpu_us_per_item(per_request):.1f} µs CPU each, others {m.other_share():.0%})")


def print_table(rows: list[Row]) -> None:
    headers = ("figure", "value", "baseline", "ratio", "target", "result")
    cells = [headers] + [(r.figure, r.value, r.baseline, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    for n, line in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main() -> None:
    generator = "wrk" if wrk_path() else "python"
    print(f"load generator: {generator}" + ("" if generator == "wrk" else " (wrk not installed: `apt-get install wrk`)"))
    print(f"machine idle before the run: {wait_for_quiet():.0%} (load average {Path('/proc/loadavg').read_text().split()[0]})")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        tag = secrets.token_hex(3)
        batches = write_bodies(batch_bodies(BATCHES, BATCH, tag=tag + "b"), tmp, "batches")
        singles = write_bodies(single_bodies(SINGLES, tag=tag + "s"), tmp, "singles")
        # Bodies carry the time they were built at; the node refuses events > 10 min off.
        print(f"bodies: {BATCHES} x {BATCH} events, {SINGLES:,} single events, distinct session ids")

        raw_rate, store_rate = duckdb_baseline(tmp)
        print(f"duckdb: raw Arrow insert {raw_rate:,.0f} rows/s, Store stage+drain {store_rate:,.0f} rows/s "
              f"({DUCKDB_ROWS_PER_COMMIT:,} rows per commit, in this process)")

        data_dir = tmp / "node"
        runs: dict[str, list[Measured]] = {k: [] for k in ("bare", "validate", "validate1", "node", "node1", "half", "half1")}
        with (
            server_process(["-m", "bench.bench_ingest", "serve", "bare"], tmp / "bare.log") as bare,
            server_process(["-m", "bench.bench_ingest", "serve", "validate"], tmp / "validate.log") as validate,
            server_process(["-m", "liberation", "node", "serve"], tmp / "node.log", node_env(data_dir)) as node,
        ):
            print(f"servers: bare {bare[0]}, validate {validate[0]}, node {node[0]} (pid {node[1]})")
            for url, _ in (bare, validate, node):
                run_load(url, singles, connections=8, seconds=WARMUP_SECONDS)
                run_load(url, batches, connections=8, seconds=WARMUP_SECONDS)
            # Rounds interleave baseline and node runs, so a burst of outside load
            # does not land on one side only; each figure is the best of its runs.
            for round_no in range(ROUNDS):
                for c_bare, c_node in itertools.zip_longest(BARE_CONNECTIONS, SINGLE_CONNECTIONS):
                    if c_bare is not None:
                        runs["bare"].append(measure(*bare, singles, connections=c_bare))
                    if c_node is not None:
                        runs["node1"].append(measure(*node, singles, connections=c_node))
                for c in BATCH_CONNECTIONS:
                    runs["validate"].append(measure(*validate, batches, connections=c))
                    runs["node"].append(measure(*node, batches, connections=c))
                runs["validate1"].append(measure(*validate, singles, connections=BARE_CONNECTIONS[0]))
                print(f"round {round_no + 1}: node batched "
                      + "; ".join(_fmt_run(m, BATCH) for m in runs["node"][-len(BATCH_CONNECTIONS):]))
                print(f"round {round_no + 1}: node single "
                      + "; ".join(_fmt_run(m) for m in runs["node1"][-len(SINGLE_CONNECTIONS):]))
            node_batch, node_single = best(runs["node"]), best(runs["node1"])
            # Half the best rate, once per round, interleaved; like every other figure, the
            # best run counts (outside load only ever makes a run worse), and all are printed.
            for round_no in range(ROUNDS):
                runs["half"].append(measure(*node, batches, connections=PACED_CONNECTIONS, rate=node_batch.load.rps / 2))
                runs["half1"].append(measure(*node, singles, connections=PACED_SINGLE_CONNECTIONS, rate=node_single.load.rps / 2))
                print(f"half max {round_no + 1}: node batched {_fmt_run(runs['half'][-1], BATCH)}; "
                      f"node single {_fmt_run(runs['half1'][-1])}")
            half_batch, half_single = calmest(runs["half"]), calmest(runs["half1"])
            measured = [*runs["node"], *runs["node1"], *runs["half"], *runs["half1"]]
            errors = sum(m.load.errors for m in measured)
            acked = sum(m.load.requests - m.load.errors for m in (*runs["node"], *runs["half"])) * BATCH + sum(
                m.load.requests - m.load.errors for m in (*runs["node1"], *runs["half1"])
            )
        stored = stored_rows(data_dir)
        # Warm-up runs and answers wrk cut off at the end are stored but not counted as acked.
        print(f"node: {acked:,} events acked in measured runs, {stored:,} rows stored, {errors} errors"
              + ("" if stored >= acked and errors == 0 else "  <-- CHECK"))

    bare_single, val_batch, val_single = best(runs["bare"]), best(runs["validate"]), best(runs["validate1"])
    batch_rate = node_batch.load.rps * BATCH
    val_rate = val_batch.load.rps * BATCH
    batch_ratio = batch_rate / val_rate
    single_ratio = node_single.load.rps / bare_single.load.rps
    cpu_ratio = val_batch.cpu_us_per_item(BATCH) / node_batch.cpu_us_per_item(BATCH)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    def half(m: Measured, per_request: int) -> str:
        unit = "ev/s" if per_request > 1 else "req/s"
        return f"{m.load.p99_ms:.1f} ms (p50 {m.load.p50_ms:.1f}, {m.load.rps * per_request:,.0f} {unit} paced)"

    rows = [
        Row(
            "node batched events/s",
            f"{batch_rate:,.0f}",
            f"{val_rate:,.0f} validate+HMAC",
            f"{batch_ratio:.0%}",
            ">= 75%",
            verdict(batch_ratio >= BATCH_RATIO_TARGET),
        ),
        Row(
            "node batched p50 / p99",
            f"{node_batch.load.p50_ms:.1f} / {node_batch.load.p99_ms:.1f} ms (c={node_batch.load.connections})",
            f"{val_batch.load.p50_ms:.1f} / {val_batch.load.p99_ms:.1f} ms (c={val_batch.load.connections})",
        ),
        Row(
            "server CPU per batched event",
            f"{node_batch.cpu_us_per_item(BATCH):.1f} µs",
            f"{val_batch.cpu_us_per_item(BATCH):.1f} µs",
            f"{cpu_ratio:.0%}",
            "(diagnostic)",
        ),
        Row(
            "node single-event req/s",
            f"{node_single.load.rps:,.0f}",
            f"{bare_single.load.rps:,.0f} bare",
            f"{single_ratio:.0%}",
            ">= 60%",
            verdict(single_ratio >= SINGLE_RATIO_TARGET),
        ),
        Row(
            "node single p50 / p99",
            f"{node_single.load.p50_ms:.1f} / {node_single.load.p99_ms:.1f} ms (c={node_single.load.connections})",
            f"{bare_single.load.p50_ms:.1f} / {bare_single.load.p99_ms:.1f} ms (c={bare_single.load.connections})",
        ),
        Row(
            "server CPU per single request",
            f"{node_single.cpu_us_per_item(1):.1f} µs",
            f"{bare_single.cpu_us_per_item(1):.1f} µs",
            f"{bare_single.cpu_us_per_item(1) / node_single.cpu_us_per_item(1):.0%}",
            "(diagnostic)",
        ),
        Row(
            "batched p99 at half max",
            half(half_batch, BATCH),
            "",
            "",
            "< 50 ms",
            verdict(half_batch.load.p99_ms < HALF_RATE_P99_MS),
        ),
        Row(
            "single p99 at half max", half(half_single, 1), "", "", "< 50 ms", verdict(half_single.load.p99_ms < HALF_RATE_P99_MS)
        ),
        Row("validate+HMAC handler, single req/s", f"{val_single.load.rps:,.0f}"),
        Row("DuckDB raw Arrow insert rows/s", f"{raw_rate:,.0f}", "", f"node {batch_rate / raw_rate:.0%}"),
        Row("Store stage+drain rows/s", f"{store_rate:,.0f}", "", f"node {batch_rate / store_rate:.0%}"),
    ]
    others = max(m.other_share() for ms in runs.values() for m in ms)
    print(f"\nload generator: {generator}; servers in their own processes; {SECONDS:.0f} s per run, "
          f"best of {ROUNDS} rounds; other processes took up to {others:.0%} of the machine during a run")
    print_table(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_baseline(sys.argv[2])
    else:
        main()
