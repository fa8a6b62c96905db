"""The push outbox: committed snapshots go to the hub with bounded exponential backoff.

A 2xx marks the entry sent. A hub 4xx (other than 408/429) is recorded and
not retried: the hub has said no, retrying would not change its mind; except
`unknown-key` (pushed before the hub's operator enrolled the node), which is
offered again every `enrollment_retry_seconds` until it is taken. A 5xx,
408, 429, a redirect or a network error is retried after `min * 2^attempts`
seconds, capped, with full jitter. Redirects are never followed: a 3xx (from a
moved hub or a man in the middle) must not divert the envelope to another URL
and count as sent. An envelope that no longer verifies is never sent: it is
marked `corrupt` and raised as an alarm in logs and metrics. `fetch_copy` asks the
hub back for an envelope it holds (a published window whose copy the store lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from pydantic import BaseModel

from node.settings import PushSettings
from node.store import Store
from protocol.codec import MAX_ENVELOPE_SIZE, EnvelopeError
from protocol.envelope import verify_envelope
from protocol.errors import PROBLEM_BASE

log = logging.getLogger("liberation.node.outbox")

RETRYABLE_4XX = frozenset({408, 425, 429})
RETRY_PROBLEMS = frozenset({"unknown-key"})
"""Hub refusals that may change without the node doing anything: the hub's operator enrolls the key later."""


