"""Per-client token buckets, keyed by an HMAC of the client's address (IPv6: its /64) under a key kept in memory only.

The key is random per process and never written anywhere, so the bucket
table cannot be turned back into addresses, and nothing of it survives a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable

from node.geo import IPAddress

IPV6_PREFIX_BYTES = 8  # /64


def client_network(address: IPAddress) -> bytes:
    """The bytes that identify a client for rate limiting: an IPv4 address, or an IPv6 /64 prefix."""
    if address.version == 6:
        return address.packed[:IPV6_PREFIX_BYTES]
    return address.packed


class RateLimiter:
    """Token bucket: `rate` requests per second, bursts of `burst`; rate 0 turns it off."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._max_clients = max_clients

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def client_key(self, address: IPAddress) -> bytes:
        """The bucket key of a client: 16 bytes of HMAC-SHA256 of its network under the in-memory key.

        An IPv4 client is its address; an IPv6 client is its /64, the usual
        allocation of one household or host, which may use any of 2^64 addresses.
        """
        return hmac.new(self._key, client_network(address), hashlib.sha256).digest()[:16]

    def check(self, address: IPAddress | None) -> float:
        """Take one token; 0.0 if allowed, else seconds until the next token."""
        if not self.enabled or address is None:
            return 0.0
        now = self._clock()
        key = self.client_key(address)
        tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self._max_clients:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def _prune(self, now: float) -> None:
        # A bucket refilled to the brim carries no state worth keeping.
        full_after = self._burst / self._rate
        self._buckets = {
            k: v for k, v in self._buckets.items() if now - v[1] < full_after
        }

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(wait))
