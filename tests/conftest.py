"""Shared pytest fixtures: a Redis-compatible server and a fresh Tansu broker per test.

Redis
    ``redis_server_url`` (session) is a private Valkey started for the session, so a test
    run never touches a Redis it did not start. To run against a server of your own, opt
    in with ``CUSTOMER_AI_TEST_REDIS_URL=redis://host:port`` (it must answer ``PING``;
    two runs sharing one server and database flush each other's data).
    ``$REDIS_URL`` is deliberately not an opt-in: it names the application's Redis
    (``customer-ai dev up`` writes it to ``.customer-ai/dev.env``, deployments set it), and
    it is removed from the test run's environment together with the other Redis
    connection variables (:data:`_APP_REDIS_VARS`), so no worker or command a test starts
    inherits it. ``CUSTOMER_AI_TEST_PRIVATE_REDIS=1``, from before the private Valkey was
    the default, is still accepted: it ignores ``CUSTOMER_AI_TEST_REDIS_URL``.
    ``redis_url`` (per test) points to database ``$CUSTOMER_AI_TEST_REDIS_DB`` (default 9;
    the URL's own database is ignored), flushed before each test; ``redis_client`` is a
    synchronous :class:`redis.Redis` on it.

Kafka
    ``kafka_broker`` (per test) is a fresh in-memory Tansu on a free port (it starts in
    tens of milliseconds). ``$KAFKA_BOOTSTRAP_SERVERS`` is deliberately ignored: tests
    need an empty broker. ``kafka_bootstrap`` is its ``host:port``.

Tests using these fixtures are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from stream.devservers import BrokerProcess, ValkeyProcess, redis_answers
from stream.worker.security import redact_url

_INTEGRATION_FIXTURES = frozenset(
    {"kafka_broker", "kafka_bootstrap", "redis_server_url", "redis_url", "redis_client"}
)
#: the application's Redis connection variables (:mod:`stream.worker.security`), removed
#: from the test run's environment: tests name their server themselves
_APP_REDIS_VARS = (
    "REDIS_URL",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_SSL_CA_CERTS",
    "REDIS_SSL_CERTFILE",
    "REDIS_SSL_KEYFILE",
)
_IGNORED: list[str] = []  # those of them that were set
_MARKERS = {
    "integration": "talks to a real Kafka-compatible broker and Redis/Valkey",
    "slow": "long fault-injection tests (still run in CI)",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers unless pyproject already does; drop the app's Redis variables."""
    _IGNORED.extend(name for name in _APP_REDIS_VARS if os.environ.pop(name, None) is not None)
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, help_text in _MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {help_text}")


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep the run's exit status for :func:`pytest_unconfigure`."""
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread a test left running (not a daemon) would keep the interpreter, hence CI,
    waiting forever after the summary: name it, and exit with the run's status."""
    left = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if left and _EXIT_STATUS:
        names = ", ".join(t.name for t in left)
        print(f"\nthreads left running by the tests: {names}; exiting", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


def pytest_report_header(config: pytest.Config) -> str:
    """Say which Redis the tests use (shown unless ``-q``)."""
    external = external_redis_url()
    where = (
        f"CUSTOMER_AI_TEST_REDIS_URL={redact_url(external)}"
        if external is not None
        else "a private Valkey (CUSTOMER_AI_TEST_REDIS_URL opts in to a running server)"
    )
    ignored = f"; ignored: {', '.join(_IGNORED)}" if _IGNORED else ""
    return f"redis: {where}, database {redis_test_db()}{ignored}"


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


def external_redis_url() -> str | None:
    """The server the run opted in to (``$CUSTOMER_AI_TEST_REDIS_URL``), else ``None``."""
    if os.environ.get("CUSTOMER_AI_TEST_PRIVATE_REDIS", "") not in ("", "0"):
        return None
    return os.environ.get("CUSTOMER_AI_TEST_REDIS_URL", "").strip() or None


def redis_test_db() -> int:
    """The database the tests use (``$CUSTOMER_AI_TEST_REDIS_DB``, default 9)."""
    return int(os.environ.get("CUSTOMER_AI_TEST_REDIS_DB", "9"))


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis-compatible server for the whole session (see module docstring)."""
    external = external_redis_url()
    if external is not None:
        if not redis_answers(external):
            pytest.fail(
                f"CUSTOMER_AI_TEST_REDIS_URL={redact_url(external)} does not answer PING: "
                "start that server, or unset the variable to test on a private Valkey",
                pytrace=False,
            )
        yield external
        return
    log_dir = tmp_path_factory.mktemp("valkey")
    with ValkeyProcess(log_path=log_dir / "valkey.log") as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """URL of the test database (``$CUSTOMER_AI_TEST_REDIS_DB``, default 9), flushed first."""
    url = with_db(redis_server_url, redis_test_db())
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
