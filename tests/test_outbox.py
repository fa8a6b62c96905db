"""The push outbox against a real HTTP hub stand-in on loopback: success, 4xx, 5xx, backoff, tamper alarm."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from node.outbox import Outbox, backoff
from node.settings import PushSettings
from node.store import Store
from protocol.envelope import verify_envelope
from tests.conftest import HubStandIn
from tests.factories import NOW, W_DAY, ev, store_with
from tests.test_export import publisher

W = W_DAY


def exported_store(tmp: Path, windows: int = 1) -> Store:
    store = store_with(tmp, [ev(f"s{i}", "runway-calculator", "start", i) for i in range(30)])
    pub = publisher(store, tmp)
    for i in range(windows):
        pub.export(W + i * 86_400)
    return store


class Clock:
    def __init__(self) -> None:
        self.t = NOW.timestamp()

    def __call__(self) -> float:
        return self.t


async def test_push_success_marks_sent(tmp_path: Path, hub: tuple[HubStandIn, str]) -> None:
    stand_in, url = hub
    store = exported_store(tmp_path, windows=2)
    outbox = Outbox(store, PushSettings(hub_url=url))
    async with aiohttp.ClientSession() as session:
        assert await outbox.push_due(session) == 2
        assert await outbox.push_due(session) == 0  # nothing twice
    assert [e.state for e in outbox.entries()] == ["sent", "sent"]
    assert [verify_envelope(b).snapshot.seq for b in stand_in.received] == [1, 2]


async def test_hub_4xx_is_recorded_and_not_retried(tmp_path: Path, hub: tuple[HubStandIn, str]) -> None:
    stand_in, url = hub
    stand_in.answers = [403]
    store = exported_store(tmp_path)
    clock = Clock()
    outbox = Outbox(store, PushSettings(hub_url=url), now=clock)
    async with aiohttp.ClientSession() as session:
        await outbox.push_due(session)
        clock.t += 10_000
        await outbox.push_due(session)
    entry = outbox.entries()[0]
    assert entry.state == "rejected" and entry.last_status == 403 and entry.attempts == 1
    assert len(stand_in.received) == 1


async def test_5xx_and_network_errors_back_off_then_succeed(tmp_path: Path, hub: tuple[HubStandIn, str]) -> None:
    stand_in, url = hub
    stand_in.answers = [503, 500]
    store = exported_store(tmp_path)
    clock = Clock()
    outbox = Outbox(store, PushSettings(hub_url=url, min_backoff_seconds=2, max_backoff_seconds=60), now=clock)
    async with aiohttp.ClientSession() as session:
        await outbox.push_due(session)
        first = outbox.entries()[0]
        assert first.state == "pending" and first.attempts == 1 and first.last_status == 503
        assert clock.t < first.next_attempt <= clock.t + 2
        await outbox.push_due(session)  # not due yet: no request
        assert len(stand_in.received) == 1
        clock.t = first.next_attempt
        await outbox.push_due(session)
        second = outbox.entries()[0]
        assert second.attempts == 2 and second.next_attempt <= clock.t + 4
        clock.t = second.next_attempt
        assert await outbox.push_due(session) == 1
    assert outbox.entries()[0].state == "sent"
    # A closed port: a network error is retried too.
    dead = Outbox(store, PushSettings(hub_url="http://127.0.0.1:9"), now=clock)
    with store.transaction() as tx:
        tx.execute("UPDATE outbox SET state = 'pending'")
    async with aiohttp.ClientSession() as session:
        await dead.push_due(session)
    entry = dead.entries()[0]
    assert entry.state == "pending" and entry.last_error and entry.last_status is None


def test_backoff_is_bounded_with_jitter() -> None:
    values = [backoff(n, 2, 600) for n in range(40) for _ in range(20)]
    assert all(1 <= v <= 600 for v in values)
    assert len({round(v, 3) for v in values}) > 100  # jittered, not lock-step
    assert max(backoff(3, 2, 600) for _ in range(200)) <= 16


async def test_a_tampered_snapshot_is_never_pushed(tmp_path: Path, hub: tuple[HubStandIn, str]) -> None:
    stand_in, url = hub
    store = exported_store(tmp_path)
    with store.transaction() as tx:
        envelope = bytearray(tx.execute("SELECT envelope FROM snapshots").fetchall()[0][0])
        envelope[-5] ^= 0x40
        tx.execute("UPDATE snapshots SET envelope = ?", [bytes(envelope)])
    alarms: list[int] = []
    outbox = Outbox(store, PushSettings(hub_url=url), on_corrupt=alarms.append)
    async with aiohttp.ClientSession() as session:
        assert await outbox.push_due(session) == 0
    assert stand_in.received == []
    assert alarms == [1]
    assert outbox.entries()[0].state == "corrupt"


@asynccontextmanager
async def redirecting_hub(status: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A real server whose intake answers `status` to /elsewhere, which would accept anything (202)."""
    seen: list[str] = []

    async def intake(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path} {len(await request.read())}")
        return web.Response(status=status, headers={"Location": "/elsewhere?via=redirect"})

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path} {len(await request.read())}")
        return web.Response(status=202, text="{}")

    app = web.Application()
    app.router.add_post("/v1/snapshots", intake)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("status", [307, 308, 301, 302, 303])
