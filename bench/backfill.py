"""History import: ``customer-ai backfill`` against replaying the same file through a worker.

In one run, on one broker and one Redis (each setup under its own key and topic prefix):

``backfill``
    ``customer-ai generate --profiles P --days D`` writes a history (a period ending
    today), then ``customer-ai backfill FILE --partitions N`` imports it: the seconds are
    the command's whole run (Python start, reading, the in-process replay, the Redis
    writes), ``backfill_eps`` = valid events / those seconds.
``replay``
    One ``customer-ai worker`` is started (and waits ready), then ``customer-ai replay
    FILE`` produces the same file: the seconds run from the replay's start until the
    worker group committed every input offset **and** the trainer stored the offset of
    the last training example (the models have learnt everything the stream matured);
    ``replay_eps`` = file lines / those seconds.

``ratio`` = ``backfill_eps / replay_eps``. Both run the same core (``CUSTOMER_AI_NATIVE``
as the environment says; the result names it).

Usage: ``python bench/backfill.py [--profiles 5000] [--days 180]``; the last line of stdout
is the JSON result, everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    REPO,
    create_topics,
    emit,
    log,
    on_signals_exit,
    run_id,
    servers,
    start_workers,
    wait_committed,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", type=int, default=5000)
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per setup")
    p.add_argument("--workdir", type=Path, default=None, help="logs (default: a temp dir)")
    return p


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMER_AI_")}
    env.update(PYTHONPATH=str(REPO), CUSTOMER_AI_CONFIG=str(REPO / "customer-ai.toml"), **extra)
    if "CUSTOMER_AI_NATIVE" in os.environ:
        env["CUSTOMER_AI_NATIVE"] = os.environ["CUSTOMER_AI_NATIVE"]
    return env


def _cli(args: list[str], env: dict[str, str], workdir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"customer-ai {args[0]} failed: {done.stderr[-2000:]}")
    return done.stderr + done.stdout


async def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def replay_setup(
    args: argparse.Namespace, bootstrap: str, redis_url: str, history: Path, workdir: Path
) -> tuple[float, int]:
    """Seconds from the replay's start until the stream and the trainer are done; lines."""
    prefix = f"bench-{run_id()}-replay"
    env = _env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        CUSTOMER_AI_TOPIC_PREFIX=prefix,
        CUSTOMER_AI_PARTITIONS=str(args.partitions),
    )
    events_topic = f"{prefix}.events"
    await create_topics(bootstrap, {events_topic: args.partitions})
    workers = start_workers(
        1,
        bootstrap,
        redis_url,
        workdir,
        app_id=f"{prefix}-app",
        topic_prefix=prefix,
        key_prefix=prefix,
        name="replay-worker",
        CUSTOMER_AI_PARTITIONS=str(args.partitions),
        **{k: v for k, v in os.environ.items() if k == "CUSTOMER_AI_NATIVE"},
    )
    try:
        started = time.perf_counter()
        out = _cli(["replay", str(history)], env, workdir)
        lines = int(re.search(r"replayed ([\d,]+) lines", out).group(1).replace(",", ""))  # type: ignore[union-attr]
        log(f"replay: produced {lines:,} lines in {time.perf_counter() - started:.1f}s")
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(events_topic, p) for p in range(args.partitions)]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        target = {tp.partition: off for tp, off in ends.items()}
        await wait_committed(
            bootstrap,
            f"{prefix}-app",
            events_topic,
            target,
            args.timeout,
            "worker",
            alive=lambda: workers[0].alive,
        )
        scored = time.perf_counter() - started
        last = await _end_offset(bootstrap, f"{prefix}.training") - 1
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + args.timeout
        while True:
            raw = client.hget(f"{prefix}:trainer:offsets", "0")
            if last < 0 or (raw is not None and int(raw) >= last):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the trainer did not catch up")
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        log(f"replay: scored in {scored:.1f}s, trained in {seconds:.1f}s")
        return seconds, lines
    finally:
        workers[0].stop()


def backfill_setup(
    args: argparse.Namespace, redis_url: str, history: Path, workdir: Path
) -> tuple[float, int, str]:
    """Seconds of the whole ``customer-ai backfill`` command; events applied; its summary."""
    prefix = f"bench-{run_id()}-backfill"
    env = _env(REDIS_URL=redis_url, CUSTOMER_AI_KEY_PREFIX=prefix)
    started = time.perf_counter()
    out = _cli(["backfill", str(history), "--partitions", str(args.partitions)], env, workdir)
    seconds = time.perf_counter() - started
    summary = " ".join(out.split())
    events = int(re.search(r"backfill: ([\d,]+) events", summary).group(1).replace(",", ""))  # type: ignore[union-attr]
    log(f"backfill: {summary}")
    return seconds, events, summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    on_signals_exit()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cai-bench-backfill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs in {workdir}")
    history = workdir / "history.jsonl"
    gen = [
        "generate",
        *("--profiles", str(args.profiles), "--days", str(args.days), "--seed", str(args.seed)),
        *("--out", str(history)),
    ]
    log(_cli(gen, _env(), workdir).strip())
    with servers(workdir) as (bootstrap, redis_url):
        bf_seconds, events, summary = backfill_setup(args, redis_url, history, workdir)
        rp_seconds, lines = asyncio.run(replay_setup(args, bootstrap, redis_url, history, workdir))
    native = os.environ.get("CUSTOMER_AI_NATIVE", "1") != "0"
    result: dict[str, Any] = {
        "profiles": args.profiles,
        "days": args.days,
        "events": events,
        "lines": lines,
        "partitions": args.partitions,
        "core": "compiled if built" if native else "Python sources",
        "backfill_seconds": round(bf_seconds, 2),
        "backfill_eps": round(events / bf_seconds),
        "replay_seconds": round(rp_seconds, 2),
        "replay_eps": round(lines / rp_seconds),
        "ratio": round((events / bf_seconds) / (lines / rp_seconds), 2),
        "backfill_summary": summary,
    }
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
