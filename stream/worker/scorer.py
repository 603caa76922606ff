"""The scoring step of one batch: decode, load, score, produce, store.

:class:`BatchScorer` is independent of Faust: the agent in :mod:`stream.worker.app` hands
it each batch of raw records and acknowledges them once it returns. For a batch:

1. decode every record; bad ones go to the dead-letter topic with a reason, the
   source topic/partition/offset and the original bytes, and never stop the worker
   (a dead-letter message is bounded: an original over ``DLQ_MAX_ORIGINAL_BYTES``
   keeps a prefix marked ``original_truncated``, so it always fits the producer);
2. events whose key is not their profile id (unkeyed ones included) are forwarded
   to the repartition topic (keyed by profile id) instead of being scored here:
   the applied-offset watermark ``o:<topic>:<partition>`` is only meaningful if one partition
   of a topic owns each profile;
3. load the touched profiles' state in one Redis pipeline; a profile whose record cannot
   be read is quarantined and its events dead-lettered as ``corrupt_state``, the rest of
   the partition going on (:mod:`stream.worker.quarantine`);
4. run the :class:`~models.engine.Engine` per event in offset order, skipping events
   at or below the profile's applied offset (already applied: exactly-once state);
5. mature label snapshots of idle profiles whose window closed before the
   partition's event-time watermark (from the due index);
6. produce scores, segment changes and examples, and wait for the acks;
7. write every touched profile with a compare-and-set on its write version; a
   refused write (the profile moved on: a rebalance or a zombie) is re-done from
   the fresh state, whose applied offset makes the replay skip what was applied.

A scorer of profile fragments (``fragments=True``: ``<prefix>.profiles`` and its
repartition topic ``<prefix>.profiles-by-profile``) runs steps 1-3, 6 and 7 with
:meth:`~models.engine.Engine.apply_fragment` for 4: no score, no time passing (no
watermark, no due work), the profile's applied offset of that topic kept exact.

Steps 3 to 7 run per source partition, the partitions of a batch concurrently (their
round trips overlap); the dead letters and forwards go out alongside. An unexpected
error in them re-runs that partition's part from the stored state, up to
``PARTITION_ATTEMPTS`` times (:mod:`stream.worker.retried_steps`), then dead-letters its records (``internal_error``).

Two batches may be in progress at once (the agent's pipeline, ``CUSTOMER_AI_PIPELINE_DEPTH``):
the next batch is decoded and its other partitions scored while the last one's produce
acknowledgements and Redis writes are in flight. Each partition's part runs in that
partition's :class:`~stream.worker.lanes.Lanes` lane, reserved in batch order before any
``await``: the later batch's part of a partition starts only once the earlier one's
is stored (or dead-lettered), so it loads what that one wrote and applies its events in
offset order. The forwards and dead letters share one lane for the same reason (a
profile's forwarded events stay in order). A worker's scorers share their lanes, one per
partition number: events, fragments and repartitioned records of one profile never run
side by side, so their writes do not fence each other.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import partial
from typing import cast

from models.attributes import Fragment, decode_fragment
from models.engine import Engine
from models.events import Event, InvalidEvent, decode_event
from models.eventtime import check_event_time, reference_time, watermark_ceiling
from models.messages import OutMessage, encode_outcome, latest_scores_message, scores_field
from models.outcome import Outcome
from models.profile import format_time
from models.state import ProfileState
from stream.ops import metrics
from stream.worker import quarantine
from stream.worker.dead_letters import DLQ_MAX_ORIGINAL_BYTES, Record, dlq_message
from stream.worker.lanes import Lanes, Place, all_or_none
from stream.worker.layouts import StateDecoder
from stream.worker.model_loading import load_newer_models
from stream.worker.partition_clock import COUNTERS, Arrival, PartitionClock, count_rescores
from stream.worker.producer import BatchProducer
from stream.worker.profile_store import is_alias
from stream.worker.retried_steps import RetriedSteps
from stream.worker.settings import Settings
from stream.worker.stitching import MAX_MERGES_PER_PART, Stitcher
from stream.worker.store import LoadedProfile, ProfileWrite, RedisStore, SegmentEntry

__all__ = ["DLQ_MAX_ORIGINAL_BYTES", "BatchScorer", "Record", "dlq_message"]

log = logging.getLogger(__name__)
MAX_CAS_RETRIES = 5
#: profiles a batch takes from its partition's due index at most (the rest: the next one)
DUE_LIMIT = 1000
_OUTBOX_LANE = ("outbox",)
#: a decoded record: an event (or a fragment) with the tracked events it matched
Item = tuple[Record, Event | Fragment, tuple]
#: a mis-keyed record's forward: its source partition, its offset, the message
Forward = tuple[tuple[str, int], int, OutMessage]


class BatchScorer(PartitionClock, RetriedSteps):
    """Scores batches of records (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        store: RedisStore,
        producer: BatchProducer,
        settings: Settings,
        repartition_topic: str | None = None,
        *,
        fragments: bool = False,
        lanes: Lanes | None = None,
        stitch_topic: str | None = None,
    ) -> None:
        self.engine = engine
        #: True: the records are profile fragments (``<prefix>.profiles``), applied to the
        #: states' attributes with no score and no time passing (module docstring)
        self.fragments = fragments
        self.store = store
        self.producer = producer
        self.settings = settings
        self.config = engine.config
        self.goal_names = [g.name for g in self.config.goals]
        self.scores_topic = settings.topic("scores")
        self.profile_scores_topic = settings.topic("profile-scores")
        self.segments_topic = settings.topic("segments")
        self.training_topic = settings.topic("training")
        self.dlq_topic = settings.topic("dlq")
        self.repartition_topic = repartition_topic
        self.watermarks: dict[tuple[str, int], int] = {}
        #: per source partition, the lowest offset of forwards that failed to be sent
        self._unsent: dict[tuple[str, int], int] = {}
        #: per partition: its last batch's arrival (the quiet-partition clock)
        self._arrivals: dict[tuple[str, int], Arrival] = {}
        #: the clock the quiet-partition clock measures elapsed time with (tests set it)
        self.monotonic: Callable[[], float] = time.monotonic
        #: one lane per partition number, shared by the scorers of a worker (``lanes``):
        #: the events, fragments and repartitioned records of partition ``p`` (one
        #: profile's, the topics being co-partitioned) never run side by side, so their
        #: writes never fence each other (each would re-do the other's outputs)
        self._lanes = Lanes() if lanes is None else lanes
        #: decodes loaded states, mapping those of another feature layout by name
        self.layouts = StateDecoder(engine, store)
        #: identity stitching (:mod:`stream.worker.stitching`): the events of an alias
        #: forwarded to ``stitch_topic`` (the repartition topic; also once ``[identity]
        #: namespaces`` is removed), and with ``namespaces`` the merges of linked persons
        self.stitcher = (
            None
            if stitch_topic is None
            else Stitcher(
                engine,
                store,
                producer,
                settings,
                self.layouts,
                stitch_topic,
                link=bool(self.config.identity_namespaces) and not fragments,
            )
        )

    async def read_state(self, raw: bytes) -> ProfileState:
        """A stored state, mapped onto the running layout if written with another."""
        return await self.layouts.read(raw)

    def lane(self, topic: str, partition: int) -> Place:
        """A place in the partition's lane, after the batches already in it (the
        retention sweep runs there: never beside a batch of its partition). The lane is
        the partition number's, whatever the topic (see ``_lanes``)."""
        return self._lanes.reserve(partition)

    def lane_identity(self, topic: str, partition: int) -> tuple[int, int]:
        """Which lane :meth:`lane` reserves: two equal identities are one lane (a job
        must not wait for itself in it)."""
        return id(self._lanes), partition

    # ---- models ----------------------------------------------------------------------
    async def refresh_models(self) -> list[str]:
        """Load newer model versions from Redis; returns the goals updated
        (:func:`~stream.worker.model_loading.load_newer_models`)."""
        return await load_newer_models(self.store, self.engine)

    # ---- batches ---------------------------------------------------------------------
    async def process(self, records: list[Record]) -> dict[str, int]:
        """Process one batch end to end; returns counters for logs and tests."""
        started = time.perf_counter()
        await self.layouts.ensure()
        counts = dict.fromkeys(COUNTERS, 0)
        by_partition: dict[tuple[str, int], list[Item]] = defaultdict(list)
        outbox: list[OutMessage] = []  # this batch's messages; sent before any state is stored
        forwards: list[Forward] = []  # the mis-keyed records, to the repartition topic
        per_topic: Counter[str] = Counter()
        # event time you can trust (models/eventtime.py): each event against its record's
        # broker time, the worker's clock when it has none or a later one
        now_ms = int(time.time() * 1000)
        fragments, config = self.fragments, self.config
        # a fragment's value may hold since long ago: only its future is bounded
        max_future = config.max_future_ms
        max_age = now_ms if fragments else config.max_age_ms
        for record in records:
            per_topic[record.topic] += 1
            try:
                event: Event | Fragment
                if fragments:
                    event = decode_fragment(record.value, config, max_bytes=config.max_event_bytes)
                    matched: tuple = ()
                else:
                    event = decode_event(
                        record.value,
                        identity_namespace=config.identity_namespace,
                        max_bytes=config.max_event_bytes,
                        identity_namespaces=config.identity_namespaces,
                    )
                check_event_time(
                    event.timestamp_ms,
                    reference_time(record.timestamp_ms, now_ms),
                    max_future,
                    max_age,
                )
                if not fragments:
                    matched = self.engine.match(event)  # type: ignore[arg-type]
            except InvalidEvent as exc:
                self._reject(record, exc.reason, exc.detail, outbox)
                counts["rejected"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - nothing may stop the worker
                log.exception(
                    "unexpected error decoding %s[%d]@%d",
                    record.topic,
                    record.partition,
                    record.offset,
                )
                self._reject(record, "internal_error", repr(exc)[:200], outbox)
                counts["rejected"] += 1
                continue
            # An unkeyed record is "not keyed by its profile" too: scattered over partitions,
            # its profile's offsets would be compared across partitions and events dropped.
            if self.repartition_topic is None and self.stitcher is not None and record.key:
                # forwarded keyed by its person's canonical id, which may be none of its own
                # identities (stitching); a mis-keyed record's key is its profile id
                event.profile_id = record.key.decode("utf-8", "replace")
            elif self.repartition_topic is not None and record.key != event.profile_id.encode():
                forward = (self.repartition_topic, event.profile_id.encode(), record.value or b"")
                forwards.append(((record.topic, record.partition), record.offset, forward))
                counts["forwarded"] += 1
                continue
            by_partition[(record.topic, record.partition)].append((record, event, matched))
        # per batch: a labelled child's lookup per event shows in profiles
        for topic, n in per_topic.items():
            metrics.EVENTS_IN.labels(topic=topic).inc(n)
        # The partitions of a batch run concurrently: their Redis and Kafka round trips
        # overlap instead of adding up. Each owns its profiles (a profile seen on two
        # partitions after a partition-count change is fenced by the compare-and-set and
        # re-done, as with two workers) and its outbox; the engine's loop has no await.
        # Each runs in its partition's lane, after the work of any batch still in
        # progress on that partition (places are reserved here, before any await, in
        # batch order); the forwards and dead letters keep their order in a lane too.
        jobs = [
            self.lane(*tp).run(partial(self._partition_job, *tp, items, counts))
            for tp, items in by_partition.items()
        ]
        if outbox or forwards:
            send = partial(self._send_outbox, outbox, forwards)
            jobs.append(self._lanes.reserve(_OUTBOX_LANE).run(send))
        await all_or_none(jobs)
        elapsed = time.perf_counter() - started
        metrics.PROCESSING_LATENCY.observe(elapsed / max(1, len(records)))
        return counts

    async def _send_outbox(self, outbox: list[OutMessage], forwards: list[Forward]) -> None:
        """Send a batch's dead letters and forwards. A source partition's forward mark
        (``P:fwd:<topic>:<partition>``, set once its forwards are acknowledged) is the
        highest offset forwarded: a record at or below it, re-delivered after a crash,
        was forwarded before and is not sent again. Forwards that failed hold every later
        mark of their partition below them until a batch sends them."""
        fresh: list[Forward] = []
        if forwards:
            marks = await self.store.forward_marks({tp for tp, _, _ in forwards})
            fresh = [(tp, offset, m) for tp, offset, m in forwards if offset > marks.get(tp, -1)]
            outbox = outbox + [m for _, _, m in fresh]
        try:
            await self.producer.send_all(outbox)
        except BaseException:
            for tp, offset, _ in fresh:  # not sent: no later batch may mark past them
                self._unsent[tp] = min(offset, self._unsent.get(tp, offset))
            raise
        highest: dict[tuple[str, int], int] = {}
        for tp, offset, _ in fresh:  # in offset order
            if self._unsent.get(tp, offset + 1) >= offset and tp not in highest:
                self._unsent.pop(tp, None)  # this batch (a retry) sent the failed ones
            highest[tp] = offset
        marks = {tp: min(o, self._unsent.get(tp, o + 1) - 1) for tp, o in highest.items()}
        if marks:
            await self.store.set_forward_marks(marks)

    def reject(self, outbox: list[OutMessage]) -> Callable[[Record, str, str], None]:
        """:meth:`_reject` into ``outbox``."""
        return lambda record, reason, detail: self._reject(record, reason, detail, outbox)

    def _reject(self, record: Record, reason: str, detail: str, outbox: list[OutMessage]) -> None:
        metrics.EVENTS_REJECTED.labels(reason=reason).inc()
        outbox.append((self.dlq_topic, record.key, dlq_message(record, reason, detail)))

    async def _process_partition(
        self,
        topic: str,
        partition: int,
        items: list[Item],
        counts: dict[str, int],
        outbox: list[OutMessage],
    ) -> None:
        if self.fragments:  # attributes only: no event time passes, nothing falls due
            await self._settle(topic, partition, items, [], 0, counts, outbox)
            return
        wm = await self._watermark(topic, partition)
        batch_max_ts = max(e.timestamp_ms for _, e, _ in items)
        # Invariant: the watermark never advances past the newest broker time of the
        # partition's records in this batch (the worker's clock where a record has none or
        # a later one) plus [input] max_future_minutes, whatever an event says. The time
        # check above already refuses events beyond it; this bound holds even without it.
        now_ms = int(time.time() * 1000)
        newest = max(reference_time(r.timestamp_ms, now_ms) for r, _, _ in items)
        lateness = self.config.labels.allowed_lateness_ms
        candidate = min(
            batch_max_ts - lateness, watermark_ceiling(newest, self.config.max_future_ms)
        )
        new_wm = candidate if wm is None else max(wm, candidate)
        due_ids = await self.store.due_profiles(
            self.store.due_key(topic, partition), new_wm, limit=DUE_LIMIT
        )
        await self._settle(topic, partition, items, due_ids, new_wm, counts, outbox)
        self._note_arrival(topic, partition, batch_max_ts, newest)

    async def _settle(
        self,
        topic: str,
        partition: int,
        items: list[Item],
        due_ids: list[str],
        new_wm: int,
        counts: dict[str, int],
        outbox: list[OutMessage],
        *,
        refresh: str | None = None,
    ) -> None:
        """Apply ``items`` and let event time pass to ``new_wm`` for them and ``due_ids``;
        produce, then store with the compare-and-set (fenced writes re-done).

        With ``refresh`` (a goal): no events and no time passing, only the goal's score
        refreshed with the served model (:meth:`~models.engine.Engine.refresh`), and the
        watermark is not stored.
        """
        # Per topic *and partition*: offsets only order events within a partition. If the
        # partition count changes and a profile moves, its new partition's field starts
        # empty (nothing is skipped); an old partition's offsets only ever grow.
        offset_field = f"o:{topic}:{partition}"
        due_key = self.store.due_key(topic, partition)
        timeless = refresh is not None or self.fragments  # no watermark to store
        wm_key = None if timeless else self.store.watermark_key(topic, partition)
        # keep the activity index (events only: a fragment is no activity)
        retained = self.config.retention.days is not None and not self.fragments
        activity_key = self.store.activity_key(topic, partition) if retained else None
        touched = list(dict.fromkeys([e.profile_id for _, e, _ in items] + due_ids))
        retry_ids: list[str] = touched
        attempt = merges = 0
        forwarded: dict[str, int] = {}  # alias -> the highest offset forwarded
        while True:
            attempt += 1
            loaded = await self.store.load(retry_ids, offset_field) if retry_ids else {}
            await self.layouts.learn(row.state for row in loaded.values() if not is_alias(row))
            subset = set(retry_ids)
            if self.stitcher is not None:  # aliases forwarded, links merged, then applied
                items, aliases, merged = await self.stitcher.resolve(
                    items, loaded, due_key, outbox, counts, forwarded, offset_field
                )
                if merged:  # a profile of the part became an alias: load the part again
                    merges += 1
                    if merges > MAX_MERGES_PER_PART:
                        raise RuntimeError(f"{topic}[{partition}]: {merges} merges in one part")
                    attempt -= 1
                    continue
                subset -= aliases
            fenced = await self._apply(
                topic,
                partition,
                items,
                subset,
                loaded,
                offset_field,
                due_key,
                wm_key if attempt == 1 else None,
                new_wm,
                counts,
                outbox,
                activity_key,
                refresh,
            )
            counts["fenced"] += len(fenced)
            if fenced:
                log.warning(
                    "%s[%d]: %d profile writes fenced (another worker stored newer state, or "
                    "a Redis call re-sent after a failure had applied them); re-doing them "
                    "from the stored state",
                    topic,
                    partition,
                    len(fenced),
                )
            if fenced and attempt >= MAX_CAS_RETRIES:
                log.error("gave up on %d fenced profiles after %d attempts", len(fenced), attempt)
                break
            retry_ids = sorted(fenced)
            if not retry_ids:
                break
        if forwarded and self.stitcher is not None:
            await self.stitcher.note_forwarded(offset_field, forwarded)
        if not timeless:
            self.watermarks[(topic, partition)] = new_wm

    async def _apply(
        self,
        topic: str,
        partition: int,
        items: list[Item],
        subset: set[str],
        loaded: dict[str, LoadedProfile],
        offset_field: str,
        due_key: str,
        wm_key: str | None,
        watermark: int,
        counts: dict[str, int],
        outbox: list[OutMessage],
        activity_key: str | None = None,
        refresh: str | None = None,
    ) -> set[str]:
        engine = self.engine
        states: dict[str, ProfileState | None] = {}
        poison: dict[str, quarantine.Poisoned] = {}
        for pid in subset:
            row = loaded[pid]
            if row.unreadable or row.quarantined:
                poison[pid] = quarantine.poisoned(pid, row)
                continue
            try:  # written with another config's layout: mapped by feature name
                states[pid] = self.layouts.decode(row) if row.state else None
            except Exception as exc:  # noqa: BLE001 - a record we cannot read costs only itself
                poison[pid] = quarantine.poisoned(pid, row, exc)
        redo: set[str] = set()
        if poison:
            subset = subset - poison.keys()
            redo = await quarantine.isolate(
                self.store, topic, partition, items, poison, due_key, counts, self.reject(outbox)
            )
        applied_offset = {pid: loaded[pid].offset for pid in subset}
        # each profile's place in the segment index as stored: (bucket, top factors) per goal
        index_before: dict[str, dict[str, SegmentEntry]] = {}
        for pid in subset:
            loaded_state = states[pid]
            if loaded_state is not None:
                tf = loaded[pid].top_factors
                index_before[pid] = {
                    g: (s.bucket, tf.get(g, ())) for g, s in loaded_state.goals.items()
                }
        last_offset: dict[str, int] = {}
        out = Outcome()
        produced_at: list[int] = []
        fragments = self.fragments
        timeless = refresh is not None or fragments  # nothing falls due: no due entries
        for record, event, matched in items:
            pid = event.profile_id
            if pid not in subset:
                continue
            if record.offset <= applied_offset[pid]:
                counts["skipped"] += 1
                continue
            if fragments:  # a profile fragment: its attribute values, kept in time
                states[pid] = engine.apply_fragment(states[pid], cast(Fragment, event))
            else:  # a duplicate _id is skipped by the engine (out.duplicates); its offset is applied
                states[pid] = engine.process(states[pid], cast(Event, event), out, matched)
            last_offset[pid] = record.offset
            counts["events"] += 1
            if record.timestamp_ms is not None:
                produced_at.append(record.timestamp_ms)
        if out.duplicates:
            counts["duplicates"] += out.duplicates
            metrics.DUPLICATE_EVENTS.labels(topic=topic).inc(out.duplicates)
        changed_by_expiry: set[str] = set()
        for pid in subset:
            state = states[pid]
            if state is None or fragments:  # a fragment lets no time pass
                continue
            if refresh is not None:
                if engine.refresh(pid, state, refresh, out):
                    changed_by_expiry.add(pid)
            elif engine.advance(pid, state, watermark, out):
                changed_by_expiry.add(pid)
        scored_at = format_time(int(time.time() * 1000))
        topics = (self.scores_topic, self.segments_topic, self.training_topic)
        write_latest = self.settings.profile_scores
        encoded = encode_outcome(out, scored_at, topics, outbox, latest=write_latest)
        top_factors = encoded.top_factors
        # the latest scores of every profile scored in this batch (once each, whatever its
        # number of scores): the compacted topic's value, keyed like the scores, each
        # goal's part cut from its last score message
        if write_latest:
            latest = self.profile_scores_topic
            for pid, parts in encoded.latest.items():
                scored_state = states[pid]
                if scored_state is not None:
                    message = latest_scores_message(engine, pid, scored_state, parts)
                    outbox.append((latest, pid.encode(), message))
        # counted per batch: a labelled child's lookup per event shows in profiles
        for goal, n in encoded.scores_per_goal.items():
            metrics.SCORES.labels(goal=goal).inc(n)
        for (goal, from_bucket, to_bucket), n in encoded.moves.items():
            metrics.SEGMENT_CHANGES.labels(
                goal=goal, from_bucket=from_bucket, to_bucket=to_bucket
            ).inc(n)
        for (goal, label), n in encoded.examples_per_label.items():
            metrics.TRAINING_EXAMPLES.labels(goal=goal, label=label).inc(n)
        counts["scores"] += len(out.scores)
        counts["examples"] += len(out.examples)
        count_rescores(out)
        await self.producer.send_all(outbox)
        outbox.clear()
        metrics.observe_end_to_end_many(produced_at, time.time())
        writes: list[ProfileWrite] = []
        due: dict[str, int | None] = {}
        due_versions: dict[str, str] = {}  # the state version each due entry comes from
        newest: dict[str, int] = {}  # each write's newest event time (the activity index)
        for pid in subset:
            state = states[pid]
            if state is None or (pid not in last_offset and pid not in changed_by_expiry):
                if state is not None and pid not in last_offset and not timeless:
                    due[pid] = engine.next_due(state)
                    due_versions[pid] = loaded[pid].version
                continue
            offset = last_offset.get(pid)
            before = index_before.get(pid, {})
            scored = top_factors.get(pid, {})
            index_after: dict[str, SegmentEntry] = {
                g: (s.bucket, scored.get(g, before.get(g, (None, ()))[1]))
                for g, s in state.goals.items()
            }
            writes.append(
                ProfileWrite(
                    profile_id=pid,
                    expected_version=loaded[pid].version,
                    offset_field=offset_field if offset is not None else "",
                    offset=offset if offset is not None else 0,
                    state=state.to_bytes(),
                    scores=scores_field(state.goals),
                    index_before=before,
                    index_after=index_after,
                )
            )
            if fragments:  # the due entry of the events' partition stays (nothing fell due)
                continue
            due[pid] = engine.next_due(state)
            due_versions[pid] = str(int(loaded[pid].version or 0) + 1)  # what the CAS writes
            newest[pid] = state.ref_ts
        activity = None if activity_key is None else (activity_key, newest)
        fenced = await self.store.save(
            writes, due, due_key, wm_key, watermark, due_versions, activity
        )
        return fenced | redo
