"""The store's connection to Redis (or Redis Cluster) and its retry of failed calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.ops import metrics
from stream.worker.redis_packing import use_hiredis_packing
from stream.worker.retry import Failure, RetryPolicy

__all__ = ["REDIS_RETRIES", "StoreConnection"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Redis connection errors and timeouts: retried forever, 0.1 s doubling to 2 s, so a
#: Redis outage stalls the worker instead of losing or skipping events.
REDIS_RETRIES = RetryPolicy(
    "redis",
    attempts=None,
    first_delay=0.1,
    factor=2.0,
    max_delay=2.0,
    retry_on=(RedisConnectionError, RedisTimeoutError, OSError),
)


class StoreConnection:
    """One client (plain or cluster) shared by the profile and the model store.

    Every public coroutine of the stores retries on connection errors until Redis
    answers again (with capped backoff), so a Redis outage stalls the worker instead of
    losing or skipping events.
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

    # ---- retries -------------------------------------------------------------------
    async def _retry(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call ``fn``, retried per :data:`REDIS_RETRIES` until Redis answers.

        Each failure is counted in ``customer_ai_redis_errors_total{op=...}`` and logged;
        the round trip of the call that succeeds in ``customer_ai_redis_latency_seconds``.
        """

        async def attempt() -> T:
            started = time.perf_counter()
            result = await fn()
            metrics.REDIS_LATENCY.labels(op=op).observe(time.perf_counter() - started)
            return result

        def failed(failure: Failure) -> None:
            metrics.REDIS_ERRORS.labels(op=op).inc()
            log.warning("Redis %s failed (%s); retrying in %.1fs", op, failure.error, failure.delay)

        return await REDIS_RETRIES.run(attempt, on_error=failed)
