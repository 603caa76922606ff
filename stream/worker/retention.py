"""Retention: profiles idle longer than ``[retention] days`` are removed, each with a tombstone.

Off by default. With ``[retention] days`` set, the scorer keeps a per-partition activity
index, ``P:seen:<topic>:<partition>`` (profile id -> the newest event time its state
holds, ``ZADD`` with each batch's writes in :meth:`~stream.worker.profile_store.ProfileStore.save`),
and the worker's ``retention_sweep`` timer (:mod:`stream.worker.app`) runs
:meth:`RetentionSweep.sweep` for each partition it is assigned, every
``CUSTOMER_AI_RETENTION_INTERVAL`` seconds (60). With retention off no index is written.

Idleness is measured in **event time**: a profile is idle when its newest event is more
than ``days`` behind the cutoff ``min(partition watermark, wall clock)``. Event time, as
every other window of the product (features, labels): a replay of history removes what
the live run would have removed, and it does not depend on when the worker ran. The
wall clock only caps it: a watermark that ran ahead (an event with a wrong clock) can
remove nothing that the wall clock would not.

One sweep of one partition, in the scorer's lane of that partition (never beside a batch
of it, so no event of the partition is applied while it runs), reads at most
:data:`SWEEP_LIMIT` profiles, the longest idle first:

1. candidates: the index entries older than the cutoff;
2. their stored state, write version and top factors, in one round trip, checked on the
   state itself (the index is only a hint): a profile whose newest event is after the
   cutoff gets its index entry corrected; one with a label snapshot still pending is
   kept (the watermark has passed its window: the scorer matures it with the partition's
   next batch); an unreadable one is left alone; an index entry without a profile is
   dropped;
3. a profile is removed only when a previous sweep already found it idle **at the same
   write version**: its last write is at least one sweep interval old, long after the
   consumer group committed the events it applied (every second), so a crash cannot
   re-deliver them to re-create it;
4. a tombstone per removed profile (key = profile id, value null: the Kafka convention
   for a deleted key) is produced to ``<prefix>.scores`` (and to the compacted
   ``<prefix>.profile-scores`` when it is written: the profile leaves it) and acknowledged,
   **then** the profile is removed, so every removed profile has its tombstone (a crash in between
   re-sends one at the next sweep; a duplicate tombstone is harmless);
5. removal, :data:`REMOVE_BATCH_SCRIPT` per chunk: each profile only if its write version
   is still the one checked (a profile written since, by another worker around a
   rebalance, survives), and then atomically: ``DEL`` the profile key, ``ZREM`` it from
   the due index and the activity index, ``SREM`` it from its segment sets (its bucket per
   goal from the state, its factor sets from ``tf``). Counted in
   ``customer_ai_profiles_removed_total{reason="retention"}``.

A later event of a removed profile starts it afresh, as a new profile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.messages import OutMessage
from models.state import ProfileState
from stream.ops import metrics
from stream.worker.profile_store import is_alias
from stream.worker.redis_scripts import SCRIPT_CHUNK, SCRIPT_CHUNK_MOVES, Script, ScriptCall

if TYPE_CHECKING:
    from stream.worker.scorer import BatchScorer

__all__ = [
    "REMOVE_BATCH",
    "REMOVE_ALIAS_SCRIPT",
    "REMOVE_BATCH_SCRIPT",
    "REMOVE_SCRIPT",
    "SWEEP_LIMIT",
    "RetentionSweep",
    "SweepResult",
]

log = logging.getLogger(__name__)

#: Profiles a sweep of one partition reads at most (bounded work per tick).
SWEEP_LIMIT = 1000

#: KEYS[1] due index, KEYS[2] activity index, KEYS[3 .. 2+n] the profile key of each
#: removal, then every segment set the chunk leaves, once. ARGV, 3 per removal: the write
#: version checked ('' = the key is absent), profile id, the sets to leave (positions in
#: KEYS, comma separated, '' = none). Each removal applies only while the profile is at
#: that version: then the key is deleted and the profile leaves both indexes and its sets.
#: Returns one integer per removal: 1 removed, 0 fenced (nothing changed).
REMOVE_BATCH_SCRIPT = """
local out = {}
for i = 1, #ARGV / 3 do
  local a = 3 * i - 2
  local key, pid = KEYS[2 + i], ARGV[a + 1]
  if (redis.call('HGET', key, 'v') or '') == ARGV[a] then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], pid)
    redis.call('ZREM', KEYS[2], pid)
    for j in string.gmatch(ARGV[a + 2], '%d+') do redis.call('SREM', KEYS[tonumber(j)], pid) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