class PushAttempt(BaseModel):
    """One snapshot offered to the hub: what came of it."""

    window_start: int
    outcome: str  # sent, retry, rejected
    status: int | None
    problem: str | None  # the hub's problem type, e.g. unknown-key
    detail: str | None
    retry_in_seconds: int | None = None

    def render(self) -> str:
        day = datetime.fromtimestamp(self.window_start, UTC).strftime("%Y-%m-%d %H:%M") + "Z"
        if self.outcome == "sent":
            return f"{day}: sent ({self.status})"
        why = f"{self.status} {self.problem}" if self.problem else (str(self.status) if self.status else "no answer")
        said = f": {self.detail}" if self.detail else ""
        if self.outcome == "retry":
            return f"{day}: not taken ({why}{said}); offered again in {self.retry_in_seconds} s"
        return f"{day}: refused ({why}{said}); `liberation node push --retry` offers it again"


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, min * 2^attempts)]."""
    ceiling = min(maximum, minimum * 2 ** min(attempts, 32))
    # Jitter only spreads retries in time; it is not privacy noise.
    return float(max(minimum / 2, ceiling * secrets.randbelow(1_000_001) / 1_000_000))


def _redirect_reason(status: int, location: str | None) -> str:
    """What an operator reads in the outbox for a 3xx: the push was not followed there, fix push.hub_url."""
    target = f" to {location[:120]}" if location else ""
    return f"hub answered {status} (redirect{target}); redirects are not followed: set push.hub_url to the hub's own URL"


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    window_start: int
    state: str
    attempts: int
    next_attempt: float
    last_status: int | None
    last_error: str | None


class Outbox:
    """Reads and updates the outbox table; sends with `push_due`."""

    def __init__(
        self,
        store: Store,
        settings: PushSettings,
        *,
        on_corrupt: Callable[[int], None] | None = None,
        on_result: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self._on_corrupt = on_corrupt
        self._on_result = on_result
        self._now = now
        self._pushing = asyncio.Lock()

    def entries(self) -> list[OutboxEntry]:
        rows = self.store.cursor().execute("SELECT * FROM outbox ORDER BY seq").fetchall()
        return [OutboxEntry(*r) for r in rows]

    def _due(self) -> list[tuple[int, int, bytes]]:
        return self._pending(now=self._now())

    def _pending(self, *, now: float) -> list[tuple[int, int, bytes]]:
        rows = self.store.cursor().execute(
            """
            SELECT o.seq, o.window_start, s.envelope FROM outbox o JOIN snapshots s USING (seq)
            WHERE o.state = 'pending' AND o.next_attempt <= ? ORDER BY o.seq
            """,
            [now],
        ).fetchall()
        return [(int(seq), int(w), bytes(env)) for seq, w, env in rows]

    def _update(self, seq: int, state: str, attempts: int, next_attempt: float, status: int | None, error: str | None) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_attempt = ?, last_status = ?, last_error = ? WHERE seq = ?",
                [state, attempts, next_attempt, status, error, seq],
            )
            if state == "sent":
                tx.execute(
                    "INSERT INTO node_state VALUES ('last_push_success', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    [int(self._now())],
                )

    def last_success(self) -> int:
        """When the hub last took a snapshot of this node (unix seconds; 0 = never)."""
        rows = self.store.cursor().execute("SELECT value FROM node_state WHERE name = 'last_push_success'").fetchall()
        return int(rows[0][0]) if rows else 0

    def _attempts(self, seq: int) -> int:
        return int(self.store.cursor().execute("SELECT attempts FROM outbox WHERE seq = ?", [seq]).fetchall()[0][0])

    async def fetch_copy(self, session: aiohttp.ClientSession, key_id: str, window_start: int) -> bytes | None:
        """The hub's stored envelope of a key and window (GET /v1/snapshots/{key_id}/{window}), or None.

        For a published window whose copy the store lost: the caller checks it is
        the recorded one before it keeps it. Redirects are not followed, as for pushes.
        """
        if not self.settings.hub_url:
            return None
        url = f"{self.settings.hub_url}/v1/snapshots/{key_id}/{window_start}"
        try:
            async with session.get(
                url, timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds), allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    log.warning("no copy of a published window at the hub",
                                extra={"window": window_start, "status": resp.status})
                    return None
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65_536):
                    body += chunk
                    if len(body) > MAX_ENVELOPE_SIZE:
                        log.warning("the hub's copy of a published window is too large",
                                    extra={"window": window_start})
                        return None
                return bytes(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not ask the hub for a published window's copy",
                        extra={"window": window_start, "reason": type(exc).__name__})
            return None

    async def push_due(self, session: aiohttp.ClientSession) -> int:
        """Send every entry whose time has come, once; how many the hub took."""
        if not self.settings.hub_url:
            return 0
        attempts = await self._push(session, self._due)
        return sum(1 for attempt in attempts if attempt.outcome == "sent")

    async def push_now(self, session: aiohttp.ClientSession, *, retry_rejected: bool = False) -> list[PushAttempt]:
        """Send every pending entry now, backoff or not, and with `retry_rejected` those the hub refused too.

        `liberation node push [--retry]`: after the hub enrolled the node, or fixed what it refused.
        """
        if retry_rejected:
            with self.store.transaction() as tx:
                tx.execute("UPDATE outbox SET state = 'pending', next_attempt = 0 WHERE state = 'rejected'")
        return await self._push(session, lambda: self._pending(now=math.inf))

    async def _push(self, session: aiohttp.ClientSession, due: Callable[[], list[tuple[int, int, bytes]]]) -> list[PushAttempt]:
        async with self._pushing:  # the push loop and an operator's `node push` never send one entry twice at once
            attempts = []
            for seq, window, envelope in await asyncio.to_thread(due):
                attempt = await self._send(session, seq, window, envelope)
                if attempt is not None:
                    attempts.append(attempt)
            return attempts

    async def _send(self, session: aiohttp.ClientSession, seq: int, window: int, envelope: bytes) -> PushAttempt | None:
        assert self.settings.hub_url is not None
        try:
            verify_envelope(envelope)
        except EnvelopeError as exc:
            log.error("stored snapshot no longer verifies; not pushed", extra={"seq": seq, "reason": exc.reason})
            self._update(seq, "corrupt", self._attempts(seq), 0, None, f"verification failed: {exc.reason}")
            if self._on_corrupt is not None:
                self._on_corrupt(seq)
            return None
        attempts = self._attempts(seq) + 1
        status: int | None = None
        problem: str | None = None
        detail: str | None
        try:
            async with session.post(
                self.settings.hub_url + "/v1/snapshots",
                data=envelope,
                headers={"Content-Type": "application/msgpack"},
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if 300 <= status < 400:
                    detail = _redirect_reason(status, resp.headers.get("Location"))
                elif status >= 400:
                    problem, detail = _problem_of(await resp.read())
                else:
                    detail = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = type(exc).__name__
        extra: dict[str, object] = {"seq": seq, "window": window, "status": status}
        if problem is not None:
            extra["problem"] = problem
        retry_in: float | None = None
        if status is not None and 200 <= status < 300:
            self._update(seq, "sent", attempts, 0, status, None)
            outcome = "sent"
        elif status is not None and problem in RETRY_PROBLEMS:
            # Pushed before the hub's operator enrolled the key: offered again, rarely, until they do.
            retry_in = backoff(0, self.settings.enrollment_retry_seconds, self.settings.enrollment_retry_seconds)
            self._update(seq, "pending", attempts, self._now() + retry_in, status, detail)
            log.warning("the hub does not know this node's key (not enrolled yet?); will offer the snapshot again",
                        extra={**extra, "retry_in_s": round(retry_in, 1)})
            outcome = "retry"
        elif status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
            self._update(seq, "rejected", attempts, 0, status, detail)
            log.error("hub rejected snapshot", extra=extra)
            outcome = "rejected"
        else:
            retry_in = backoff(attempts - 1, self.settings.min_backoff_seconds, self.settings.max_backoff_seconds)
            self._update(seq, "pending", attempts, self._now() + retry_in, status, detail)
            if status is not None and 300 <= status < 400:
                extra["reason"] = "redirect not followed"
            elif status is None:
                extra["reason"] = detail
            log.warning("push failed; will retry", extra={**extra, "retry_in_s": round(retry_in, 1)})
            outcome = "retry"
        if self._on_result is not None:
            self._on_result(outcome)
        return PushAttempt(window_start=window, outcome=outcome, status=status, problem=problem, detail=detail,
                           retry_in_seconds=None if retry_in is None else round(retry_in))


def _problem_of(body: bytes) -> tuple[str | None, str]:
    """The problem type (its slug) and detail of a hub's problem+json answer; else no type and the text."""
    text = body[:2048].decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return None, text[:200]
    if not isinstance(data, dict):
        return None, text[:200]
    kind = data.get("type")
    slug = kind.removeprefix(PROBLEM_BASE) if isinstance(kind, str) and kind.startswith(PROBLEM_BASE) else None
    detail = data.get("detail")
    return slug, (detail if isinstance(detail, str) else text)[:200]
