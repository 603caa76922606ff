"""``customer-ai watermarks [reset --topic T --partition N [--to TIME]]``.

Each source partition's event-time watermark is stored in Redis
(``P:wm:<topic>:<partition>``, :mod:`stream.worker.store`); label windows close when it
passes them. The worker keeps it no later than the newest broker time of the partition
plus ``[input] max_future_minutes``, but an older version let one event with a wrong clock
(dated 2199) move it for good. ``customer-ai watermarks`` lists them with how far ahead
of now each is, flagging one beyond now + ``max_future_minutes``; ``reset`` moves one back
(docs/OPERATING.md, "A watermark that ran ahead": stop the workers first, they keep the
watermark in memory and would write it back).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from stream.cli.common import CliError, connect_store, load_cli_config, output_console

if TYPE_CHECKING:
    from models.config import Config

__all__ = ["TAIL_RECORDS", "WatermarkRow", "cmd_watermarks", "describe_delta", "read_watermarks"]

#: records read back from the end of a partition to find its newest trustworthy event time
TAIL_RECORDS = 1000
#: seconds the reset waits for the broker before it falls back to the clock
KAFKA_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class WatermarkRow:
    """One stored watermark, compared with the clock."""

    topic: str
    partition: int
    watermark_ms: int
    now_ms: int
    max_future_ms: int

    @property
    def ahead_ms(self) -> int:
        """How far the watermark is ahead of now (negative: behind)."""
        return self.watermark_ms - self.now_ms

    @property
    def ran_ahead(self) -> bool:
        """Beyond now + ``[input] max_future_minutes``: no trustworthy event put it there."""
        return self.ahead_ms > self.max_future_ms

    def to_dict(self) -> dict[str, Any]:
        from models.profile import format_time

        return {
            "topic": self.topic,
            "partition": self.partition,
            "watermark": format_time(self.watermark_ms),
            "watermark_ms": self.watermark_ms,
            "ahead_of_now_ms": self.ahead_ms,
            "ran_ahead": self.ran_ahead,
        }


def describe_delta(ms: int) -> str:
    """A signed duration in words.

    >>> describe_delta(-90_000), describe_delta(5 * 3_600_000), describe_delta(63_000 * 86_400_000)
    ('2 min behind', '5.0 h ahead', '63,000 days ahead')
    """
    side = "ahead" if ms > 0 else "behind"
    size = abs(ms)
    if size < 3_600_000:
        amount = f"{round(size / 60_000)} min"
    elif size < 2 * 86_400_000:
        amount = f"{size / 3_600_000:.1f} h"
    else:
        amount = f"{size / 86_400_000:,.0f} days"
    return f"{amount} {side}"


def _now_ms() -> int:
    return int(time.time() * 1000)


async def read_watermarks(config_path: str | None = None) -> list[WatermarkRow]:
    """The stored watermarks, by topic and partition (Redis of the environment)."""
    from stream.worker.settings import Settings

    config = load_cli_config(config_path)
    store = await connect_store(Settings.from_env())
    try:
        stored = await store.stored_watermarks()
    finally:
        await store.close()
    now = _now_ms()
    return [
        WatermarkRow(topic, partition, wm, now, config.max_future_ms)
        for (topic, partition), wm in sorted(stored.items())
    ]


def _print_table(rows: list[WatermarkRow], max_future_ms: int, out: TextIO) -> None:
    from rich.table import Table

    from models.profile import format_time

    console = output_console(out)
    table = Table("topic", "partition", "watermark", "vs now", "status", title="watermarks")
    for row in rows:
        status = "[red]RAN AHEAD[/]" if row.ran_ahead else "[green]ok[/]"
        table.add_row(
            row.topic,
            str(row.partition),
            format_time(row.watermark_ms),
            describe_delta(row.ahead_ms),
            status,
        )
    console.print(table)
    ahead = [r for r in rows if r.ran_ahead]
    if not rows:
        console.print("no stored watermarks (no worker has scored an event in this Redis yet)")
    elif ahead:
        first = ahead[0]
        console.print(
            f"{len(ahead)} watermark(s) beyond now + [input] max_future_minutes "
            f"({max_future_ms / 60_000:g}): label windows close early there. Stop the workers, "
            f"then `customer-ai watermarks reset --topic {first.topic} --partition "
            f'{first.partition}` (docs/OPERATING.md, "A watermark that ran ahead")',
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _parse_time(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--to: {text!r} is not an ISO-8601 time; e.g. --to 2026-12-03T10:00:00Z", 2
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


async def newest_event_time(
    bootstrap: str, topic: str, partition: int, config: Config
) -> int | None:
    """The newest event time among the last :data:`TAIL_RECORDS` records of a partition
    that pass the worker's time check against their broker time; None if none does."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from models.events import InvalidEvent, decode_event
    from models.eventtime import check_event_time, reference_time
    from stream.worker.security import kafka_security_kwargs

    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=KAFKA_TIMEOUT_MS,
        **kafka_security_kwargs(os.environ),
    )
    try:
        await consumer.start()
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if end <= start:
            return None
        consumer.seek(tp, max(start, end - TAIL_RECORDS))
        newest: int | None = None
        now = _now_ms()
        deadline = time.monotonic() + KAFKA_TIMEOUT_MS / 1000
        while await consumer.position(tp) < end and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=TAIL_RECORDS)
            for record in batch.get(tp, []):
                try:
                    event = decode_event(
                        record.value,
                        identity_namespace=config.identity_namespace,
                        max_bytes=config.max_event_bytes,
                    )
                    ref = reference_time(record.timestamp, now)
                    check_event_time(
                        event.timestamp_ms, ref, config.max_future_ms, config.max_age_ms
                    )
                except InvalidEvent:
                    continue
                if newest is None or event.timestamp_ms > newest:
                    newest = event.timestamp_ms
        return newest
    finally:
        await consumer.stop()


