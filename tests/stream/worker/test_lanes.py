"""Lanes: one job at a time per key, in reservation order, whatever the jobs' outcomes.

Contract: docs/DESIGN.md, sections "Scoring path" and "Guarantees".
"""

from __future__ import annotations

import asyncio

import pytest

from stream.worker.lanes import Lanes


async def test_jobs_of_a_key_run_one_at_a_time_in_reservation_order() -> None:
    lanes = Lanes()
    running = 0
    most = 0
    order: list[int] = []

    async def job(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 if i % 2 == 0 else 0)  # the slow ones must not be overtaken
        order.append(i)
        running -= 1
        return i

    places = [lanes.reserve("p") for _ in range(6)]
    # started in reverse: the reservations, not the starts, decide the order
    results = await asyncio.gather(
        *(p.run(lambda i=i: job(i)) for i, p in reversed(list(enumerate(places))))
    )
    assert order == [0, 1, 2, 3, 4, 5]
    assert most == 1
    assert results == [5, 4, 3, 2, 1, 0]


async def test_other_keys_do_not_wait() -> None:
    lanes = Lanes()
    release = asyncio.Event()
    done: list[str] = []

    async def blocked() -> None:
        await release.wait()
        done.append("p0")

    async def free() -> None:
        done.append("p1")

    first = asyncio.ensure_future(lanes.reserve("p0").run(blocked))
    await asyncio.wait_for(lanes.reserve("p1").run(free), 1)
    assert done == ["p1"] and lanes.busy("p0") and not lanes.busy("p1")
    release.set()
    await first
    assert done == ["p1", "p0"] and not lanes.busy("p0")


async def test_a_failed_job_hands_the_lane_on_after_it_ended() -> None:
    lanes = Lanes()
    order: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0.01)
        order.append("failed")
        raise RuntimeError("boom")

    async def after() -> None:
        order.append("after")

    first, second = lanes.reserve("p"), lanes.reserve("p")
    results = await asyncio.gather(first.run(fails), second.run(after), return_exceptions=True)
    assert order == ["failed", "after"]
    assert isinstance(results[0], RuntimeError) and results[1] is None


async def test_a_job_cancelled_while_waiting_does_not_let_the_next_overtake() -> None:
    lanes = Lanes()
    release = asyncio.Event()
    order: list[str] = []

    async def slow() -> None:
        await release.wait()
        order.append("first")

    async def never() -> None:  # pragma: no cover - cancelled before it starts
        order.append("cancelled one ran")

    async def last() -> None:
        order.append("third")

    first = asyncio.ensure_future(lanes.reserve("p").run(slow))
    second = asyncio.ensure_future(lanes.reserve("p").run(never))
    third = asyncio.ensure_future(lanes.reserve("p").run(last))
    await asyncio.sleep(0.01)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.01)
    assert order == [] and not third.done()  # still behind the first job
    release.set()
    await asyncio.wait_for(asyncio.gather(first, third), 1)
    assert order == ["first", "third"]
