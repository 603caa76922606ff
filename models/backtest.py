"""Backtest: the stream's core run in-process, in event-time order, with no Kafka.

:func:`run_backtest` feeds events through the same :class:`~models.engine.Engine`
and :class:`~models.training.Trainer` as the live stream. Windows close on the
event-time watermark (newest event time minus the allowed lateness), and model
versions are published every ``snapshot_every_examples`` examples per goal, as
the trainer does live. It returns every score, matured example and final state.
It keeps every profile: ``[retention]`` (idle profiles removed from Redis by the
worker's sweep) is not applied here.

A file has no broker time: unlike the stream (:mod:`models.eventtime`), the backtest
refuses no event by its time (``future_timestamp`` / ``too_old``); it refuses values
outside ``[[events]] value_min`` / ``value_max`` (``bad_value``) as the stream does,
through :meth:`~models.engine.Engine.match`.

Examples
--------
>>> from models.config import parse_config
>>> from models.synthetic import generate_events
>>> cfg = parse_config(open("customer-ai.toml").read())
>>> result = run_backtest(generate_events(profiles=50, days=60, seed=1), cfg)
>>> result.n_events > 0, result.n_rejected, result.n_duplicates, len(result.states) == 50
(True, 0, 0, True)
"""

from __future__ import annotations

import bisect
import gc
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from models.attributes import Fragment, decode_fragment, validate_fragment
from models.config import Config
from models.engine import Engine
from models.events import Event, InvalidEvent, decode_event, ranked_identities, validate_event
from models.model import LinearModel
from models.outcome import Example, Outcome, Score
from models.state import ProfileState
from models.stitching import PersonIndex
from models.training import Trainer

__all__ = [
    "EXAMPLE_COLUMNS",
    "BacktestResult",
    "collector_off",
    "example_row",
    "load_events",
    "load_fragments",
    "run_backtest",
]


