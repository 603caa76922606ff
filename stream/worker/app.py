"""The Faust app: topics, agents, timers. Thin: the work lives in
:mod:`stream.worker.scorer` and :mod:`stream.worker.trainer`, the learning in :mod:`models`.

Agents (one actor per partition, never ``concurrency > 1``: that reorders events
and can commit past unprocessed ones, faust-streaming #606):

- ``score_events`` on ``customer-ai.events`` and ``score_repartitioned`` on the
  internal ``customer-ai.events-by-profile``: greedy batches of up to ``batch_max``
  events (:func:`~stream.worker.batching.greedy_batches`: whatever is queued once the first
  event arrives, collecting for at most ``batch_within`` seconds while more keep
  arriving), scored by :class:`~stream.worker.scorer.BatchScorer`, up to ``pipeline_depth``
  (2) batches in progress at once while events queue up (:func:`~stream.worker.batching.pipelined`:
  the next batch is scored while the last one's outputs and writes are in flight; each
  partition's work stays in batch order, see :mod:`stream.worker.scorer`). A batch is acked when its own
  processing returned, i.e. after its outputs were flushed and its state stored; a
  batch interrupted by cancellation is never acked.
- with ``[[attributes]]`` configured, ``apply_profiles`` on ``customer-ai.profiles`` and
  ``apply_repartitioned_profiles`` on the internal ``customer-ai.profiles-by-profile``:
  the same batches of profile fragments, applied by scorers of fragments (their
  attribute values kept in the states; no score, see :mod:`stream.worker.scorer`).
- ``train`` on the single-partition ``customer-ai.training``.
- ``erase_profiles`` on ``customer-ai.erasures``: each erasure request applied by
  :class:`~stream.worker.erasure.Eraser`, one at a time, acknowledged only once applied.

Faust's consumer hands messages to the agents' queues through
:mod:`stream.worker.handover` (the same loop without a race of four tasks per message,
installed by :func:`stream.worker.compat.start` with the other patches of dependencies);
the scoring agents read their queues in bulk instead of through ``Stream.__aiter__``
(the trainer keeps ``take_events``). Both keep Faust's consumer group, its tracking of
acked offsets and its commits.

Operations (see docs/OPERATING.md): the ``lag_poller`` task keeps the
``customer_ai_consumer_*`` gauges current from the broker (also while the consumer
stalls), ``customer_ai_partitions_assigned`` follows Faust's rebalance signals, and the
``publish_gauges`` timer counts every goal's bucket sets (``customer_ai_bucket_size``, the
global sizes: aggregate them over workers with ``max``, not ``sum``). With ``[retention]
days`` set, the ``retention_sweep`` timer removes idle profiles
(:mod:`stream.worker.retention`). The ``partition_clock`` timer moves a quiet partition's
event time on with the wall clock and does the rescorings due
(:meth:`~stream.worker.scorer.BatchScorer.tick`), and the ``model_refresh_sweep`` task
re-serves every profile's score after a new model version (:mod:`stream.worker.rescoring`);
both in the partition's lane, like the retention sweep.

Every batch is processed inside a guard: an exception never escapes into Faust
(which would ack the events). Failures are retried per :mod:`stream.worker.retry` (the
table "Retries" of docs/OPERATING.md): Redis and Kafka errors in place, a scoring batch
up to 5 times before its records go to the DLQ, a training batch until it is learnt.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from models.config import load_config
from models.engine import Engine
from models.features import Featurizer
from stream.ops import metrics
from stream.ops.lag import LagReader
from stream.ops.lag_poller import LagPoller
from stream.worker import compat, handover
from stream.worker.batching import pipelined
from stream.worker.collector import BetweenBatchesCollector
from stream.worker.erasure import Eraser, erase_or_dead_letter
from stream.worker.intake import note_first_batch, records_of
from stream.worker.lanes import Lanes
from stream.worker.producer import BatchProducer
from stream.worker.rescoring import ModelRefresh
from stream.worker.retention import RetentionSweep
from stream.worker.retry import Failure, RetryPolicy
from stream.worker.scorer import BatchScorer, Record
from stream.worker.security import (
    faust_broker_credentials,
    kafka_security_kwargs,
    redis_connection_kwargs,
)
from stream.worker.settings import PROFILE_SCORES_CONFIG, Settings
from stream.worker.shutdown import SHUTDOWN_GRACE, never_ack, stop_agents_after
from stream.worker.store import RedisStore
from stream.worker.trainer import TrainerStep

__all__ = ["app", "assigned_partitions", "runtime", "settings"]

log = logging.getLogger("customer_ai")
#: cyclic garbage is collected between batches, never inside one (stream.worker.collector)
COLLECTOR = BetweenBatchesCollector()

settings = Settings.from_env()
config = load_config(settings.config_path)
# every goal's model series (version, live metrics, status) exist from start, NaN until known
metrics.init_model_series([g.name for g in config.goals])


app = faust.App(
    settings.app_id,
    broker=[f"kafka://{hostport}" for hostport in settings.bootstrap.split(",")],
    broker_credentials=faust_broker_credentials(os.environ),
    store="memory://",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    # events queued per agent before the consumer pauses fetching (at 80 %): greedy
    # batches need no more than a few batches in hand (take_events needed a full one)
    stream_buffer_maxsize=16_384,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.session_timeout,
    broker_rebalance_timeout=settings.rebalance_timeout,
    broker_heartbeat_interval=1.0,
    broker_commit_interval=1.0,
    broker_request_timeout=30.0,
    web_enabled=True,
    web_host=settings.web_host,
    web_port=settings.web_port,
    web_bind=settings.web_host,
    producer_acks=-1,
)
# every private API of a dependency is checked here, once: the faster paths over internals
# that passed are installed (fetch wait, fetch loop), the others fall back with a warning,
# and a dependency the worker cannot run with ends the process with what to install
DEPENDENCY_INTERNALS = compat.start(
    app,
    fetch_max_wait_ms=settings.fetch_max_wait_ms,
    latency_histogram=metrics.END_TO_END_LATENCY,
    install_handover=handover.install,
)


@app.task
async def log_dependency_internals() -> None:
    """Log which faster paths over dependencies' internals run (logging is set up by now)."""
    log.info("dependency internals: %s", DEPENDENCY_INTERNALS.summary())


