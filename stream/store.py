"""Per-profile state in Redis, loaded and stored once per batch (pipelined).

Layout (``P`` is the key prefix, ``cai`` by default; profile keys are hash-tagged
so each profile's key lives in one Redis Cluster slot):

=====================================  =========================================================
key                                    value
=====================================  =========================================================
``P:p:{<profile_id>}`` (hash)          ``s`` state (compact JSON), ``v`` write version,
                                       ``o:<topic>`` offset of the last applied event of that
                                       topic, ``scores`` last scores per goal (readable JSON)
``P:due:<topic>:<partition>`` (zset)   profiles with pending labels, scored by window close time
``P:wm:<topic>:<partition>``           the partition's event-time watermark (ms)
``P:model:<goal>``                     served model snapshot (JSON)
``P:learner:<goal>``                   full learner state (JSON), for the trainer to resume
``P:models`` (hash)                    goal -> served model version
``P:seg:<goal>:<bucket>`` (set)        profiles currently in that bucket
=====================================  =========================================================

Invariants
----------
- A profile's state changes only through :data:`CAS_SCRIPT`: the write succeeds only
  if the stored write version ``v`` is the one the batch loaded. A worker that lost its
  partition (a zombie) and loaded an older version can never overwrite newer state.
- An event is applied at most once: the batch skips events whose offset is at or below
  the profile's ``o:<topic>``, which is written in the same atomic step as the state.
- Outputs (scores, segments, training examples) are produced and flushed *before* the
  state is written, so an event whose effect is stored always had its outputs sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream import metrics

__all__ = ["CAS_SCRIPT", "LoadedProfile", "ProfileWrite", "RedisStore"]

log = logging.getLogger(__name__)

#: KEYS[1] profile key; ARGV: expected version ('' = absent), offset field, offset,
#: state, scores JSON, then pairs of (segment key to remove from, segment key to add to)
#: per changed bucket. Returns 1 if written, 0 if the version moved (fenced).
CAS_SCRIPT = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
local nv = (tonumber(v) or 0) + 1
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[4], 'scores', ARGV[5], ARGV[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[4], 'scores', ARGV[5])
end
return 1
"""


@dataclass(slots=True)
class LoadedProfile:
    """A profile's stored state as loaded for a batch."""

    state: bytes | None
    version: str
    offset: int


@dataclass(slots=True)
class ProfileWrite:
    """A conditional state write: applies only if the stored version is ``expected_version``."""

    profile_id: str
    expected_version: str
    offset_field: str
    offset: int
    state: bytes
    scores: bytes
    segment_moves: list[tuple[str, str | None, str]]  # (goal, from bucket, to bucket)


