"""The store's connection to Redis (or Redis Cluster) and its retry of failed calls.

A call fails "by kind" (:func:`stream.ops.metrics.redis_error_kind`): connection loss,
timeouts, and the server's ``LOADING``, ``READONLY``, ``BUSY``, ``OOM`` and
``MASTERDOWN``. Those are retried in place forever (:data:`REDIS_RETRIES`), counted in
``customer_ai_redis_errors_total{op,kind}`` and reported to the worker's health
(:data:`stream.ops.health.HEALTH`, condition ``redis``) while any call retries. Any
other error (a script bug, ``WRONGTYPE``...) is raised at once to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream.ops import metrics
from stream.ops.health import HEALTH
from stream.worker.redis_packing import use_hiredis_packing
from stream.worker.retry import Failure, RetryPolicy

__all__ = ["REDIS_RETRIES", "RedisUnavailable", "StoreConnection"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisUnavailable(Exception):
    """A Redis call failed in a way worth waiting for (see :func:`metrics.redis_error_kind`).

    Attributes
    ----------
    kind : str
        One of :data:`stream.ops.metrics.REDIS_ERROR_KINDS`.
    error : Exception
        What redis-py raised.
    """

    def __init__(self, kind: str, error: BaseException) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind = kind
        self.error = error


#: Redis unavailable (connection loss, timeouts, LOADING, READONLY, BUSY, OOM, MASTERDOWN):
#: retried forever, 0.1 s doubling to 2 s, so Redis trouble stalls the worker instead of
#: losing, skipping or dead-lettering events.
REDIS_RETRIES = RetryPolicy(
    "redis",
    attempts=None,
    first_delay=0.1,
    factor=2.0,
    max_delay=2.0,
    retry_on=(RedisUnavailable,),
)

#: calls of this process now retrying (the ``redis`` health condition lasts while any does)
_failing_calls = 0


class StoreConnection:
    """One client (plain or cluster) shared by the profile and the model store.

    Every public coroutine of the stores retries (:data:`REDIS_RETRIES`) until Redis
    answers again, so Redis trouble stalls the worker instead of losing, skipping or
    dead-lettering events.
    """

    def __init__(
        self,
        url: str,
        key_prefix: str = "cai",
        cluster: bool = False,
        feature_names: Sequence[str] | None = None,
        **redis_kwargs: Any,
    ) -> None:
        self.prefix = key_prefix
        self.cluster = cluster
        #: the featurizer's names: ``tf`` stores top factors as positions in this list
        self.feature_names = list(feature_names) if feature_names is not None else None
        self._feature_index = {n: i for i, n in enumerate(self.feature_names or ())}
        self.redis: Any
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            self.redis = RedisCluster.from_url(url, **redis_kwargs)
        else:
            self.redis = aioredis.Redis.from_url(url, **redis_kwargs)
            use_hiredis_packing(self.redis)  # before the pool opens its first connection

    async def close(self) -> None:
        await self.redis.aclose()

    async def evicted_keys(self, timeout: float = 2.0) -> int | None:
        """Keys Redis evicted since it started (``INFO stats``; summed over cluster nodes).

        One call, not retried: ``None`` when Redis does not answer within ``timeout``.
        """
        try:
            info = await asyncio.wait_for(self.redis.info("stats"), timeout)
        except (TimeoutError, RedisError, OSError):
            return None
        return sum(int(v) for v in _info_values(info, "evicted_keys"))

    async def eviction_policies(self) -> set[str] | None:
        """Redis' ``maxmemory-policy`` (one per node in cluster mode), ``None`` if unknown.

        ``CONFIG GET maxmemory-policy``; where ``CONFIG`` is disabled or renamed (managed
        Redis services), ``INFO memory``'s ``maxmemory_policy``. Raises what a connection
        failure raises (the caller waits for Redis first).
        """
        policies: set[str] = set()
        try:
            reply = await self.redis.config_get("maxmemory-policy")
            policies = {_text(v) for v in _info_values(reply, "maxmemory-policy")}
        except RedisError as error:
            if metrics.redis_error_kind(error) is not None:
                raise
        if not policies:
            try:
                info = await self.redis.info("memory")
                policies = {_text(v) for v in _info_values(info, "maxmemory_policy")}
            except RedisError as error:
                if metrics.redis_error_kind(error) is not None:
                    raise
        return policies or None

    # ---- retries -------------------------------------------------------------------
    async def retry(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call ``fn``, retried per :data:`REDIS_RETRIES` until Redis answers.

        The failures retried are those :func:`~stream.ops.metrics.redis_error_kind`
        names (anything else is raised at once). A pipeline raises its first such error
        once every reply is read; re-sending it whole is safe (see "Invariants" in
        :mod:`stream.worker.store`). Each failure is counted in
        ``customer_ai_redis_errors_total{op,kind}``; while any call retries, the health
        condition ``redis`` (``/healthz`` 503) names the kind, and one line is logged when
        it starts, when its kind changes and when Redis answers again (not one per retry).
        The round trip of the call that succeeds is observed in
        ``customer_ai_redis_latency_seconds``.
        """
        global _failing_calls
        failing = False

        async def attempt() -> T:
            started = time.perf_counter()
            try:
                result = await fn()
            except (RedisError, OSError) as error:
                kind = metrics.redis_error_kind(error)
                if kind is None:
                    raise
                raise RedisUnavailable(kind, error) from error
            metrics.REDIS_LATENCY.labels(op=op).observe(time.perf_counter() - started)
            return result

        def failed(failure: Failure) -> None:
            global _failing_calls
            nonlocal failing
            assert isinstance(failure.error, RedisUnavailable)
            kind, error = failure.error.kind, failure.error.error
            metrics.REDIS_ERRORS.labels(op=op, kind=kind).inc()
            if not failing:
                failing = True
                _failing_calls += 1
            if HEALTH.fail("redis", kind.upper(), _describe(error)) is not None:
                log.warning(
                    "Redis %s failed: %s (%s); pausing, retrying in %.1fs with backoff until "
                    "it answers (one line per kind of failure)",
                    op,
                    kind.upper(),
                    _describe(error),
                    failure.delay,
                )

        answered = False
        try:
            result = await REDIS_RETRIES.run(attempt, on_error=failed)
            answered = True
            return result
        finally:
            if failing:
                _failing_calls -= 1
                if _failing_calls == 0:  # no call retries any more (answered or cancelled)
                    ended = HEALTH.clear("redis")
                    if ended is not None and answered:
                        log.warning(
                            "Redis answers again (%s for %.0fs, %d failures)",
                            ended.kind,
                            time.time() - ended.since,
                            ended.count,
                        )


def _info_values(reply: Any, field: str) -> list[Any]:
    """The values of ``field`` in an INFO / CONFIG GET reply, or in each node's (cluster)."""
    if not isinstance(reply, dict):
        return []
    for key in (field, field.encode()):
        if key in reply:
            return [reply[key]]
    return [v for node in reply.values() for v in _info_values(node, field)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(error: BaseException) -> str:
    """The error's message in one short line (no traceback, no repr)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:160]
