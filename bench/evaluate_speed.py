"""Events per second of the in-process backtest (the engine behind ``customer-ai evaluate``).

Replays JSON lines through :func:`models.backtest.run_backtest` with the given config
(the example config has 2 goals) and prints one JSON object: wall-clock and CPU rates of
the whole replay (decode + validate + features + scoring + labels + learning), and of
decoding alone, best of ``--repeat`` runs.

Usage::

    python bench/evaluate_speed.py [EVENTS.jsonl] [--config customer-ai.toml]
                                   [--profiles 3000 --days 540 --seed 1] [--repeat 3]

Without EVENTS it generates the synthetic data set in memory. Target (issue 3):
``events_per_second >= 30000`` on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import orjson

from models.backtest import load_events, run_backtest
from models.config import load_config
from models.synthetic import generate_events


def _timed(fn) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", nargs="?", type=Path)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.events:
        lines = args.events.read_bytes().splitlines()
        source = str(args.events)
    else:
        events = generate_events(profiles=args.profiles, days=args.days, seed=args.seed)
        lines = [orjson.dumps(e) for e in events]
        del events
        source = f"generated: {args.profiles} profiles, {args.days} days, seed {args.seed}"
    best_wall = best_cpu = best_decode_wall = best_decode_cpu = float("inf")
    n_events = n_examples = 0
    for _ in range(args.repeat):
        wall, cpu, result = _timed(lambda: run_backtest(lines, config))
        n_events, n_examples = result.n_events, len(result.examples)  # type: ignore[attr-defined]
        del result
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        d_wall, d_cpu, _ = _timed(lambda: load_events(lines, config))
        best_decode_wall, best_decode_cpu = (
            min(best_decode_wall, d_wall),
            min(best_decode_cpu, d_cpu),
        )
    report = {
        "source": source,
        "goals": [g.name for g in config.goals],
        "events": n_events,
        "examples": n_examples,
        "seconds": round(best_wall, 3),
        "events_per_second": round(n_events / best_wall),
        "cpu_events_per_second": round(n_events / best_cpu),
        "decode_events_per_second": round(len(lines) / best_decode_wall),
        "replay_without_decode_events_per_second": round(
            n_events / max(1e-9, best_wall - best_decode_wall)
        ),
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