@dataclass
class BacktestResult:
    """Everything a backtest produced."""

    engine: Engine
    trainer: Trainer
    states: dict[str, ProfileState]
    examples: list[Example] = field(default_factory=list)
    #: events applied (valid, and not duplicates)
    n_events: int = 0
    n_scores: int = 0
    #: events skipped as duplicates: an ``_id`` among its profile's recent ones
    n_duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: ``(goal, event_time_ms, probability, profile_id, trigger)`` per computed score (with
    #: ``keep_scores``); the scheduled rescorings the backtest skips are not in it
    score_log: list[tuple[str, int, float | None, str, str]] = field(default_factory=list)
    models: list[LinearModel] = field(default_factory=list)
    #: the event-time watermark at the end (newest event time minus the allowed lateness)
    watermark: int | None = None
    #: called with every batch of scores before they are dropped (``run_backtest``'s ``on_scores``)
    on_scores: Callable[[list[Score]], None] | None = field(default=None, repr=False)
    #: profile fragments applied (``run_backtest``'s ``attributes``), and those refused
    n_fragments: int = 0
    rejected_fragments: Counter[str] = field(default_factory=Counter)
    #: identity stitching (``[identity] namespaces``): the persons, aliases and merges
    persons: PersonIndex | None = None

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


def load_events(
    lines: Iterable[bytes | str | dict[str, Any]],
    config: Config,
    rejected: Counter[str] | None = None,
) -> list[Event]:
    """Decode events and sort them by event time (stable: ties keep input order)."""
    events: list[Event] = []
    for line in lines:
        try:
            if isinstance(line, dict):
                event = validate_event(
                    line,
                    identity_namespace=config.identity_namespace,
                    identity_namespaces=config.identity_namespaces,
                )
            else:
                if isinstance(line, str):
                    line = line.encode()
                if not line.strip():
                    continue
                event = decode_event(
                    line,
                    identity_namespace=config.identity_namespace,
                    max_bytes=config.max_event_bytes,
                    identity_namespaces=config.identity_namespaces,
                )
        except InvalidEvent as exc:
            if rejected is not None:
                rejected[exc.reason] += 1
            continue
        events.append(event)
    events.sort(key=lambda e: e.timestamp_ms)
    return events


def load_fragments(
    lines: Iterable[bytes | str | dict[str, Any]],
    config: Config,
    rejected: Counter[str] | None = None,
) -> list[Fragment]:
    """Decode profile fragments (:mod:`models.attributes`) and sort them by time (stable)."""
    fragments: list[Fragment] = []
    for line in lines:
        try:
            if isinstance(line, dict):
                fragment = validate_fragment(line, config)
            else:
                if isinstance(line, str):
                    line = line.encode()
                if not line.strip():
                    continue
                fragment = decode_fragment(line, config, max_bytes=config.max_event_bytes)
        except InvalidEvent as exc:
            if rejected is not None:
                rejected[exc.reason] += 1
            continue
        fragments.append(fragment)
    fragments.sort(key=lambda f: f.timestamp_ms)
    return fragments


@contextmanager
def collector_off() -> Iterator[None]:
    """Run the replay (or ``evaluate``'s outputs) with the cyclic garbage collector off,
    then restore it.

    A replay keeps every event, state and example alive: the collector would re-scan
    them over and over (a quarter of the replay's time with the default thresholds, still
    4 % of a purchase-log evaluate with a first threshold of 50,000) for the reference
    cycles the core does not create. Only their collection is delayed; reference
    counting frees everything else.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # Hand the survivors to the oldest generation without scanning them (freeze then
        # unfreeze moves every tracked object there): left in the youngest, the next
        # collection would scan the millions of objects the replay made.
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def run_backtest(
    source: Iterable[bytes | str | dict[str, Any]],
    config: Config,
    *,
    keep_scores: bool = False,
    progress: Callable[[int], None] | None = None,
    until_ms: int | None = None,
    on_scores: Callable[[list[Score]], None] | None = None,
    attributes: Iterable[bytes | str | dict[str, Any]] = (),
) -> BacktestResult:
    """Replay ``source`` (JSON lines or dicts) through the core in event-time order.

    Parameters
    ----------
    source
        Experience events, in any order.
    config
        The validated configuration.
    keep_scores
        Keep ``(goal, event_time_ms, probability, profile_id, trigger)`` of every score
        computed in ``score_log``.
    progress
        Called with the number of events processed so far, every 10,000 events.
    until_ms
        Replay only the events before this time (epoch ms; ``customer-ai backfill --until``).
    on_scores
        Called with every batch of scores the replay computes, before they are dropped
        (``customer-ai backfill`` keeps each profile's newest score per goal).
    attributes
        Profile fragments (:mod:`models.attributes`), in any order: each is applied
        before the events of its time and after those before it, as a stream applies a
        fragment that reached it before the events it precedes.
    """
    engine = Engine(config, every_rescore=False)
    trainer = Trainer(config, engine.featurizer.names)
    result = BacktestResult(engine, trainer, {}, on_scores=on_scores)
    if config.identity_namespaces:
        result.persons = PersonIndex(
            config.identity_namespaces, config.max_identities, engine.featurizer
        )
    with collector_off():
        events = load_events(source, config, result.rejected)
        fragments = load_fragments(attributes, config, result.rejected_fragments)
        if until_ms is not None:
            events = events[: bisect.bisect_left(events, until_ms, key=_event_time)]
            fragments = [f for f in fragments if f.timestamp_ms < until_ms]
        _replay(events, engine, result, keep_scores, progress, fragments)
    return result


def _replay(
    events: list[Event],
    engine: Engine,
    result: BacktestResult,
    keep_scores: bool,
    progress: Callable[[int], None] | None,
    fragments: Sequence[Fragment] = (),
) -> None:
    config = engine.config
    states = result.states
    next_fragment = 0  # the fragments before it are applied

    def apply_fragments(until: int) -> None:
        """Apply the fragments of time <= ``until`` (a profile's first may create it)."""
        nonlocal next_fragment
        while next_fragment < len(fragments) and fragments[next_fragment].timestamp_ms <= until:
            fragment = fragments[next_fragment]
            pid = fragment.profile_id
            if persons is not None:  # a fragment links no identities: it follows them
                pid = fragment.profile_id = persons.canonical.get(pid, pid)
            state = engine.apply_fragment(states.get(pid), fragment)
            if state is not None:
                states[pid] = state
            result.n_fragments += 1
            next_fragment += 1

    # ``due`` orders (time, profile id) as the stream's due index does (time, then the id's
    # characters): each entry is one int, time * n + the id's rank among the sorted ids (a
    # heap of ints compares quicker than one of tuples)
    persons = result.persons
    if persons is None:
        ids = sorted({event.profile_id for event in events})
    else:  # any identity of an event may end a person's canonical id
        namespaces = persons.namespaces
        ids = sorted({i for e in events for _, i in ranked_identities(e.body, namespaces)})
    n_ids = len(ids)
    rank = {pid: i for i, pid in enumerate(ids)}
    due: list[int] = []
    planned: dict[str, int] = {}  # profile -> the time of its live entry in ``due``
    out = Outcome()
    lateness = config.labels.allowed_lateness_ms
    watermark = None
    for n, event in enumerate(events, 1):
        if next_fragment < len(fragments):  # before the rescorings the watermark brings
            apply_fragments(event.timestamp_ms)
        wm = event.timestamp_ms - lateness
        if watermark is None or wm > watermark:
            watermark = wm
            limit = watermark * n_ids  # the first entry of time >= watermark
            while due and due[0] < limit:
                when, i = divmod(heapq.heappop(due), n_ids)
                pid = ids[i]
                if planned.get(pid) != when:
                    continue  # superseded by an earlier entry of the profile's
                state = states[pid]
                engine.advance(pid, state, watermark, out)
                nxt = engine.next_due(state, pid)
                if nxt is not None:
                    heapq.heappush(due, nxt * n_ids + i)
                    planned[pid] = nxt
                else:
                    del planned[pid]
            if out.scores or out.examples:
                _consume(out, result, keep_scores)
        try:
            matched = engine.match(event)
        except InvalidEvent as exc:
            result.rejected[exc.reason] += 1
            continue
        if persons is not None:  # the event's links merge persons first
            pid, absorbed = persons.resolve(event.body, states)
            event.profile_id = pid
            for lost in absorbed:
                planned.pop(lost, None)  # its entries in ``due`` are skipped
        pid = event.profile_id
        before = states.get(pid)
        state = engine.process(before, event, out, matched)
        if out.duplicates:  # skipped, its state unchanged (as in the stream)
            result.n_duplicates += out.duplicates
            out.duplicates = 0
        else:
            states[pid] = state
            # the heap holds an entry at or before every profile's next due work (window
            # close or scheduled rescoring), ``planned`` the profile's current one: push one
            # when the event made work due earlier (a 30-day goal's snapshot under a 90-day
            # one's); an entry no longer planned is skipped when popped
            nxt = engine.next_due(state, pid)
            if nxt is not None:
                current = planned.get(pid)
                if current is None or nxt < current:
                    heapq.heappush(due, nxt * n_ids + rank[pid])
                    planned[pid] = nxt
            result.n_events += 1
        _consume(out, result, keep_scores)
        if progress is not None and n % 10_000 == 0:
            progress(n)
    apply_fragments(fragments[-1].timestamp_ms if fragments else 0)  # after the last event
    # the served scores as the stream serves them at the final watermark: the rescorings
    # skipped since each profile's last computed one (a file has no wall clock: time
    # stops at the last event)
    if watermark is not None:
        for pid, state in states.items():
            engine.settle(pid, state, watermark, out)
            _consume(out, result, keep_scores)
    result.watermark = watermark
    if progress is not None:
        progress(len(events))


def _event_time(event: Event) -> int:
    return event.timestamp_ms


def _consume(out: Outcome, result: BacktestResult, keep_scores: bool) -> None:
    if result.on_scores is not None and out.scores:
        result.on_scores(out.scores)
    result.n_scores += len(out.scores) + out.rescores_skipped
    if keep_scores:
        result.score_log.extend(
            (s.goal, s.event_time_ms, s.probability, s.profile_id, s.trigger) for s in out.scores
        )
    if out.examples:  # a new model version is only ever due after learning
        for example in out.examples:
            if result.trainer.learn(example):
                result.examples.append(example)
        trainer = result.trainer
        for goal in trainer.due():
            # the sampled profiles ranked as they are now (the stream's trainer reads them
            # from the profile store)
            model = trainer.snapshot(goal, partial(trainer.current_matrix, goal, result.states))
            if model is None:  # refused: the serving version stays
                continue
            result.engine.set_model(model)
            result.models.append(model)
    out.clear()


#: the columns of ``examples.csv`` (and keys of :func:`example_row`) before the features
EXAMPLE_COLUMNS = [
    "goal",
    "profile_id",
    "prediction_time",
    "label",
    "probability",
    "model_version",
    "warming_up",
    "trigger",
]


def example_row(example: Example, feature_names: list[str]) -> dict[str, Any]:
    """A flat dict for CSV/JSON: :data:`EXAMPLE_COLUMNS`, then one key per feature.

    ``warming_up`` is 1 when a warm-up model (base rate or prior) served the probability,
    ``trigger`` what opened the label snapshot (``event`` or ``schedule``).
    """
    from models.profile import format_time

    row: dict[str, Any] = {
        "goal": example.goal,
        "profile_id": example.profile_id,
        "prediction_time": format_time(example.prediction_ts),
        "label": example.label,
        "probability": example.probability,
        "model_version": example.model_version,
        "warming_up": 1 if example.served_warming_up else 0,
        "trigger": getattr(example, "trigger", "event"),
    }
    row.update(zip(feature_names, example.features))
    return row


def dumps(obj: Any) -> bytes:
    """JSON bytes (orjson)."""
    return orjson.dumps(obj)
