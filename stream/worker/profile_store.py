"""Profile state, the due index, watermarks and the segment index: loaded and stored per batch.

See :mod:`stream.worker.store` for the keys and the invariants of every write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ResponseError

from stream.worker.redis_scripts import (
    CAS_BATCH,
    CAS_SCRIPT,
    DUE_BATCH,
    LOAD_BATCH,
    SCRIPT_CHUNK,
    SCRIPT_CHUNK_MOVES,
    Script,
    ScriptCall,
    run_scripts,
)
from stream.worker.store_connection import StoreConnection

__all__ = [
    "LoadedProfile",
    "alias_record",
    "alias_target",
    "is_alias",
    "ProfileStore",
    "ProfileWrite",
    "SegmentEntry",
    "decode_top_factors",
    "encode_top_factors",
]

log = logging.getLogger(__name__)

#: A profile's place in one goal's segment index: (bucket or None, top factor names).
SegmentEntry = tuple[str | None, tuple[str, ...]]


def encode_top_factors(
    entries: dict[str, SegmentEntry], index: Mapping[str, int] | None = None
) -> str:
    """The compact ``tf`` field: ``goal:f1,f2;goal2:f3`` (goals without factors left out).

    A feature found in ``index`` (name -> position in the feature vector) is written as
    its position, which keeps the field at about 25 bytes per goal instead of 100.

    >>> encode_top_factors({"conversion": ("high", ("a", "b")), "churn": (None, ())})
    'conversion:a,b'
    >>> encode_top_factors({"conversion": ("high", ("b", "x"))}, {"a": 0, "b": 1})
    'conversion:1,x'
    """
    lookup = index or {}
    return ";".join(
        f"{goal}:{','.join(str(lookup.get(f, f)) for f in fs)}"
        for goal, (_, fs) in entries.items()
        if fs
    )


def decode_top_factors(
    raw: bytes | str | None, names: Sequence[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """Inverse of :func:`encode_top_factors`; positions are looked up in ``names``.

    >>> decode_top_factors(b"conversion:a,b;churn:c")
    {'conversion': ('a', 'b'), 'churn': ('c',)}
    >>> decode_top_factors(b"conversion:1,x,7", ["a", "b"])  # 7: not a feature any more
    {'conversion': ('b', 'x')}
    """
    if not raw:
        return {}
    text = raw.decode() if isinstance(raw, bytes) else raw
    out: dict[str, tuple[str, ...]] = {}
    for part in text.split(";"):
        goal, _, factors = part.partition(":")
        if not goal or not factors:
            continue
        decoded = []
        for token in factors.split(","):
            if not token.isdigit():
                decoded.append(token)
            elif names is not None and int(token) < len(names):
                decoded.append(names[int(token)])
        out[goal] = tuple(decoded)
    return out


@dataclass(slots=True)
class LoadedProfile:
    """A profile's stored state as loaded for a batch.

    ``unreadable`` says why the key could not be read (not a hash: ``WRONGTYPE ...``),
    ``""`` when it could; ``quarantined`` that the profile has no key and its record is
    quarantined (:mod:`stream.worker.quarantine`).
    """

    state: bytes | None
    version: str
    offset: int
    top_factors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unreadable: str = ""
    quarantined: bool = False


@dataclass(slots=True)
class ProfileWrite:
    """A conditional state write: applies only if the stored version is ``expected_version``."""

    profile_id: str
    expected_version: str
    offset_field: str
    offset: int
    state: bytes
    scores: bytes
    #: goal -> (bucket, top factors) as stored before and after this write; the segment
    #: index moves from the sets of ``index_before`` to those of ``index_after``
    index_before: dict[str, SegmentEntry] = field(default_factory=dict)
    index_after: dict[str, SegmentEntry] = field(default_factory=dict)


def alias_target(raw: bytes | None) -> str | None:
    """The canonical id an alias record names (``None``: ``raw`` is a state, or nothing).

    >>> alias_target(b'{"merged_into":"c-1","merged_at":"2026-12-07T10:00:00.000Z"}')
    'c-1'
    >>> alias_target(b'[2,0,0]') is None
    True
    """
    if not raw or raw[:1] != b"{":
        return None
    try:
        target = orjson.loads(raw).get("merged_into")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return target if isinstance(target, str) and target else None


def is_alias(row: LoadedProfile) -> bool:
    """Whether a loaded record is an alias's (its ``s`` a JSON object, not a state array)."""
    return row.state is not None and row.state[:1] == b"{"