_raw: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
events_topic = app.topic(settings.topic("events"), partitions=settings.partitions, **_raw)
repartition_topic = app.topic(
    settings.topic("events-by-profile"), partitions=settings.partitions, internal=True, **_raw
)
# internal=True: Faust creates it (with ONE partition) before subscribing. Otherwise the
# first scorer output or the consumer's subscription auto-creates it with the broker's
# default partition count, and several trainers then learn and overwrite one model.
training_topic = app.topic(settings.topic("training"), partitions=1, internal=True, **_raw)
# erasure requests (customer-ai erase): created by the worker with the scoring partition
# count, so Faust assigns each partition with the events-by-profile partition of that number
erasures_topic = app.topic(
    settings.topic("erasures"), partitions=settings.partitions, internal=True, **_raw
)
# profile fragments ([[attributes]]): keyed like events, their attribute values applied
# by the fragment scorers, those not keyed by profile id through their repartition topic
profiles_topic = app.topic(settings.topic("profiles"), partitions=settings.partitions, **_raw)
profiles_repartition_topic = app.topic(
    settings.topic("profiles-by-profile"), partitions=settings.partitions, internal=True, **_raw
)
output_topics = [
    app.topic(settings.topic(name), partitions=n, **_raw)
    for name, n in (
        ("scores", settings.partitions),
        ("segments", settings.partitions),
        ("dlq", settings.partitions),
        ("models", 1),
    )
]
if settings.profile_scores:
    # each profile's latest scores (CUSTOMER_AI_PROFILE_SCORES=1): compacted, so reading it
    # from the start gives every profile's current scores (a null value: removed)
    output_topics.append(
        app.topic(
            settings.topic("profile-scores"),
            partitions=settings.partitions,
            compacting=True,
            config=PROFILE_SCORES_CONFIG,
            **_raw,
        )
    )


