"""Before a worker starts Faust: wait for the broker and Redis, refuse an evicting Redis.

:func:`prepare` (called by ``customer-ai worker``):

1. waits until a broker of ``KAFKA_BOOTSTRAP_SERVERS`` answers a metadata request, then
   until Redis answers ``PING``: one line per attempt with the address (the password
   masked), retried per :data:`START_RETRIES` (0.5 s doubling to 5 s, forever); SIGINT
   or SIGTERM during the wait ends the command cleanly (status 130 or 0, no traceback);
2. reads Redis' ``maxmemory-policy`` (:meth:`StoreConnection.eviction_policies`) and
   refuses one that evicts keys (:func:`evicts`) with :class:`StartupError` (status 2),
   unless ``CUSTOMER_AI_ALLOW_EVICTION=1``.

Eviction deletes whole keys: a profile's state *and* the offsets of the events applied
to it (``o:<topic>:<partition>``), so its next events start from nothing and events
already applied may be applied again. ``allkeys-*`` policies evict any key. The
``volatile-*`` policies evict only keys with a TTL, and the worker sets none: with them,
Redis answers ``OOM`` like ``noeviction`` once nothing is evictable, and the worker pauses
on it (:mod:`stream.worker.store_connection`); they are accepted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka.errors import KafkaError
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.redaction import redact_url
from stream.worker.retry import Failure, RetryPolicy
from stream.worker.security import kafka_security_kwargs, redis_connection_kwargs
from stream.worker.settings import Settings
from stream.worker.store_connection import StoreConnection

__all__ = ["START_RETRIES", "StartupError", "evicts", "eviction_refusal", "prepare"]

log = logging.getLogger(__name__)

#: waiting for the broker or Redis at start: forever, 0.5 s doubling to 5 s, for the
#: errors of a server that does not answer (yet); any other error (a refused password)
#: ends the wait with a :class:`StartupError` that names it
START_RETRIES = RetryPolicy(
    "start",
    attempts=None,
    first_delay=0.5,
    factor=2.0,
    max_delay=5.0,
    retry_on=(OSError, TimeoutError, KafkaError, RedisConnectionError, RedisTimeoutError),
)
#: Redis answers, and refuses the credentials: a user's mistake, not a wait
_REFUSED = (AuthenticationError, AuthorizationError, NoPermissionError)
#: bound of one attempt (a stalled server must not hang the wait)
ATTEMPT_TIMEOUT = 5.0


class StartupError(Exception):
    """The worker must not start; the message says why and what to do (exit status 2)."""


def evicts(policy: str) -> bool:
    """Whether a ``maxmemory-policy`` can evict the worker's keys (which have no TTL).

    Examples
    --------
    >>> [evicts(p) for p in ("noeviction", "allkeys-lru", "volatile-lru", "allkeys-lfu")]
    [False, True, False, True]
    """
    return policy.strip().lower().startswith("allkeys-")


def eviction_refusal(policy: str, redis_url: str) -> str:
    """The message of a refused start: what is wrong and the fix."""
    return (
        f"Redis at {redact_url(redis_url)} has maxmemory-policy {policy}: it evicts keys "
        "when full, deleting profile state and the applied offsets with it (events lost or "
        "applied twice). Run `redis-cli CONFIG SET maxmemory-policy noeviction` and set "
        "`maxmemory-policy noeviction` in redis.conf (the worker then pauses while Redis is "
        "full), or set CUSTOMER_AI_ALLOW_EVICTION=1 to start anyway (exactly-once no "
        "longer holds)"
    )


async def _broker_answers(bootstrap: str, security: Mapping[str, Any]) -> None:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(ATTEMPT_TIMEOUT * 1000), **security
    )
    try:
        await asyncio.wait_for(client.bootstrap(), ATTEMPT_TIMEOUT)
    finally:
        await client.close()


async def _wait(
    what: str,
    address: str,
    attempt: Callable[[], Any],
    say: Callable[[str], None],
    sleep: Callable[[float], Any] | None = None,
) -> None:
    """Run ``attempt`` until it returns, one line per failure."""

    def failed(failure: Failure) -> None:
        name = type(failure.error).__name__
        error = " ".join(str(failure.error).split())
        if not error.startswith(name):
            error = f"{name}: {error}" if error else name
        say(
            f"waiting for {what} at {address}: attempt {failure.attempt} failed "
            f"({error[:200]}); next in {failure.delay:.1f}s (Ctrl-C to stop)"
        )

    await START_RETRIES.run(attempt, on_error=failed, sleep=sleep)


async def check(
    settings: Settings, env: Mapping[str, str], say: Callable[[str], None]
) -> list[str]:
    """Wait for the broker and Redis, then check the eviction policy (the module docstring).

    Returns
    -------
    list of str
        Warnings to show (eviction allowed, policy unknown).

    Raises
    ------
    StartupError
        Redis evicts keys and ``CUSTOMER_AI_ALLOW_EVICTION`` is not set.
    """
    security = kafka_security_kwargs(env)
    redis_kwargs = redis_connection_kwargs({**env, "REDIS_URL": settings.redis_url})
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # each failed attempt is one line of ours
    try:
        await _wait(
            "the broker",
            settings.bootstrap,
            lambda: _broker_answers(settings.bootstrap, security),
            say,
        )
    finally:
        kafka_log.setLevel(level)
    connection = StoreConnection(
        **redis_kwargs,
        key_prefix=settings.key_prefix,
        cluster=settings.redis_cluster,
        socket_connect_timeout=ATTEMPT_TIMEOUT,
    )
    url = redact_url(settings.redis_url)

    async def ping() -> None:
        try:
            await asyncio.wait_for(connection.redis.ping(), ATTEMPT_TIMEOUT)
        except _REFUSED as exc:
            raise StartupError(
                f"Redis at {url} refused the credentials ({type(exc).__name__}): set the "
                "password in REDIS_URL (redis://:PASSWORD@host:port/0) or REDIS_PASSWORD, and "
                "REDIS_USERNAME for an ACL user"
            ) from None

    try:
        await _wait("Redis", url, ping, say)
        policies = await asyncio.wait_for(connection.eviction_policies(), ATTEMPT_TIMEOUT)
    finally:
        await connection.close()
    if not policies:
        return [
            f"could not read Redis' maxmemory-policy at {url} (CONFIG GET and INFO memory "
            "refused): make sure it is noeviction, or exactly-once does not hold"
        ]
    evicting = sorted(p for p in policies if evicts(p))
    if not evicting:
        return []
    if not settings.allow_eviction:
        raise StartupError(eviction_refusal(evicting[0], settings.redis_url))
    return [
        f"Redis at {url} has maxmemory-policy {evicting[0]} and CUSTOMER_AI_ALLOW_EVICTION=1: "
        "starting, but exactly-once no longer holds (an evicted profile loses its state "
        "and its applied offsets)"
    ]


def prepare(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    say: Callable[[str], None] | None = None,
    *,
    stitching: bool = False,
) -> list[str]:
    """Run :func:`check` in its own event loop, ended cleanly by SIGINT or SIGTERM.

    ``stitching``: the configuration stitches identities, which Redis Cluster cannot
    serve (a merge writes two persons' keys in one script): refused in cluster mode.

    Returns
    -------
    list of str
        The warnings of :func:`check`.

    Raises
    ------
    StartupError
        See :func:`check`; stitching in cluster mode.
    KeyboardInterrupt
        SIGINT during the wait (``customer-ai`` exits with 130).
    SystemExit
        SIGTERM during the wait: status 0.
    """
    if stitching and settings.redis_cluster:
        raise StartupError(
            "identity stitching ([identity] namespaces) needs a Redis that is not a cluster "
            "(a merge writes two persons' keys at once): unset CUSTOMER_AI_REDIS_CLUSTER or "
            "remove namespaces from the configuration"
        )
    received: list[int] = []
    speak = say or (lambda line: log.warning("%s", line))

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: int) -> None:
            received.append(sig)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            return await check(settings, os.environ if env is None else env, speak)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if not received:
            raise
        speak("stopped while waiting for the servers")
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SystemExit(0) from None
