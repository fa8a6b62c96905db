"""Latency over minutes of sustained load with new sessions.

`python -m bench.probe_sustained [RATE] [SECONDS] [RUN] [EVENTS_PER_SESSION]`.

Not part of `make bench` (a diagnostic, about SECONDS long). The ingest
bench's paced runs last seconds and cycle 60,000 session ids; this one
keeps a node at RATE events a second (100-event batches, 64 connections,
wrk on 127.0.0.1) for SECONDS, in back-to-back runs of RUN seconds, with
session ids renewed so each session sends EVENTS_PER_SESSION events: every
export pass (60 s) then folds a minute of new sessions into the
per-session state, as it would in real use. Each run prints its p50/p99
and the fold passes that ended in it (from `/metrics`). Defaults: 93,000
events/s (half the batched maximum here), 190 s, 5 s runs, 5 events.
Needs wrk.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.bench_ingest import metrics_url, node_env, server_process
from bench.load import Renewal, batch_bodies, run_wrk, write_bodies, wrk_path

_FOLD = re.compile(r"^liberation_node_session_fold_seconds_(sum|count) (\S+)$")
BATCH = 100
TAG = "sustain"


def _folds(url: str) -> tuple[float, float]:
    """(passes, seconds) of the node's session folds so far."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    found = {m[1]: float(m[2]) for line in text.splitlines() if (m := _FOLD.match(line))}
    return found.get("count", 0.0), found.get("sum", 0.0)


def main(rate: float = 93_000, seconds: float = 190, run: float = 5, per_session: int = 5) -> None:
    if wrk_path() is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    seconds = min(seconds, 900.0)  # bounded, whatever is asked
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bodies = write_bodies(batch_bodies(600, BATCH, tag=TAG), tmp, "bodies")
        with server_process(["-m", "liberation", "node", "serve"], tmp / "node.log", node_env(tmp / "data")) as (url, _):
            metrics = metrics_url(tmp / "node.log")
            print(f"{rate:,.0f} events/s for {seconds:.0f} s in {run:.0f} s runs, {per_session} events a session")
            worst, worst_fold, started, index = 0.0, 0.0, time.monotonic(), 0
            while time.monotonic() - started < seconds:
                at = time.monotonic() - started
                passes, spent = _folds(metrics)
                load = run_wrk(url, bodies, connections=64, seconds=run, rate=rate / BATCH,
                               renew=Renewal(per_session, TAG, base=index * 1_000_000))
                passes_after, spent_after = _folds(metrics)
                folded = passes_after > passes
                worst = max(worst, load.p99_ms)
                if folded:
                    worst_fold = max(worst_fold, load.p99_ms)
                fold = f"  fold pass ended: {spent_after - spent:.1f} s" if folded else ""
                print(f"{at:6.1f} s  {load.rps * BATCH:9,.0f} events/s  p50 {load.p50_ms:6.1f}  p99 {load.p99_ms:6.1f} ms"
                      f"  errors {load.errors}{fold}", flush=True)
                index += 1
    print(f"worst p99 of a run: {worst:.1f} ms; of a run in which a fold pass ended: {worst_fold:.1f} ms")


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:4]), *(int(a) for a in sys.argv[4:5]))
