"""The trainer step: learn matured examples exactly once, publish model versions.

One trainer consumes the single-partition ``customer-ai.training`` topic. Every
example carries a deterministic id (``profile|goal|open time|event id``); the
scorer may send one id several times (outputs are at-least-once: a crash or a
rebalance repeats a batch), and the trainer learns each id once:

1. records at or below the partition's trained offset are skipped (re-delivered
   after a crash of the trainer: already learnt and stored); records the consumer
   skipped (a batch starting past the trained offset + 1: the group's committed offset
   is not the source of truth, Redis is) are read from the broker with a
   :class:`~stream.worker.range_reader.RangeReader` and learnt first;
2. an id learnt before is dropped: the in-memory set of recent ids, else
   ``P:learnt:<goal>`` in Redis (one ``ZMSCORE`` round trip per batch), which
   survives restarts and moves of the training partition;
3. the batch's learner states, the changes of the samples of profiles
   (``P:sample:<goal>``, the percentile basis: ``models/sample.py``), its learnt ids and
   the new trained offsets are written in one Redis transaction *before* the batch is acknowledged, fenced by
   a WATCH on the stored offsets: if another trainer (after a rebalance, or this
   one before a crash) moved them since this trainer resumed, nothing is written,
   the learners are resumed from Redis and the batch is re-run from there.

Erasures (:mod:`stream.worker.erasure`): an example of a profile in ``P:erasing`` is
dropped, never learnt, up to the erasure's marker record on the training topic; at the
marker the person leaves the samples and the recent ids, and its learnt ids, sample
entries and ``P:erasing`` entry are deleted in the batch's transaction, which is also
fenced on ``P:erasing`` (an erasure registered meanwhile of a profile the batch learnt
from re-runs the batch).

Any error inside a batch also drops the in-memory learners (they may hold
examples that were not stored) so the retry starts from the stored state.
:meth:`TrainerStep.process_until_learnt` (the agent's entry point) retries a failing
batch with backoff until it is learnt: the trainer pauses on it, nothing past it is
acknowledged, and its examples (the workers' own outputs, not input events) are never
dead-lettered nor counted as rejected events (``docs/OPERATING.md``, "Retries").

Serving models are published (a new version in Redis and on ``customer-ai.models``)
every ``snapshot_every_examples`` examples or ``snapshot_every_seconds``, whichever
comes first, if promoted (:mod:`models.training`: a candidate worse than the serving
version on the recent examples is refused and the serving version stays; the decision is
kept in the learner state's ``promotion`` part); scoring workers pick them up while they run. A ``models`` message lost
in a crash is not re-sent: the version is in Redis, the next one goes out anyway.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from datetime import UTC, datetime
from functools import partial

import orjson

from models.config import Config
from models.features import Featurizer
from models.labels import example_id_prefix
from models.layout import FeatureLayout
from models.messages import example_from_message
from models.migrate import LEGACY, FeatureMap
from models.model import LinearModel
from models.outcome import Example
from models.state import ProfileState
from models.training import Trainer
from stream.ops import metrics
from stream.worker.erasure import erasure_marker
from stream.worker.model_store import ErasureDone
from stream.worker.producer import BatchProducer, OutMessage
from stream.worker.range_reader import RangeReader
from stream.worker.retry import Failure, RetryPolicy
from stream.worker.scorer import Record
from stream.worker.security import kafka_security_kwargs
from stream.worker.settings import Settings
from stream.worker.store import RedisStore

__all__ = ["TrainerStep"]

log = logging.getLogger(__name__)
#: the applied-offset field the sampled profiles' load asks for (none: it is not used)
SAMPLE_OFFSET_FIELD = "o:-"

#: Fenced re-runs of one batch before giving up on it (it is retried by the caller).
MAX_FENCED_RETRIES = 20
#: seconds before a failed training batch's second attempt (doubling up to the cap below)
TRAIN_RETRY_DELAY = 0.5
#: the longest wait between two attempts at a training batch (it is retried forever)
TRAIN_MAX_RETRY_DELAY = 30.0
#: failed attempts after which the trainer logs that it is paused on the batch
TRAIN_PAUSED_AFTER = 5


class TrainerStep:
    """Learns batches of training records (see the module docstring).

    Attributes
    ----------
    offsets
        Training partition -> offset of the last record learnt, as stored.
    duplicates
        Examples dropped because their id was learnt already (since start).
    fenced
        Batches re-run because another trainer had moved the stored offsets.
    recovered
        Records the consumer skipped that were read from the broker and learnt.
    erased_examples
        Examples dropped because their person was being erased
        (:mod:`stream.worker.erasure`).
    """

    def __init__(
        self,
        config: Config,
        store: RedisStore,
        producer: BatchProducer,
        settings: Settings,
        reader: RangeReader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.producer = producer
        self.settings = settings
        self.trainer = Trainer(config)
        self.offsets: dict[int, int] = {}
        self.last_publish = time.monotonic()
        self.restored = False
        self.duplicates = 0
        self.fenced = 0
        self.recovered = 0
        #: examples dropped because their person was being erased (since start)
        self.erased_examples = 0
        self.reader = reader or RangeReader(settings.bootstrap, kafka_security_kwargs(os.environ))
        self._warned_partitions = False
        #: the feature layout the learners follow; examples of another one are mapped by name
        self.layout = Featurizer(config).layout
        self._maps: dict[str, FeatureMap | None] = {}
        #: examples dropped because their feature layout is unknown (never learnt misaligned)
        self.unaligned = 0

    @property
    def trained_offset(self) -> int:
        """Trained offset of partition 0 (-1: none)."""
        return self.offsets.get(0, -1)

    def _reset(self) -> None:
        """Forget the in-memory learners: the next batch resumes them from Redis."""
        self.trainer = Trainer(self.config)
        self.restored = False

    async def restore(self) -> None:
        """Resume learners and the trained offsets from Redis."""
        for goal in self.trainer.learners:
            raw = await self.store.get_learner(goal)
            if raw is not None:
                try:
                    sample = await self.store.get_sample(goal)
                    serving_json = await self.store.get_model(goal)
                    serving = LinearModel.from_json(serving_json) if serving_json else None
                    if not self.trainer.restore(goal, raw, sample, serving=serving):
                        log.warning(
                            "learner %s was trained on other features (the configuration's "
                            "events or horizons changed): a new lineage starts after v%d; "
                            "the served model keeps serving (projected onto the new "
                            "features) until the new lineage leaves warm-up",
                            goal,
                            self.trainer.learners[goal].version,
                        )
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("cannot resume learner %s (%s): starting it afresh", goal, exc)
                    self.trainer.samples[goal].reset = True  # its sample goes with it
            else:
                self.trainer.samples[goal].reset = True  # a sample left without its learner
        # a learner started afresh (new lineage, unreadable or deleted state) numbers its
        # versions after the one published last: a version is never reused
        published = await self.store.model_versions()
        for goal, learner in self.trainer.learners.items():
            if learner.version < published.get(goal, 0):
                learner.version = learner.lineage_start = published[goal]
        self.offsets = await self.store.trainer_offsets()
        self.restored = True
        log.info(
            "trainer resumed at offsets %s: %s",
            self.offsets or "{} (nothing learnt yet)",
            {g: lr.n_examples for g, lr in self.trainer.learners.items()},
        )

    async def process_until_learnt(self, records: list[Record]) -> int:
        """:meth:`process` a batch, retried with backoff until it succeeds.

        The training examples are the workers' own outputs: a batch that fails is never
        dead-lettered nor counted as rejected events. The trainer pauses on it instead
        (the agent takes no further batch and acknowledges nothing past it) and retries
        it forever, ``TRAIN_RETRY_DELAY`` doubling up to ``TRAIN_MAX_RETRY_DELAY``, each
        retry counted in ``customer_ai_retries_total{step="train"}``. After
        ``TRAIN_PAUSED_AFTER`` failures it logs an error once, then one line per attempt.

        Returns
        -------
        int
            How many examples were learnt.
        """
        policy = RetryPolicy(
            "train",
            attempts=None,
            first_delay=TRAIN_RETRY_DELAY,
            factor=2.0,
            max_delay=TRAIN_MAX_RETRY_DELAY,
        )
        span = f"{len(records)} records" + (
            f", offsets {records[0].offset}-{records[-1].offset}" if records else ""
        )

        def failed(failure: Failure) -> None:
            if failure.attempt < TRAIN_PAUSED_AFTER:
                log.warning(
                    "training batch (%s) failed (attempt %d); retrying in %.1fs",
                    span,
                    failure.attempt,
                    failure.delay,
                    exc_info=failure.error,
                )
            elif failure.attempt == TRAIN_PAUSED_AFTER:
                log.error(
                    "training batch (%s) failed %d times: the trainer is paused on it "
                    "(nothing past it is acknowledged, its examples are never "
                    "dead-lettered) and retries it every %.0fs at most until it is learnt",
                    span,
                    failure.attempt,
                    TRAIN_MAX_RETRY_DELAY,
                    exc_info=failure.error,
                )
            else:
                log.warning(
                    "training batch (%s) failed again (attempt %d: %r); retrying in %.1fs",
                    span,
                    failure.attempt,
                    failure.error,
                    failure.delay,
                )

        return await policy.run(partial(self.process, records), on_error=failed)

    async def process(self, records: list[Record]) -> int:
        """Learn a batch; returns how many examples were learnt."""
        for _ in range(MAX_FENCED_RETRIES):
            if not self.restored:
                await self.restore()
            try:
                learnt = await self._process_once(records)
            except BaseException:
                self._reset()  # the learners may hold examples that were not stored
                raise
            if learnt is not None:
                return learnt
            self.fenced += 1
            log.warning(
                "the training batch's write was fenced (another trainer took the partition, "
                "a write's reply was lost, or an erasure of a profile it learnt from was "
                "registered meanwhile): resuming from Redis and re-running"
            )
            self._reset()
        raise RuntimeError(f"training batch fenced {MAX_FENCED_RETRIES} times in a row")

    async def _process_once(self, records: list[Record]) -> int | None:
        """One attempt; None if the write was fenced (nothing stored)."""
        outbox: list[OutMessage] = []
        new_offsets = dict(self.offsets)
        examples: list[Example] = []
        records = await self._fill_gaps(records)
        # the people being erased: their examples are dropped up to their request's marker
        erasing = await self.store.erasing()
        dropping = set(erasing)
        markers: list[tuple[str, str, bool]] = []
        dropped: dict[str, int] = defaultdict(int)
        for record in records:
            p = record.partition
            if p != 0 and not self._warned_partitions:
                self._warned_partitions = True
                log.error(
                    "%s has more than one partition: trainers on several workers then take "
                    "turns (fenced writes). Recreate it with one partition.",
                    record.topic,
                )
            if record.offset <= new_offsets.get(p, -1):
                continue
            new_offsets[p] = record.offset
            marker = erasure_marker(record.value)
            if marker is not None:
                pid, request = marker
                # later examples of the id are a new profile's, unless another erasure
                # of the id was registered since (its own marker follows)
                latest = erasing.get(pid, request) in (request, "")
                if latest:
                    dropping.discard(pid)
                markers.append((pid, request, latest))
                continue
            try:
                example = example_from_message(record.value or b"")
                if example.profile_id in dropping:
                    dropped[example.profile_id] += 1
                    self.erased_examples += 1
                else:
                    examples.append(example)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                outbox.append(
                    (
                        self.settings.topic("dlq"),
                        record.key,
                        orjson.dumps(
                            {
                                "reason": "bad_training_example",
                                "detail": repr(exc)[:200],
                                "topic": record.topic,
                                "partition": record.partition,
                                "offset": record.offset,
                                "original": (record.value or b"")[:65536].decode(
                                    "utf-8", "replace"
                                ),
                            }
                        ),
                    )
                )
        if new_offsets == self.offsets:
            return 0
        examples = await self._align(examples)
        learners = self.trainer.learners
        seen = self.trainer.seen
        unknown: dict[str, list[str]] = defaultdict(list)
        for ex in examples:
            if ex.goal in learners and ex.example_id not in seen:
                unknown[ex.goal].append(ex.example_id)
        stored = await self.store.learnt_already(unknown)
        learnt_ids: dict[str, list[str]] = defaultdict(list)
        learnt_profiles: set[str] = set()
        duplicates = 0
        for ex in examples:
            if ex.example_id in stored:
                duplicates += 1
            elif self.trainer.learn(ex):
                learnt_ids[ex.goal].append(ex.example_id)
                learnt_profiles.add(ex.profile_id)
            elif ex.goal in learners:
                duplicates += 1
        force = time.monotonic() - self.last_publish >= self.config.model.snapshot_every_seconds
        publish = self.trainer.due(force=force)
        current = await self._sampled_states(publish)
        models = []
        for goal in publish:
            model = self.trainer.snapshot(
                goal, partial(self.trainer.current_vectors, goal, current)
            )
            if model is None:  # refused: the serving version stays (trainer.promotions)
                continue
            models.append((goal, model.version, model.to_json(), model))
        states = [
            (
                goal,
                lr.version,
                next((m for g, _, m, _ in models if g == goal), None),
                self.trainer.state(goal),
            )
            for goal, lr in learners.items()
        ]
        if outbox:  # dead letters first: at-least-once, like every output
            await self.producer.send_all(outbox)
            outbox = []
        erased = [
            await self._forget(pid, request, dropped.pop(pid, 0), latest)
            for pid, request, latest in markers
        ]
        samples = {goal: self.trainer.sample_changes(goal) for goal in learners}
        if not await self.store.publish_models(
            states,
            new_offsets,
            learnt_ids,
            expected=self.offsets,
            samples=samples,
            erasing=set(erasing),
            learnt_profiles=learnt_profiles,
            erased=erased,
        ):
            return None
        for done in erased:
            log.info("erasure %s: the trainer's part is done", done.request_id)
        self.offsets = new_offsets
        self.duplicates += duplicates
        if duplicates:
            log.info("dropped %d re-delivered training examples (ids learnt before)", duplicates)
        learnt = sum(len(ids) for ids in learnt_ids.values())
        for goal in learnt_ids:  # the live metrics follow every batch, promoted or not
            metrics.observe_live(goal, learners[goal].metrics.summary())
            metrics.observe_status(goal, self.trainer.status(goal))  # follows the live AUC
        if models:
            self.last_publish = time.monotonic()
            for goal, version, model_json, model in models:
                metrics.observe_model(goal, version, model.metrics, model.status)
                outbox.append((self.settings.topic("models"), goal.encode(), model_json))
            log.info("published %s", ", ".join(f"{g} v{v}" for g, v, _, _ in models))
            await self.producer.send_all(outbox)
        return learnt

    async def _forget(
        self, profile_id: str, request_id: str, dropped: int, clear_entry: bool
    ) -> ErasureDone:
        """The trainer's part of an erasure whose marker this batch passed: the person
        leaves the samples and the recent ids in memory; its learnt ids, sample entries
        and (``clear_entry``) ``P:erasing`` entry go with the batch's write
        (:meth:`ModelStore.publish_models`). A marker read again (the request re-run after
        a crash) keeps the larger counts of the audit record already written."""
        sampled = self.trainer.forget(profile_id)
        prefixes = {goal: example_id_prefix(profile_id, goal) for goal in self.trainer.learners}
        learnt = await self.store.learnt_ids_of(prefixes)
        counts = {
            "learnt_ids": sum(len(ids) for ids in learnt.values()),
            "sample_entries": sampled,
            "examples_dropped": dropped,
        }
        before = await self.store.erasure_audit(f"{request_id}/training")
        audit: dict[str, object] = {"at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        for name, n in counts.items():
            audit[name] = max(n, int(before.get(name, 0)))
        return ErasureDone(profile_id, request_id, learnt, orjson.dumps(audit), clear_entry)

    async def _sampled_states(self, goals: list[str]) -> dict[str, ProfileState | None]:
        """The stored states of the profiles in ``goals``' percentile samples: a version's
        cut points rank them as they are now, not as their last learnt example (a window
        old) had them. A state that cannot be read is left out (its example's vector is
        used)."""
        ids = sorted({pid for goal in goals for pid in self.trainer.sampled(goal)})
        if not ids:
            return {}
        names = [g.name for g in self.config.goals]
        states: dict[str, ProfileState | None] = {}
        for pid, row in (await self.store.load(ids, SAMPLE_OFFSET_FIELD)).items():
            if row.state is None or row.unreadable:
                continue
            try:
                states[pid] = ProfileState.from_bytes(row.state, names)
            except Exception:  # noqa: BLE001 - the scorer quarantines it; rank the example
                log.debug("sampled profile %s: state not readable", pid)
        return states

    async def _align(self, examples: list[Example]) -> list[Example]:
        """``examples`` with their features in the learners' layout, mapped by name.

        An example made by a scorer with another configuration (before an edit, or an old
        worker during a rolling restart) carries that layout's fingerprint; its features
        are mapped by name (:class:`models.migrate.FeatureMap`). One whose layout the
        registry lacks is dropped and counted, never learnt misaligned.
        """
        current = self.layout.fingerprint
        if all(ex.layout == current for ex in examples):
            return examples
        aligned = []
        for ex in examples:
            if ex.layout != current:
                mapping = await self._feature_map(ex.layout)
                try:
                    if mapping is None:
                        raise ValueError(f"layout {ex.layout!r} is not in the registry")
                    ex.features = mapping(ex.features)
                except ValueError as exc:
                    self.unaligned += 1
                    log.warning("training example %s dropped: %s", ex.example_id, exc)
                    continue
                ex.layout = current
            aligned.append(ex)
        return aligned

    async def _feature_map(self, fingerprint: str) -> FeatureMap | None:
        if fingerprint not in self._maps:
            known = {k: FeatureLayout.from_json(v) for k, v in (await self.store.layouts()).items()}
            known.setdefault(LEGACY, self.layout)  # no scorer registered yet: unchanged config
            old = known.get(fingerprint or LEGACY)
            if old is None:
                return None  # asked again next time: another worker may register it
            self._maps[fingerprint] = FeatureMap(old, self.layout)
        return self._maps[fingerprint]

    async def _fill_gaps(self, records: list[Record]) -> list[Record]:
        """``records`` preceded by those the consumer skipped, read from the broker.

        A batch that starts past the stored trained offset + 1 means the consumer's
        position (the group's committed offset) moved past records no trainer learnt:
        seen once in a kill -9 test, where the first batch after two rebalances started
        32 records past the stored offset. Redis holds what was learnt, so the missing
        offsets are read back and learnt before the batch.
        """
        first: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            if record.offset < first.get(key, record.offset + 1):
                first[key] = record.offset
        missing: list[Record] = []
        for (topic, partition), offset in first.items():
            expected = self.offsets.get(partition, -1) + 1
            if offset <= expected:
                continue
            log.warning(
                "training partition %d: this batch starts at offset %d but the trainer "
                "stored offset %d: reading the %d skipped records from the broker",
                partition,
                offset,
                expected - 1,
                offset - expected,
            )
            got = await self.reader.read(topic, partition, expected, offset)
            self.recovered += len(got)
            metrics.TRAINING_RECORDS_RECOVERED.inc(len(got))
            missing.extend(got)
        return missing + records if missing else records
