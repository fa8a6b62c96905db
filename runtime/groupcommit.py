"""Group commit, for node and hub alike: concurrent submissions gathered into groups, each told its outcome.

A writer (the node's event writer, the hub's snapshot intake) takes whatever
arrived while its last commit was out and commits it as one group. A commit
that fails settles its group with `StorageUnavailable`, which both services
answer the same way (`storage_unavailable`: 503, nothing acked, retry). Every single-event request passes through here,
so it is lean: a submission appends to the newest group and gets a future
of its own (a shared one would be cancelled with any one waiter), and
settling a group resolves those futures in one loop. With an `asyncio.Queue`
of per-request records, a submission's round trip (wait and wake-up included)
cost 2.5 µs instead of 1.9 µs, unloaded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from protocol.errors import ProblemType, ServiceUnavailable

T = TypeVar("T")

STORAGE_RETRY_AFTER = 5
"""Seconds a client is told to wait after a failed commit."""


class StorageUnavailable(Exception):
    """A group's commit failed (disk full, I/O error): nothing of it was stored."""


def storage_unavailable() -> ServiceUnavailable:
    """The answer to a submission whose group failed to commit: 503, retry."""
    return ServiceUnavailable(
        "storage is unavailable; retry later", retry_after=STORAGE_RETRY_AFTER, slug=ProblemType.STORAGE_UNAVAILABLE
    )


class Group(Generic[T]):
    """The submissions of one commit: their items, row count and waiters."""

    __slots__ = ("items", "rows", "waiters")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.rows = 0
        self.waiters: list[asyncio.Future[Any]] = []


class GroupQueue(Generic[T]):
    """Submissions in arrival order, cut into groups of about `max_rows` rows (a group's last item may go past it)."""

    def __init__(self, max_rows: int) -> None:
        self._max_rows = max_rows
        self._groups: deque[Group[T]] = deque()
        self._work = asyncio.Event()  # set while a group waits to be taken
        self._idle = asyncio.Event()  # set while nothing is queued or being handled
        self._idle.set()
        self._taken = 0

    def put(self, item: T, rows: int) -> asyncio.Future[Any]:
        """Queue `item`; the future gets its group's result (or exception) when the group is settled."""
        waiter = asyncio.get_running_loop().create_future()
        groups = self._groups
        if not groups or groups[-1].rows >= self._max_rows:
            groups.append(Group())
        group = groups[-1]
        group.items.append(item)
        group.rows += rows
        group.waiters.append(waiter)
        self._work.set()
        self._idle.clear()
        return waiter

    def __len__(self) -> int:
        """Items queued and not taken yet."""
        return sum(len(group.items) for group in self._groups)

    async def take(self) -> Group[T]:
        """The oldest group, once there is one; the caller must `settle` it."""
        while not self._groups:
            self._work.clear()
            await self._work.wait()
        self._taken += 1
        return self._groups.popleft()

    def settle(
        self,
        group: Group[T],
        result: Any = None,
        error: BaseException | None = None,
        refused: Mapping[int, BaseException] | None = None,
        results: Sequence[Any] | None = None,
    ) -> None:
        """Tell every waiter of `group` its outcome (a waiter cancelled meanwhile hears nothing).

        `error`: the whole group failed. `refused`: items (by index in the
        group) that get their own exception instead of `result`; `results`:
        one result per item instead of one for all.
        """
        for index, waiter in enumerate(group.waiters):
            if not waiter.done():
                own = error if refused is None or error is not None else refused.get(index)
                if own is not None:
                    waiter.set_exception(own)
                else:
                    waiter.set_result(result if results is None else results[index])
        self._taken -= 1
        if not self._groups and not self._taken:
            self._idle.set()

    async def join(self) -> None:
        """Return once every queued group was taken and settled."""
        await self._idle.wait()
