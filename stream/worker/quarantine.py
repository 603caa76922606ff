"""A poison record costs only itself: profiles whose stored record cannot be read.

A profile record the worker cannot read (a key that is not a hash, or an ``s`` field that
is not a state this version reads: not JSON, not a state array, a newer format) would
otherwise fail its partition's part of every batch that touches it, five attempts each,
and send the whole part to the DLQ. Instead the scorer hands it here
(:meth:`~stream.worker.scorer.BatchScorer._apply`):

- :func:`quarantine` moves the key aside to ``P:quarantine:{<profile_id>}`` (``RENAME``:
  the same hash slot), records why in the hash ``P:quarantined`` (profile id -> JSON
  ``reason``, ``detail``, ``at``, ``topic``, ``partition``) and drops the profile's entry
  of the partition's due index, in one script (without cluster mode; in cluster mode the
  record and the due entry follow in a pipeline), and counts
  ``customer_ai_quarantined_profiles_total{reason}``;
- the profile's events of the batch go to the DLQ as ``corrupt_state`` with the profile
  id in the detail (:func:`dead_letter_detail`), and the rest of the partition's part is
  scored and stored as usual: no retry, no attempt used up;
- while the record is quarantined (its quarantine key exists and the profile has no key),
  the profile's next events go to the DLQ as ``corrupt_state`` too, so that
  ``customer-ai quarantine release ID --restore`` can put the record back and its events
  be produced again from their dead letters (``--reset`` drops it instead: the profile
  starts fresh at its next event).

The segment sets keep a quarantined profile's memberships (``--restore`` gives back a
consistent index; ``customer-ai segment`` skips the member, whose stored bucket is gone,
as a stale entry); ``--reset`` removes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from models.profile import format_time
from stream.ops import metrics
from stream.worker.redis_scripts import QUARANTINE, QUARANTINE_SCRIPT

if TYPE_CHECKING:
    from stream.worker.dead_letters import Record
    from stream.worker.profile_store import LoadedProfile, ProfileStore

__all__ = [
    "DLQ_REASON",
    "REASONS",
    "Poisoned",
    "dead_letter_detail",
    "isolate",
    "poisoned",
    "quarantine",
    "read_records",
]

log = logging.getLogger(__name__)

#: the dead-letter reason of a quarantined profile's events
DLQ_REASON = "corrupt_state"
#: why a record is quarantined: its key is not a hash; its ``s`` field cannot be decoded
REASONS = ("wrong_type", "unreadable_state")
#: characters of an error's text kept in a record's ``detail``
DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Poisoned:
    """A profile whose loaded record cannot be read, or is quarantined already."""

    profile_id: str
    #: one of :data:`REASONS`; ``""`` for a profile quarantined before this batch
    reason: str
    detail: str
    #: the write version it was loaded at; ``None`` when its key is not a hash
    version: str | None
    #: the applied offset of the batch's partition read with it (-1: none)
    offset: int = -1


def poisoned(profile_id: str, row: LoadedProfile, error: BaseException | None = None) -> Poisoned:
    """Describe a loaded row that is quarantined, unreadable, or whose decoding raised ``error``.

    >>> from stream.worker.profile_store import LoadedProfile
    >>> poisoned("p-1", LoadedProfile(b"x", "3", 7), ValueError("bad")).reason
    'unreadable_state'
    >>> poisoned("p-1", LoadedProfile(None, "", -1, unreadable="WRONGTYPE ...")).version is None
    True
    """
    if row.quarantined:
        return Poisoned(profile_id, "", "quarantined", None)
    if row.unreadable:
        return Poisoned(profile_id, "wrong_type", row.unreadable[:DETAIL_CHARS], None)
    text = f"{type(error).__name__}: {error}" if error is not None else "unreadable"
    return Poisoned(profile_id, "unreadable_state", text[:DETAIL_CHARS], row.version, row.offset)


def dead_letter_detail(p: Poisoned) -> str:
    """The DLQ detail of a quarantined profile's event: the profile id and what to run."""
    if p.reason:
        why = f"its stored record cannot be read ({p.reason}: {p.detail}); it was quarantined"
    else:
        why = "its stored record is quarantined"
    return (
        f"profile {p.profile_id!r}: {why}; see `customer-ai quarantine show {p.profile_id}`, "
        f"then `customer-ai quarantine release {p.profile_id} --restore` or `--reset`"
    )


