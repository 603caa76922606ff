"""Prometheus metrics of the Customer AI worker.

Every metric lives in one module-level :data:`REGISTRY` (not the process-global default
registry), so tests can import this module repeatedly and the worker's ``/metrics`` view
serves exactly these series plus the standard process / platform / GC collectors.

Metric names are a contract: the Grafana dashboard and the alert rules under ``deploy/``
refer to them, and ``tests/test_deploy.py`` checks that every name they use is here.

Examples
--------
>>> from stream.ops import metrics
>>> metrics.EVENTS_IN.labels(topic="customer-ai.events").inc()
>>> metrics.observe_processing(batch_seconds=0.02, n_events=10)
>>> payload, content_type = metrics.render()
>>> b'customer_ai_events_in_total{topic="customer-ai.events"} 1.0' in payload
True
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from stream.worker import compat

__all__ = [
    "BUCKET_SIZE",
    "CONSUMER_COMMITTED_OFFSET",
    "CONSUMER_END_OFFSET",
    "CONSUMER_LAG",
    "DUPLICATE_EVENTS",
    "END_TO_END_LATENCY",
    "EVENTS_IN",
    "EVENTS_REJECTED",
    "IDENTITY_LINKS",
    "LAG_POLL_ERRORS",
    "LATENCY_BUCKETS",
    "LIVE_AUC",
    "LIVE_BASE_RATE",
    "LIVE_ECE",
    "LIVE_LOGLOSS",
    "MODEL_STATUS",
    "MODEL_STATUSES",
    "MODEL_VERSION",
    "PARTITIONS_ASSIGNED",
    "PROCESSING_LATENCY",
    "PROFILES_REMOVED",
    "QUARANTINED_PROFILES",
    "REDIS_ERRORS",
    "REDIS_ERROR_KINDS",
    "REDIS_EVICTED_KEYS",
    "REDIS_LATENCY",
    "REDIS_LATENCY_BUCKETS",
    "REGISTRY",
    "RESCORES",
    "RESCORE_BACKLOG",
    "RESCORE_TRIGGERS",
    "RETRIES",
    "RETRY_STEPS",
    "SCORES",
    "SEGMENT_CHANGES",
    "TRAINING_EXAMPLES",
    "TRAINING_RECORDS_RECOVERED",
    "init_model_series",
    "metric_names",
    "observe_live",
    "observe_model",
    "observe_status",
    "observe_end_to_end",
    "observe_end_to_end_many",
    "observe_processing",
    "redis_error_kind",
    "redis_timer",
    "render",
]

REGISTRY: CollectorRegistry = CollectorRegistry(auto_describe=True)
"""The registry served on the worker's ``/metrics``."""

ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
"""Histogram buckets (seconds) for event processing and end-to-end latency: 1 ms .. 30 s."""

REDIS_LATENCY_BUCKETS: tuple[float, ...] = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
"""Histogram buckets (seconds) for single Redis round trips: 100 us .. 1 s."""

# --- event flow -------------------------------------------------------------------------

EVENTS_IN = Counter(
    "customer_ai_events_in_total",
    "Events read from Kafka, by source topic.",
    ["topic"],
    registry=REGISTRY,
)
EVENTS_REJECTED = Counter(
    "customer_ai_events_rejected_total",
    "Events sent to the dead-letter topic, by reason.",
    ["reason"],
    registry=REGISTRY,
)
DUPLICATE_EVENTS = Counter(
    "customer_ai_duplicate_events_total",
    "Events skipped because their profile had applied their _id already, by source topic.",
    ["topic"],
    registry=REGISTRY,
)
SCORES = Counter(
    "customer_ai_scores_total",
    "Score messages produced to customer-ai.scores, by goal.",
    ["goal"],
    registry=REGISTRY,
)
RESCORES = Counter(
    "customer_ai_rescores_total",
    "Score messages produced, by trigger: event, schedule (scheduled rescoring as event time "
    "passes) or model (a new model version's refresh sweep).",
    ["trigger"],
    registry=REGISTRY,
)
RESCORE_TRIGGERS = ("event", "schedule", "model")
for _trigger in RESCORE_TRIGGERS:  # every series exists from start
    RESCORES.labels(trigger=_trigger)
