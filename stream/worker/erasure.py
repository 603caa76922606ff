"""Erasure: a person removed on request, from Redis and from what the trainer has not learnt.

A request is one record on ``<prefix>.erasures`` (keyed by the profile id, value
``{"profile_id": ..., "request_id": ..., "requested_at": ...}``; ``customer-ai erase ID``
writes them). The worker's ``erase_profiles`` agent (:mod:`stream.worker.app`) applies
each with :meth:`Eraser.erase`, in this order:

1. **register**: ``HSET P:erasing <id> <request>``. From then on the trainer drops every
   training example of the id it reads, and its batch write is fenced on that hash
   (:meth:`~stream.worker.model_store.ModelStore.publish_models`): no example of the
   person is learnt once its erasure is registered;
2. **commit**: wait until the consumer group has committed past the profile's applied
   offsets (``o:<topic>:<partition>``; up to :data:`COMMIT_WAIT` seconds, about one
   commit interval normally): a crash can then re-deliver none of the person's events,
   which would start a new profile from them;
3. **removal**, in the lane of each of the profile's source partitions assigned to this
   worker (never beside a batch of them), after waiting there for the commit of any event
   applied since step 2 (up to :data:`LANE_COMMIT_WAIT` seconds): :data:`ERASE_SCRIPT`
   atomically, only if the profile is still at the write version just read (else read
   again and retry), ``DEL`` of its key and of its quarantined record, its
   ``P:quarantined`` note, ``ZREM`` from every due and activity index and ``SREM`` from
   every segment set;
4. **tombstones**, still in the lanes: key = profile id, value null, to
   ``<prefix>.scores`` and (when written) the compacted ``<prefix>.profile-scores``,
   acknowledged: after every score of the person, before any score of a new profile of
   the id;
5. **audit**: ``HSET P:erasures <request id> <record>``: a SHA-256 of the id, when it
   was requested and done, what was removed, and the request's record coordinates. The
   id itself is kept nowhere. A request id already used by another request gets the field
   ``<request id>~<topic>:<partition>:<offset>`` (:meth:`Eraser._audit_field`);
6. **marker**: one record ``{"erasure": {"profile_id", "request_id"}}`` on the training
   topic, after every example the scorer produced for the person before its removal.
   The trainer, when it reaches the marker, removes the person from its samples
   (``P:sample:<goal>``) and its learnt ids (``P:learnt:<goal>``), deletes the
   ``P:erasing`` entry (if still this request's) and writes its audit record, in one
   transaction with the batch.

A request re-delivered after a crash runs again unless its audit record was written (then
only its marker is sent again, if the trainer's part is missing); every step is
idempotent. A later event of the id starts a new profile.
The model weights already learnt from the person's examples are aggregates and are not
unlearnt (docs/GUARANTEES.md says how to retrain a goal from scratch).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from models.config import Config
from models.features import Featurizer
from stream.ops import metrics
from stream.worker.dead_letters import dlq_message
from stream.worker.retry import Failure, RetryPolicy
from stream.worker.stitching import person_ids

if TYPE_CHECKING:
    from stream.worker.producer import BatchProducer
    from stream.worker.scorer import BatchScorer, Record

__all__ = [
    "ERASE_PROFILE_SCRIPT",
    "ERASE_SCRIPT",
    "ErasureRequest",
    "Eraser",
    "erase_or_dead_letter",
    "erasure_marker",
    "marker_message",
    "parse_request",
    "profile_digest",
]

log = logging.getLogger(__name__)

#: Attempts at the fenced removal before the request is retried as a whole.
MAX_FENCED = 20
#: Seconds an erasure waits for the consumer group to commit the person's applied events.
COMMIT_WAIT = 30
#: Seconds it waits for the commit of events applied meanwhile, holding their partitions.
LANE_COMMIT_WAIT = 5
#: Seconds the list of index keys (a ``SCAN``) is reused between erasures.
INDEX_KEYS_TTL = 60.0

#: KEYS[1] the profile key, KEYS[2] its quarantined record, KEYS[3] ``P:quarantined``,
#: KEYS[4 .. 3+n] sorted sets (due and activity indexes), the rest segment sets. ARGV[1]
#: the write version read ('' absent, '?' not a hash), ARGV[2] the profile id, ARGV[3] n.
#: Returns -1 (the profile changed since it was read: nothing done) or
#: {profile deleted, quarantined record deleted, note deleted, index entries removed}.
_VERSION_CHECK = """
local kind = redis.call('TYPE', KEYS[1]).ok
local v = ''
if kind == 'hash' then v = redis.call('HGET', KEYS[1], 'v') or '' elseif kind ~= 'none' then v = '?' end
if v ~= ARGV[1] then return -1 end
"""
ERASE_SCRIPT = (
    _VERSION_CHECK
    + """
