"""``customer-ai erase ID [ID ...]``: ask the workers to remove people, and wait until they did.

Each id becomes one request on ``<prefix>.erasures`` (keyed by the id, value
``{"profile_id", "request_id", "requested_at"}``; the topic is created if missing). The
workers apply it (:mod:`stream.worker.erasure`); the command then waits, up to
``--timeout`` seconds, for both audit records of each request in ``P:erasures`` (the
worker's removal and the trainer's) and prints what was removed. A request not done in
time stays on the topic: a worker applies it when one runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from stream.cli.common import CliError, connect_store, output_console, settings_from_env

__all__ = ["add_erase_arguments", "cmd_erase", "erase_main", "request_erasures"]

#: seconds between two reads of the audit records while waiting
POLL_INTERVAL = 0.2


async def request_erasures(profile_ids: list[str]) -> list[dict[str, str]]:
    """Produce one erasure request per id (acknowledged by the broker); returns them."""
    from aiokafka import AIOKafkaProducer

    from stream.devservers.topics import create_missing_topics
    from stream.worker.security import kafka_security_kwargs

    settings = settings_from_env()
    topic = settings.topic("erasures")
    security = kafka_security_kwargs(os.environ)
    await create_missing_topics(settings.bootstrap, {topic: settings.partitions}, security)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    requests = [
        {"profile_id": pid, "request_id": uuid.uuid4().hex, "requested_at": now}
        for pid in profile_ids
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", **security)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, key=r["profile_id"].encode(), value=orjson.dumps(r))
            for r in requests
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return requests


async def _wait(requests: list[dict[str, str]], timeout: float) -> dict[str, dict[str, Any]]:
    """Request id -> its audit records, ``worker`` and ``trainer`` (absent: not done yet)."""
    settings = settings_from_env()
    store = await connect_store(settings)
    done: dict[str, dict[str, Any]] = {r["request_id"]: {} for r in requests}
    deadline = time.monotonic() + timeout
    try:
        while True:
            fields = [f for rid in done for f in (rid, f"{rid}/training")]
            values = await store.redis.hmget(store.erasures_key, fields)
            for rid, worker, trainer in zip(done, values[::2], values[1::2]):
                if worker is not None:
                    done[rid]["worker"] = orjson.loads(worker)
                if trainer is not None:
                    done[rid]["trainer"] = orjson.loads(trainer)
            if all(len(d) == 2 for d in done.values()) or time.monotonic() >= deadline:
                return done
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        await store.close()


def erase_main(profile_ids: list[str], timeout: float, wait: bool, as_json: bool) -> int:
    """Request the erasures, wait for them (unless ``wait`` is false) and print the outcome.

    Returns the exit status: 0 when every erasure is done (or requested, without
    waiting), 1 when some were not done within ``timeout`` seconds.
    """
    from stream.worker.erasure import MAX_ID_LENGTH

    profile_ids = list(dict.fromkeys(profile_ids))  # once each, in the order given
    if not profile_ids:
        raise CliError("give at least one profile id", 2)
    if any(not pid for pid in profile_ids):
        raise CliError("a profile id cannot be empty", 2)
    if any(len(pid) > MAX_ID_LENGTH for pid in profile_ids):
        raise CliError(f"a profile id is at most {MAX_ID_LENGTH} characters (as event ids)", 2)
    started = time.monotonic()
    requests = asyncio.run(request_erasures(profile_ids))
    if not wait:
        for r in requests:
            print(orjson.dumps(r).decode() if as_json else f"requested {r['request_id']}")
        return 0
    try:
        with output_console(stderr=True).status(f"waiting for {len(requests)} erasure(s)..."):
            outcome = asyncio.run(_wait(requests, timeout))
    except (CliError, RedisError, OSError) as exc:
        detail = exc.message if isinstance(exc, CliError) else repr(exc)
        ids = ", ".join(r["request_id"] for r in requests[:5])
        more = f" and {len(requests) - 5} more" if len(requests) > 5 else ""
        raise CliError(
            f"the {len(requests)} request(s) were written to "
            f"{settings_from_env().topic('erasures')} (request ids {ids}{more}) and workers "
            f"will apply them, but their outcome cannot be read from Redis: {detail}",
            1,
        ) from None
    seconds = time.monotonic() - started
    pending = [r for r in requests if len(outcome[r["request_id"]]) < 2]
    if as_json:
        for r in requests:
            row = {**r, **outcome[r["request_id"]], "done": r not in pending}
            print(orjson.dumps(row).decode())
    else:
        from rich.table import Table

        table = Table(title=f"Erasures ({seconds:.1f} s)")
        columns = ("id", "request", "profile", "index entries", "learnt ids", "sampled", "status")
        for column in columns:
            table.add_column(column)
        for r in requests:
            worker = outcome[r["request_id"]].get("worker", {})
            trainer = outcome[r["request_id"]].get("trainer", {})
            removed = worker.get("removed", {})
            table.add_row(
                r["profile_id"],
                r["request_id"],
                "removed" if removed.get("profile") else ("none stored" if worker else "-"),
                str(removed.get("index_entries", "-")),
                str(trainer.get("learnt_ids", "-")),
                str(trainer.get("sample_entries", "-")),
                "done" if r not in pending else ("trainer pending" if worker else "pending"),
            )
        output_console().print(table)
    if pending:
        settings = settings_from_env()
        print(
            f"customer-ai erase: {len(pending)} of {len(requests)} erasure(s) not done after "
            f"{timeout:g}s. Is a worker running (`customer-ai worker`)? The requests stay on "
            f"{settings.topic('erasures')}: a worker applies them when it runs; "
            "`customer-ai erase` again waits anew.",
            file=sys.stderr,
        )
        return 1
    return 0


def add_erase_arguments(p: argparse.ArgumentParser, seconds: Callable[[str], float]) -> None:
    """The arguments of ``customer-ai erase`` (``seconds`` parses ``--timeout``)."""
    p.add_argument("profile_ids", nargs="+", metavar="ID", help="the profile ids to erase")
    p.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the workers to apply the requests (exit status 1 after)",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="only write the requests to <prefix>.erasures"
    )
    p.add_argument("--json", action="store_true", help="one JSON line per request")


def cmd_erase(args: argparse.Namespace) -> int:
    """``customer-ai erase ID [ID ...]``."""
    return erase_main(list(args.profile_ids), args.timeout, not args.no_wait, args.json)
