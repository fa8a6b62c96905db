"""The push outbox: committed snapshots go to the hub with bounded exponential backoff.

A 2xx marks the entry sent. A hub 4xx (other than 408/429) is recorded and
not retried: the hub has said no, retrying would not change its mind. A 5xx,
408, 429, a redirect or a network error is retried after `min * 2^attempts`
seconds, capped, with full jitter. Redirects are never followed: a 3xx (from a
moved hub or a man in the middle) must not divert the envelope to another URL
and count as sent. An envelope that no longer verifies is never sent: it is
marked `corrupt` and raised as an alarm in logs and metrics. `fetch_copy` asks the
hub back for an envelope it holds (a published window whose copy the store lost).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from node.settings import PushSettings
from node.store import Store
from protocol.codec import MAX_ENVELOPE_SIZE, EnvelopeError
from protocol.envelope import verify_envelope

log = logging.getLogger("liberation.node.outbox")

RETRYABLE_4XX = frozenset({408, 425, 429})


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

    def entries(self) -> list[OutboxEntry]:
        rows = self.store.cursor().execute("SELECT * FROM outbox ORDER BY seq").fetchall()
        return [OutboxEntry(*r) for r in rows]

    def _due(self) -> list[tuple[int, int, bytes]]:
        rows = self.store.cursor().execute(
            """
            SELECT o.seq, o.window_start, s.envelope FROM outbox o JOIN snapshots s USING (seq)
            WHERE o.state = 'pending' AND o.next_attempt <= ? ORDER BY o.seq
            """,
            [self._now()],
        ).fetchall()
        return [(int(seq), int(w), bytes(env)) for seq, w, env in rows]

    def _update(self, seq: int, state: str, attempts: int, next_attempt: float, status: int | None, error: str | None) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_attempt = ?, last_status = ?, last_error = ? WHERE seq = ?",
                [state, attempts, next_attempt, status, error, seq],
            )

    def _attempts(self, seq: int) -> int:
        return int(self.store.cursor().execute("SELECT attempts FROM outbox WHERE seq = ?", [seq]).fetchall()[0][0])

    async def fetch_copy(self, session: aiohttp.ClientSession, key_id: str, window_start: int) -> bytes | None:
        """The hub's stored envelope of a key and window (GET /v1/snapshots/{key_id}/{window}), or None.

        For a published window whose copy the store lost: the caller checks it is
        the recorded one before it keeps it. Redirects are not followed, as for pushes.
        """
        if not self.settings.hub_url:
            return None
        url = f"{self.settings.hub_url.rstrip('/')}/v1/snapshots/{key_id}/{window_start}"
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
        """Send every due entry once; returns how many were accepted by the hub."""
        if not self.settings.hub_url:
            return 0
        url = self.settings.hub_url.rstrip("/") + "/v1/snapshots"
        sent = 0
        for seq, window, envelope in self._due():
            try:
                verify_envelope(envelope)
            except EnvelopeError as exc:
                log.error("stored snapshot no longer verifies; not pushed", extra={"seq": seq, "reason": exc.reason})
                self._update(seq, "corrupt", self._attempts(seq), 0, None, f"verification failed: {exc.reason}")
                if self._on_corrupt is not None:
                    self._on_corrupt(seq)
                continue
            attempts = self._attempts(seq) + 1
            status: int | None = None
            detail: str | None
            try:
                async with session.post(
                    url,
                    data=envelope,
                    headers={"Content-Type": "application/msgpack"},
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    if 300 <= status < 400:
                        detail = _redirect_reason(status, resp.headers.get("Location"))
                    else:
                        detail = (await resp.text(errors="replace"))[:200] if status >= 400 else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = type(exc).__name__
            if status is not None and 200 <= status < 300:
                self._update(seq, "sent", attempts, 0, status, None)
                sent += 1
                outcome = "sent"
            elif status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
                self._update(seq, "rejected", attempts, 0, status, detail)
                log.error("hub rejected snapshot", extra={"seq": seq, "window": window, "status": status})
                outcome = "rejected"
            else:
                delay = backoff(attempts - 1, self.settings.min_backoff_seconds, self.settings.max_backoff_seconds)
                self._update(seq, "pending", attempts, self._now() + delay, status, detail)
                extra: dict[str, object] = {"seq": seq, "status": status, "retry_in_s": round(delay, 1)}
                if status is not None and 300 <= status < 400:
                    extra["reason"] = "redirect not followed"
                log.warning("push failed; will retry", extra=extra)
                outcome = "retry"
            if self._on_result is not None:
                self._on_result(outcome)
        return sent
