"""Throughput: the scorer against a bare aiokafka forwarder and a do-nothing Faust agent.

On one broker and one Redis, in one run, with the same pre-produced events (``--events``
over ``--profiles``, keyed by profile id, 4 partitions), four setups each read their own
copy of the input from the beginning:

``raw_passthrough_eps``
    ``bench/passthrough.py raw``: a bare aiokafka consumer forwarding every message.
``faust_passthrough_eps``
    ``bench/passthrough.py faust``: an idiomatic Faust agent, ``await topic.send(...)``.
``faust_batch_passthrough_eps``
    ``bench/passthrough.py faust-batch``: the scorer's own consume/produce path
    (``take_events`` batches, one batched aiokafka produce per batch) doing nothing: the
    ceiling of a Faust-based scorer (not a target; it says how much the scoring costs).
``scorer_eps`` / ``scorer_2w_eps``
    One / two ``customer-ai worker`` processes (2 goals, 4 tracked events from
    ``customer-ai.toml``), started together on an already filled input topic, with
    trained models seeded in Redis first (a cold model skips the factors).
``scorer_ref_eps``
    With ``--ref-repo DIR``: one worker run from another source tree (e.g. a
    ``git worktree`` of the previous commit, its core built in place with
    ``python setup.py build_ext --inplace``), in the same rounds as the others, for an
    A/B of a change; ``scorer_vs_ref = scorer_eps / scorer_ref_eps``. ``--ref-env
    KEY=VALUE`` sets the reference worker's environment over ``--worker-env``: with
    ``--ref-repo .`` it compares a setting (``--ref-env CUSTOMER_AI_PROFILE_SCORES=1``).

Events/s of a setup = events / (last output message's CreateTime - the first batch
consumed, as logged by the consuming process; with two workers the earlier one). The
output is the forwarded topic for the passthroughs and ``<prefix>.scores`` for the scorer
(done when the worker group committed every input offset). Ratios: ``scorer_vs_faust``,
``scorer_vs_raw``, ``scale_2w = scorer_2w_eps / scorer_eps``. With ``--repeat N`` the
setups run round-robin N times and each figure is the median of its N runs.

Usage: ``python bench/throughput.py [--events 200000] [--profiles 100000]``; the last line
of stdout is the JSON result, everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    REPO,
    Child,
    create_topics,
    emit,
    first_batch_time,
    log,
    on_signals_exit,
    proc_cpu_seconds,
    produce_all,
    run_id,
    sample_events,
    scan_topic,
    scoring_core,
    seed_models,
    servers,
    start_workers,
    wait_committed,
    wait_for_line,
)

SETUPS = ("raw", "faust", "faust-batch", "scorer", "scorer2w", "scorer-ref")
#: what the workers' logs say they scored with (models.NATIVE): "compiled", "Python sources"
SCORING_CORES: set[str] = set()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--profiles", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated subset of {SETUPS}")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per setup")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the scorer workers (repeatable)",
    )
    p.add_argument(
        "--ref-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the scorer-ref worker, over --worker-env (repeatable): "
        "with --ref-repo . an A/B of a setting",
    )
    p.add_argument(
        "--worker-repo",
        type=Path,
        default=None,
        help="run the scorer workers from this source tree (A/B comparisons)",
    )
    p.add_argument(
        "--ref-repo",
        type=Path,
        default=None,
        help="also run one worker from this source tree in every round (setup scorer-ref)",
    )
    p.add_argument("--repeat", type=int, default=1, help="run the setups this many times")
    p.add_argument("--workdir", type=Path, default=None, help="logs (default: a temp dir)")
    return p


def _rate(n: int, first: float | None, last_ms: int, what: str) -> float:
    if first is None or last_ms <= 0:
        raise RuntimeError(f"{what}: no first-batch time or no output timestamps")
    seconds = last_ms / 1000 - first
    log(f"[bold]{what}[/]: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s")
    return n / seconds


async def passthrough(
    mode: str,
    bootstrap: str,
    messages: list[tuple[bytes, bytes]],
    partitions: int,
    workdir: Path,
    rid: str,
    timeout: float,
) -> float:
    src, dst = f"bench-{rid}-{mode}.in", f"bench-{rid}-{mode}.out"
    n = len(messages)
    await create_topics(bootstrap, {src: partitions, dst: partitions})
    await produce_all(bootstrap, src, messages, n, f"produce {mode} input")
    child = Child(
        [sys.executable, str(REPO / "bench" / "passthrough.py"), mode]
        + ["--bootstrap", bootstrap, "--src", src, "--dst", dst]
        + ["--group", f"bench-{rid}-{mode}", "--count", str(n)],
        workdir / f"{mode}-passthrough.log",
        workdir,
        {**os.environ, "F_DATADIR": str(workdir / "{conf.name}-data")},
    )
    try:
        await wait_for_line(
            child.log_path, rf"forwarded {n}\b", timeout, f"{mode} passthrough", lambda: child.alive
        )
        count, last_ms = await scan_topic(bootstrap, dst, want=n, idle=10.0)
    finally:
        child.stop()
    if count < n:
        raise RuntimeError(f"{mode} passthrough: {count} of {n} messages forwarded")
    return _rate(n, first_batch_time(child.log_path), last_ms, f"{mode} passthrough")


async def scorer(
    n_workers: int,
    bootstrap: str,
    redis_url: str,
    messages: list[tuple[bytes, bytes]],
    partitions: int,
    workdir: Path,
    rid: str,
    timeout: float,
    worker_env: dict[str, str],
    worker_repo: Path | None = None,
    tag: str = "",
) -> float:
    prefix = f"bench-{rid}-{n_workers}w{tag}"
    app_id = f"{prefix}-app"
    events_topic = f"{prefix}.events"
    await create_topics(bootstrap, {events_topic: partitions})
    target = await produce_all(
        bootstrap, events_topic, messages, len(messages), f"produce {n_workers}w input"
    )
    seed_models(redis_url, prefix)
    log(f"starting {n_workers} worker(s)")
    workers = start_workers(
        n_workers,
        bootstrap,
        redis_url,
        workdir,
        app_id=app_id,
        topic_prefix=prefix,
        key_prefix=prefix,
        name=f"scorer{n_workers}w-",
        repo=worker_repo,
        CUSTOMER_AI_PARTITIONS=str(partitions),
        **worker_env,
    )
    cpu_start = [proc_cpu_seconds(w.proc.pid) for w in workers]  # type: ignore[union-attr]
    try:
        await wait_committed(
            bootstrap,
            app_id,
            events_topic,
            target,
            timeout,
            f"scorer {n_workers}w",
            alive=lambda: all(w.alive for w in workers),
        )
        cpu = sum(proc_cpu_seconds(w.proc.pid) for w in workers) - sum(cpu_start)  # type: ignore[union-attr]
        split = [w.events_in() for w in workers]
    finally:
        for w in workers:
            w.stop()
    cold: Counter[str] = Counter()
    scored: set[str] = set()

    def note(record: Any) -> None:
        score = orjson.loads(record.value)
        if score["event_id"] is not None:
            scored.add(score["event_id"])
        if score["warming_up"]:
            cold[score["goal"]] += 1

    count, last_ms = await scan_topic(bootstrap, f"{prefix}.scores", on_record=note)
    firsts = [first_batch_time(w.log_path) for w in workers]
    SCORING_CORES.update(str(scoring_core(w.log_path)) for w in workers)
    log(
        f"scorer {n_workers}w: {count:,} scores for {len(scored):,} events "
        f"(warming up: {dict(cold)}); events per worker {split}; first batches at {firsts}"
    )
    log(
        f"scorer {n_workers}w: worker CPU {cpu:.1f}s = "
        f"{1e6 * cpu / len(messages):,.0f} us per event (from ready to all committed)"
    )
    valid = [f for f in firsts if f is not None]
    if n_workers > 1 and len(valid) == n_workers and max(valid) - min(valid) > 2.0:
        log("[yellow]the workers started consuming more than 2 s apart[/]")
    for w in workers:
        if re.search(r"Traceback|batch failed", w.log_path.read_text(errors="replace")):
            log(f"[yellow]{w.log_path} holds errors: check it[/]")
    return _rate(
        len(messages), min(valid) if valid else None, last_ms, f"scorer {n_workers} worker(s)"
    )


async def run(args: argparse.Namespace, bootstrap: str, redis_url: str, workdir: Path) -> dict:
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        raise SystemExit(f"unknown setups {sorted(unknown)}")
    if args.ref_repo is None:
        if "scorer-ref" in setups and args.setups != ",".join(SETUPS):
            raise SystemExit("setup scorer-ref needs --ref-repo DIR")
        setups = [s for s in setups if s != "scorer-ref"]
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    ref_env = {**worker_env, **dict(kv.split("=", 1) for kv in args.ref_env)}
    started = time.perf_counter()
    messages = sample_events(args.events, args.profiles, args.seed)
    log(
        f"{len(messages):,} events over {len({k for k, _ in messages}):,} profiles "
        f"generated in {time.perf_counter() - started:.1f}s"
    )
    runs: dict[str, list[float]] = {s: [] for s in setups}
    for round_ in range(1, args.repeat + 1):
        rid = run_id()
        for setup in setups:
            log(f"[bold]round {round_}/{args.repeat}: {setup}[/]")
            if setup in ("raw", "faust", "faust-batch"):
                value = await passthrough(
                    setup, bootstrap, messages, args.partitions, workdir, rid, args.timeout
                )
            else:
                value = await scorer(
                    2 if setup == "scorer2w" else 1,
                    bootstrap,
                    redis_url,
                    messages,
                    args.partitions,
                    workdir,
                    rid,
                    args.timeout,
                    ref_env if setup == "scorer-ref" else worker_env,
                    args.ref_repo if setup == "scorer-ref" else args.worker_repo,
                    tag="-ref" if setup == "scorer-ref" else "",
                )
            runs[setup].append(value)
    if args.repeat > 1:
        log(f"events/s per round: { {s: [round(v) for v in vs] for s, vs in runs.items()} }")
    eps = {s: statistics.median(vs) for s, vs in runs.items() if vs}

    def ratio(a: str, b: str) -> float | None:
        return round(eps[a] / eps[b], 3) if a in eps and b in eps else None

    return {
        "raw_passthrough_eps": round(eps["raw"]) if "raw" in eps else None,
        "faust_passthrough_eps": round(eps["faust"]) if "faust" in eps else None,
        "faust_batch_passthrough_eps": round(eps["faust-batch"]) if "faust-batch" in eps else None,
        "scorer_eps": round(eps["scorer"]) if "scorer" in eps else None,
        "scorer_2w_eps": round(eps["scorer2w"]) if "scorer2w" in eps else None,
        "scorer_ref_eps": round(eps["scorer-ref"]) if "scorer-ref" in eps else None,
        "scorer_vs_faust": ratio("scorer", "faust"),
        "scorer_vs_raw": ratio("scorer", "raw"),
        "scale_2w": ratio("scorer2w", "scorer"),
        "scorer_vs_ref": ratio("scorer", "scorer-ref"),
        "scoring_core": ",".join(sorted(SCORING_CORES)) or None,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    on_signals_exit()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cai-bench-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs in {workdir}")
    with servers(workdir) as (bootstrap, redis_url):
        result = asyncio.run(run(args, bootstrap, redis_url, workdir))
    log(f"sizes: {args.events:,} events over {args.profiles:,} profiles")
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
