"""Shared pytest fixtures: a Redis-compatible server and a fresh Tansu broker per test.

Redis
    ``redis_server_url`` (session): ``$REDIS_URL`` when it answers, else the Redis on
    127.0.0.1:6379 when it answers, else a private Valkey started for the session. Set
    ``CUSTOMER_AI_TEST_PRIVATE_REDIS=1`` to always use a private Valkey (full isolation
    from other test runs sharing the machine). ``redis_url`` (per test) points to database
    ``$CUSTOMER_AI_TEST_REDIS_DB`` (default 9), flushed before each test; ``redis_client``
    is a synchronous :class:`redis.Redis` on it.

Kafka
    ``kafka_broker`` (per test) is a fresh in-memory Tansu on a free port (it starts in
    tens of milliseconds). ``$KAFKA_BOOTSTRAP_SERVERS`` is deliberately ignored: tests
    need an empty broker. ``kafka_bootstrap`` is its ``host:port``.

Tests using these fixtures are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from stream.devservers import BrokerProcess, ValkeyProcess, redis_answers

_INTEGRATION_FIXTURES = frozenset(
    {"kafka_broker", "kafka_bootstrap", "redis_server_url", "redis_url", "redis_client"}
)
_MARKERS = {
    "integration": "talks to a real Kafka-compatible broker and Redis/Valkey",
    "slow": "long fault-injection tests (still run in CI)",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``integration`` and ``slow`` markers unless pyproject already does."""
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, help_text in _MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use a real server as ``integration``."""
    for item in items:
        if _INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def with_db(url: str, db: int) -> str:
    """Return ``url`` pointing to database ``db``.

    Parameters
    ----------
    url
        A ``redis://`` / ``rediss://`` / ``unix://`` URL, with or without a database.
    db
        Database number.

    Returns
    -------
    str
        The same URL with its path (or ``db`` query parameter for ``unix://``) set to
        ``db``.
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        query = f"{query}&db={db}" if query else f"db={db}"
        return urlunsplit(parts._replace(query=query))
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis-compatible server for the whole session (see module docstring)."""
    if os.environ.get("CUSTOMER_AI_TEST_PRIVATE_REDIS", "") not in ("", "0"):
        candidates: list[str] = []
    else:
        candidates = [u for u in (os.environ.get("REDIS_URL", ""),) if u]
        candidates.append("redis://127.0.0.1:6379")
    for candidate in candidates:
        if redis_answers(candidate):
            yield candidate
            return
    log_dir = tmp_path_factory.mktemp("valkey")
    with ValkeyProcess(log_path=log_dir / "valkey.log") as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """URL of the test database (``$CUSTOMER_AI_TEST_REDIS_DB``, default 9), flushed first."""
    url = with_db(redis_server_url, int(os.environ.get("CUSTOMER_AI_TEST_REDIS_DB", "9")))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """Synchronous Redis client on the flushed test database."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A fresh, empty Tansu broker on a free port, stopped after the test.

    Its log is ``<tmp_path>/tansu.log``. The object also offers ``pause()``, ``resume()``,
    ``kill()`` and ``restart()`` for fault injection.
    """
    with BrokerProcess(log_path=tmp_path / "tansu.log") as broker:
        yield broker


@pytest.fixture
def kafka_bootstrap(kafka_broker: BrokerProcess) -> str:
    """``host:port`` of :func:`kafka_broker`, for ``bootstrap_servers=``."""
    return kafka_broker.bootstrap
