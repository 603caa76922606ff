"""Fixtures of the worker tests that run the scorer in process: the output topics on the
test's broker, and a producer to them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stream.cli.replay import ensure_topics
from stream.worker.producer import BatchProducer
from stream.worker.settings import Settings

SETTINGS = Settings()


@pytest.fixture
async def topics(kafka_bootstrap: str) -> str:
    """The scores, segments, training and dead-letter topics (one partition each)."""
    names = ("scores", "segments", "training", "dlq")
    await ensure_topics(kafka_bootstrap, {SETTINGS.topic(n): 1 for n in names}, {})
    return kafka_bootstrap


@pytest.fixture
async def producer(topics: str) -> AsyncIterator[BatchProducer]:
    """The scorer's producer, on the test's broker."""
    p = BatchProducer(topics)
    try:
        yield p
    finally:
        await p.stop()
