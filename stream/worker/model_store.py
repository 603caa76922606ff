"""Models, learner states, learnt example ids and the trainer's offsets in Redis.

See :mod:`stream.worker.store` for the keys and the trainer's fencing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import WatchError

from stream.worker.store_connection import StoreConnection

__all__ = ["LEARNT_IDS_KEPT", "ErasureDone", "ModelStore"]

#: Example ids kept per goal in ``P:learnt:<goal>`` to drop re-delivered examples. A
#: duplicate is re-sent within one batch retry or rebalance, far fewer examples apart.
LEARNT_IDS_KEPT = 200_000


@dataclass(frozen=True, slots=True)
class ErasureDone:
    """The trainer's part of one erasure, written with the batch that passed its marker."""

    profile_id: str
    request_id: str
    #: goal -> the person's ids in ``P:learnt:<goal>``
    learnt_ids: dict[str, list[str]]
    #: the audit record (JSON) of ``P:erasures`` field ``<request id>/training``
    audit: bytes
    #: the ``P:erasing`` entry is this request's (not a later request's for the same id)
    clear_entry: bool = True


class ModelStore(StoreConnection):
    """The trainer's and the scorers' view of the published models."""

    # ---- feature layouts ------------------------------------------------------------
    @property
    def layouts_key(self) -> str:
        return f"{self.prefix}:layouts"

    async def register_layout(self, fingerprint: str, layout_json: bytes) -> dict[str, bytes]:
        """Add this worker's feature layout to ``P:layouts``; returns the whole registry.

        When the registry was empty (the first start of a version with layouts), the
        layout is also stored as ``legacy``: the one format-1 states (no fingerprint)
        were written with, assuming the upgrade ran with the unchanged configuration.
        """
        key = self.layouts_key

        async def run() -> dict[str, bytes]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hlen(key)
                pipe.hsetnx(key, fingerprint, layout_json)
                before, _ = await pipe.execute()
            if before == 0:
                await self.redis.hsetnx(key, "legacy", layout_json)
            raw = await self.redis.hgetall(key)
            return {k.decode(): v for k, v in raw.items()}

        return await self.retry("layouts", run)

    async def layouts(self) -> dict[str, bytes]:
        """The layout registry ``P:layouts``: fingerprint (or ``legacy``) -> layout JSON."""
        raw = await self.retry("layouts", lambda: self.redis.hgetall(self.layouts_key))
        return {k.decode(): v for k, v in raw.items()}

    # ---- models --------------------------------------------------------------------
    async def model_versions(self) -> dict[str, int]:
        raw = await self.retry("models", lambda: self.redis.hgetall(f"{self.prefix}:models"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def get_model(self, goal: str) -> bytes | None:
        return await self.retry("models", lambda: self.redis.get(f"{self.prefix}:model:{goal}"))

    async def get_learner(self, goal: str) -> bytes | None:
        return await self.retry("models", lambda: self.redis.get(f"{self.prefix}:learner:{goal}"))

    def sample_key(self, goal: str) -> str:
        return f"{self.prefix}:sample:{goal}"

    async def get_sample(self, goal: str) -> dict[bytes, bytes]:
        """The trainer's sample of profiles of ``goal`` (``models/sample.py``): profile id
        -> JSON ``[prediction time, features]``; empty when none is stored."""
        return await self.retry("models", lambda: self.redis.hgetall(self.sample_key(goal)))

    def learnt_key(self, goal: str) -> str:
        return f"{self.prefix}:learnt:{goal}"

    @property
    def trainer_offsets_key(self) -> str:
        return f"{self.prefix}:trainer:offsets"

    async def trainer_offsets(self) -> dict[int, int]:
        """Training partition -> offset of the last record learnt (absent: none yet)."""
        raw = await self.retry("models", lambda: self.redis.hgetall(self.trainer_offsets_key))
        return {int(k): int(v) for k, v in raw.items()}

    async def trainer_offset(self) -> int:
        """The trained offset of training partition 0 (-1: nothing learnt)."""
        return (await self.trainer_offsets()).get(0, -1)

    # ---- erasures (stream.worker.erasure) ---------------------------------------------
    @property
    def erasing_key(self) -> str:
        """Profiles being erased: profile id -> the request (JSON), until the trainer
        passed the request's marker on the training topic."""
        return f"{self.prefix}:erasing"

    @property
    def erasures_key(self) -> str:
        """The erasure audit: request id -> what the worker removed (JSON), and
        ``<request id>/training`` -> what the trainer removed."""
        return f"{self.prefix}:erasures"

    async def erasing(self) -> dict[str, str]:
        """The profile ids being erased (:attr:`erasing_key`) -> their request's audit
        field (its request id)."""
        raw = await self.retry("erasing", lambda: self.redis.hgetall(self.erasing_key))
        out = {}
        for key, value in raw.items():
            try:
                out[key.decode()] = str(orjson.loads(value).get("request_id", ""))
            except (orjson.JSONDecodeError, AttributeError):
                out[key.decode()] = ""
        return out

    async def erasure_audit(self, field: str) -> dict[str, Any]:
        """One audit record of :attr:`erasures_key` (empty when absent or unreadable)."""
        raw = await self.retry("erasing", lambda: self.redis.hget(self.erasures_key, field))
        try:
            record = orjson.loads(raw) if raw is not None else {}
        except orjson.JSONDecodeError:
            return {}
        return record if isinstance(record, dict) else {}

    async def learnt_ids_of(self, prefixes: dict[str, str]) -> dict[str, list[str]]:
        """Goal -> the ids in ``P:learnt:<goal>`` that start with that goal's prefix
        (:func:`models.labels.example_id_prefix`: one person's learnt examples). A
        ``ZSCAN`` of the whole set per goal: an erasure's cost, never a batch's."""
        found: dict[str, list[str]] = {}
        for goal, prefix in prefixes.items():
            pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
            key = self.learnt_key(goal)

            async def scan(key: str = key, pattern: str = pattern) -> list[str]:
                return [
                    m.decode()
                    async for m, _ in self.redis.zscan_iter(key, match=pattern, count=1000)
                ]

            found[goal] = await self.retry("erasing", scan)
        return found

    async def learnt_already(self, ids_by_goal: dict[str, list[str]]) -> set[str]:
        """The ids among ``ids_by_goal`` that ``P:learnt:<goal>`` holds (learnt before)."""
        goals = [(g, ids) for g, ids in ids_by_goal.items() if ids]
        if not goals:
            return set()

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for goal, ids in goals:
                    pipe.zmscore(self.learnt_key(goal), ids)
                return await pipe.execute()

        rows = await self.retry("learnt", run)
        return {
            i
            for (_, ids), scores in zip(goals, rows)
            for i, sc in zip(ids, scores)
            if sc is not None
        }

    async def publish_models(
        self,
        learners: Iterable[tuple[str, int, bytes | None, bytes]],
        offsets: dict[int, int],
        learnt: dict[str, list[str]] | None = None,
        expected: dict[int, int] | None = None,
        samples: dict[str, tuple[bool, dict[str, bytes], list[str]]] | None = None,
        erasing: set[str] | None = None,
        learnt_profiles: set[str] | None = None,
        erased: Iterable[ErasureDone] = (),
    ) -> bool:
        """Atomically store learner states, new serving models, learnt ids and trained offsets.

        ``learners`` holds ``(goal, version, serving JSON or None, learner JSON)``;
        a serving model is published (its version made visible) only when given.
        ``learnt`` (goal -> example ids) is added to ``P:learnt:<goal>``, trimmed to the
        newest :data:`LEARNT_IDS_KEPT`. ``samples`` (goal -> ``(replace whole, entries to
        write, profile ids to delete)``, :meth:`models.training.Trainer.sample_changes`)
        updates ``P:sample:<goal>``. With ``expected`` (the trained offsets this trainer
        resumed from or wrote last) the write is fenced: it happens only if the stored
        offsets still equal ``expected`` (WATCH/MULTI), else nothing is written and False
        is returned; another trainer (after a rebalance) moved on, and this one must
        resume from Redis. Also after a connection error during EXEC: a retry that finds
        its own write applied reports False too, and the resume then finds that write.

        ``erasing`` (the profile ids of ``P:erasing`` the batch was filtered with) fences
        the write on that hash too: an erasure registered since then of a profile among
        ``learnt_profiles`` (those the batch learnt examples of) re-runs the batch, so no
        example of the person is learnt once its erasure is registered. Each of
        ``erased`` (a marker the batch passed) removes its person's learnt ids and
        ``P:erasing`` entry and writes the trainer's audit record, in the same transaction.
        """
        erased = list(erased)
        learnt_profiles = learnt_profiles or set()
        items = list(learners)
        now = int(time.time() * 1000)
        stored_expected = {p: o for p, o in (expected or {}).items() if o >= 0}

        def queue(pipe: Any) -> None:
            for goal, version, model_json, learner_json in items:
                pipe.set(f"{self.prefix}:learner:{goal}", learner_json)
                if model_json is not None:
                    pipe.set(f"{self.prefix}:model:{goal}", model_json)
                    pipe.hset(f"{self.prefix}:models", goal, version)
            for goal, (reset, write, delete) in (samples or {}).items():
                key = self.sample_key(goal)
                if reset:
                    pipe.delete(key)
                if delete:
                    pipe.hdel(key, *delete)
                if write:
                    pipe.hset(key, mapping=write)
            for goal, ids in (learnt or {}).items():
                if ids:
                    key = self.learnt_key(goal)
                    pipe.zadd(key, dict.fromkeys(ids, now))
                    pipe.zremrangebyrank(key, 0, -(LEARNT_IDS_KEPT + 1))
            for done in erased:
                for goal, ids in done.learnt_ids.items():
                    if ids:
                        pipe.zrem(self.learnt_key(goal), *ids)
                if done.clear_entry:
                    pipe.hdel(self.erasing_key, done.profile_id)
                pipe.hset(self.erasures_key, f"{done.request_id}/training", done.audit)
            pipe.hset(self.trainer_offsets_key, mapping={str(p): o for p, o in offsets.items()})

        async def run_cluster() -> bool:
            # Redis Cluster cannot run a transaction (or WATCH) over keys in several slots:
            # the writes are pipelined, the trained offsets last, and not fenced
            async with self.redis.pipeline(transaction=False) as pipe:
                queue(pipe)
                await pipe.execute()
                return True

        async def run() -> bool:
            async with self.redis.pipeline(transaction=True) as pipe:
                if expected is not None:
                    await pipe.watch(self.trainer_offsets_key, self.erasing_key)
                    raw = await pipe.hgetall(self.trainer_offsets_key)
                    if {int(k): int(v) for k, v in raw.items()} != stored_expected:
                        await pipe.unwatch()
                        return False
                    if erasing is not None:
                        now_erasing = {k.decode() for k in await pipe.hkeys(self.erasing_key)}
                        if (now_erasing - erasing) & learnt_profiles:
                            await pipe.unwatch()
                            return False
                    pipe.multi()
                queue(pipe)
                try:
                    await pipe.execute()
                except WatchError:
                    return False
            return True

        return await self.retry("publish", run_cluster if self.cluster else run)
