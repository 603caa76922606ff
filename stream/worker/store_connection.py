"""The store's connection to Redis (or Redis Cluster) and its retry of failed calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.ops import metrics
from stream.worker.redis_packing import use_hiredis_packing

__all__ = ["StoreConnection"]

log = logging.getLogger(__name__)


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
        **redis_kwargs: object,
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
    async def _retry(self, op: str, fn):  # type: ignore[no-untyped-def]
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                result = await fn()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                metrics.REDIS_ERRORS.labels(op=op).inc()
                log.warning("Redis %s failed (%s); retrying in %.1fs", op, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            metrics.REDIS_LATENCY.labels(op=op).observe(time.perf_counter() - started)
            return result
