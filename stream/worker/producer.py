"""Batch producer for the output topics.

Faust's per-message produce path is the bottleneck of an idiomatic agent, so
outputs go through one plain aiokafka producer. Each batch step collects its own
list of messages and calls :meth:`BatchProducer.send_all`, which waits once until
every message is acknowledged. The scorer does this *before* it stores state or
lets Faust commit, which makes every output at-least-once.

``send_all`` first hands aiokafka whole record batches: the list grouped by
topic-partition (with the partitioner the producer is given, aiokafka's public
``DefaultPartitioner``, so a key lands where ``producer.send`` and Kafka's Java client
put it, in list order), ``create_batch`` / ``send_batch``,
one future per batch instead of one per message (about a third of the CPU per
message). Messages near ``max_request_size`` and those of a batch that fails go
through the per-message path below.
Every call flushes at once, so ``linger_ms`` defaults to 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from models.messages import OutMessage  # (topic, key, value)
from stream.ops.health import HEALTH
from stream.worker.retry import Failure, RetryPolicy

__all__ = ["PRODUCE_RETRIES", "BatchProducer", "OutMessage"]

log = logging.getLogger(__name__)

#: Broker errors: the whole remaining list is sent again, forever, 0.2 s doubling to 5 s,
#: from a fresh producer (outputs are at-least-once: a retry may duplicate, never lose).
PRODUCE_RETRIES = RetryPolicy(
    "produce",
    attempts=None,
    first_delay=0.2,
    factor=2.0,
    max_delay=5.0,
    retry_on=(KafkaError, OSError, asyncio.TimeoutError),
)


class BatchProducer:
    """An aiokafka producer, started on demand, that sends whole batches with retry."""

    def __init__(
        self, bootstrap: str, security: Mapping[str, Any] | None = None, linger_ms: int = 0
    ) -> None:
        #: the producer's partitioner and request limit, kept here (not read back from
        #: aiokafka's private attributes) for the batched path
        self._key_partitioner = DefaultPartitioner()
        self._request_limit = 4_194_304
        self._kwargs = dict(
            bootstrap_servers=bootstrap,
            linger_ms=linger_ms,
            acks="all",
            max_batch_size=1_048_576,
            max_request_size=self._request_limit,
            partitioner=self._key_partitioner,
            request_timeout_ms=30_000,
            **(security or {}),
        )
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(**self._kwargs)
                await producer.start()
                self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def send_all(self, messages: list[OutMessage]) -> None:
        """Send ``messages`` and wait until every one is acknowledged.

        Each caller passes its own list, so agents sharing the producer never send
        or drop each other's messages. On a broker error the whole list is sent
        again until it goes through: outputs are at-least-once, so a retry may
        duplicate, never lose. The one exception is a message too large for the
        producer or the broker (``MessageSizeTooLargeError``): no retry can ever send
        it, so it is logged and dropped instead of stalling the worker forever.
        Retried per :data:`PRODUCE_RETRIES` (``docs/OPERATING.md``, "Retries").
        """
        if not messages:
            return
        batched = True  # the fast path, once; what it could not send goes one by one
        broken = False  # the last attempt failed: start a fresh producer

        async def attempt() -> None:
            nonlocal messages, batched, broken
            if not messages:
                return
            if broken:
                broken = False
                try:
                    await self.stop()
                except Exception:  # noqa: BLE001 - a broken producer may fail to stop
                    self._producer = None
            await self.start()
            producer = self._producer
            assert producer is not None
            if batched:
                batched = False
                messages = await self._send_batched(producer, messages)
                if not messages:
                    return
            futures: list[asyncio.Future[Any]] = []
            sendable: list[OutMessage] = []
            for t, k, v in messages:
                try:
                    futures.append(await producer.send(t, value=v, key=k))
                    sendable.append((t, k, v))
                except MessageSizeTooLargeError as exc:
                    self._drop_too_large(t, v, exc)
            results = await asyncio.gather(*futures, return_exceptions=True)
            messages = sendable
            failed = [r for r in results if isinstance(r, BaseException)]
            if any(isinstance(r, MessageSizeTooLargeError) for r in failed):
                kept = []
                for message, result in zip(sendable, results):
                    if isinstance(result, MessageSizeTooLargeError):
                        self._drop_too_large(message[0], message[2], result)
                    else:
                        kept.append(message)
                messages = kept
                failed = [r for r in failed if not isinstance(r, MessageSizeTooLargeError)]
            if failed:
                raise failed[0]

        retried = False

        def retrying(failure: Failure) -> None:
            nonlocal broken, retried
            broken = retried = True
            HEALTH.fail("producer", "send failing", f"{failure.error!r}"[:200])
            log.warning(
                "produce failed (%r); retrying %d messages in %.1fs",
                failure.error,
                len(messages),
                failure.delay,
            )

        await PRODUCE_RETRIES.run(attempt, on_error=retrying)
        if retried and HEALTH.clear("producer") is not None:
            log.warning("the output producer sends again")

    async def _send_batched(
        self, producer: AIOKafkaProducer, messages: list[OutMessage]
    ) -> list[OutMessage]:
        """Send ``messages`` as record batches per topic-partition; return the unsent ones."""
        partitioner = self._key_partitioner  # the one ``producer.send`` uses
        near_limit = self._request_limit - 1024  # ``send`` checks these exactly
        partitions: dict[str, list[int]] = {}
        # key -> partition per topic: a profile's scores (one per goal) and segment changes
        # share its key, and the partitioner hashes (murmur2) in pure Python
        placed: dict[str, dict[bytes, int]] = {}
        by_tp: dict[tuple[str, int], list[OutMessage]] = {}
        oversize: list[OutMessage] = []
        for message in messages:
            topic, key = message[0], message[1]
            if len(message[2] or b"") + len(key or b"") > near_limit:
                oversize.append(message)
                continue
            parts = partitions.get(topic)
            if parts is None:
                parts = partitions[topic] = sorted(await producer.partitions_for(topic))
                placed[topic] = {}
            if key is None:  # the partitioner picks a random partition
                partition = partitioner(None, parts, parts)
            else:
                memo = placed[topic]
                partition = memo.get(key, -1)
                if partition < 0:
                    partition = memo[key] = partitioner(key, parts, parts)
            tp = (topic, partition)
            group = by_tp.get(tp)
            if group is None:
                by_tp[tp] = [message]
            else:
                group.append(message)
        sent: list[tuple[asyncio.Future[Any], list[OutMessage]]] = []
        for (topic, partition), group in by_tp.items():
            batch = producer.create_batch()
            members: list[OutMessage] = []
            for message in group:
                if batch.append(key=message[1], value=message[2], timestamp=None) is None:
                    sent.append(
                        (await producer.send_batch(batch, topic, partition=partition), members)
                    )
                    batch = producer.create_batch()
                    members = []
                    batch.append(key=message[1], value=message[2], timestamp=None)
                members.append(message)
            sent.append((await producer.send_batch(batch, topic, partition=partition), members))
        results = await asyncio.gather(*(f for f, _ in sent), return_exceptions=True)
        unsent = [
            m
            for (_, members), r in zip(sent, results)
            if isinstance(r, BaseException)
            for m in members
        ]
        if unsent:
            error = next(r for r in results if isinstance(r, BaseException))
            log.warning(
                "%d of %d messages not acknowledged in batches (%r); sending them one by one",
                len(unsent),
                len(messages),
                error,
            )
        return oversize + unsent

    @staticmethod
    def _drop_too_large(topic: str, value: bytes | None, exc: Exception) -> None:
        log.error(
            "dropping a %d-byte message to %s: too large for the producer or broker (%s)",
            len(value or b""),
            topic,
            exc,
        )
