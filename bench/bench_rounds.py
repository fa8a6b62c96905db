"""A federation round of 1,000 nodes and 2 share keepers through the real hub and keeper apps on loopback.

Figures, each next to a same-run baseline:
- a contribution's size (target <= 32 KiB) and the cost of building one (baseline: signing its body alone);
- hub intake of the 1,000 contributions over HTTP (baseline: verifying them in a loop, no HTTP, no store);
- the round from its deadline to published: both keepers check the set, answer, the hub combines
  (target <= 30 s);
- one keeper's answer for 1,000 contributions (target <= 10 s; baseline: verifying their signatures).
The hub's clock is moved past the round's deadline once every contribution is in.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from federation.app import create_app as create_hub
from federation.service import HUB
from federation.settings import HubSettings
from keeper.app import KEEPER
from keeper.app import create_app as create_keeper
from keeper.settings import KeeperSettings
from protocol.catalog import load_catalog
from protocol.keys import SigningKey
from protocol.rounds import CONTRIBUTION_PREFIX, build_contribution, verify_contribution

CATALOG = load_catalog()
DAY = 86_400
TARGET_ROUND_SECONDS = 30.0
TARGET_ANSWER_SECONDS = 10.0
TARGET_CONTRIBUTION_BYTES = 32 * 1024


class Clock:
    """Wall time plus an offset the bench moves forward (past a round's deadline)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def run(nodes: int, concurrency: int) -> None:
    clock = Clock()
    window = int(time.time()) // DAY * DAY - DAY
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hub_settings = HubSettings(data_dir=root / "hub", port=0, metrics_port=None,  # type: ignore[arg-type]
                                   rounds={"close_after_seconds": 0, "collect_seconds": 3600, "interval_seconds": 0.1})
        hub_runner, hub_url = await _serve(create_hub(hub_settings, now=clock))
        hub = hub_runner.app[HUB]
        keepers = []
        for k in range(2):
            settings = KeeperSettings(data_dir=root / f"keeper{k}", port=0, metrics_port=None,  # type: ignore[arg-type]
                                      hub_keys=(hub.key.public.b64,))
            runner, url = await _serve(create_keeper(settings, now=clock))
            keepers.append((runner, url, runner.app[KEEPER]))
        keys = [SigningKey.from_seed(hashlib.sha256(b"node%d" % i).digest()) for i in range(nodes)]

        def enroll() -> None:
            for i, key in enumerate(keys):
                hub.registry.enroll(f"n{i}", key.public)
                for _, _, keeper in keepers:
                    keeper.registry.enroll(f"n{i}", key.public)
            for k, (_, url, keeper) in enumerate(keepers):
                hub.keepers.enroll(f"keeper-{k}", keeper.identity.statement.identity, url, keeper.identity.statement)

        await asyncio.to_thread(enroll)
        statements = [keeper.identity.statement for _, _, keeper in keepers]
        rng = np.random.default_rng(1)
        xs = [rng.integers(0, 30, CATALOG.federation_size).tolist() for _ in keys]

        started = time.perf_counter()
        envelopes = [build_contribution(CATALOG, x, key=key, keepers=statements, window_start=window,
                                        window_end=window + DAY, created=window + DAY) for key, x in zip(keys, xs, strict=True)]
        build = (time.perf_counter() - started) / nodes
        body = verify_contribution(envelopes[0], max_size=1 << 20).body
        started = time.perf_counter()
        for key in keys[:200]:
            key.sign(CONTRIBUTION_PREFIX + body)
        sign = (time.perf_counter() - started) / 200
        size = max(len(e) for e in envelopes)
        print(f"contribution: {size:,} bytes ({CATALOG.federation_size} cells, 2 keepers; target <= "
              f"{TARGET_CONTRIBUTION_BYTES:,}: {'ok' if size <= TARGET_CONTRIBUTION_BYTES else 'MISSED'})")
        print(f"  built in {build * 1e3:.2f} ms (masks, 2 HPKE seals, signature)   "
              f"baseline: signing its body {sign * 1e3:.2f} ms")

        started = time.perf_counter()
        for envelope in envelopes:
            verify_contribution(envelope, max_size=1 << 20)
        verify_all = time.perf_counter() - started

        queue = list(envelopes)
        statuses: list[int] = []

        async def push(session: aiohttp.ClientSession) -> None:
            while queue:
                data = queue.pop()
                async with session.post(hub_url + "/v1/contributions", data=data,
                                        headers={"Content-Type": "application/msgpack"}) as resp:
                    statuses.append(resp.status)

        started = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(push(session) for _ in range(concurrency)))
        intake = time.perf_counter() - started
        assert statuses.count(202) == nodes, sorted(set(statuses))
        print(f"hub intake: {nodes:,} contributions in {intake:.1f} s ({nodes / intake:,.0f}/s, {concurrency} clients)   "
              f"baseline: verifying them in a loop {verify_all:.1f} s")

        clock.offset = 2 * 3600  # past the round's deadline
        started = time.perf_counter()
        while True:
            rounds = await asyncio.to_thread(hub.rounds.records.rounds)
            if rounds and rounds[0].state in ("published", "failed"):
                break
            await asyncio.sleep(0.05)
        closing = time.perf_counter() - started
        assert rounds[0].state == "published", rounds[0].note
        answer = max(keeper.metrics.answer_seconds._sum.get() for _, _, keeper in keepers)
        print(f"round: deadline to published in {closing:.1f} s (check, 2 answers, combine; target <= "
              f"{TARGET_ROUND_SECONDS:.0f} s: {'ok' if closing <= TARGET_ROUND_SECONDS else 'MISSED'})")
        print(f"  whole round, first contribution to published: {intake + closing:.1f} s")
        print(f"keeper answer for {nodes:,} contributions: {answer:.2f} s (target <= {TARGET_ANSWER_SECONDS:.0f} s: "
              f"{'ok' if answer <= TARGET_ANSWER_SECONDS else 'MISSED'})   baseline: verifying their signatures "
              f"{verify_all:.2f} s")
        for runner, _, _ in keepers:
            await runner.cleanup()
        await hub_runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench rounds")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv or [])
    asyncio.run(run(args.nodes, args.concurrency))


if __name__ == "__main__":
    main()
