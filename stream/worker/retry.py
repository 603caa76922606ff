"""The worker's one retry policy: retry a step with capped exponential backoff.

Every place that retries something (a scoring batch, a partition's part of it, a Redis
call, a produce, a lag reading, the lag poller task, a training batch) runs its step
through :meth:`RetryPolicy.run`. The policies themselves, with what happens after the last
attempt and which metric counts them, are the table "Retries" in ``docs/OPERATING.md``.

What the helper guarantees for every step:

- only the exception types of :attr:`RetryPolicy.retry_on` are retried; any other error
  is raised at once, and cancellation (``asyncio.CancelledError``, a ``BaseException``)
  is never caught, so a cancelled step or wait stops immediately;
- each retry is counted in ``customer_ai_retries_total{step=...}``
  (:data:`stream.ops.metrics.RETRIES`) and reported to the caller's ``on_error`` hook
  (its log line and its own metrics), before the wait;
- after the last attempt (``attempts``; ``None`` retries forever) the caller's
  ``give_up`` action gets the last error (dead-letter the records, ...), or the error is
  raised when there is none.

The waits are ``first_delay``, then each one ``factor`` times the last, capped at
``max_delay``: the policy of the scoring batches waits 0.5, 1, 2, 4 s between its
five attempts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from stream.ops import metrics

__all__ = ["Failure", "RetryPolicy"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, as the ``on_error`` hook of :meth:`RetryPolicy.run` sees it.

    Attributes
    ----------
    step : str
        The policy's step name (the ``step`` label of ``customer_ai_retries_total``).
    attempt : int
        Which attempt failed, from 1.
    attempts : int or None
        The policy's number of attempts (``None``: forever).
    error : Exception
        What the attempt raised.
    delay : float or None
        Seconds until the next attempt; ``None`` when this was the last one (the policy
        gives up next).
    """

    step: str
    attempt: int
    attempts: int | None
    error: Exception
    delay: float | None

    @property
    def last(self) -> bool:
        """Whether no attempt follows (the policy gives up)."""
        return self.delay is None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one step is retried (see the module docstring and ``docs/OPERATING.md``).

    Parameters
    ----------
    step : str
        Name of the step: the ``step`` label of ``customer_ai_retries_total`` and the
        default log lines.
    attempts : int or None, optional
        Attempts in all, the first one included; ``None`` (the default) retries forever.
    first_delay : float, optional
        Seconds to wait after the first failure.
    factor : float, optional
        Each wait is ``factor`` times the previous one (``1``: a constant wait).
    max_delay : float, optional
        The longest wait.
    retry_on : tuple of type, optional
        The exception types retried (subclasses of :class:`Exception` only: cancellation
        always propagates); anything else is raised at once.

    Examples
    --------
    A step that fails twice, then succeeds:

    >>> import asyncio
    >>> calls = []
    >>> async def step() -> str:
    ...     calls.append(len(calls) + 1)
    ...     if len(calls) < 3:
    ...         raise ConnectionError("refused")
    ...     return "done"
    >>> policy = RetryPolicy("example", attempts=5, first_delay=0.001, max_delay=0.004)
    >>> list(policy.delays())
    [0.001, 0.002, 0.004, 0.004]
    >>> asyncio.run(policy.run(step, on_error=lambda f: print(f.attempt, f.error)))
    1 refused
    2 refused
    'done'

    After the last attempt, the ``give_up`` action gets the last error:

    >>> async def broken() -> str:
    ...     raise ValueError("bad")
    >>> async def dead_letter(error: Exception) -> str:
    ...     return f"gave up: {error}"
    >>> once = RetryPolicy("example", attempts=1)
    >>> asyncio.run(once.run(broken, on_error=lambda f: None, give_up=dead_letter))
    'gave up: bad'
    """

    step: str
    attempts: int | None = None
    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 5.0
    retry_on: tuple[type[Exception], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1 or None (forever), not {self.attempts}")
        if self.first_delay < 0 or self.max_delay < 0:
            raise ValueError("first_delay and max_delay must not be negative")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")
        for kind in self.retry_on:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise TypeError(f"retry_on takes Exception subclasses only, not {kind!r}")

    def delays(self) -> Iterator[float]:
        """The waits between attempts, in order.

        Yields
        ------
        float
            ``min(first_delay, max_delay)``, then each wait ``factor`` times the last
            (capped at ``max_delay``): ``attempts - 1`` of them, or endless.
        """
        delay = min(self.first_delay, self.max_delay)
        n = 0
        while self.attempts is None or n < self.attempts - 1:
            yield delay
            n += 1
            delay = min(delay * self.factor, self.max_delay)

    async def run(
        self,
        step: Callable[[], Awaitable[T]],
        *,
        on_error: Callable[[Failure], None] | None = None,
        give_up: Callable[[Exception], Awaitable[T]] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> T:
        """Run ``step`` until it returns, retrying the errors of :attr:`retry_on`.

        Parameters
        ----------
        step : callable
            A coroutine function without arguments: one attempt.
        on_error : callable, optional
            Called with a :class:`Failure` for every failed attempt of a retried type,
            the last one included (``failure.last``), before the wait. Without one a
            warning with the traceback is logged.
        give_up : callable, optional
            Coroutine function called with the last error once every attempt failed; its
            result is returned. Without one the last error is raised.
        sleep : callable, optional
            The wait (defaults to :func:`asyncio.sleep`; tests pass a fake).

        Returns
        -------
        object
            What ``step`` (or ``give_up``) returned.

        Raises
        ------
        Exception
            An error not of :attr:`retry_on`, at once; the last error after the last
            attempt when there is no ``give_up``.
        asyncio.CancelledError
            When cancelled, at once (never retried).
        """
        waits = self.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await step()
            except self.retry_on as error:
                delay = next(waits, None)
                failure = Failure(self.step, attempt, self.attempts, error, delay)
                (on_error or self._log)(failure)
                if delay is None:
                    if give_up is None:
                        raise
                    return await give_up(error)
                metrics.RETRIES.labels(step=self.step).inc()
            await (sleep or asyncio.sleep)(delay)

    @staticmethod
    def _log(failure: Failure) -> None:
        of = f" of {failure.attempts}" if failure.attempts is not None else ""
        then = "giving up" if failure.delay is None else f"retrying in {failure.delay:.1f}s"
        log.warning(
            "%s failed (attempt %d%s); %s",
            failure.step,
            failure.attempt,
            of,
            then,
            exc_info=failure.error,
        )
