"""Fixtures shared by the tests of ``stream/``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stream.worker.store import RedisStore


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A :class:`RedisStore` on the test Redis, keys under ``cai``."""
    s = RedisStore(redis_url, key_prefix="cai")
    try:
        yield s
    finally:
        await s.close()
