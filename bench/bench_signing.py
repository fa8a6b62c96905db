"""Snapshot signing and verification against bare Ed25519 on the same bytes: what the wire layer costs."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from protocol.envelope import SIGNING_PREFIX, sign_snapshot, verify_envelope
from protocol.keys import SigningKey
from protocol.snapshot import FORMAT, MetricCells, Snapshot

SECONDS_PER_CASE = 2.0


def typical_snapshot(key: SigningKey, *, metrics: int = 12, cells: int = 4000, seed: int = 7) -> Snapshot:
    """A node's day: `metrics` metrics sharing about `cells` published cells, mostly small counts."""
    rng = random.Random(seed)
    scale = 20.0
    a = math.exp(-1 / scale)
    variance = 2 * a / (1 - a) ** 2
    out: dict[str, MetricCells] = {}
    per_metric = cells // metrics
    for m in range(metrics):
        domain = per_metric * rng.choice((2, 4, 8, 30))
        idx = sorted(rng.sample(range(domain), per_metric))
        out[f"metric-{m:02d}"] = MetricCells(
            epsilon=1.0 / metrics,
            scale=scale,
            variance=variance,
            threshold=10,
            idx=idx,
            val=[10 + int(rng.expovariate(1 / 60)) for _ in idx],
            other_idx=[0],
            other_val=[rng.randrange(-40, 400)],
        )
    return Snapshot(
        format=FORMAT,
        node=key.public.key_id,
        catalog="c" * 64,
        window_start=1_737_590_400,
        window_end=1_737_676_800,
        seq=42,
        created=1_737_680_000,
        nodes=1,
        metrics=out,
    )


def _rate(op: Callable[[], object], seconds: float = SECONDS_PER_CASE) -> float:
    """Operations per second of `op`, run in batches for about `seconds`."""
    op()
    batch, done, started = 1, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(batch):
            op()
        done += batch
        batch = min(batch * 2, 512)
    return done / elapsed


def main() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    snapshot = typical_snapshot(key)
    body = snapshot.to_bytes()
    message = SIGNING_PREFIX + body
    signature = key.sign(message)
    envelope = sign_snapshot(snapshot, key)
    public = key.public
    cells = sum(len(c.idx) for c in snapshot.metrics.values())
    print(f"body: {len(body):,} bytes, {len(snapshot.metrics)} metrics, {cells:,} cells; envelope {len(envelope):,} bytes")

    rows = [
        ("sign", _rate(lambda: key.sign(message)), "sign_snapshot", _rate(lambda: sign_snapshot(snapshot, key))),
        (
            "verify",
            _rate(lambda: public.verify(signature, message)),
            "verify_envelope",
            _rate(lambda: verify_envelope(envelope)),
        ),
    ]
    print(f"{'operation':<18}{'ops/s':>10}{'µs/op':>10}   {'raw Ed25519':<13}{'ops/s':>10}{'µs/op':>10}{'ours/raw':>10}")
    for raw_name, raw_rate, ours_name, ours_rate in rows:
        print(
            f"{ours_name:<18}{ours_rate:>10,.0f}{1e6 / ours_rate:>10.1f}   "
            f"{raw_name:<13}{raw_rate:>10,.0f}{1e6 / raw_rate:>10.1f}{raw_rate / ours_rate:>9.1f}x"
        )


if __name__ == "__main__":
    main()
