"""The retry helper (:mod:`stream.worker.retry`): waits, give-up, cancellation, metric."""

from __future__ import annotations

import asyncio
import doctest
import logging
import time

import pytest

from stream.ops import metrics
from stream.worker import retry as retry_module
from stream.worker.retry import Failure, RetryPolicy


class FakeSleep:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Flaky:
    """A step that raises ``errors`` in turn, then returns ``result``."""

    def __init__(self, *errors: Exception, result: object = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    async def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def retries(step: str) -> float:
    return metrics.REGISTRY.get_sample_value("customer_ai_retries_total", {"step": step}) or 0.0


def test_delays_double_up_to_the_cap_one_fewer_than_the_attempts() -> None:
    policy = RetryPolicy("t", attempts=6, first_delay=0.5, factor=2.0, max_delay=5.0)
    assert list(policy.delays()) == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert list(RetryPolicy("t", attempts=1).delays()) == []
    constant = RetryPolicy("t", attempts=4, first_delay=3.0, factor=1.0, max_delay=3.0)
    assert list(constant.delays()) == [3.0, 3.0, 3.0]
    # a first delay over the cap is capped too
    assert list(RetryPolicy("t", attempts=3, first_delay=9.0, max_delay=2.0).delays()) == [2, 2]


def test_forever_has_endless_capped_delays() -> None:
    waits = RetryPolicy("t", attempts=None, first_delay=0.1, max_delay=2.0).delays()
    head = [next(waits) for _ in range(2000)]  # no overflow however long it retries
    assert head[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
    assert set(head[5:]) == {2.0}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"attempts": 0}, ValueError),
        ({"first_delay": -1.0}, ValueError),
        ({"factor": 0.5}, ValueError),
        ({"retry_on": (asyncio.CancelledError,)}, TypeError),
        ({"retry_on": (BaseException,)}, TypeError),
    ],
)
def test_a_policy_that_could_misbehave_is_refused(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        RetryPolicy("t", **kwargs)


async def test_retried_until_it_succeeds_with_the_policy_waits() -> None:
    sleep = FakeSleep()
    step = Flaky(ConnectionError("a"), ConnectionError("b"), result=42)
    seen: list[Failure] = []
    before = retries("unit_ok")
    policy = RetryPolicy("unit_ok", attempts=5, first_delay=0.5, max_delay=5.0)
    assert await policy.run(step, on_error=seen.append, sleep=sleep) == 42
    assert step.calls == 3
    assert sleep.waits == [0.5, 1.0]
    assert [(f.step, f.attempt, f.attempts, str(f.error), f.delay) for f in seen] == [
        ("unit_ok", 1, 5, "a", 0.5),
        ("unit_ok", 2, 5, "b", 1.0),
    ]
    assert retries("unit_ok") - before == 2


async def test_a_non_retryable_error_is_raised_at_once() -> None:
    sleep = FakeSleep()
    step = Flaky(KeyError("not retried"))
    seen: list[Failure] = []
    policy = RetryPolicy("unit_other", attempts=None, retry_on=(ConnectionError,))
    with pytest.raises(KeyError):
        await policy.run(step, on_error=seen.append, sleep=sleep)
    assert step.calls == 1 and seen == [] and sleep.waits == []
    assert retries("unit_other") == 0


async def test_give_up_after_the_last_attempt_gets_the_last_error() -> None:
    sleep = FakeSleep()
    errors = [RuntimeError(f"failure {i}") for i in range(1, 4)]
    step = Flaky(*errors)
    seen: list[Failure] = []
    given: list[Exception] = []
    before = retries("unit_give_up")

    async def give_up(error: Exception) -> str:
        given.append(error)
        return "dead-lettered"

    policy = RetryPolicy("unit_give_up", attempts=3, first_delay=0.1, max_delay=1.0)
    result = await policy.run(step, on_error=seen.append, give_up=give_up, sleep=sleep)
    assert result == "dead-lettered"
    assert step.calls == 3
    assert given == [errors[-1]] and given[0] is errors[-1]
    assert sleep.waits == [0.1, 0.2]  # no wait before giving up
    assert [(f.attempt, f.last) for f in seen] == [(1, False), (2, False), (3, True)]
    assert retries("unit_give_up") - before == 2  # retries, not the attempt given up on


async def test_without_give_up_the_last_error_is_raised() -> None:
    errors = [OSError("one"), OSError("two")]
    policy = RetryPolicy("unit_raise", attempts=2, first_delay=0.0)
    with pytest.raises(OSError) as raised:
        await policy.run(Flaky(*errors), on_error=lambda f: None, sleep=FakeSleep())
    assert raised.value is errors[-1]


async def test_forever_keeps_retrying() -> None:
    sleep = FakeSleep()
    step = Flaky(*[TimeoutError() for _ in range(100)], result="finally")
    policy = RetryPolicy("unit_forever", attempts=None, first_delay=0.1, max_delay=2.0)
    assert await policy.run(step, on_error=lambda f: None, sleep=sleep) == "finally"
    assert step.calls == 101 and len(sleep.waits) == 100 and max(sleep.waits) == 2.0


async def test_cancellation_raised_by_the_step_is_never_retried() -> None:
    step = Flaky(asyncio.CancelledError())
    seen: list[Failure] = []
    with pytest.raises(asyncio.CancelledError):
        await RetryPolicy("unit_cancel").run(step, on_error=seen.append, sleep=FakeSleep())
    assert step.calls == 1 and seen == []


async def test_cancelling_a_task_stops_its_wait_and_its_step_at_once() -> None:
    policy = RetryPolicy("unit_cancel_wait", attempts=None, first_delay=60.0, max_delay=60.0)
    failing = Flaky(*[ConnectionError() for _ in range(10)])
    waiting = asyncio.create_task(policy.run(failing, on_error=lambda f: None))
    await asyncio.sleep(0.05)
    assert failing.calls == 1  # now in its 60 s wait

    async def hangs() -> None:
        await asyncio.sleep(60)

    running = asyncio.create_task(policy.run(hangs, on_error=lambda f: None))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    for task in (waiting, running):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - started < 1.0
    assert failing.calls == 1


async def test_without_a_hook_each_failure_is_logged_with_its_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RetryPolicy("unit_log", attempts=2, first_delay=0.0)
    with caplog.at_level(logging.WARNING, logger=retry_module.__name__):
        with pytest.raises(ConnectionError):
            await policy.run(Flaky(ConnectionError("x"), ConnectionError("y")), sleep=FakeSleep())
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "unit_log failed (attempt 1 of 2); retrying in 0.0s",
        "unit_log failed (attempt 2 of 2); giving up",
    ]
    assert all(r.exc_info for r in caplog.records)


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(retry_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
