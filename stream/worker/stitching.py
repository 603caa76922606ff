"""Identity stitching in the worker: aliases, and merges applied exactly once.

With ``[identity] namespaces`` (:mod:`models.stitching`) a person is one profile, its
canonical id, and aliases. An alias is a record under the alias's own profile key
(``P:p:{<alias>}``) whose ``s`` is the JSON object ``{"merged_into": <canonical id>}``
(a state is a JSON array: the first byte tells them apart); it keeps its applied
offsets ``o:<topic>:<partition>``.

Before a partition's part of a batch is applied (:meth:`Stitcher.resolve`, in the
partition's lane, on the states just loaded):

1. **Aliases.** The events of a profile id that is an alias are forwarded unchanged,
   keyed by its canonical id, to the repartition topic, whose scorer applies them to that
   profile in its partition (the key names the profile there, whatever the event's
   identities); those at or below the alias's applied offset were applied before it
   became one and are skipped. Its due entries are dropped.
2. **Links.** An event whose identities include one the profile does not hold links two
   persons. The winner (:func:`models.stitching.winner`) is this profile or the other
   person's canonical id. If it is the other, the event is forwarded to it, and its lane
   makes the merge. If it is this profile, the merge happens here: the merge messages are
   produced (acknowledged) first, then :data:`~stream.worker.redis_scripts.MERGE_SCRIPT`
   writes, atomically and only while both profiles are at the versions read, the merged
   state, the absorbed profile and its aliases as aliases of the winner, and the segment
   sets. A fenced merge (the other profile moved on: its partition wrote it, or another
   merge took it) is read again and re-decided. After a merge the winner is read again
   (the whole part when the absorbed profile is one of its own), and the events are
   applied to the merged state.

A merge is exactly once: the script is atomic and checks both versions; a crash before it
leaves nothing (the re-delivered event links again), after it the event finds its
identities held by the profile and links nothing. The absorbed profile's partition, whose
write of the absorbed profile the merge fenced, reloads it, finds an alias and forwards.
Merge messages are at least once (produced before the script): one may be repeated, or
name a winner that a racing merge overtook (that winner is merged in turn: follow
``merged_into``).

Redis Cluster is not supported (the script spans two persons' slots): the worker
refuses to start with stitching in cluster mode.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import orjson

from models.engine import Engine
from models.events import Event, Identity, ranked_identities
from models.messages import OutMessage, scores_field
from models.profile import format_time
from models.state import ProfileState
from models.stitching import absorb, fits, rank_of, winner
from stream.ops import metrics
from stream.worker.layouts import StateDecoder
from stream.worker.producer import BatchProducer
from stream.worker.profile_store import alias_record, alias_target, encode_top_factors, is_alias
from stream.worker.redis_scripts import FORWARD_OFFSETS, MERGE
from stream.worker.settings import Settings
from stream.worker.store import LoadedProfile, RedisStore

__all__ = ["MAX_MERGES_PER_PART", "Stitcher", "merge_message", "person_ids"]

log = logging.getLogger(__name__)

#: merges one partition's part of a batch makes at most (each strictly reduces the
#: identities its events link; far beyond any real batch): past it the part fails, and
#: is retried, rather than be applied on profiles loaded before a merge
MAX_MERGES_PER_PART = 100_000
#: alias records followed at most from one identity to its person
_MAX_HOPS = 64
#: the applied offset a merge reads of the other person: none (it is not applying events)
_NO_OFFSET = "o:-"


def readable(row: LoadedProfile) -> bool:
    """Whether a loaded record is one the scorer reads (not a key of another type, not
    quarantined)."""
    return not row.unreadable and not row.quarantined


async def person_ids(store: RedisStore, pid: str) -> list[str]:
    """Every id of ``pid``'s person, its canonical id last: ``pid``, the aliases its
    canonical state lists and the canonical id (alias records followed to the end);
    ``[pid]`` for a profile never stitched (:mod:`stream.worker.erasure`)."""
    canonical, raw = await store.resolve_profile(pid)
    aliases: list[str] = []
    if raw is not None and raw[:1] == b"[":
        data = orjson.loads(raw)
        aliases = list(data[15][1]) if len(data) > 15 else []
    ids = [i for i in dict.fromkeys([pid, *aliases]) if i != canonical]
    return [*ids, canonical]


def merge_message(absorbed: str, into: str, at_ms: int) -> bytes:
    """The score topic's message of a merge, keyed by the absorbed id (also the alias
    record stored under its key).

    >>> merge_message("e-1", "c-1", 0)
    b'{"profile_id":"e-1","merged_into":"c-1","merged_at":"1970-01-01T00:00:00.000Z"}'
    """
    return orjson.dumps(
        {"profile_id": absorbed, "merged_into": into, "merged_at": format_time(at_ms)}
    )


Item = tuple[Any, Any, tuple]


class Stitcher:
    """Aliases and merges for one scorer (see the module docstring).

    Parameters
    ----------
    forward_topic
        The repartition topic the events of an alias (or of a person another partition
        owns) are forwarded to, keyed by the canonical id.
    link
        Whether the records link identities (events); fragments only follow aliases.
    """

    def __init__(
        self,
        engine: Engine,
        store: RedisStore,
        producer: BatchProducer,
        settings: Settings,
        layouts: StateDecoder,
        forward_topic: str,
        *,
        link: bool = True,
    ) -> None:
        self.engine = engine
        self.config = engine.config
        self.store = store
        self.producer = producer
        self.layouts = layouts
        self.forward_topic = forward_topic
        self.link = link
        self.scores_topic = settings.topic("scores")
        self.tombstone_topics = settings.tombstone_topics()[1:]  # the latest scores
        self.lowest = len(self.config.identity_namespaces)

    async def resolve(
        self,
        items: list[Item],
        loaded: dict[str, LoadedProfile],
        due_key: str,
        outbox: list[OutMessage],
        counts: dict[str, int],
        forwarded: dict[str, int],
        offset_field: str,
    ) -> tuple[list[Item], set[str], bool]:
        """The items to apply here, the loaded ids that are aliases (not applied, their due
        entries dropped), and whether the part must be loaded again (a merge made one of
        its profiles an alias). A merge's winner is read again in ``loaded`` at once.
        Forwards go to ``outbox``; ``forwarded`` takes the highest offset each profile id
        forwarded (:meth:`note_forwarded` stores it once the outbox is acknowledged)."""
        aliases: dict[str, str] = {}
        for pid, row in loaded.items():
            target = alias_target(row.state)
            if target is not None:
                aliases[pid] = target
        if not aliases and not self.link:
            return items, set(), False
        kept: list[Item] = []
        for item in items:
            record, event, _ = item
            target = aliases.get(event.profile_id)
            if target is None:
                kept.append(item)
            elif record.offset > loaded[event.profile_id].offset:  # else applied before
                self._forward(item, target, outbox, counts)
                forwarded[event.profile_id] = max(
                    record.offset, forwarded.get(event.profile_id, -1)
                )
        if aliases:
            await self.store.drop_due(due_key, list(aliases))
        if not self.link:
            return kept, set(aliases), False
        states: dict[str, ProfileState | None] = {}
        applied: list[Item] = []
        merges = 0
        for n, item in enumerate(kept):
            record, event, _ = item
            pid = event.profile_id
            while True:  # until the event links nothing more (each merge: pid read again)
                found = loaded.get(pid)  # None: not loaded (a retry of fenced writes only)
                if found is None or record.offset <= found.offset or not readable(found):
                    applied.append(item)  # applied before, or quarantined when applied
                    break
                if pid not in states:
                    try:
                        states[pid] = self.layouts.decode(found) if found.state else None
                    except Exception:  # noqa: BLE001 - unreadable: quarantined when applied
                        applied.append(item)
                        break
                kind, other = await self._link(pid, states[pid], found, cast(Event, event))
                if kind == "":
                    applied.append(item)
                    break
                if kind == "forward":
                    self._forward(item, other, outbox, counts)
                    forwarded[pid] = max(record.offset, forwarded.get(pid, -1))
                    break
                # merged (or fenced): read this profile again; the other one, if this part
                # holds it too, is an alias now: the whole part is loaded again
                merges += 1
                if merges > MAX_MERGES_PER_PART:
                    raise RuntimeError(f"{merges} merges in one part of a batch")
                if other in loaded:
                    return applied + kept[n:], set(aliases), True
                loaded[pid] = (await self.store.load([pid], offset_field))[pid]
                states.pop(pid, None)
                if is_alias(loaded[pid]):  # taken meanwhile by another person
                    return applied + kept[n:], set(aliases), True
        return applied, set(aliases), False

    async def note_forwarded(self, offset_field: str, forwarded: dict[str, int]) -> None:
        """Raise the applied offset of each profile id whose events were forwarded (after
        the forwards were acknowledged and the batch stored): a re-delivery forwards only
        later ones."""
        if forwarded:
            keys = [self.store.profile_key(a) for a in forwarded]
            await self.store.run_script(FORWARD_OFFSETS, keys, [offset_field, *forwarded.values()])

    def _forward(
        self, item: Item, target: str, outbox: list[OutMessage], counts: dict[str, int]
    ) -> None:
        outbox.append((self.forward_topic, target.encode(), item[0].value or b""))
        counts["forwarded"] += 1

    async def _link(
        self,
        pid: str,
        state: ProfileState | None,
        row: LoadedProfile,
        event: Event,
    ) -> tuple[str, str]:
        """Link ``event``'s identities to ``pid``: ``("", "")`` (nothing to link, or
        refused), ``("forward", <the canonical id the event goes to>)`` or ``("merge",
        <the id absorbed>)`` (a merge was stored, or fenced: ``pid`` is read again)."""
        ranked = ranked_identities(event.body, self.config.identity_namespaces)
        held = {pid, *(state.aliases if state is not None else ())}
        for _, other in ranked:
            if other in held:
                continue
            person = await self._person(other)
            if person is None:  # unreadable, or a broken chain: the link waits for a fix
                log.warning("identity link refused: another identity's record cannot be read")
                metrics.IDENTITY_LINKS.labels(outcome="refused").inc()
                continue
            theirs, their_row, their_state = person
            if theirs == pid:
                continue
            mine = (rank_of(pid, state, ranked, self.lowest), pid)
            best = winner(mine, (rank_of(theirs, their_state, ranked, self.lowest), theirs))
            if not fits(state, their_state, self.config.max_identities):
                log.warning(
                    "identity link refused: the person would hold more than %d identities "
                    "([identity] max_identities); the event stays with its profile",
                    self.config.max_identities,
                )
                metrics.IDENTITY_LINKS.labels(outcome="refused").inc()
                continue
            if best[1] != pid:
                return "forward", best[1]
            done = await self._merge(best, row, state, theirs, their_row, their_state)
            if done < 0:  # one of the two is being erased: no link while it is
                metrics.IDENTITY_LINKS.labels(outcome="refused").inc()
                continue
            return "merge", theirs
        return "", ""

    async def _person(self, identity: str) -> tuple[str, LoadedProfile, ProfileState | None] | None:
        """The canonical id of ``identity``'s person (aliases followed to the end), its
        record and state (``None``: no state yet); ``None`` when a record on the way cannot
        be read (another type, quarantined, not a state) or the aliases loop."""
        seen = {identity}
        while True:
            row = (await self.store.load([identity], _NO_OFFSET))[identity]
            if not readable(row):
                return None
            target = alias_target(row.state)
            if target is None:
                break
            if target in seen or len(seen) > _MAX_HOPS:
                return None
            seen.add(target)
            identity = target
        if not row.state:
            return identity, row, None
        try:
            await self.layouts.learn([row.state])
            return identity, row, self.layouts.decode(row)
        except Exception:  # noqa: BLE001 - its own partition quarantines it
            return None

    async def _merge(
        self,
        best: Identity,
        row: LoadedProfile,
        state: ProfileState | None,
        absorbed: str,
        their_row: LoadedProfile,
        their_state: ProfileState | None,
    ) -> int:
        """Absorb ``absorbed`` into ``best`` (this partition's profile): 1 done, 0 fenced,
        -1 refused (either is being erased: ``P:erasing``)."""
        pid = best[1]
        erasing = self.store.erasing_key
        if any(
            await self.store.retry(
                "erasing", lambda: self.store.redis.hmget(erasing, pid, absorbed)
            )
        ):
            return -1
        before = _entries(state, row.top_factors)
        theirs = _entries(their_state, their_row.top_factors)
        merged = absorb(state, their_state, best, absorbed, self.engine.featurizer)
        # the goals whose served score the winner takes from the absorbed profile
        taken = {
            g: theirs[g]
            for g, s in merged.goals.items()
            if before.get(g, (None, ()))[0] is None and s.bucket is not None and g in theirs
        }
        after = {**before, **taken}
        index = {name: i for i, name in enumerate(self.engine.featurizer.names)}
        leave = sorted(self.store.index_keys(theirs))
        join = sorted(self.store.index_keys(taken) - self.store.index_keys(before))
        now = int(time.time() * 1000)
        message = merge_message(absorbed, pid, now)
        # the outputs first (at least once), then the state (exactly once)
        notes: list[OutMessage] = [(self.scores_topic, absorbed.encode(), message)]
        notes += [(topic, absorbed.encode(), None) for topic in self.tombstone_topics]
        await self.producer.send_all(notes)
        alias_keys = [
            self.store.profile_key(a) for a in (their_state.aliases if their_state else ())
        ]
        keys = [
            self.store.profile_key(pid), self.store.profile_key(absorbed), erasing, *alias_keys
        ]  # fmt: skip
        args = [
            row.version,
            their_row.version,
            merged.to_bytes(),
            scores_field(merged.goals),
            encode_top_factors(after, index),
            alias_record(pid, format_time(now)),
            pid,
            absorbed,
            len(alias_keys),
            len(leave),
        ]
        done = int(await self.store.run_script(MERGE, keys + leave + join, args))
        if done >= 0:
            metrics.IDENTITY_LINKS.labels(outcome="merged" if done else "fenced").inc()
        return done


def _entries(
    state: ProfileState | None, top_factors: dict[str, tuple[str, ...]]
) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """A profile's place in the segment index: (bucket, top factors) per goal."""
    if state is None:
        return {}
    return {g: (s.bucket, top_factors.get(g, ())) for g, s in state.goals.items()}