async def _reset(
    topic: str, partition: int, to: str | None, config_path: str | None, out: TextIO
) -> int:
    from models.profile import format_time
    from stream.worker.security import redact_url
    from stream.worker.settings import Settings

    config = load_cli_config(config_path)
    settings = Settings.from_env()
    store = await connect_store(settings)
    console = output_console(out)
    try:
        current = await store.watermark(store.watermark_key(topic, partition))
        if current is None:
            raise CliError(
                f"no stored watermark for {topic}[{partition}] in {redact_url(settings.redis_url)};"
                " `customer-ai watermarks` lists the stored ones",
                2,
            )
        lateness = config.labels.allowed_lateness_ms
        if to is not None:
            target, source = _parse_time(to), "--to"
        else:
            target, source = await _default_target(topic, partition, config)
            target -= lateness
        if target >= current:
            console.print(
                f"{topic}[{partition}]: the watermark {format_time(current)} is not later than "
                f"{format_time(target)} ({source}); nothing to reset (a reset only moves a "
                "watermark back; the workers move it forward)",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return 0
        await store.set_watermark(topic, partition, target)
    finally:
        await store.close()
    console.print(
        f"{topic}[{partition}]: watermark {format_time(current)} -> {format_time(target)} "
        f"({source}). Start the workers now (they read it when they start); label snapshots "
        "that matured early before the reset stay matured.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


async def _default_target(topic: str, partition: int, config: Config) -> tuple[int, str]:
    """The newest trustworthy event time of the partition's tail, else the clock."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        return _now_ms(), "now: KAFKA_BOOTSTRAP_SERVERS is not set, so the partition was not read"
    try:
        newest = await newest_event_time(bootstrap, topic, partition, config)
    except Exception as exc:  # noqa: BLE001 - any broker failure: fall back, and say so
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _now_ms(), f"now: could not read the partition from Kafka at {bootstrap} ({reason})"
    if newest is None:
        return _now_ms(), "now: the partition's last records hold no event with a trusted time"
    return newest, (
        f"the newest trusted event time of the partition's last {TAIL_RECORDS:,} records, "
        "minus [labels] allowed_lateness_minutes"
    )


def cmd_watermarks(args: argparse.Namespace) -> int:
    """``customer-ai watermarks [--json]`` and ``customer-ai watermarks reset ...``."""
    out = sys.stdout
    if args.action == "reset":
        missing = [
            o for o, v in (("--topic", args.topic), ("--partition", args.partition)) if v is None
        ]
        if missing:
            raise CliError(
                f"reset needs {' and '.join(missing)}; e.g. customer-ai watermarks reset "
                "--topic customer-ai.events --partition 0 (`customer-ai watermarks` lists them)",
                2,
            )
        return asyncio.run(_reset(args.topic, args.partition, args.to, args.config, out))
    if args.topic is not None or args.partition is not None or args.to is not None:
        raise CliError(
            "--topic, --partition and --to go with reset: customer-ai watermarks reset ...", 2
        )
    config = load_cli_config(args.config)
    rows = asyncio.run(read_watermarks(args.config))
    if args.json:
        for row in rows:
            out.write(orjson.dumps(row.to_dict()).decode() + "\n")
    else:
        _print_table(rows, config.max_future_ms, out)
    return 0
