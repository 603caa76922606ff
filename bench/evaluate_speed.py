"""Events per second of the in-process backtest (the engine behind ``customer-ai evaluate``).

Replays JSON lines through :func:`models.backtest.run_backtest` with the given config
(the example config has 2 goals) and prints one JSON object: wall-clock and CPU rates of
the whole replay (decode + validate + features + scoring + labels + learning), and of
decoding alone, best of ``--repeat`` runs.

Usage::

    python bench/evaluate_speed.py [EVENTS.jsonl] [--config customer-ai.toml]
                                   [--shape shop|purchase-log] [--profiles N --days D]
                                   [--seed 1] [--repeat 3]
                                   [--whole-process [--ref-repo DIR]]

Without EVENTS it generates a data set: ``--shape shop`` (default) the synthetic shop of
``customer-ai generate`` (3,000 profiles over 540 days), ``--shape purchase-log`` a
history shaped like a real purchase log (:mod:`bench.purchase_log`: 23,570 profiles with a
handful of events each over 18 months). ``--whole-process`` times ``customer-ai evaluate``
as a user runs it (a new process: start-up, reading the file, the backtest and writing
metrics.json, examples.csv, profiles.jsonl and report.html) instead of the in-process
backtest, and reports the best and the median of the ``--repeat`` runs; ``--ref-repo DIR``
times ``customer-ai evaluate`` of another source tree too (a worktree of another commit),
run by run after this one, for an A/B in the same minutes (``median_vs_ref``). Targets (issue
17): whole process ``events_per_second >= 30000`` on the shop and ``>= 10000`` on the
purchase-log shape, on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.purchase_log import generate_purchase_log  # noqa: E402
from models.backtest import load_events, run_backtest  # noqa: E402
from models.config import load_config  # noqa: E402
from models.synthetic import generate_events  # noqa: E402


def _timed(fn) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _whole_process(
    path: Path, config: str | None, repeat: int, ref_repo: Path | None = None
) -> tuple[list[float], list[float], dict]:  # type: ignore[type-arg]
    """The wall time of each run of ``customer-ai evaluate`` on ``path`` in a new process
    (this tree), of each run in ``ref_repo`` (run right after it, round by round: the two
    trees see the same minutes of a drifting VM), and this tree's metrics.json."""
    times: list[float] = []
    ref_times: list[float] = []
    metrics: dict = {}  # type: ignore[type-arg]
    here = Path(__file__).resolve().parents[1]
    trees = [(here, "this", times)] + ([(ref_repo, "ref", ref_times)] if ref_repo else [])
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeat):
            for tree, name, into in trees:
                where = Path(out) / name
                cmd = [
                    sys.executable,
                    "-m",
                    "stream.cli",
                    "evaluate",
                    str(path),
                    "--out",
                    str(where),
                ]
                if config:
                    cmd += ["--config", str(Path(config).resolve())]
                started = time.perf_counter()
                subprocess.run(
                    cmd, check=True, stdout=subprocess.DEVNULL, cwd=tree, env=dict(os.environ)
                )
                into.append(time.perf_counter() - started)
        metrics = json.loads((Path(out) / "this" / "metrics.json").read_text())
    return times, ref_times, metrics


def _rates(n_events: int, times: list[float]) -> dict[str, object]:
    best, median = min(times), statistics.median(times)
    return {
        "seconds": round(best, 3),
        "events_per_second": round(n_events / best),
        # a VM's speed drifts by 30 % and more between minutes: the median of the runs
        # beside the best
        "median_seconds": round(median, 3),
        "median_events_per_second": round(n_events / median),
        "runs_seconds": [round(t, 3) for t in times],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", nargs="?", type=Path)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", choices=["shop", "purchase-log"], default="shop")
    parser.add_argument("--whole-process", action="store_true")
    parser.add_argument(
        "--ref-repo",
        type=Path,
        default=None,
        help="with --whole-process: also time this source tree (a worktree of another "
        "commit, its core built in place), run by run after this one",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.events:
        lines = args.events.read_bytes().splitlines()
        source = str(args.events)
    elif args.shape == "purchase-log":
        profiles = 23_570 if args.profiles == 3000 else args.profiles
        log = generate_purchase_log(profiles=profiles, months=18, seed=args.seed)
        lines = [orjson.dumps(e) for e in log]
        source = f"purchase-log shape: {profiles} profiles, 18 months, seed {args.seed}"
    else:
        events = generate_events(profiles=args.profiles, days=args.days, seed=args.seed)
        lines = [orjson.dumps(e) for e in events]
        del events
        source = f"generated: {args.profiles} profiles, {args.days} days, seed {args.seed}"
    if args.whole_process:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.events or Path(tmp) / "events.jsonl"
            if not args.events:
                path.write_bytes(b"\n".join(lines) + b"\n")
            path = path.resolve()
            times, ref_times, metrics = _whole_process(
                path, args.config, args.repeat, args.ref_repo
            )
        n_events = len(lines)
        summary: dict[str, object] = {
            "source": source,
            "mode": "whole process: customer-ai evaluate, outputs included",
            "events": n_events,
            "examples": {goal: m["n_matured"] for goal, m in metrics.items()},
            **_rates(n_events, times),
        }
        if ref_times:
            summary["ref"] = {"repo": str(args.ref_repo), **_rates(n_events, ref_times)}
            summary["median_vs_ref"] = round(
                statistics.median(ref_times) / statistics.median(times), 3
            )
        summary.update(
            repeat=args.repeat,
            python=platform.python_version(),
            cpus=os.cpu_count(),
            load_average_1m=round(os.getloadavg()[0], 2),
        )
        print(json.dumps(summary))
        return 0
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
