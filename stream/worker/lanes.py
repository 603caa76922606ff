"""Lanes: work that must run one job at a time per key, in the order it was reserved.

Two batches in progress at once (see :func:`stream.worker.batching.pipelined`) may both hold
events of a source partition. Their work on that partition must not overlap or swap:
the later batch loads the profiles the earlier one is still writing, and an event
applied out of offset order would make the earlier one's events look already applied
(the applied-offset watermark skips them). A :class:`Lanes` keeps one chain per key
(a source partition): a job reserves its place synchronously, before any ``await``,
so the order of places is the order of the calls, then runs when every job reserved
before it on that key has finished, whatever their outcome.

Invariant: the job holding a place never starts before the previous place's job has
finished, and hands the lane on only once that job has finished too (a job cancelled
while waiting must not let the next one overtake the one it was waiting for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

__all__ = ["Lanes", "all_or_none"]

T = TypeVar("T")


class Lanes:
    """One-at-a-time work per key, in reservation order.

    Examples
    --------
    >>> import asyncio
    >>> async def demo() -> list[str]:
    ...     lanes, done = Lanes(), []
    ...     async def job(name: str, pause: float) -> None:
    ...         await asyncio.sleep(pause)
    ...         done.append(name)
    ...     first = lanes.reserve("p0")   # reserved first, slow
    ...     second = lanes.reserve("p0")  # same key: waits for the first
    ...     other = lanes.reserve("p1")   # another key: does not wait
    ...     await asyncio.gather(
    ...         second.run(lambda: job("p0 second", 0)),
    ...         first.run(lambda: job("p0 first", 0.02)),
    ...         other.run(lambda: job("p1", 0)),
    ...     )
    ...     return done
    >>> asyncio.run(demo())
    ['p1', 'p0 first', 'p0 second']
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, asyncio.Future[None]] = {}

    def reserve(self, key: Hashable) -> Place:
        """Take the next place on ``key``'s lane (synchronous: no other job can come between)."""
        previous = self._last.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last[key] = mine
        return Place(previous, mine)

    def busy(self, key: Hashable) -> bool:
        """Whether a job holds or waits for a place on ``key``'s lane."""
        last = self._last.get(key)
        return last is not None and not last.done()


class Place:
    """A reserved place on a lane; :meth:`run` its job exactly once."""

    __slots__ = ("_mine", "_previous")

    def __init__(self, previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._previous = previous
        self._mine = mine

    async def run(self, job: Callable[[], Awaitable[T]]) -> T:
        """Wait for the previous place's job to finish, then run ``job()``; hand the lane on."""
        previous, mine = self._previous, self._mine
        try:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))  # its outcome is its own; only its end matters
            return await job()
        finally:
            if previous is None or previous.done():
                _finish(mine)
            else:  # cancelled while waiting: the next place still waits for ``previous``
                previous.add_done_callback(lambda _: _finish(mine))


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def all_or_none(coroutines: list[Coroutine[Any, Any, Any]]) -> None:
    """Run ``coroutines`` concurrently; if one fails, cancel the others, wait, re-raise.

    Unlike a bare ``gather``, no coroutine of a failed batch is left running while the
    caller retries the batch.
    """
    if len(coroutines) == 1:
        await coroutines[0]
        return
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
