"""The worker's health: the conditions that make ``/healthz`` answer 503, with reasons.

A condition is set by whoever sees the trouble and cleared by whoever sees it end:

- ``redis``: a Redis call is being retried (:mod:`stream.worker.store_connection`:
  connection loss, timeouts, ``LOADING``, ``READONLY``, ``BUSY``, ``OOM``, ``MASTERDOWN``);
- ``broker``: the lag poller cannot read the group's offsets, or the output producer is
  retrying a send (:mod:`stream.ops.lag_poller`, :mod:`stream.worker.producer`);
- ``partition <topic>[<n>]``: an assigned partition with lag > 0 whose committed offset
  has not moved for longer than ``CUSTOMER_AI_STALL_SECONDS`` (the lag poller).

The worker's view (:mod:`stream.ops.web`) and the worker both import this module; it
imports nothing of the worker. One :data:`HEALTH` per process.

Examples
--------
>>> health = Health()
>>> health.fail("redis", "OOM", since=0.0) is not None  # new: the caller logs it once
True
>>> health.fail("redis", "OOM") is None  # the same kind again: counted, not logged
True
>>> health.reasons()
['redis: OOM since 00:00:00 UTC (2 failures)']
>>> health.clear("redis").count
2
>>> health.reasons()
[]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["HEALTH", "Condition", "Health"]


@dataclass(slots=True)
class Condition:
    """One reason the worker is not healthy.

    Attributes
    ----------
    what : str
        What fails: ``redis``, ``broker``, ``partition <topic>[<n>]``.
    kind : str
        How: ``OOM``, ``READONLY``, ``connection``, ``unreachable``, ``no progress``...
    since : float
        Unix time it started.
    count : int
        Failures seen since (0: not counted, e.g. a stalled partition).
    detail : str
        Free text for the reason (the last error, the lag...).
    """

    what: str
    kind: str
    since: float
    count: int = 0
    detail: str = ""

    def reason(self) -> str:
        """One line for ``/healthz``: ``redis: OOM since 12:00:01 UTC (3 failures)``."""
        at = time.strftime("%H:%M:%S", time.gmtime(self.since))
        text = f"{self.what}: {self.kind} since {at} UTC"
        if self.count:
            text += f" ({self.count} failure{'s' if self.count != 1 else ''})"
        if self.detail:
            text += f": {self.detail}"
        return text


class Health:
    """The set of conditions of one worker (see the module docstring)."""

    def __init__(self) -> None:
        self._conditions: dict[str, Condition] = {}

    def fail(
        self,
        what: str,
        kind: str,
        detail: str = "",
        *,
        since: float | None = None,
        count: bool = True,
    ) -> Condition | None:
        """Record a failure of ``what``.

        Parameters
        ----------
        what, kind, detail
            See :class:`Condition`.
        since : float, optional
            When it started (default: now, or when the same condition started).
        count : bool, optional
            Count this as one more failure.

        Returns
        -------
        Condition or None
            The condition if it is new or its kind changed (the caller logs it once),
            else ``None``.
        """
        current = self._conditions.get(what)
        if current is not None and current.kind == kind:
            current.count += 1 if count else 0
            current.detail = detail
            return None
        started = since if since is not None else time.time()
        if current is not None:  # a new kind of failure: the condition goes on
            started = current.since if since is None else since
        condition = Condition(what, kind, started, 1 if count else 0, detail)
        self._conditions[what] = condition
        return condition

    def clear(self, what: str) -> Condition | None:
        """End the condition of ``what``; returns it if there was one."""
        return self._conditions.pop(what, None)

    def get(self, what: str) -> Condition | None:
        """The condition of ``what``, if any."""
        return self._conditions.get(what)

    def keys(self) -> list[str]:
        """What fails now."""
        return list(self._conditions)

    def reasons(self) -> list[str]:
        """One line per condition, oldest first."""
        ordered = sorted(self._conditions.values(), key=lambda c: (c.since, c.what))
        return [c.reason() for c in ordered]


#: the process's health (the worker sets it, ``/healthz`` reads it)
HEALTH = Health()