def alias_record(canonical: str, merged_at: str | None = None) -> bytes:
    """The ``s`` of an alias's record (identity stitching): the canonical id it forwards
    to, and when the merge made it (``customer-ai backfill`` writes none).

    >>> alias_record("c-1")
    b'{"merged_into":"c-1"}'
    """
    record: dict[str, str] = {"merged_into": canonical}
    if merged_at is not None:
        record["merged_at"] = merged_at
    return orjson.dumps(record)


def _chunks(
    writes: list[ProfileWrite], moves: dict[str, tuple[list[str], list[str]]]
) -> Iterator[list[ProfileWrite]]:
    """``writes`` in order, cut into chunks of at most :data:`~stream.worker.redis_scripts.SCRIPT_CHUNK` writes and
    :data:`~stream.worker.redis_scripts.SCRIPT_CHUNK_MOVES` set moves (a single write may exceed the latter)."""
    chunk: list[ProfileWrite] = []
    n_moves = 0
    for w in writes:
        leave, join = moves[w.profile_id]
        n = len(leave) + len(join)
        if chunk and (len(chunk) >= SCRIPT_CHUNK or n_moves + n > SCRIPT_CHUNK_MOVES):
            yield chunk
            chunk, n_moves = [], 0
        chunk.append(w)
        n_moves += n
    if chunk:
        yield chunk


def _cluster_row(row: Any, aside: Any) -> Any:
    """A cluster load's ``HMGET`` reply and ``EXISTS`` of the quarantine key, as the
    script's row: an error's text (a key of another type), ``0`` (quarantined) or the
    fields. Other errors are raised (the store's retry or the caller handles them)."""
    if isinstance(row, ResponseError):
        if str(row).startswith("WRONGTYPE"):
            return str(row).encode()
        raise row
    if isinstance(aside, Exception):
        raise aside
    if row[0] is None and row[1] is None and aside:
        return 0
    return row


def _unloaded(row: Any) -> LoadedProfile:
    """The :class:`LoadedProfile` of a load script row that is not a hash's fields."""
    if row == 0:
        return LoadedProfile(None, "", -1, quarantined=True)
    text = row.decode("utf-8", "replace") if isinstance(row, bytes) else str(row)
    if not text.startswith("WRONGTYPE"):  # not the record's fault: fail the load
        raise ResponseError(text)
    return LoadedProfile(None, "", -1, unreadable=text)