async def test_a_redirect_is_not_followed_and_is_retried(tmp_path: Path, status: int) -> None:
    """Review L5: a 307 made the node re-POST the envelope to the Location, and count it as sent there."""
    store = exported_store(tmp_path)
    clock = Clock()
    results: list[str] = []
    settings = PushSettings(min_backoff_seconds=2, max_backoff_seconds=60)
    async with redirecting_hub(status) as (url, seen), aiohttp.ClientSession() as session:
        outbox = Outbox(store, settings.model_copy(update={"hub_url": url}), on_result=results.append, now=clock)
        assert await outbox.push_due(session) == 0
        entry = outbox.entries()[0]
        assert [line.split()[1] for line in seen] == ["/v1/snapshots"]  # nothing went to the Location
        assert entry.state == "pending" and entry.attempts == 1 and entry.last_status == status
        assert entry.last_error is not None and "redirects are not followed" in entry.last_error
        assert "/elsewhere" in entry.last_error and "push.hub_url" in entry.last_error
        assert clock.t < entry.next_attempt <= clock.t + 2 and results == ["retry"]
        # Retried with backoff like any failure, and still never followed.
        clock.t = entry.next_attempt
        assert await outbox.push_due(session) == 0
        assert [line.split()[1] for line in seen] == ["/v1/snapshots", "/v1/snapshots"]
        assert outbox.entries()[0].attempts == 2 and results == ["retry", "retry"]


async def test_unknown_key_is_offered_again_later_and_the_problem_type_logged(
    tmp_path: Path, hub: tuple[HubStandIn, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Pushed before the hub's operator enrolled the node: it used to be dropped for good."""
    stand_in, url = hub
    stand_in.answers = [(403, "unknown-key"), (403, "unknown-key")]
    store = exported_store(tmp_path)
    clock = Clock()
    outbox = Outbox(store, PushSettings(hub_url=url, enrollment_retry_seconds=900), now=clock)
    async with aiohttp.ClientSession() as session:
        with caplog.at_level("WARNING", logger="liberation.node.outbox"):
            assert await outbox.push_due(session) == 0
        entry = outbox.entries()[0]
        assert entry.state == "pending" and entry.last_status == 403
        assert entry.last_error == "the hub says unknown-key"
        assert clock.t + 450 <= entry.next_attempt <= clock.t + 900  # long, jittered
        assert [getattr(r, "problem", None) for r in caplog.records] == ["unknown-key"]
        clock.t += 300
        assert await outbox.push_due(session) == 0 and len(stand_in.received) == 1  # not before its time
        clock.t = entry.next_attempt
        assert await outbox.push_due(session) == 0 and len(stand_in.received) == 2  # still unknown
        attempts = await outbox.push_now(session)  # the operator, once the hub enrolled it: now, backoff or not
    assert [(a.outcome, a.status) for a in attempts] == [("sent", 202)]
    assert attempts[0].render().endswith(": sent (202)")
    assert outbox.entries()[0].state == "sent" and outbox.last_success() == int(clock.t)


async def test_a_refusal_is_final_until_push_retry(tmp_path: Path, hub: tuple[HubStandIn, str]) -> None:
    stand_in, url = hub
    stand_in.answers = [(403, "revoked-key")]
    store = exported_store(tmp_path)
    outbox = Outbox(store, PushSettings(hub_url=url))
    async with aiohttp.ClientSession() as session:
        assert await outbox.push_due(session) == 0
        assert outbox.entries()[0].state == "rejected"
        assert await outbox.push_now(session) == []  # a refused snapshot is not pending
        line = (await outbox.push_now(session, retry_rejected=True))[0].render()
    assert line.endswith(": sent (202)") and len(stand_in.received) == 2
    assert outbox.entries()[0].state == "sent"