RESCORE_BACKLOG = Gauge(
    "customer_ai_rescore_backlog",
    "Profiles of this worker's partitions still to refresh after a new model version, per "
    "goal (an estimate from the due index; 0 once the sweep is done).",
    ["goal"],
    registry=REGISTRY,
)
SEGMENT_CHANGES = Counter(
    "customer_ai_segment_changes_total",
    "Bucket changes produced to customer-ai.segments.",
    ["goal", "from_bucket", "to_bucket"],
    registry=REGISTRY,
)
TRAINING_EXAMPLES = Counter(
    "customer_ai_training_examples_total",
    "Matured labelled examples produced to customer-ai.training.",
    ["goal", "label"],
    registry=REGISTRY,
)
PROFILES_REMOVED = Counter(
    "customer_ai_profiles_removed_total",
    "Profiles removed from Redis (a tombstone sent to customer-ai.scores first), by reason.",
    ["reason"],
    registry=REGISTRY,
)
TRAINING_RECORDS_RECOVERED = Counter(
    "customer_ai_training_records_recovered_total",
    "Training records the consumer skipped, read back from the broker and learnt.",
    registry=REGISTRY,
)

# --- latency ----------------------------------------------------------------------------

PROCESSING_LATENCY = Histogram(
    "customer_ai_processing_latency_seconds",
    "Worker processing time per event (a batch's wall time divided by its size).",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "customer_ai_end_to_end_latency_seconds",
    "Time from the event's Kafka (produce) timestamp to its score being produced.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- consumer lag (read from the broker by stream.ops.lag_poller.LagPoller) -----------------

_LAG_LABELS = ["group", "topic", "partition"]
CONSUMER_LAG = Gauge(
    "customer_ai_consumer_lag",
    "Messages not yet committed by the consumer group (end offset - committed offset).",
    _LAG_LABELS,
    registry=REGISTRY,
)
CONSUMER_END_OFFSET = Gauge(
    "customer_ai_consumer_end_offset",
    "Log end offset (high watermark) of the partition.",
    _LAG_LABELS,
    registry=REGISTRY,
)
CONSUMER_COMMITTED_OFFSET = Gauge(
    "customer_ai_consumer_committed_offset",
    "Offset committed by the consumer group (absent if it never committed).",
    _LAG_LABELS,
    registry=REGISTRY,
)
LAG_POLL_ERRORS = Counter(
    "customer_ai_lag_poll_errors_total",
    "Failed attempts to read consumer lag from the broker.",
    registry=REGISTRY,
)
PARTITIONS_ASSIGNED = Gauge(
    "customer_ai_partitions_assigned",
    "Source topic partitions currently assigned to this worker.",
    registry=REGISTRY,
)

# --- model quality ----------------------------------------------------------------------

MODEL_VERSION = Gauge(
    "customer_ai_model_version",
    "Version of the model snapshot used for scoring, per goal.",
    ["goal"],
    registry=REGISTRY,
)
LIVE_AUC = Gauge(
    "customer_ai_live_auc",
    "Prequential ROC AUC over the recent window of matured examples, per goal.",
    ["goal"],
    registry=REGISTRY,
)
LIVE_LOGLOSS = Gauge(
    "customer_ai_live_logloss",
    "Prequential log loss over the recent window of matured examples, per goal.",
    ["goal"],
    registry=REGISTRY,
)
LIVE_BASE_RATE = Gauge(
    "customer_ai_live_base_rate",
    "Share of positive matured examples over the recent window, per goal.",
    ["goal"],
    registry=REGISTRY,
)
LIVE_ECE = Gauge(
    "customer_ai_live_ece",
    "Expected calibration error over the recent window of matured examples, per goal.",
    ["goal"],
    registry=REGISTRY,
)
MODEL_STATUS = Gauge(
    "customer_ai_model_status",
    "1 for the goal's current status (warming_up: no promoted model yet; live; poor: live "
    "AUC below [model] min_auc), 0 for the others; NaN until a model is known.",
    ["goal", "status"],
    registry=REGISTRY,
)
#: the values of the ``status`` label of :data:`MODEL_STATUS`
MODEL_STATUSES = ("warming_up", "live", "poor")
_LIVE_GAUGES = (
    (LIVE_AUC, "auc"),
    (LIVE_LOGLOSS, "logloss"),
    (LIVE_BASE_RATE, "base_rate"),
    (LIVE_ECE, "ece"),
)


def init_model_series(goals: Sequence[str]) -> None:
    """Create every goal's model series (version, live metrics, status) as NaN, so they
    exist in /metrics from the worker's start, before any model is known; and its refresh
    backlog (``customer_ai_rescore_backlog``) as 0."""
    nan = float("nan")
    for goal in goals:
        MODEL_VERSION.labels(goal=goal).set(nan)
        for gauge, _ in _LIVE_GAUGES:
            gauge.labels(goal=goal).set(nan)
        for status in MODEL_STATUSES:
            MODEL_STATUS.labels(goal=goal, status=status).set(nan)
        RESCORE_BACKLOG.labels(goal=goal).set(0)


def observe_model(goal: str, version: int, live: dict[str, Any], status: str) -> None:
    """Set ``goal``'s model series (status ``""``, from before statuses: left as it was)."""
    MODEL_VERSION.labels(goal=goal).set(version)
    observe_live(goal, live)
    observe_status(goal, status)


def observe_status(goal: str, status: str) -> None:
    """Set ``goal``'s status series alone (the trainer's after each batch, too)."""
    for s in MODEL_STATUSES if status in MODEL_STATUSES else ():
        MODEL_STATUS.labels(goal=goal, status=s).set(1.0 if s == status else 0.0)


def observe_live(goal: str, live: dict[str, Any]) -> None:
    """Set ``goal``'s live metric series (the trainer's window of served probabilities)."""
    for gauge, key in _LIVE_GAUGES:
        value = live.get(key)
        gauge.labels(goal=goal).set(float("nan") if value is None else value)


BUCKET_SIZE = Gauge(
    "customer_ai_bucket_size",
    "Profiles currently in each score bucket, per goal (SCARD of the segment sets: every worker reports the global size, so aggregate with max, not sum).",
    ["goal", "bucket"],
    registry=REGISTRY,
)
QUARANTINED_PROFILES = Counter(
    "customer_ai_quarantined_profiles_total",
    "Profile records moved aside because they cannot be read, by reason.",
    ["reason"],
    registry=REGISTRY,
)
IDENTITY_LINKS = Counter(
    "customer_ai_identity_links_total",
    "Identity stitching: merges stored, fenced (re-decided) and links refused at the cap.",
    ["outcome"],
    registry=REGISTRY,
)

# --- Redis ------------------------------------------------------------------------------

REDIS_ERROR_KINDS: tuple[str, ...] = (
    "connection",
    "timeout",
    "loading",
    "readonly",
    "busy",
    "oom",
    "masterdown",
)
"""The ``kind`` label values of ``customer_ai_redis_errors_total`` (see :func:`redis_error_kind`)."""

#: server error codes (the reply's first word) that mean "Redis cannot serve this now"
_REDIS_ERROR_CODES = {
    "LOADING": "loading",
    "READONLY": "readonly",
    "BUSY": "busy",
    "OOM": "oom",
    "MASTERDOWN": "masterdown",
}

REDIS_ERRORS = Counter(
    "customer_ai_redis_errors_total",
    "Failed Redis operations (each is retried), by operation and kind (REDIS_ERROR_KINDS).",
    ["op", "kind"],
    registry=REGISTRY,
)
REDIS_EVICTED_KEYS = Gauge(
    "customer_ai_redis_evicted_keys",
    "Keys Redis evicted since it started (INFO stats evicted_keys): above 0, profile state was lost.",
    registry=REGISTRY,
)
REDIS_LATENCY = Histogram(
    "customer_ai_redis_latency_seconds",
    "Redis round-trip time, by operation.",
    ["op"],
    buckets=REDIS_LATENCY_BUCKETS,
    registry=REGISTRY,
)


# --- retries (stream.worker.retry; the policies are the table "Retries" of OPERATING.md) --

RETRY_STEPS: tuple[str, ...] = (
    "redis",
    "produce",
    "score_partition",
    "score_batch",
    "train",
    "erase",
    "lag_poll",
    "lag_poller",
    "start",
)
"""The worker's retried steps: each has a ``customer_ai_retries_total`` series from start."""

RETRIES = Counter(
    "customer_ai_retries_total",
    "Failed attempts that are retried, by step (see RETRY_STEPS).",
    ["step"],
    registry=REGISTRY,
)
for _step in RETRY_STEPS:  # at 0 from start: rate() and increase() see the first retry
    RETRIES.labels(step=_step)


# --- helpers ----------------------------------------------------------------------------


def observe_processing(batch_seconds: float, n_events: int) -> None:
    """Record a batch's processing time as one per-event share per event.

    Parameters
    ----------
    batch_seconds : float
        Wall time spent on the whole batch.
    n_events : int
        Number of events in the batch; nothing is recorded when it is not positive.
    """
    if n_events <= 0:
        return
    share = max(0.0, batch_seconds) / n_events
    for _ in range(n_events):
        PROCESSING_LATENCY.observe(share)


def observe_end_to_end(produced_at: float, now: float | None = None) -> float:
    """Record the latency from an event's produce timestamp to now.

    Parameters
    ----------
    produced_at : float
        Kafka message timestamp of the input event, in epoch seconds (divide Kafka's
        milliseconds by 1000).
    now : float, optional
        Epoch seconds at which the score was produced; defaults to ``time.time()``.

    Returns
    -------
    float
        The observed latency in seconds (clamped at 0 against clock skew).
    """
    latency = max(0.0, (time.time() if now is None else now) - produced_at)
    END_TO_END_LATENCY.observe(latency)
    return latency


def observe_end_to_end_many(produced_at_ms: Sequence[int], now: float) -> None:
    """Record :func:`observe_end_to_end` for many events at once (a batch's).

    Counted into the buckets with one ``bisect`` per event and one increment per bucket
    touched, instead of a histogram ``observe`` per event. The exposition
    is the same as observing each latency on its own, which is what happens when
    :func:`stream.worker.compat.histogram_counters` finds prometheus_client's internals
    are not the ones this mirrors.

    Parameters
    ----------
    produced_at_ms : sequence of int
        Kafka message timestamps of the events, in epoch milliseconds.
    now : float
        Epoch seconds at which their scores were produced.
    """
    counters = compat.histogram_counters(END_TO_END_LATENCY)
    if counters is None:  # another prometheus_client: the public path
        for ts in produced_at_ms:
            observe_end_to_end(ts / 1000, now)
        return
    bounds, buckets, total_value = counters
    counts = [0] * len(bounds)
    total = 0.0
    for ts in produced_at_ms:
        latency = now - ts / 1000  # as observe_end_to_end computes it
        if latency < 0.0:
            latency = 0.0
        total += latency
        counts[bisect_left(bounds, latency)] += 1  # the first bound >= latency, as observe()
    total_value.inc(total)
    for bucket, n in zip(buckets, counts):
        if n:
            bucket.inc(n)


@contextmanager
def redis_timer(op: str) -> Iterator[None]:
    """Time a Redis operation and count it as an error if the body raises.

    Works around ``await`` too: ``with redis_timer("load"): state = await r.hgetall(k)``.

    Parameters
    ----------
    op : str
        Operation label, e.g. ``"load"``, ``"store"``, ``"model_get"``.

    Yields
    ------
    None
    """
    start = time.perf_counter()
    try:
        yield
    except Exception as error:
        REDIS_ERRORS.labels(op=op, kind=redis_error_kind(error) or "other").inc()
        raise
    finally:
        REDIS_LATENCY.labels(op=op).observe(time.perf_counter() - start)


def redis_error_kind(error: BaseException) -> str | None:
    """The ``kind`` of a Redis failure that is worth waiting for, or ``None``.

    Connection loss and timeouts (redis-py's ``ConnectionError``, ``TimeoutError``,
    ``OSError``), and the server's answers that mean it cannot serve the call *now*:
    ``LOADING`` (loading its data set), ``READONLY`` (a replica, e.g. after a failover),
    ``BUSY`` (a script runs too long), ``OOM`` (``maxmemory`` reached with
    ``noeviction``) and ``MASTERDOWN`` (a replica that lost its master). Recognised by
    redis-py's exception classes where it has one, else by the reply's first word (also
    inside a pipeline or a script: the code stays the reply's first word).

    Examples
    --------
    >>> from redis.exceptions import OutOfMemoryError, ResponseError
    >>> redis_error_kind(OutOfMemoryError("command not allowed", status_code="OOM"))
    'oom'
    >>> redis_error_kind(ResponseError("BUSY Redis is busy running a script."))
    'busy'
    >>> redis_error_kind(ConnectionRefusedError(111, "refused"))
    'connection'
    >>> redis_error_kind(ResponseError("WRONGTYPE Operation against a key")) is None
    True
    """
    from redis.exceptions import BusyLoadingError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(error, (RedisTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(error, BusyLoadingError):  # a ConnectionError subclass: before those
        return "loading"
    if isinstance(error, ResponseError):
        code = getattr(error, "status_code", None) or ""
        if code not in _REDIS_ERROR_CODES:
            text = str(error.args[0]) if error.args else ""
            code = text.split(" ", 1)[0]
        return _REDIS_ERROR_CODES.get(code)
    if isinstance(error, (RedisConnectionError, OSError)):
        return "connection"
    return None


def metric_names(registry: CollectorRegistry | None = None) -> set[str]:
    """Names of every series a registry can expose, including histogram/counter suffixes.

    Labelled metrics with no children yet expose no samples, so the names are derived
    from the metric families' declared types instead of from samples.

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Defaults to :data:`REGISTRY`.

    Returns
    -------
    set of str
        Family names plus ``_total``/``_created`` (counters), ``_bucket``/``_sum``/
        ``_count``/``_created`` (histograms) and the sample names actually present.
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in (registry or REGISTRY).collect():
        names.add(family.name)
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """Serialize the registry in the Prometheus text exposition format.

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Defaults to :data:`REGISTRY`.

    Returns
    -------
    tuple of (bytes, str)
        The payload and its ``Content-Type`` header value.
    """
    return generate_latest(registry or REGISTRY), CONTENT_TYPE_LATEST