class Runtime:
    """Per-process resources, created inside the worker's event loop."""

    def __init__(self) -> None:
        security = kafka_security_kwargs(os.environ)
        self.store = RedisStore(
            **redis_connection_kwargs({**os.environ, "REDIS_URL": settings.redis_url}),
            key_prefix=settings.key_prefix,
            cluster=settings.redis_cluster,
            feature_names=Featurizer(config).names,
        )
        self.producer = BatchProducer(settings.bootstrap, security)
        self.engine = Engine(config)
        lanes = Lanes()  # one lane per partition number, whatever the topic
        parts = (self.engine, self.store, self.producer, settings)
        # the events of an alias (identity stitching) go to its person's partition
        by_profile = repartition_topic.get_topic_name()
        fragments_by_profile = profiles_repartition_topic.get_topic_name()
        self.scorer = BatchScorer(
            *parts, repartition_topic=by_profile, lanes=lanes, stitch_topic=by_profile
        )
        self.repartitioned_scorer = BatchScorer(*parts, lanes=lanes, stitch_topic=by_profile)
        self.fragment_scorer = BatchScorer(
            *parts,
            repartition_topic=fragments_by_profile,
            fragments=True,
            lanes=lanes,
            stitch_topic=fragments_by_profile,
        )
        self.repartitioned_fragment_scorer = BatchScorer(
            *parts, fragments=True, lanes=lanes, stitch_topic=fragments_by_profile
        )
        self.trainer = TrainerStep(config, self.store, self.producer, settings)
        self.lock = asyncio.Lock()
        #: source topic -> its scorer
        self.scorers = {
            events_topic.get_topic_name(): self.scorer,
            repartition_topic.get_topic_name(): self.repartitioned_scorer,
        }
        if config.attributes:
            self.scorers[profiles_topic.get_topic_name()] = self.fragment_scorer
            self.scorers[profiles_repartition_topic.get_topic_name()] = (
                self.repartitioned_fragment_scorer
            )
        #: source topic -> the retention sweep of its scorer's partitions
        self.sweeps = {topic: RetentionSweep(s) for topic, s in self.scorers.items()}
        #: applies erasure requests (stream.worker.erasure)
        self.lag_reader = LagReader(settings.bootstrap, security=security)
        self.eraser = Eraser(
            self.scorers,
            _assigned_source_partitions,
            config,
            committed=lambda tps: self.lag_reader.committed(settings.app_id, tps),
        )
        #: the refresh sweeps after a new model version (stream.worker.rescoring)
        self.refresher = ModelRefresh(
            self.scorers, _assigned_source_partitions, config.refresh_per_second
        )

    def models_updated(self, goals: list[str]) -> None:
        """Start the refresh sweep of each goal whose served model version changed."""
        for goal in goals:
            self.refresher.start(goal, self.engine.models[goal].version)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process-wide :class:`Runtime` (created on first use)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


async def _load_models(rt: Runtime) -> None:
    """Serve the published models from the first event on, not after the first refresh."""
    try:  # profiles a sweep interrupted by a restart (or left old) are refreshed too
        rt.models_updated(await rt.scorer.refresh_models())
    except Exception:  # noqa: BLE001 - the refresh_models timer tries again
        log.exception("initial model load failed")
    try:  # register this config's feature layout at start (else the first batch does)
        await rt.scorer.layouts.load()
    except Exception:  # noqa: BLE001 - the first batch tries again
        log.exception("registering the feature layout failed")


async def _guarded(
    step: Callable[[list[Record]], Awaitable[object]], records: list[Record]
) -> None:
    """Run a batch step that retries itself; collect cyclic garbage after it.

    The steps (:meth:`BatchScorer.process_or_dead_letter`,
    :meth:`TrainerStep.process_until_learnt`) retry per :mod:`stream.worker.retry` and
    never let an error escape into Faust (which would ack the events). Cyclic garbage is
    collected after the batch, when its objects are gone (see
    :mod:`stream.worker.collector`).
    """
    try:
        with COLLECTOR.batch():
            await step(records)
    finally:
        COLLECTOR.collect_if_due()


async def _score(stream: faust.StreamT, scorer: BatchScorer) -> None:
    """Score the agent's greedy batches, up to ``pipeline_depth`` of them in progress."""

    async def step(events: list) -> None:
        records = records_of(events)
        note_first_batch(records)
        await _guarded(scorer.process_or_dead_letter, records)

    await pipelined(
        stream,
        step,
        settings.batch_max,
        settings.batch_within,
        depth=settings.pipeline_depth,
        min_backlog=settings.batch_max // 10,  # pipelined only when events queue up
    )


@app.agent(events_topic)
async def score_events(stream: faust.StreamT) -> None:
    rt = runtime()
    await _load_models(rt)
    await _score(stream, rt.scorer)


@app.agent(repartition_topic)
async def score_repartitioned(stream: faust.StreamT) -> None:
    rt = runtime()
    await _load_models(rt)
    await _score(stream, rt.repartitioned_scorer)


if config.attributes:  # no [[attributes]]: fragments are not read

    @app.agent(profiles_topic)
    async def apply_profiles(stream: faust.StreamT) -> None:
        await _score(stream, runtime().fragment_scorer)

    @app.agent(profiles_repartition_topic)
    async def apply_repartitioned_profiles(stream: faust.StreamT) -> None:
        await _score(stream, runtime().repartitioned_fragment_scorer)