#: Cluster mode (the indexes live in other slots): KEYS[1] the profile key, ARGV[1] the
#: write version checked. Deletes the key if the profile is still at that version; the
#: index entries and sets are then removed by plain commands. Returns 1 or 0.
REMOVE_SCRIPT = """
if (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

#: KEYS[1] an alias record (identity stitching), ARGV[1] the removed person's id: deletes
#: the record only while it names that person. Returns 1 or 0.
REMOVE_ALIAS_SCRIPT = """
local s = redis.call('HGET', KEYS[1], 's')
if not s or string.sub(s, 1, 1) ~= '{' then return 0 end
if cjson.decode(s)['merged_into'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

REMOVE_BATCH = Script(REMOVE_BATCH_SCRIPT)


@dataclass(slots=True)
class SweepResult:
    """What one sweep of one partition did (for logs and tests)."""

    candidates: int = 0
    removed: list[str] = field(default_factory=list)
    marked: int = 0  # idle, to be removed at the next sweep if still unchanged
    kept_pending: int = 0  # idle but with a label snapshot pending
    repaired: int = 0  # index entry older than the state: corrected
    dropped: int = 0  # index entry without a profile: dropped
    fenced: int = 0  # written since it was checked: kept (its tombstone already sent)
    unreadable: int = 0


@dataclass(slots=True)
class _Removal:
    profile_id: str
    version: str
    sets: list[str]


def _chunks(removals: list[_Removal]) -> Iterator[list[_Removal]]:
    """At most ``SCRIPT_CHUNK`` removals and ``SCRIPT_CHUNK_MOVES`` set removals per call."""
    chunk: list[_Removal] = []
    n_sets = 0
    for r in removals:
        if chunk and (len(chunk) >= SCRIPT_CHUNK or n_sets + len(r.sets) > SCRIPT_CHUNK_MOVES):
            yield chunk
            chunk, n_sets = [], 0
        chunk.append(r)
        n_sets += len(r.sets)
    if chunk:
        yield chunk


class RetentionSweep:
    """Sweeps of one scorer's partitions (see the module docstring).

    Parameters
    ----------
    scorer
        The scorer of the source topic: its store, producer, scores topic, in-memory
        watermarks and lanes are used.
    """

    def __init__(self, scorer: BatchScorer, limit: int = SWEEP_LIMIT) -> None:
        self.scorer = scorer
        self.store = scorer.store
        self.days_ms = scorer.config.retention.ms
        self.goals = [g.name for g in scorer.config.goals]
        self.limit = limit
        #: (topic, partition) -> profile -> write version found idle by the last sweep
        self._marks: dict[tuple[str, int], dict[str, str]] = {}

    async def sweep(self, topic: str, partition: int, now_ms: int | None = None) -> SweepResult:
        """Sweep one partition, in its lane (after the batches already in it)."""
        if self.days_ms is None:
            return SweepResult()
        now = int(time.time() * 1000) if now_ms is None else now_ms

        async def job() -> SweepResult:
            return await self._sweep(topic, partition, now)

        return await self.scorer.lane(topic, partition).run(job)

    async def _sweep(self, topic: str, partition: int, now_ms: int) -> SweepResult:
        assert self.days_ms is not None
        store = self.store
        result = SweepResult()
        watermark = self.scorer.watermarks.get((topic, partition))
        if watermark is None:
            watermark = await store.watermark(store.watermark_key(topic, partition))
        if watermark is None:
            return result  # nothing applied on this partition yet
        cutoff = min(watermark, now_ms) - self.days_ms
        seen_key = store.activity_key(topic, partition)
        rows = await store.retry(
            "retention",
            lambda: store.redis.zrangebyscore(
                seen_key, "-inf", f"({cutoff}", start=0, num=self.limit
            ),
        )
        ids = [r.decode() for r in rows]
        result.candidates = len(ids)
        if not ids:
            self._marks[(topic, partition)] = {}
            return result
        loaded = await store.load(ids, f"o:{topic}:{partition}")
        marks = self._marks.get((topic, partition), {})
        new_marks: dict[str, str] = {}
        doomed: list[_Removal] = []
        gone: list[_Removal] = []
        repairs: dict[str, int] = {}
        aliases: list[str] = []  # identity stitching: a record forwarding to its person
        person_aliases: dict[str, list[str]] = {}
        for pid in ids:
            row = loaded[pid]
            if row.state is None:
                gone.append(_Removal(pid, row.version, []))
                continue
            if is_alias(row):
                aliases.append(pid)
                continue
            try:
                state = ProfileState.from_bytes(row.state, self.goals)
            except Exception:  # noqa: BLE001 - an unreadable record is not the sweep's to judge
                result.unreadable += 1
                continue
            if state.ref_ts >= cutoff:
                repairs[pid] = state.ref_ts
            elif any(g.pending for g in state.goals.values()):
                result.kept_pending += 1
            elif marks.get(pid) == row.version:
                entries = {
                    g: (s.bucket, row.top_factors.get(g, ())) for g, s in state.goals.items()
                }
                doomed.append(_Removal(pid, row.version, sorted(store.index_keys(entries))))
                person_aliases[pid] = state.aliases
            else:
                new_marks[pid] = row.version
        self._marks[(topic, partition)] = new_marks
        result.marked, result.repaired = len(new_marks), len(repairs)
        if repairs:
            await store.retry("retention", lambda: store.redis.zadd(seen_key, repairs))
        # the tombstones first: a removed profile always has one
        topics = self.scorer.settings.tombstone_topics()
        tombstones: list[OutMessage] = [
            (topic_name, r.profile_id.encode(), None) for r in doomed for topic_name in topics
        ]
        await self.scorer.producer.send_all(tombstones)
        due_key = store.due_key(topic, partition)
        if aliases:  # its person is swept by its own entry: the alias leaves the indexes
            await store.retry("retention", lambda: store.redis.zrem(seen_key, *aliases))
            await store.drop_due(due_key, aliases)
        if gone:
            result.dropped = sum(await self._remove(gone, due_key, seen_key))
        if doomed:
            done = await self._remove(doomed, due_key, seen_key)
            result.removed = [r.profile_id for r, ok in zip(doomed, done) if ok]
            forwarding = [(a, p) for p in result.removed for a in person_aliases[p]]
            if forwarding:  # the removed persons' aliases go with them
                await self._remove_aliases(forwarding)
            result.fenced = len(doomed) - len(result.removed)
            metrics.PROFILES_REMOVED.labels(reason="retention").inc(len(result.removed))
            log.info(
                "%s[%d]: removed %d profiles idle since before %d (retention %g days)%s",
                topic, partition, len(result.removed), cutoff, self.days_ms / 86_400_000,
                f"; {result.fenced} written meanwhile kept" if result.fenced else "",
            )  # fmt: skip
        return result

    async def _remove_aliases(self, forwarding: list[tuple[str, str]]) -> None:
        """Delete alias records (alias, the removed person's id), each only while it
        still names that person (:data:`REMOVE_ALIAS_SCRIPT`)."""
        store = self.store

        async def run() -> None:
            async with store.redis.pipeline(transaction=False) as pipe:
                for alias, pid in forwarding:
                    pipe.eval(REMOVE_ALIAS_SCRIPT, 1, store.profile_key(alias), pid)
                await pipe.execute()

        await store.retry("retention", run)

    async def _remove(self, removals: list[_Removal], due_key: str, seen_key: str) -> list[int]:
        """Run the fenced removals; one 0/1 per removal."""
        store = self.store
        if store.cluster:
            return await store.retry(
                "retention", lambda: self._remove_cluster(removals, due_key, seen_key)
            )
        calls: list[ScriptCall] = []
        for chunk in _chunks(removals):
            keys: list[Any] = [due_key, seen_key, *(store.profile_key(r.profile_id) for r in chunk)]
            position: dict[str, str] = {}
            args: list[Any] = []
            for r in chunk:
                for key in r.sets:
                    if key not in position:
                        keys.append(key)
                        position[key] = str(len(keys))
                args += (r.version, r.profile_id, ",".join(position[k] for k in r.sets))
            calls.append((REMOVE_BATCH, keys, args))

        async def run() -> list[int]:
            return [int(ok) for reply in await store._run_scripts(calls) for ok in reply]

        return await store.retry("retention", run)

    async def _remove_cluster(
        self, removals: list[_Removal], due_key: str, seen_key: str
    ) -> list[int]:
        """Cluster mode: the fenced delete per profile key, then the indexes by plain commands."""
        redis = self.store.redis
        async with redis.pipeline(transaction=False) as pipe:
            for r in removals:
                pipe.eval(REMOVE_SCRIPT, 1, self.store.profile_key(r.profile_id), r.version)
            done = [int(ok) for ok in await pipe.execute()]
        async with redis.pipeline(transaction=False) as pipe:
            for r, ok in zip(removals, done):
                if ok:
                    pipe.zrem(due_key, r.profile_id)
                    pipe.zrem(seen_key, r.profile_id)
                    for key in r.sets:
                        pipe.srem(key, r.profile_id)
            await pipe.execute()
        return done