local out = {redis.call('DEL', KEYS[1]), redis.call('DEL', KEYS[2]), redis.call('HDEL', KEYS[3], ARGV[2]), 0}
local n = tonumber(ARGV[3])
for i = 4, #KEYS do
  if i < 4 + n then out[4] = out[4] + redis.call('ZREM', KEYS[i], ARGV[2])
  else out[4] = out[4] + redis.call('SREM', KEYS[i], ARGV[2]) end
end
return out
"""
)

#: Cluster mode (the indexes live in other slots): KEYS[1] the profile key, ARGV[1] the
#: version read. Deletes the key if the profile is still at that version: 1, else -1.
ERASE_PROFILE_SCRIPT = _VERSION_CHECK + "return redis.call('DEL', KEYS[1])\n"

_MARKER_START = b'{"erasure":'
#: the longest profile id a request may name (as an event's ids, models/events.py)
MAX_ID_LENGTH = 512
#: what a request id may be: it names the audit record (no free text, no e-mail address)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: reads the consumer group's committed offsets of ``(topic, partition)`` pairs
Committed = Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]]


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """One erasure request, as read from ``<prefix>.erasures``."""

    profile_id: str
    request_id: str
    requested_at: str | None = None
    #: the record it was read from, ``<topic>:<partition>:<offset>`` (a re-delivery of one
    #: record is told from a new request that reuses its request id by it)
    source: str = ""


def parse_request(value: bytes | None, default_id: str) -> ErasureRequest:
    """The request in a record's value; ``default_id`` names it when it has no
    ``request_id`` (the record's topic, partition and offset: the same at every re-read).

    Raises
    ------
    ValueError
        With the reason, for the dead-letter topic.

    >>> parse_request(b'{"profile_id": "p-1", "request_id": null}', "t:0:5")
    ErasureRequest(profile_id='p-1', request_id='t:0:5', requested_at=None, source='t:0:5')
    >>> parse_request(b'{"profile_id": "p-1", "request_id": "erase p-1"}', "t:0:6")
    Traceback (most recent call last):
    ...
    ValueError: request_id must be 1 to 128 of A-Z a-z 0-9 . _ : - (not 'erase p-1')
    """
    if not value:
        raise ValueError('an erasure request is JSON {"profile_id": "..."}; the value is empty')
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError('an erasure request is a JSON object {"profile_id": "..."}')
    pid = body.get("profile_id")
    if not isinstance(pid, str) or not pid:
        raise ValueError("profile_id must be a non-empty string")
    if len(pid) > MAX_ID_LENGTH:
        raise ValueError(f"profile_id is longer than {MAX_ID_LENGTH} characters (as event ids)")
    request_id = body.get("request_id")
    if request_id is None:
        request_id = default_id
    elif not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(
            f"request_id must be 1 to 128 of A-Z a-z 0-9 . _ : - (not {str(request_id)[:64]!r})"
        )
    requested_at = body.get("requested_at")
    if requested_at is not None and not _is_zoned_time(requested_at):
        raise ValueError(
            "requested_at must be ISO-8601 with a zone, e.g. 2026-12-06T10:00:00Z "
            f"(not {str(requested_at)[:64]!r})"
        )
    return ErasureRequest(pid, request_id, requested_at, default_id)


def _is_zoned_time(value: object) -> bool:
    """Whether ``value`` is an ISO-8601 text with a zone (``Z`` or an offset).

    >>> _is_zoned_time("2026-12-06T10:00:00Z"), _is_zoned_time("2026-12-06T10:00:00")
    (True, False)
    >>> _is_zoned_time(20261206)
    False
    """
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def profile_digest(profile_id: str) -> str:
    """The hash of a profile id the audit keeps (SHA-256 of its UTF-8 bytes, hex).

    >>> profile_digest("p-1")[:16]
    '1dee6e3ec67dc803'
    """
    return hashlib.sha256(profile_id.encode()).hexdigest()


def marker_message(profile_id: str, request_id: str) -> bytes:
    """The training-topic record that tells the trainer an erasure's removal is done.

    >>> erasure_marker(marker_message("p-1", "r-1"))
    ('p-1', 'r-1')
    """
    return orjson.dumps({"erasure": {"profile_id": profile_id, "request_id": request_id}})


def erasure_marker(value: bytes | None) -> tuple[str, str] | None:
    """``(profile id, request id)`` if ``value`` is an erasure marker, else None.

    A record that starts like one but does not read as one is not a marker (the trainer
    dead-letters it as an example it cannot read).

    >>> erasure_marker(b'{"example_id": "p|churn|1|e"}') is None
    True
    >>> erasure_marker(b'{"erasure": 7}') is None
    True
    """
    if not value or not value.startswith(_MARKER_START):
        return None
    try:
        body = orjson.loads(value)["erasure"]
        return str(body["profile_id"]), str(body["request_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _combined(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two identities' removal records as one person's."""
    return {
        "profile": a["profile"] or b["profile"],
        "quarantined_record": a["quarantined_record"] or b["quarantined_record"],
        "index_entries": a["index_entries"] + b["index_entries"],
        "committed": a["committed"] and b["committed"],
    }


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Eraser:
    """Applies erasure requests (see the module docstring).

    Parameters
    ----------
    scorers
        Source topic -> its scorer (their lanes, store, producer and settings are used).
    assigned
        The source partitions assigned to this worker now.
    config
        The configuration (its goals, buckets and features name the segment sets).
    committed
        Reads the consumer group's committed offsets of source partitions (None: the
        removal does not wait for them).
    """

    def __init__(
        self,
        scorers: Mapping[str, BatchScorer],
        assigned: Callable[[], set[tuple[str, int]]],
        config: Config,
        committed: Committed | None = None,
    ) -> None:
        self.scorers = dict(scorers)
        self.committed = committed
        scorer = next(iter(self.scorers.values()))
        self.store = scorer.store
        self.producer = scorer.producer
        self.settings = scorer.settings
        self.assigned = assigned
        names = Featurizer(config).names
        store = self.store
        self._segment_keys: set[str] = set()
        for goal in config.goals:
            for bucket in config.buckets.names:
                self._segment_keys.add(store.segment_key(goal.name, bucket))
                self._segment_keys.update(
                    store.segment_factor_key(goal.name, bucket, f) for f in names
                )
        self._scanned: tuple[float, set[str], set[str]] | None = None

    async def erase(self, request: ErasureRequest) -> dict[str, Any]:
        """Apply one request; returns its audit record (also stored in ``P:erasures``).

        A request whose audit record exists already (the same record re-delivered after a
        crash that followed its removal) is not applied again: a profile the id started
        since is a new one. Only its marker is sent again when the trainer's part is not
        done yet."""
        store, pid = self.store, request.profile_id
        field, done = await self._audit_field(request)
        marker = marker_message(pid, field)
        training = self.settings.topic("training")
        if done is not None:
            if not await store.erasure_audit(f"{field}/training"):
                await self.producer.send_all([(training, pid.encode(), marker)])
            log.info("erasure %s: applied before (re-delivered)", field)
            return done
        registered = orjson.dumps({"request_id": field, "at": _now_iso()})
        # the id, or every id of its stitched person: each registered before the person is
        # read again (a registered id takes part in no merge), until no merge changed it
        person, found = [pid], [pid]
        while True:
            hset = partial(
                store.redis.hset, store.erasing_key, mapping=dict.fromkeys(person, registered)
            )
            await store.retry("erase", hset)
            found = await person_ids(store, pid)
            if set(found) <= set(person):
                break
            person = [i for i in person if i not in found] + found
        person = [i for i in person if i not in found] + found  # the canonical id last
        topics = self.settings.tombstone_topics()
        removed: dict[str, Any] = {}
        for identity in person:  # the aliases first: none forwards to a profile removed
            part = await self._remove_in_lanes(identity, topics)
            removed = part if not removed else _combined(removed, part)
        if len(person) > 1:
            removed["identities"] = len(person)
        audit: dict[str, Any] = {
            "request_id": request.request_id,
            "profile_sha256": profile_digest(pid),
            "requested_at": request.requested_at,
            "erased_at": _now_iso(),
            "removed": removed,
            "tombstones": topics,
            "source": request.source,
        }
        record = orjson.dumps(audit)
        await store.retry("erase", lambda: store.redis.hset(store.erasures_key, field, record))
        # the trainer's part, named by the audit record it completes (one per identity)
        await self.producer.send_all(
            [(training, i.encode(), marker_message(i, field)) for i in person]
        )
        if removed["profile"]:
            metrics.PROFILES_REMOVED.labels(reason="erasure").inc()
        log.info(
            "erasure %s (profile sha256 %s...): %s; the trainer's part follows its marker",
            field, audit["profile_sha256"][:12], removed,
        )  # fmt: skip
        return audit

    async def _audit_field(self, request: ErasureRequest) -> tuple[str, dict[str, Any] | None]:
        """The audit field of ``request`` and, if it holds this very request's record (a
        re-delivery), that record.

        The field is the request id, unless it holds the record of another request (a
        request id reused, for this person or another): then ``<request id>~<source>``,
        the request's own record coordinates (logged).
        """
        store = self.store
        field = request.request_id
        for candidate in (field, f"{field}~{request.source}"):
            before = await store.erasure_audit(candidate)
            if not before:
                return candidate, None
            if before.get("source") == request.source:
                return candidate, before
            log.warning(
                "erasure: request id %s was used before by another request: this one's "
                "audit record is %s~%s", field, field, request.source,
            )  # fmt: skip
        return f"{field}~{request.source}", None

    async def _applied(self, pid: str) -> dict[tuple[str, int], int]:
        """The profile's applied offsets: source partition -> offset of its last event."""
        store = self.store
        if await self._version(store.profile_key(pid)) in ("", "?"):
            return {}
        fields = await store.retry("erase", lambda: store.redis.hgetall(store.profile_key(pid)))
        applied = {}
        for name, value in fields.items():
            text = name.decode()
            if text.startswith("o:"):
                topic, _, partition = text[2:].rpartition(":")
                applied[(topic, int(partition))] = int(value)
        return applied

    async def _wait_committed(self, applied: dict[tuple[str, int], int], wait: float) -> bool:
        """Wait until the consumer group committed past every applied offset (so no crash
        can re-deliver an event of the person, which would re-create it); False if that
        did not happen within ``wait`` seconds, or the offsets cannot be read."""
        if not applied or self.committed is None:
            return True
        deadline = time.monotonic() + wait
        while True:
            try:
                committed = await self.committed(list(applied))
            except Exception as exc:  # noqa: BLE001 - not worth holding every erasure up
                log.warning(
                    "erasure: cannot read the consumer group's committed offsets (%r; "
                    "the worker's Kafka principal needs Describe on the group): not waiting",
                    exc,
                )
                return False
            if all(committed.get(tp, -1) > offset for tp, offset in applied.items()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _remove_in_lanes(self, pid: str, topics: list[str]) -> dict[str, Any]:
        """Remove the profile and send its tombstones to ``topics``, inside the lanes of its
        partitions assigned here, once the person's applied events are committed.

        The commit is awaited first outside the lanes (up to :data:`COMMIT_WAIT`
        seconds); events applied since then (a profile that keeps sending) are awaited
        inside them, where no batch of those partitions can apply more (up to
        :data:`LANE_COMMIT_WAIT` seconds, which the partitions wait too). The tombstones
        follow the removal in the lanes, so they come after every score of the person
        and before any score of a new profile of the id.
        """
        applied = await self._applied(pid)
        committed = await self._wait_committed(applied, COMMIT_WAIT)
        local: list[tuple[str, int]] = []
        lanes = set()  # each lane once: topics of one partition number share one
        for topic, partition in sorted(set(applied) & self.assigned()):
            if topic in self.scorers:
                identity = self.scorers[topic].lane_identity(topic, partition)
                if identity not in lanes:
                    lanes.add(identity)
                    local.append((topic, partition))
        Job = Callable[[], Awaitable[dict[str, Any]]]

        def inside(lanes: list[tuple[str, int]], job: Job) -> Job:
            if not lanes:
                return job
            (topic, partition), rest = lanes[0], lanes[1:]

            async def in_lane() -> dict[str, Any]:
                return await self.scorers[topic].lane(topic, partition).run(inside(rest, job))

            return in_lane

        async def job() -> dict[str, Any]:
            nonlocal committed
            now = await self._applied(pid)
            if now != applied:
                committed = await self._wait_committed(now, LANE_COMMIT_WAIT)
            removed = await self._remove(pid, set(applied) | set(now))
            await self.producer.send_all([(topic, pid.encode(), None) for topic in topics])
            return removed

        removed = await inside(local, job)()
        if not committed:
            log.warning(
                "erasure: the consumer group's commit of the person's last events was not "
                "confirmed; removed anyway: a crash before it would re-deliver them and "
                "start a new profile from them (erase the id again then)"
            )
        removed["committed"] = committed
        return removed

    async def _index_keys(self, sources: set[tuple[str, int]]) -> tuple[list[str], list[str]]:
        """(the due and activity indexes, the segment sets) that may hold a profile."""
        store = self.store
        now = time.monotonic()
        if self._scanned is None or now - self._scanned[0] > INDEX_KEYS_TTL:
            self._scanned = (now, *await self._scan_index_keys())
        _, zsets, sets = self._scanned
        zsets = zsets | {store.due_key(t, p) for t, p in sources}
        zsets |= {store.activity_key(t, p) for t, p in sources}
        return sorted(zsets), sorted(sets | self._segment_keys)

    async def _scan_index_keys(self) -> tuple[set[str], set[str]]:
        """(``P:due:*`` and ``P:seen:*``, ``P:seg:*`` and ``P:segf:*``): one ``SCAN`` of
        the keyspace, matching the keys after ``P:`` that start with ``d`` or ``s``."""
        store = self.store
        zset_heads = (f"{store.prefix}:due:", f"{store.prefix}:seen:")
        set_heads = (f"{store.prefix}:seg:", f"{store.prefix}:segf:")

        async def scan() -> tuple[set[str], set[str]]:
            zsets: set[str] = set()
            sets: set[str] = set()
            async for raw in store.redis.scan_iter(match=f"{store.prefix}:[ds]*", count=1000):
                key = raw.decode()
                if key.startswith(zset_heads):
                    zsets.add(key)
                elif key.startswith(set_heads):
                    sets.add(key)
            return zsets, sets

        return await store.retry("erase", scan)

    async def _remove(self, pid: str, sources: set[tuple[str, int]]) -> dict[str, Any]:
        """The fenced removal (:data:`ERASE_SCRIPT`), read again and retried while the
        profile is written meanwhile (by another worker around a rebalance)."""
        store = self.store
        zsets, sets = await self._index_keys(sources)
        key = store.profile_key(pid)
        for _ in range(MAX_FENCED):
            version = await self._version(key)
            if store.cluster:
                reply = await self._remove_cluster(pid, version, zsets, sets)
            else:
                keys = [key, store.quarantine_key(pid), store.quarantined_key(), *zsets, *sets]
                reply = await store.retry(
                    "erase",
                    partial(
                        store.redis.eval, ERASE_SCRIPT, len(keys), *keys, version, pid, len(zsets)
                    ),
                )
            if isinstance(reply, list):
                profile, quarantined, note, entries = (int(x) for x in reply)
                return {
                    "profile": bool(profile),
                    "quarantined_record": bool(quarantined or note),
                    "index_entries": entries,
                }
        raise RuntimeError(f"erasure: the profile was written {MAX_FENCED} times meanwhile")

    async def _version(self, key: str) -> str:
        """The write version as :data:`ERASE_SCRIPT` reads it ('' absent, '?' not a hash)."""
        store = self.store

        async def read() -> str:
            kind = await store.redis.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind == "none":
                return ""
            if kind != "hash":
                return "?"
            v = await store.redis.hget(key, "v")
            return v.decode() if v is not None else ""

        return await store.retry("erase", read)

    async def _remove_cluster(
        self, pid: str, version: str, zsets: list[str], sets: list[str]
    ) -> list[int] | int:
        """Cluster mode: the fenced delete on the profile key, then plain commands."""
        store = self.store

        async def run() -> list[int] | int:
            key = store.profile_key(pid)
            deleted = int(await store.redis.eval(ERASE_PROFILE_SCRIPT, 1, key, version))
            if deleted == -1:
                return -1
            async with store.redis.pipeline(transaction=False) as pipe:
                pipe.delete(store.quarantine_key(pid))
                pipe.hdel(store.quarantined_key(), pid)
                for z in zsets:
                    pipe.zrem(z, pid)
                for s in sets:
                    pipe.srem(s, pid)
                replies = await pipe.execute()
            return [deleted, replies[0], replies[1], sum(replies[2:])]

        return await store.retry("erase", run)


async def erase_or_dead_letter(eraser: Eraser, producer: BatchProducer, record: Record) -> None:
    """Apply the request in ``record``: an unreadable one goes to the DLQ with its reason
    (``bad_erasure_request``); any failure while applying it is retried with backoff, for
    as long as it takes (``customer_ai_retries_total{step="erase"}``)."""
    try:
        request = parse_request(record.value, f"{record.topic}:{record.partition}:{record.offset}")
    except ValueError as exc:
        log.warning("erasure request at %s[%d]@%d refused: %s",
                    record.topic, record.partition, record.offset, exc)  # fmt: skip
        dlq = eraser.settings.topic("dlq")
        letter = dlq_message(record, "bad_erasure_request", str(exc))
        await producer.send_all([(dlq, record.key, letter)])
        return

    def failed(failure: Failure) -> None:
        log.warning(
            "erasure %s failed (attempt %d): %r; retrying in %.1fs",
            request.request_id, failure.attempt, failure.error, failure.delay,
        )  # fmt: skip

    policy = RetryPolicy("erase", attempts=None, first_delay=0.5, factor=2.0, max_delay=30.0)
    await policy.run(partial(eraser.erase, request), on_error=failed)