@app.agent(training_topic)
async def train(stream: faust.StreamT) -> None:
    rt = runtime()
    # Training examples are few and not latency-bound: Faust's take_events (up to 5,000
    # examples or 0.2 s) keeps the trainer's batches, hence its snapshot cadence, as is.
    async for events in stream.take_events(5000, within=0.2):  # type: ignore[attr-defined]
        # a failing batch is retried until it is learnt (the trainer pauses on it), never
        # dead-lettered: the examples are the workers' own outputs, not rejected events
        try:
            await _guarded(rt.trainer.process_until_learnt, records_of(events))
        except asyncio.CancelledError:
            _never_ack(events)  # a shutdown cancelled it: the next owner re-reads it
            raise


@app.agent(erasures_topic)
async def erase_profiles(stream: faust.StreamT) -> None:
    """Apply each erasure request (:mod:`stream.worker.erasure`), one at a time. A request
    that cannot be read goes to the DLQ (``bad_erasure_request``); a failure of ours
    (Redis, the broker, a bug) is retried with backoff until it succeeds: a request is
    never acknowledged before the person is removed."""
    rt = runtime()
    async for event in stream.events():
        record = records_of([event])[0]
        try:
            await erase_or_dead_letter(rt.eraser, rt.producer, record)
        except asyncio.CancelledError:
            _never_ack([event])  # a shutdown cancelled it: the next owner re-reads it
            raise


@app.task
async def declare_topics() -> None:
    """Create the output topics up front so consumers can subscribe before the first score."""
    for topic in output_topics:
        try:
            await topic.maybe_declare()
        except Exception as exc:  # noqa: BLE001 - the broker may auto-create instead
            log.warning("could not declare %s: %r", topic.get_topic_name(), exc)


@app.task
async def lag_poller() -> None:
    """Publish the group's lag read from the broker; restarted if it ever fails."""
    interval = settings.metrics_interval
    restarts = RetryPolicy(
        "lag_poller", attempts=None, first_delay=interval, factor=1.0, max_delay=interval
    )

    async def poll() -> None:
        await LagPoller(
            settings.bootstrap,
            settings.app_id,
            interval=interval,
            security=kafka_security_kwargs(os.environ),
            stall_seconds=settings.stall_seconds,
            assigned=_assigned_source_partitions,
        ).run()

    def failed(failure: Failure) -> None:  # the poller must outlive any error
        log.error("lag poller failed; restarting", exc_info=failure.error)

    await restarts.run(poll, on_error=failed)


_SOURCE_TOPICS = frozenset(
    t.get_topic_name()
    for t in (events_topic, repartition_topic, training_topic)
    + ((profiles_topic, profiles_repartition_topic) if config.attributes else ())
)


def _source_partitions(tps: set[TP]) -> int:
    """How many of ``tps`` are partitions of the agents' topics (not Faust's own)."""
    return sum(1 for tp in tps if tp.topic in _SOURCE_TOPICS)


def _current_assignment() -> set[TP]:
    consumer = app.consumer
    try:
        return set(consumer.assignment()) if consumer is not None else set()
    except ConsumerNotStarted:  # start-up: nothing assigned yet
        return set()


def _assigned_source_partitions() -> set[tuple[str, int]]:
    """The agents' partitions assigned to this worker (the lag poller watches their progress)."""
    return {(tp.topic, tp.partition) for tp in _current_assignment() if tp.topic in _SOURCE_TOPICS}


def assigned_partitions() -> int:
    """Partitions of the agents' topics assigned to this worker now."""
    return _source_partitions(_current_assignment())


@app.on_partitions_assigned.connect  # type: ignore[arg-type]
async def _on_partitions_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
    metrics.PARTITIONS_ASSIGNED.set(_source_partitions(assigned))


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_partitions_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    metrics.PARTITIONS_ASSIGNED.set(_source_partitions(_current_assignment() - set(revoked)))
    if _runtime is None:
        return
    for tp in revoked:  # its next owner moves its clock on; this worker forgets it
        scorer = _runtime.scorers.get(tp.topic)
        if scorer is not None:
            scorer.forget(tp.topic, tp.partition)