class RedisStore:
    """Batch-wise access to profile state, the due index and models.

    Every public coroutine retries on connection errors until Redis answers again
    (with capped backoff), so a Redis outage stalls the worker instead of losing
    or skipping events.
    """

    def __init__(self, url: str, key_prefix: str = "cai", **redis_kwargs: object) -> None:
        self.prefix = key_prefix
        self.redis = aioredis.Redis.from_url(url, **redis_kwargs)
        self._cas = self.redis.register_script(CAS_SCRIPT)

    async def close(self) -> None:
        await self.redis.aclose()

    # ---- keys --------------------------------------------------------------------
    def profile_key(self, profile_id: str) -> str:
        return f"{self.prefix}:p:{{{profile_id}}}"

    def due_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:due:{topic}:{partition}"

    def watermark_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:wm:{topic}:{partition}"

    def segment_key(self, goal: str, bucket: str) -> str:
        return f"{self.prefix}:seg:{goal}:{bucket}"

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

    # ---- profiles ------------------------------------------------------------------
    async def load(self, profile_ids: list[str], offset_field: str) -> dict[str, LoadedProfile]:
        """Load states, write versions and applied offsets in one pipeline."""
        if not profile_ids:
            return {}

        async def run() -> list:
            pipe = self.redis.pipeline(transaction=False)
            for pid in profile_ids:
                pipe.hmget(self.profile_key(pid), "s", "v", offset_field)
            return await pipe.execute()

        rows = await self._retry("load", run)
        out: dict[str, LoadedProfile] = {}
        for pid, (state, version, offset) in zip(profile_ids, rows):
            out[pid] = LoadedProfile(
                state,
                version.decode() if version else "",
                int(offset) if offset is not None else -1,
            )
        return out

    async def save(
        self,
        writes: list[ProfileWrite],
        due: dict[str, int | None],
        due_key: str,
        watermark_key: str | None,
        watermark: int | None,
    ) -> set[str]:
        """Write states conditionally and update the due index, segments and watermark.

        Returns the profile ids whose write was refused (fenced: the version moved).
        """
        if not writes and not due and watermark is None:
            return set()

        async def run() -> list:
            pipe = self.redis.pipeline(transaction=False)
            for w in writes:
                await self._cas(
                    keys=[self.profile_key(w.profile_id)],
                    args=[w.expected_version, w.offset_field, w.offset, w.state, w.scores],
                    client=pipe,
                )
            return await pipe.execute()

        results = await self._retry("store", run) if writes else []
        fenced = {w.profile_id for w, ok in zip(writes, results) if not ok}

        async def run_index() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for w in writes:
                if w.profile_id in fenced:
                    continue
                for goal, old, new in w.segment_moves:
                    if old is not None:
                        pipe.srem(self.segment_key(goal, old), w.profile_id)
                    pipe.sadd(self.segment_key(goal, new), w.profile_id)
            add = {pid: ts for pid, ts in due.items() if ts is not None and pid not in fenced}
            remove = [pid for pid, ts in due.items() if ts is None and pid not in fenced]
            if add:
                pipe.zadd(due_key, add)
            if remove:
                pipe.zrem(due_key, *remove)
            if watermark_key is not None and watermark is not None:
                pipe.set(watermark_key, watermark)
            await pipe.execute()

        await self._retry("index", run_index)
        return fenced

    async def due_profiles(self, due_key: str, watermark: int, limit: int = 1000) -> list[str]:
        """Profiles whose earliest pending window closed before ``watermark``."""
        rows = await self._retry(
            "due",
            lambda: self.redis.zrangebyscore(due_key, "-inf", f"({watermark}", start=0, num=limit),
        )
        return [r.decode() for r in rows]

    async def watermark(self, watermark_key: str) -> int | None:
        raw = await self._retry("watermark", lambda: self.redis.get(watermark_key))
        return int(raw) if raw is not None else None

    async def get_profile(self, profile_id: str) -> bytes | None:
        return await self._retry("get", lambda: self.redis.hget(self.profile_key(profile_id), "s"))

    # ---- models --------------------------------------------------------------------
    async def model_versions(self) -> dict[str, int]:
        raw = await self._retry("models", lambda: self.redis.hgetall(f"{self.prefix}:models"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def get_model(self, goal: str) -> bytes | None:
        return await self._retry("models", lambda: self.redis.get(f"{self.prefix}:model:{goal}"))

    async def get_learner(self, goal: str) -> bytes | None:
        return await self._retry("models", lambda: self.redis.get(f"{self.prefix}:learner:{goal}"))

    async def trainer_offset(self) -> int:
        raw = await self._retry("models", lambda: self.redis.get(f"{self.prefix}:trainer:offset"))
        return int(raw) if raw is not None else -1

    async def publish_models(
        self, learners: Iterable[tuple[str, int, bytes | None, bytes]], offset: int
    ) -> None:
        """Atomically store learner states, new serving models and the trained offset.

        ``learners`` holds ``(goal, version, serving JSON or None, learner JSON)``;
        a serving model is published (its version made visible) only when given.
        """
        items = list(learners)

        async def run() -> None:
            pipe = self.redis.pipeline(transaction=True)
            for goal, version, model_json, learner_json in items:
                pipe.set(f"{self.prefix}:learner:{goal}", learner_json)
                if model_json is not None:
                    pipe.set(f"{self.prefix}:model:{goal}", model_json)
                    pipe.hset(f"{self.prefix}:models", goal, version)
            pipe.set(f"{self.prefix}:trainer:offset", offset)
            await pipe.execute()

        await self._retry("publish", run)


def scores_json(goals: dict[str, tuple[float | None, float | None, str | None, int]]) -> bytes:
    """The readable ``scores`` field: goal -> probability, percentile, bucket, model_version."""
    return orjson.dumps(
        {
            g: {"probability": p, "percentile": pct, "bucket": b, "model_version": v}
            for g, (p, pct, b, v) in goals.items()
            if p is not None
        }
    )