async def quarantine(
    store: ProfileStore, found: Iterable[Poisoned], topic: str, partition: int, due_key: str
) -> set[str]:
    """Move the records of ``found`` (newly unreadable ones) aside; returns the ids moved.

    A record that changed since it was loaded (another worker quarantined or rewrote it,
    an operator released it) is not moved: the caller re-does that profile from the fresh
    record, as for a fenced write. Profiles of ``found`` quarantined before lose their
    entry of the due index, should one be left (cluster mode: a crash between the steps).
    """
    found = list(found)
    todo = [p for p in found if p.reason]
    stale = [p.profile_id for p in found if not p.reason]
    if not todo and not stale:
        return set()
    at = format_time(int(time.time() * 1000))
    records = {
        p.profile_id: orjson.dumps(
            {
                "reason": p.reason,
                "detail": p.detail,
                "at": at,
                "topic": topic,
                "partition": partition,
            }
        )
        for p in todo
    }

    def args(p: Poisoned) -> list[Any]:
        return [p.profile_id, records[p.profile_id], "*" if p.version is None else p.version]

    def pair(p: Poisoned) -> list[Any]:
        return [store.profile_key(p.profile_id), store.quarantine_key(p.profile_id)]

    if store.cluster:  # the record and the due index live in other slots

        async def run() -> list[Any]:
            async with store.redis.pipeline(transaction=False) as pipe:
                for p in todo:
                    pipe.eval(QUARANTINE_SCRIPT, 2, *pair(p), *args(p))
                moved = await pipe.execute() if todo else []
            done = [p.profile_id for p, ok in zip(todo, moved) if ok]
            if done or stale:
                async with store.redis.pipeline(transaction=False) as pipe:
                    if done:
                        pipe.hset(store.quarantined_key(), mapping={d: records[d] for d in done})
                    pipe.zrem(due_key, *done, *stale)
                    await pipe.execute()
            return list(moved)

    else:
        calls = [(QUARANTINE, [*pair(p), store.quarantined_key(), due_key], args(p)) for p in todo]

        def queue(pipe: Any) -> None:
            if stale:
                pipe.zrem(due_key, *stale)

        async def run() -> list[Any]:
            return await store._run_scripts(calls, queue)

    results = await store.retry("quarantine", run)
    moved = {p.profile_id for p, ok in zip(todo, results) if ok}
    for p in todo:
        if p.profile_id in moved:
            metrics.QUARANTINED_PROFILES.labels(reason=p.reason).inc()
            log.error(
                "%s[%d]: profile %r quarantined (%s: %s); its events go to the DLQ as %s "
                "(see `customer-ai quarantine`)",
                topic, partition, p.profile_id, p.reason, p.detail, DLQ_REASON,
            )  # fmt: skip
    return moved


async def read_records(store: ProfileStore) -> dict[str, dict[str, Any]]:
    """Every quarantine record: profile id -> its JSON (an unreadable one as ``detail``)."""

    async def run() -> dict[bytes, bytes]:
        return dict(await store.redis.hgetall(store.quarantined_key()))

    out: dict[str, dict[str, Any]] = {}
    for pid, raw in sorted((await store.retry("quarantined", run)).items()):
        try:
            record = orjson.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            record = {"reason": "?", "detail": raw[:DETAIL_CHARS].decode("utf-8", "replace")}
        out[pid.decode("utf-8", "replace")] = record
    return out


async def isolate(
    store: ProfileStore,
    topic: str,
    partition: int,
    items: Sequence[tuple[Record, Any, tuple]],
    poison: dict[str, Poisoned],
    due_key: str,
    counts: dict[str, int],
    reject: Callable[[Record, str, str], None],
) -> set[str]:
    """Quarantine ``poison``'s unreadable records; dead-letter (``reject``) their records
    of ``items`` (a scorer's decoded records: events or fragments).

    Returns the profiles whose record changed since it was loaded (not quarantined
    and not dead-lettered: re-done from the fresh record, like a fenced write).
    """
    moved = await quarantine(store, poison.values(), topic, partition, due_key)
    changed = {pid for pid, p in poison.items() if p.reason and pid not in moved}
    for record, event, _ in items:
        p = poison.get(event.profile_id)
        if p is None or p.profile_id in changed:
            continue
        if record.offset <= p.offset:  # applied before the record went bad
            counts["skipped"] += 1
            continue
        reject(record, DLQ_REASON, dead_letter_detail(p))
        counts["rejected"] += 1
    return changed