@app.timer(interval=settings.metrics_interval)
async def publish_gauges() -> None:
    """Partitions assigned, Redis' evicted keys and every goal's bucket sizes (global)."""
    try:
        metrics.PARTITIONS_ASSIGNED.set(assigned_partitions())
        evicted = await runtime().store.evicted_keys(timeout=max(1.0, settings.metrics_interval))
        if evicted is not None:
            metrics.REDIS_EVICTED_KEYS.set(evicted)
        sizes = await asyncio.wait_for(
            runtime().store.bucket_sizes([g.name for g in config.goals], config.buckets.names),
            timeout=max(1.0, 2 * settings.metrics_interval),
        )
        for (goal, bucket), size in sizes.items():
            metrics.BUCKET_SIZE.labels(goal=goal, bucket=bucket).set(size)
    except Exception:  # noqa: BLE001 - a timer must not die
        log.exception("publishing gauges failed")


@app.timer(interval=settings.retention_interval)
async def retention_sweep() -> None:
    """With ``[retention] days``: remove the idle profiles of the partitions assigned here
    (:mod:`stream.worker.retention`; at most ``SWEEP_LIMIT`` per partition per tick)."""
    if config.retention.days is None:
        return
    rt = runtime()
    for tp in sorted(_current_assignment()):
        sweep = rt.sweeps.get(tp.topic)
        if sweep is None:
            continue
        try:
            await sweep.sweep(tp.topic, tp.partition)
        except Exception:  # noqa: BLE001 - a timer must not die; the next tick tries again
            log.exception("retention sweep of %s[%d] failed", tp.topic, tp.partition)


@app.timer(interval=settings.clock_interval or 60.0)
async def partition_clock() -> None:
    """The quiet-partition clock (``CUSTOMER_AI_CLOCK_INTERVAL``; 0: off): for each
    partition assigned here that received no batch for an interval, move its watermark on
    with the wall clock and do the work due before it
    (:meth:`~stream.worker.scorer.BatchScorer.tick`, in the partition's lane)."""
    if not settings.clock_interval:
        return
    rt = runtime()

    async def tick(tp: TP) -> None:
        try:
            await rt.scorers[tp.topic].tick(tp.topic, tp.partition, settings.clock_interval)
        except Exception:  # noqa: BLE001 - a timer must not die; the next tick tries again
            log.exception("clock tick of %s[%d] failed", tp.topic, tp.partition)

    ticking = [tp for tp in _current_assignment() if tp.topic in rt.scorers]
    await asyncio.gather(*(tick(tp) for tp in ticking if not rt.scorers[tp.topic].fragments))


@app.task
async def model_refresh_sweep() -> None:
    """Refresh the served scores after a new model version (:mod:`stream.worker.rescoring`)."""
    await runtime().refresher.run()


@app.timer(interval=1.0)
async def collect_garbage() -> None:
    """Collect cyclic garbage when due while no batch is in progress (an idle worker)."""
    COLLECTOR.collect_if_due(idle_only=True)


@app.timer(interval=1.0)
async def refresh_models() -> None:
    """Pick up newer model versions published by the trainer."""
    try:
        rt = runtime()
        updated = await rt.scorer.refresh_models()
        if updated:
            log.info("serving new model versions for %s", ", ".join(updated))
            rt.models_updated(updated)
    except Exception:  # noqa: BLE001 - a timer must not die
        log.exception("model refresh failed")


# ---- shutdown (stream.worker.shutdown) ---------------------------------------------------


def _never_ack(events: list) -> None:
    never_ack(app, events)


def main(argv: list[str] | None = None) -> None:
    """Run a worker (``customer-ai worker``) until SIGTERM or SIGINT.

    On either signal Faust stops fetching, waits for the batches in progress, commits the
    acked offsets, leaves the group and stops; batches still in progress after
    :data:`~stream.worker.shutdown.SHUTDOWN_GRACE` seconds are cancelled, never acked
    (:func:`~stream.worker.shutdown.stop_agents_after`).
    """
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    from faust.worker import Worker

    from stream.ops.web import register_views

    class BoundedStopWorker(Worker):
        """Faust's worker, its batches in progress cancelled if they outlast the grace."""

        _watchdog: asyncio.Future[None] | None = None

        async def on_stop(self) -> None:
            self._watchdog = asyncio.ensure_future(stop_agents_after(app, SHUTDOWN_GRACE))

        async def on_shutdown(self) -> None:
            if self._watchdog is not None:
                self._watchdog.cancel()

    register_views(app, runtime, assigned_partitions)

    # never scan the modules and app loaded so far; collect between batches only
    COLLECTOR.install()
    level = os.environ.get("CUSTOMER_AI_LOG_LEVEL", "info")
    BoundedStopWorker(app, loglevel=level, redirect_stdouts=False).execute_from_commandline()
