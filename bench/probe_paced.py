"""Where a node's CPU goes at a fixed load: `python -m bench.probe_paced batch|single RATE [SECONDS]`.

Not part of `make bench` (no target; a diagnostic). Starts the node as the
ingest bench does (one process, a fresh data dir), warms it up,
then paces RATE events a second over wrk (or the Python client) on 127.0.0.1
and prints the latency, the node's CPU, and
the commits the writer made (from `/metrics`). RATE 0 means unpaced (closed
loop); PROBE_CONNECTIONS sets the connections (64 for batches, 256 for
single events by default). The runs in docs/benchmarks.md's history
(`git log -p docs/benchmarks.md`) quote it for the half-maximum points.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.bench_ingest import measure, metrics_url, node_env, server_process
from bench.load import batch_bodies, single_bodies, write_bodies

_COMMIT = re.compile(r"^liberation_node_commit_(seconds|rows)_(sum|count) (\S+)$")


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commits(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {f"{m[1]}_{m[2]}": float(m[3]) for line in text.splitlines() if (m := _COMMIT.match(line))}


def main(mode: str, rate: float, seconds: float = 8.0) -> None:
    per = 100 if mode == "batch" else 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        raw = batch_bodies(600, 100, tag="probe") if per == 100 else single_bodies(60_000, tag="probe")
        bodies = write_bodies(raw, tmp, "bodies")
        connections = int(os.environ.get("PROBE_CONNECTIONS", 64 if per == 100 else 256))
        with server_process(["-m", "liberation", "node", "serve"], tmp / "node.log", node_env(tmp / "data")) as (url, pid):
            measure(url, pid, bodies, connections=connections, seconds=2)  # warm-up
            before, commits_before = _process_cpu(pid), _commits(metrics_url(tmp / "node.log"))
            measured = measure(url, pid, bodies, connections=connections, seconds=seconds, rate=rate / per)
            after, commits_after = _process_cpu(pid), _commits(metrics_url(tmp / "node.log"))
    elapsed = measured.load.seconds
    load = measured.load
    print(
        f"{mode} {f'paced at {rate:,.0f}/s' if rate else 'unpaced'} over {connections} connections: "
        f"{load.rps * per:,.0f}/s served, p50 {load.p50_ms:.1f} ms, "
        f"p99 {load.p99_ms:.1f} ms, server {measured.cpu_us_per_item(per):.1f} µs CPU per event"
    )
    print(f"cores: {(after - before) / elapsed:.2f}")
    n = commits_after.get("seconds_count", 0) - commits_before.get("seconds_count", 0)
    if n:
        rows = commits_after["rows_sum"] - commits_before["rows_sum"]
        took = commits_after["seconds_sum"] - commits_before["seconds_sum"]
        print(f"commits: {n / elapsed:,.0f}/s, {rows / n:,.0f} rows and {took / n * 1000:.1f} ms each")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *(float(a) for a in sys.argv[3:4]))
