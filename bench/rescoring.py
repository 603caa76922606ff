"""Do scores follow time? Quiet profiles' churn, stale scores, rescoring cost (issue 17).

Runs the backtest (the stream's core, :func:`models.backtest.run_backtest`) over generated
events and prints one JSON object:

- ``dormant_churn_rises``: of the profiles whose last event is at least ``--quiet-days``
  (60) before the end and that have a churn score, the share whose final churn
  probability (rescored as time passed) is above the one served at their last event;
- ``oldest_score_hours``: per goal, the oldest served score's age at the end, in event
  hours (at most one ``rescore_every_hours`` when every profile is rescored on time);
- ``rescorings_per_second``: scheduled rescorings per second of the stream's engine
  (every rescoring computed, as a worker does) over the final states, one CPU.

Usage::

    python bench/rescoring.py [--profiles 3000 --days 540 --seed 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from models.backtest import run_backtest
from models.config import load_config
from models.engine import Engine
from models.outcome import Outcome
from models.synthetic import generate_events

HOUR_MS = 3_600_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet-days", type=float, default=60.0)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    events = generate_events(profiles=args.profiles, days=args.days, seed=args.seed)
    result = run_backtest(events, config, keep_scores=True)
    end = max(state.ref_ts for state in result.states.values())
    at_last_event: dict[tuple[str, str], float | None] = {}
    for goal, ts, probability, pid, trigger in result.score_log:
        if trigger == "event" and ts == result.states[pid].ref_ts:
            at_last_event[(pid, goal)] = probability
    quiet_ms = args.quiet_days * 24 * HOUR_MS
    rises = considered = 0
    oldest: dict[str, float] = {}
    for pid, state in result.states.items():
        for goal, gs in state.goals.items():
            if gs.probability is not None and gs.scored_ts >= 0:
                age = (end - gs.scored_ts) / HOUR_MS
                oldest[goal] = max(oldest.get(goal, 0.0), age)
        churn = state.goals.get("churn")
        before = at_last_event.get((pid, "churn"))
        if churn is None or before is None or churn.probability is None:
            continue
        if end - state.ref_ts >= quiet_ms:
            considered += 1
            rises += churn.probability > before
    # the stream's engine: every rescoring computed, over 30 days past the end
    engine = Engine(config, dict(result.engine.models))
    out = Outcome()
    states = list(result.states.items())
    started = time.process_time()
    done = 0
    for pid, state in states:
        engine.advance(pid, state, end + 30 * 24 * HOUR_MS, out)
        done += sum(1 for s in out.scores if s.trigger == "schedule")
        out.clear()
    seconds = time.process_time() - started
    report = {
        "source": f"generated: {args.profiles} profiles, {args.days} days, seed {args.seed}",
        "quiet_profiles_with_churn_score": considered,
        "dormant_churn_rises": round(rises / considered, 4) if considered else None,
        "oldest_score_hours": {g: round(h, 1) for g, h in sorted(oldest.items())},
        "rescore_every_hours": {g.name: g.rescore_every_ms / HOUR_MS for g in config.goals},
        "scheduled_rescorings": done,
        "rescorings_per_second": round(done / seconds) if seconds else None,
        "examples_by_trigger": {
            t: sum(1 for e in result.examples if e.trigger == t) for t in ("event", "schedule")
        },
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
