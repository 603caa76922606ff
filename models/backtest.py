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

import gc
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.config import Config
from models.engine import Engine
from models.events import Event, InvalidEvent, decode_event, validate_event
from models.model import LinearModel
from models.outcome import Example, Outcome
from models.state import ProfileState
from models.training import Trainer

__all__ = ["BacktestResult", "load_events", "run_backtest"]


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
    score_log: list[tuple[str, int, float]] = field(default_factory=list)
    models: list[LinearModel] = field(default_factory=list)

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
                event = validate_event(line, identity_namespace=config.identity_namespace)
            else:
                if isinstance(line, str):
                    line = line.encode()
                if not line.strip():
                    continue
                event = decode_event(
                    line,
                    identity_namespace=config.identity_namespace,
                    max_bytes=config.max_event_bytes,
                )
        except InvalidEvent as exc:
            if rejected is not None:
                rejected[exc.reason] += 1
            continue
        events.append(event)
    events.sort(key=lambda e: e.timestamp_ms)
    return events


@contextmanager
def _few_collections() -> Iterator[None]:
    """Run the cyclic garbage collector rarely, then restore its thresholds.

    A replay keeps every event, state and example alive: with the default thresholds
    the collector re-scans them over and over (a quarter of the replay's time). This
    only delays the collection of reference cycles, which the core does not create.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 50, 1000)
    try:
        yield
    finally:
        # Hand the survivors to the oldest generation without scanning them (freeze then
        # unfreeze moves every tracked object there); restoring the thresholds alone would
        # make the next allocation scan the millions of objects of the younger generations.
        gc.freeze()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def run_backtest(
    source: Iterable[bytes | str | dict[str, Any]],
    config: Config,
    *,
    keep_scores: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Replay ``source`` (JSON lines or dicts) through the core in event-time order.

    Parameters
    ----------
    source
        Experience events, in any order.
    config
        The validated configuration.
    keep_scores
        Keep ``(goal, event_time_ms, probability)`` of every score in ``score_log``.
    progress
        Called with the number of events processed so far, every 10,000 events.
    """
    engine = Engine(config)
    trainer = Trainer(config, engine.featurizer.names)
    result = BacktestResult(engine, trainer, {})
    with _few_collections():
        events = load_events(source, config, result.rejected)
        _replay(events, engine, result, keep_scores, progress)
    return result


def _replay(
    events: list[Event],
    engine: Engine,
    result: BacktestResult,
    keep_scores: bool,
    progress: Callable[[int], None] | None,
) -> None:
    config = engine.config
    states = result.states
    due: list[tuple[int, str]] = []
    out = Outcome()
    lateness = config.labels.allowed_lateness_ms
    watermark = None
    for n, event in enumerate(events, 1):
        wm = event.timestamp_ms - lateness
        if watermark is None or wm > watermark:
            watermark = wm
            while due and due[0][0] < watermark:
                _, pid = heapq.heappop(due)
                state = states[pid]
                engine.expire(pid, state, watermark, out)
                nxt = engine.next_due(state)
                if nxt is not None:
                    heapq.heappush(due, (nxt, pid))
        try:
            matched = engine.match(event)
        except InvalidEvent as exc:
            result.rejected[exc.reason] += 1
            continue
        pid = event.profile_id
        before = states.get(pid)
        due_before = engine.next_due(before) if before is not None else None
        state = engine.process(before, event, out, matched)
        if out.duplicates:  # skipped, its state unchanged (as in the stream)
            result.n_duplicates += out.duplicates
            out.duplicates = 0
        else:
            states[pid] = state
            # the heap holds an entry at or before every profile's next window close: push
            # one when the event opened a window closing earlier (a 30-day goal's snapshot
            # under a 90-day one's), else that window would close only at the later entry
            nxt = engine.next_due(state)
            if nxt is not None and (due_before is None or nxt < due_before):
                heapq.heappush(due, (nxt, pid))
            result.n_events += 1
        _consume(out, result, keep_scores)
        if progress is not None and n % 10_000 == 0:
            progress(n)
    if progress is not None:
        progress(len(events))


def _consume(out: Outcome, result: BacktestResult, keep_scores: bool) -> None:
    result.n_scores += len(out.scores)
    if keep_scores:
        result.score_log.extend((s.goal, s.event_time_ms, s.probability) for s in out.scores)
    if out.examples:  # a new model version is only ever due after learning
        for example in out.examples:
            if result.trainer.learn(example):
                result.examples.append(example)
        for goal in result.trainer.due():
            model = result.trainer.snapshot(goal)
            if model is None:  # refused: the serving version stays
                continue
            result.engine.set_model(model)
            result.models.append(model)
    out.clear()


def example_row(example: Example, feature_names: list[str]) -> dict[str, Any]:
    """A flat dict for CSV/JSON: goal, profile_id, prediction_time, label, probability, features."""
    from models.profile import format_time

    row: dict[str, Any] = {
        "goal": example.goal,
        "profile_id": example.profile_id,
        "prediction_time": format_time(example.prediction_ts),
        "label": example.label,
        "probability": example.probability,
    }
    row.update(zip(feature_names, example.features))
    return row


def dumps(obj: Any) -> bytes:
    """JSON bytes (orjson)."""
    return orjson.dumps(obj)
