"""The writer's group-commit queue: groups, per-submission outcomes, join."""

from __future__ import annotations

import asyncio

import pytest

from runtime.groupcommit import GroupQueue


async def test_submissions_gather_into_groups_cut_at_max_rows_in_arrival_order() -> None:
    queue: GroupQueue[str] = GroupQueue(max_rows=10)
    waiters = [queue.put(name, rows) for name, rows in (("a", 4), ("b", 4), ("c", 4), ("d", 30), ("e", 1))]
    first = await queue.take()
    # A group takes items while it holds fewer than max_rows: the one that crosses it is its last.
    assert (first.items, first.rows) == (["a", "b", "c"], 12)
    second = await queue.take()
    assert (second.items, second.rows) == (["d"], 30)
    queue.settle(first, "first")
    queue.settle(second, error=RuntimeError("disk"))
    assert [await w for w in waiters[:3]] == ["first"] * 3
    with pytest.raises(RuntimeError, match="disk"):
        await waiters[3]
    third = await queue.take()
    assert third.items == ["e"]
    queue.settle(third, "third")
    assert await waiters[4] == "third"


async def test_a_cancelled_waiter_leaves_the_rest_of_its_group_alone() -> None:
    queue: GroupQueue[int] = GroupQueue(max_rows=100)

    async def submit(i: int) -> object:
        return await queue.put(i, 1)

    tasks = [asyncio.create_task(submit(i)) for i in range(5)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    group = await queue.take()
    assert group.items == [0, 1, 2, 3, 4]  # the cancelled request's rows still go (they may be committed)
    queue.settle(group, "ok")
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 2] == ["ok"] * 4


async def test_take_waits_for_work_and_join_waits_until_every_group_is_settled() -> None:
    queue: GroupQueue[str] = GroupQueue(max_rows=100)
    await asyncio.wait_for(queue.join(), 1)  # nothing queued: returns at once
    taking = asyncio.create_task(queue.take())
    await asyncio.sleep(0.01)
    assert not taking.done()
    waiter = queue.put("x", 1)
    group = await asyncio.wait_for(taking, 1)
    joining = asyncio.create_task(queue.join())
    await asyncio.sleep(0.01)
    assert not joining.done()  # taken, not yet settled
    queue.settle(group)
    await asyncio.wait_for(joining, 1)
    assert await waiter is None
