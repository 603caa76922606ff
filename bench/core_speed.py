"""Microseconds per event of the core's steps, in process (no broker, no Redis).

Trains models with a backtest of a generated data set, then, best of ``--repeat``, times
on its last ``--events`` events: decoding (``decode_event``), ``Engine.process`` (match,
labels, features, both goals' scores), the factors of all scores (``explain_scores``),
the output messages (``encode_outcome``, factors included) and a round trip of every
touched state through its bytes; and the microseconds per example of a new
``Trainer.learn`` over every example the backtest learnt (the trainer's per-example step,
no publication). Prints one JSON object with ``models.NATIVE``.

``--throughput-events`` times on the events ``bench/throughput.py`` replays instead
(``--events`` of them over half as many profiles, within one day: no scheduled rescoring
is due), the steps of its worker's core.

Usage::

    python bench/core_speed.py [--events 20000] [--repeat 3] [--throughput-events]
    CUSTOMER_AI_NATIVE=0 python bench/core_speed.py    # the Python sources
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from bench.common import sample_events  # noqa: E402
from models.backtest import run_backtest  # noqa: E402
from models.config import load_config  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.events import decode_event  # noqa: E402
from models.explain import explain_scores  # noqa: E402
from models.messages import encode_outcome  # noqa: E402
from models.outcome import Example, Outcome  # noqa: E402
from models.state import ProfileState  # noqa: E402
from models.synthetic import generate_events  # noqa: E402
from models.training import Trainer  # noqa: E402


def _run(engine: Engine, raws: list[bytes], goals: list[str]) -> dict[str, float]:
    out = Outcome()
    states: dict[str, ProfileState] = {}
    marks = [time.perf_counter()]
    events = [decode_event(raw) for raw in raws]
    marks.append(time.perf_counter())
    for event in events:
        states[event.profile_id] = engine.process(states.get(event.profile_id), event, out)
    marks.append(time.perf_counter())
    explain_scores(out.scores)
    marks.append(time.perf_counter())
    encode_outcome(out, "2026-01-01T00:00:00.000Z", ("scores", "segments", "training"), [])
    marks.append(time.perf_counter())
    for state in states.values():
        ProfileState.from_bytes(state.to_bytes(), goals)
    marks.append(time.perf_counter())
    steps = ("decode", "process", "explain", "messages", "state_bytes")
    return {k: (b - a) * 1e6 / len(raws) for k, a, b in zip(steps, marks, marks[1:])}


def _learn(trainer: Trainer, examples: list[Example]) -> float:
    """Microseconds per example of ``trainer.learn`` over ``examples``."""
    start = time.perf_counter()
    for example in examples:
        trainer.learn(example)
    return (time.perf_counter() - start) * 1e6 / len(examples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="customer-ai.toml")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--throughput-events",
        action="store_true",
        help="time on bench/throughput.py's events (one day) instead of the history's last",
    )
    args = p.parse_args(argv)
    config = load_config(args.config)
    lines = generate_events(profiles=2000, days=200, seed=5)
    trained = run_backtest(lines, config)
    engine = Engine(config, {m.goal: m for m in trained.models})
    if args.throughput_events:
        raws = [value for _, value in sample_events(args.events, args.events // 2)]
    else:
        raws = [orjson.dumps(line) for line in lines[-args.events :]]
    goals = [g.name for g in config.goals]
    gc.disable()  # as the worker: collected between batches, not inside one
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for step, us in _run(engine, raws, goals).items():
            best[step] = min(us, best.get(step, us))
        gc.collect()
        us = _learn(Trainer(config, engine.featurizer.names), trained.examples)
        best["learn"] = min(us, best.get("learn", us))
        gc.collect()
    learn = best.pop("learn")
    result = {f"{k}_us_per_event": round(v, 2) for k, v in best.items()}
    result.update(
        learn_us_per_example=round(learn, 2),
        examples=len(trained.examples),
        events=len(raws),
        compiled=models.NATIVE,
        repeat=args.repeat,
        throughput_events=args.throughput_events,
    )
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
