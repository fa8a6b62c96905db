"""Each view's first render of a new range, in process: `python -m bench.probe_views [--baseline REF] [--renders N]`.

Not part of `make bench` (bench_hub measures the views over HTTP, in minutes; this is their
in-process part, in seconds). The range: the default catalog, 30 daily windows in which every
cell is present, each a sum of 1,000 nodes' snapshots (1,000 noise draws per cell, true counts
on both sides of the presence bounds). Every render is of a range not rendered before: the
windows' columns and their presence-inferred copies are kept, as `StoreRanges` keeps them; the
range's sum is made anew. Also timed: `/v1/cells` (every metric's tidy CSV).

With `--baseline REF` (e.g. main), git REF's code is measured too, in child processes that
alternate with this tree's, and every body (each view as JSON and CSV, the tidy CSV) is
compared byte for byte; the exit status is 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NODES = 1_000
WINDOWS = 30
DAY = 86_400
FIRST = 1_790_467_200  # 2026-09-27, a Sunday


def measure(renders: int, seed: int) -> dict[str, Any]:
    """Per body, the milliseconds of each render and the sha256 of its bytes (the code on sys.path)."""
    from protocol.catalog import Catalog, load_catalog
    from views.columns import Cells, Layout
    from views.ranges import VIEWS, RangeData, ViewService, WindowCells
    from views.tidy import tidy_csv

    catalog = load_catalog()
    layout = Layout.from_catalog(catalog)
    rng = np.random.default_rng(seed)
    sd = np.zeros(len(layout))
    for metric in catalog.metrics:
        first, count = layout.offset[(metric.name, "cell")]
        sd[first : first + count] = np.sqrt(NODES * catalog.variance(metric))
    cells = np.flatnonzero(layout.is_cell)
    windows = [FIRST + d * DAY for d in range(WINDOWS)]
    per_window = {}
    for w in windows:
        truth = np.where(rng.random(len(cells)) < 0.4, 0, sd[cells] * rng.lognormal(1.0, 1.5, len(cells)))
        value = np.rint(truth + rng.normal(0.0, sd[cells])).astype(np.int64)
        columns = Cells.from_positions(len(layout), cells, value, sd[cells] ** 2, np.full(len(cells), NODES))
        per_window[w] = WindowCells(layout, catalog, columns)
        per_window[w].thresholded()  # kept across ranges, as the hub keeps it

    class Source:
        def latest_window(self, catalog: Catalog) -> int | None:
            return windows[-1]

        def load(self, catalog: Catalog, start: int, end: int) -> RangeData:
            return RangeData(catalog, layout, start, end, {w: c for w, c in per_window.items() if start <= w < end}, NODES)

    version = [0]
    service = ViewService(Source(), {catalog.hash: catalog}, lambda: version[0])
    start, end = windows[0], windows[-1] + DAY
    times: dict[str, list[float]] = {name: [] for name in [*VIEWS, "cells"]}
    bodies: dict[str, bytes] = {}
    for _ in range(renders):
        for name in VIEWS:
            version[0] += 1  # a new data version: nothing of the last render is reused but the windows
            started = time.thread_time()
            bodies[name], _ = service.render(name, catalog, start, end, "json")
            times[name].append((time.thread_time() - started) * 1000)
        version[0] += 1
        started = time.thread_time()
        bodies["cells"], _ = service.render_range("cells", catalog, start, end, lambda d: tidy_csv(d, list(catalog.metrics)))
        times["cells"].append((time.thread_time() - started) * 1000)
    for name in VIEWS:
        bodies[f"{name}.csv"], _ = service.render(name, catalog, start, end, "csv")
    return {"times": times, "digests": {k: hashlib.sha256(v).hexdigest() for k, v in bodies.items()}}


def _run(root: Path, renders: int, seed: int) -> dict[str, Any]:
    """`measure` in a child process importing the code under `root`."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--renders", str(renders), "--seed", str(seed)],
        cwd=root, check=True, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _export(ref: str, into: Path) -> Path:
    """git REF's tree, written under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94] if len(values) > 1 else values[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe_views", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a git ref to measure alongside this tree (e.g. main)")
    parser.add_argument("--renders", type=int, default=20, help="renders of each view per child process")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per tree, alternating")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.renders, args.seed)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("this tree", ROOT)]
        if args.baseline:
            trees.insert(0, (args.baseline, _export(args.baseline, Path(tmp))))
        samples: dict[str, dict[str, list[float]]] = {label: {} for label, _ in trees}
        digests: dict[str, dict[str, str]] = {}
        for k in range(args.rounds):
            for label, root in trees if k % 2 == 0 else trees[::-1]:
                result = _run(root, args.renders, args.seed)
                for name, ms in result["times"].items():
                    samples[label].setdefault(name, []).extend(ms)
                digests[label] = result["digests"]
    labels = [label for label, _ in trees]
    print(f"first render of a new {WINDOWS}-window range, {NODES:,}-node sums, default catalog; ms over "
          f"{args.rounds} x {args.renders} renders per tree")
    print(f"{'view':<20}" + "".join(f"{label + ' p50':>16}{label + ' p95':>16}" for label in labels)
          + ("   change p50  change p95" if len(labels) == 2 else ""))
    for name in samples[labels[-1]]:
        row = [(statistics.median(samples[label][name]), _p95(samples[label][name])) for label in labels]
        line = f"{name:<20}" + "".join(f"{p50:>16.2f}{p95:>16.2f}" for p50, p95 in row)
        if len(row) == 2:
            line += f"   {row[1][0] / row[0][0] - 1:>+10.1%}  {row[1][1] / row[0][1] - 1:>+10.1%}"
        print(line)
    if len(labels) == 2:
        base, ours = digests[labels[0]], digests[labels[1]]
        differing = sorted(k for k in ours if base.get(k) != ours[k])
        print(f"bytes: {len(ours) - len(differing)} of {len(ours)} bodies identical to {labels[0]}'s"
              + (f"; DIFFERENT: {', '.join(differing)}" if differing else ""))
        return 1 if differing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