class ProfileStore(StoreConnection):
    """Batch-wise access to profile state, the due index, watermarks and segments."""

    async def _run_scripts(
        self, calls: list[ScriptCall], queue: Callable[[Any], None] | None = None
    ) -> list[Any]:
        """:func:`~stream.worker.redis_scripts.run_scripts` on this store's client."""
        return await run_scripts(self.redis, calls, queue)

    # ---- keys --------------------------------------------------------------------
    def profile_key(self, profile_id: str) -> str:
        return f"{self.prefix}:p:{{{profile_id}}}"

    def quarantine_key(self, profile_id: str) -> str:
        """Where a profile's unreadable record is moved aside (its hash tag kept)."""
        return f"{self.prefix}:quarantine:{{{profile_id}}}"

    def quarantined_key(self) -> str:
        """The quarantine records: profile id -> JSON (reason, detail, when, where)."""
        return f"{self.prefix}:quarantined"

    def due_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:due:{topic}:{partition}"

    def activity_key(self, topic: str, partition: int) -> str:
        """The partition's activity index (only with ``[retention]``): profile -> newest event time."""
        return f"{self.prefix}:seen:{topic}:{partition}"

    def watermark_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:wm:{topic}:{partition}"

    def segment_key(self, goal: str, bucket: str) -> str:
        return f"{self.prefix}:seg:{goal}:{bucket}"

    def segment_factor_key(self, goal: str, bucket: str, feature: str) -> str:
        return f"{self.prefix}:segf:{goal}:{bucket}:{feature}"

    def index_keys(self, entries: dict[str, SegmentEntry]) -> set[str]:
        """The segment sets a profile with these (bucket, top factors) per goal belongs to."""
        keys: set[str] = set()
        for goal, (bucket, factors) in entries.items():
            if bucket is None:
                continue
            keys.add(self.segment_key(goal, bucket))
            keys.update(self.segment_factor_key(goal, bucket, f) for f in factors)
        return keys

    def index_moves(self, write: ProfileWrite) -> tuple[list[str], list[str]]:
        """Segment sets to leave and to join for ``write`` (sorted, disjoint)."""
        # every key names its goal: only goals whose (bucket, factors) changed can move
        old, new = write.index_before, write.index_after
        changed = [g for g in old.keys() | new.keys() if old.get(g) != new.get(g)]
        if not changed:
            return [], []
        before = self.index_keys({g: old[g] for g in changed if g in old})
        after = self.index_keys({g: new[g] for g in changed if g in new})
        return sorted(before - after), sorted(after - before)

    # ---- profiles ------------------------------------------------------------------
    async def load(self, profile_ids: list[str], offset_field: str) -> dict[str, LoadedProfile]:
        """Load states, write versions and applied offsets in one pipeline.

        Returns the same rows as one ``HMGET`` per profile would. Without cluster mode a
        chunk of :data:`~stream.worker.redis_scripts.SCRIPT_CHUNK` profiles is one call of
        :data:`~stream.worker.redis_scripts.LOAD_BATCH_SCRIPT`; in cluster mode each profile
        is one ``HMGET`` (and one ``EXISTS`` of its quarantine key). A key that is not a
        hash is returned as ``unreadable`` (the other profiles load as usual); a profile
        without a key whose record is quarantined as ``quarantined``.
        """
        if not profile_ids:
            return {}

        keys = [self.profile_key(pid) for pid in profile_ids]
        quarantine = [self.quarantine_key(pid) for pid in profile_ids]

        async def run() -> list:
            if self.cluster:  # the keys live in many slots: one HMGET each
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key, aside in zip(keys, quarantine):
                        pipe.hmget(key, "s", "v", offset_field, "tf")
                        pipe.exists(aside)
                    replies = await pipe.execute(raise_on_error=False)
                return [_cluster_row(r, q) for r, q in zip(replies[::2], replies[1::2])]
            calls: list[ScriptCall] = [
                (LOAD_BATCH, keys[lo : lo + SCRIPT_CHUNK] + quarantine[lo : lo + SCRIPT_CHUNK],
                 [offset_field])
                for lo in range(0, len(keys), SCRIPT_CHUNK)
            ]  # fmt: skip
            return [row for reply in await self._run_scripts(calls) for row in reply]

        rows = await self.retry("load", run)
        out: dict[str, LoadedProfile] = {}
        for pid, row in zip(profile_ids, rows):
            if not isinstance(row, list):  # 0: quarantined; an error's text: unreadable
                out[pid] = _unloaded(row)
                continue
            state, version, offset, tf = row
            out[pid] = LoadedProfile(
                state,
                version.decode() if version else "",
                int(offset) if offset is not None else -1,
                decode_top_factors(tf, self.feature_names),
            )
        return out

    async def save(
        self,
        writes: list[ProfileWrite],
        due: dict[str, int | None],
        due_key: str,
        watermark_key: str | None,
        watermark: int | None,
        due_versions: dict[str, str] | None = None,
        activity: tuple[str, dict[str, int]] | None = None,
    ) -> set[str]:
        """Write states conditionally and update the due index, segments and watermark.

        The segment index moves in the state's script (atomically) unless the store is in
        cluster mode, where it is updated in the following pipeline. A due entry whose
        profile has a version in ``due_versions`` (the version the entry was computed from:
        the one loaded, or the one this save writes) moves only while the profile is still
        at that version (:data:`~stream.worker.redis_scripts.DUE_BATCH_SCRIPT`; not in
        cluster mode, where the profile and the index live in different slots). Due entries
        of fenced writes are left as they are.

        Without cluster mode the writes go in chunks (at most :data:`~stream.worker.redis_scripts.SCRIPT_CHUNK` writes
        and :data:`~stream.worker.redis_scripts.SCRIPT_CHUNK_MOVES` set moves) through
        :data:`~stream.worker.redis_scripts.CAS_BATCH_SCRIPT`, and the guarded due entries
        in chunks of :data:`~stream.worker.redis_scripts.SCRIPT_CHUNK` through
        :data:`~stream.worker.redis_scripts.DUE_BATCH_SCRIPT`, each chunk one call; in
        cluster mode each write is one ``EVAL`` of
        :data:`~stream.worker.redis_scripts.CAS_SCRIPT`. Two round trips either way: the
        writes, then (once the fenced ones are known) the index, due entries and watermark.

        ``activity`` (``[retention]`` on): the partition's activity index and each written
        profile's newest event time, added (``ZADD``) for the writes that applied, in the
        same round trip as the due entries.

        Returns the profile ids whose write was refused (fenced: the version moved).
        """
        if not writes and not due and (watermark_key is None or watermark is None):
            return set()
        moves = {w.profile_id: self.index_moves(w) for w in writes}
        if self.cluster:
            results = await self.retry("store", lambda: self._cas_cluster(writes)) if writes else []
        else:
            calls: list[ScriptCall] = []
            for chunk in _chunks(writes, moves):
                keys: list[Any] = [self.profile_key(w.profile_id) for w in chunk]
                # each segment set once in KEYS, referred to by its position (1-based)
                position: dict[str, str] = {}
                args: list[Any] = []
                for w in chunk:
                    leave, join = moves[w.profile_id]
                    refs = []
                    for sets in (leave, join):
                        for key in sets:
                            if key not in position:
                                keys.append(key)
                                position[key] = str(len(keys))
                        refs.append(",".join([position[key] for key in sets]))
                    args += (*self.write_args(w), *refs)
                calls.append((CAS_BATCH, keys, args))

            async def run() -> list:
                return [ok for reply in await self._run_scripts(calls) for ok in reply]

            results = await self.retry("store", run) if calls else []
        if len(results) != len(writes):  # the scripts walk KEYS and ARGV by the counts
            raise RuntimeError(f"{len(results)} CAS results for {len(writes)} writes")
        fenced = {w.profile_id for w, ok in zip(writes, results) if not ok}

        # the due entries computed from a version (not of a fenced write: a fenced write's
        # "next" version may be another worker's) move only at that version; the others
        # (and all in cluster mode) are plain ZADD / ZREM
        guarded = {} if self.cluster else (due_versions or {})
        checked = [(pid, ts) for pid, ts in due.items() if pid in guarded and pid not in fenced]
        add = {
            pid: ts
            for pid, ts in due.items()
            if ts is not None and pid not in fenced and pid not in guarded
        }
        remove = [
            pid
            for pid, ts in due.items()
            if ts is None and pid not in fenced and pid not in guarded
        ]

        def queue(pipe: Any) -> None:
            for w in writes if self.cluster else ():
                if w.profile_id in fenced:
                    continue
                leave, join = moves[w.profile_id]
                for key in leave:
                    pipe.srem(key, w.profile_id)
                for key in join:
                    pipe.sadd(key, w.profile_id)
            if add:
                pipe.zadd(due_key, add)
            if remove:
                pipe.zrem(due_key, *remove)
            if watermark_key is not None and watermark is not None:
                pipe.set(watermark_key, watermark)
            if activity is not None:
                seen = {pid: ts for pid, ts in activity[1].items() if pid not in fenced}
                if seen:
                    pipe.zadd(activity[0], seen)

        due_calls: list[ScriptCall] = []
        for lo in range(0, len(checked), SCRIPT_CHUNK):
            entries = checked[lo : lo + SCRIPT_CHUNK]
            due_args: list[Any] = []
            for pid, ts in entries:
                due_args += (guarded[pid], pid, "" if ts is None else ts)
            keys = [due_key, *(self.profile_key(p) for p, _ in entries)]
            due_calls.append((DUE_BATCH, keys, due_args))

        async def run_index() -> None:
            # a due chunk answered NOSCRIPT runs (as EVAL) after the plain commands: each
            # entry is still checked against its profile's version when it moves
            await self._run_scripts(due_calls, queue)

        await self.retry("index", run_index)
        return fenced

    def write_args(self, w: ProfileWrite) -> list[Any]:
        """The first 7 script arguments of a write (both CAS scripts): expected version,
        offset field, offset, state, scores, top factors, profile id."""
        return [
            w.expected_version,
            w.offset_field,
            w.offset,
            w.state,
            w.scores,
            encode_top_factors(w.index_after, self._feature_index),
            w.profile_id,
        ]

    async def _cas_cluster(self, writes: list[ProfileWrite]) -> list:
        """Cluster mode: one ``EVAL`` of :data:`~stream.worker.redis_scripts.CAS_SCRIPT`
        per write, without index keys."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in writes:
                keys = [self.profile_key(w.profile_id)]
                args = [*self.write_args(w), 0]
                # no per-node script cache to rely on: send the body
                pipe.eval(CAS_SCRIPT, len(keys), *keys, *args)
            return await pipe.execute()

    async def due_profiles(self, due_key: str, watermark: int, limit: int = 1000) -> list[str]:
        """Profiles whose earliest pending window closed before ``watermark``."""
        rows = await self.retry(
            "due",
            lambda: self.redis.zrangebyscore(due_key, "-inf", f"({watermark}", start=0, num=limit),
        )
        return [r.decode() for r in rows]

    async def scan_due(self, due_key: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``ZSCAN`` step over a due index: the next cursor (0: the scan is complete)
        and about ``count`` profile ids. A profile in the index for the whole scan is
        returned at least once (possibly more than once)."""
        next_cursor, rows = await self.retry(
            "due", lambda: self.redis.zscan(due_key, cursor, count=count)
        )
        return int(next_cursor), [(m.decode() if isinstance(m, bytes) else str(m)) for m, _ in rows]

    async def due_count(self, due_key: str) -> int:
        """Profiles in a due index (``ZCARD``)."""
        return int(await self.retry("due", lambda: self.redis.zcard(due_key)))

    async def watermark(self, watermark_key: str) -> int | None:
        raw = await self.retry("watermark", lambda: self.redis.get(watermark_key))
        return int(raw) if raw is not None else None

    async def stored_watermarks(self) -> dict[tuple[str, int], int]:
        """Every stored partition watermark: ``(topic, partition) -> ms`` (``customer-ai
        watermarks``). Keys are found by ``SCAN``, so Redis is never blocked."""
        head = self.watermark_key("", 0)[: -len(":0")]  # "P:wm:", from the one key builder

        async def run() -> dict[tuple[str, int], int]:
            found: dict[tuple[str, int], int] = {}
            async for raw_key in self.redis.scan_iter(match=f"{head}*", count=1000):
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                topic, _, partition = key[len(head) :].rpartition(":")
                raw = await self.redis.get(key)
                if topic and partition.isdigit() and raw is not None:
                    found[(topic, int(partition))] = int(raw)
            return found

        return await self.retry("watermarks", run)

    async def set_watermark(self, topic: str, partition: int, watermark: int) -> None:
        """Store a partition's watermark (``customer-ai watermarks reset``)."""
        key = self.watermark_key(topic, partition)
        await self.retry("set watermark", lambda: self.redis.set(key, watermark))

    def forward_key(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:fwd:{topic}:{partition}"

    async def forward_marks(
        self, partitions: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The forward mark of each source partition (absent: none)."""
        tps = list(partitions)

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for tp in tps:  # one GET each: the keys may live in many cluster slots
                    pipe.get(self.forward_key(*tp))
                return await pipe.execute()

        values = await self.retry("forward marks", run)
        return {tp: int(v) for tp, v in zip(tps, values) if v is not None}

    async def set_forward_marks(self, marks: dict[tuple[str, int], int]) -> None:
        """Set forward marks (the highest offset of each partition's acknowledged forwards)."""

        async def run() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for tp, offset in marks.items():
                    pipe.set(self.forward_key(*tp), offset)
                await pipe.execute()

        await self.retry("forward marks", run)

    async def run_script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One call of ``script`` (its reply), retried while Redis is unavailable."""
        return (await self.retry("script", lambda: self._run_scripts([(script, keys, args)])))[0]

    async def drop_due(self, due_key: str, profile_ids: list[str]) -> None:
        """Remove profiles from a due index (``ZREM``)."""
        await self.retry("due", lambda: self.redis.zrem(due_key, *profile_ids))

    async def get_profile(self, profile_id: str) -> bytes | None:
        return await self.retry("get", lambda: self.redis.hget(self.profile_key(profile_id), "s"))

    async def resolve_profile(self, profile_id: str) -> tuple[str, bytes | None]:
        """The stored state of ``profile_id``'s person and its canonical id: an alias's
        record (identity stitching: ``{"merged_into": ...}``) is followed."""
        for _ in range(8):  # an alias names its canonical id; a merge racing adds a hop
            raw = await self.get_profile(profile_id)
            target = alias_target(raw)
            if target is None:
                return profile_id, raw
            profile_id = target
        return profile_id, None

    async def bucket_sizes(
        self, goals: Iterable[str], buckets: Iterable[str], feature: str | None = None
    ) -> dict[tuple[str, str], int]:
        """SCARD of each goal's bucket sets (or of their ``feature`` factor sets)."""
        pairs = [(g, b) for g in goals for b in buckets]

        async def run() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                for goal, bucket in pairs:
                    key = (
                        self.segment_key(goal, bucket)
                        if feature is None
                        else self.segment_factor_key(goal, bucket, feature)
                    )
                    pipe.scard(key)
                return await pipe.execute()

        sizes = await self.retry("segments", run) if pairs else []
        return {pair: int(n) for pair, n in zip(pairs, sizes)}
