"""Is a Kafka broker or a Redis server answering there? Free ports, and protocol probes.

Standard library only: the probes speak just enough of the Kafka protocol (ApiVersions,
Metadata) and of RESP (``AUTH``, ``PING``) to tell a real server from a port that is
merely open, so they work before the rest of the stack is importable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from urllib.parse import unquote, urlsplit

__all__ = [
    "LOCALHOST",
    "find_free_port",
    "kafka_answers",
    "kafka_brokers",
    "port_is_free",
    "redis_answers",
    "redis_ping",
]

#: Loopback address every embedded server binds to.
LOCALHOST = "127.0.0.1"


# --------------------------------------------------------------------------- ports


def find_free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that is free right now.

    Parameters
    ----------
    host
        Address to probe, loopback by default.

    Returns
    -------
    int
        A port number the OS just handed out. Another process may still take it before
        it is used; :meth:`ServerProcess.start` retries on a clash.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Tell whether ``port`` can be bound on ``host``.

    Parameters
    ----------
    port
        TCP port number.
    host
        Address to bind, loopback by default.

    Returns
    -------
    bool
        ``True`` when nothing listens on the port (connections lingering in TIME_WAIT
        do not count: servers bind with ``SO_REUSEADDR``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Tell whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------- Kafka protocol probe


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes or raise ``ConnectionError``."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _kafka_call(
    sock: socket.socket, api_key: int, version: int, body: bytes, correlation_id: int
) -> bytes:
    """Send one non-flexible Kafka request and return the response body."""
    client_id = b"customer-ai-dev"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    response = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", response, 0)
    if got_id != correlation_id:
        raise ConnectionError(f"correlation id {got_id} != {correlation_id}")
    return response[4:]


def _read_string(buf: bytes, pos: int) -> tuple[str | None, int]:
    """Decode a Kafka (nullable) int16-length string at ``pos``."""
    (length,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    if length < 0:
        return None, pos
    return buf[pos : pos + length].decode(), pos + length


def kafka_brokers(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Ask a Kafka-compatible broker for its metadata and return the brokers it lists.

    Sends ApiVersions, then Metadata at a non-flexible version both sides speak, using the
    standard library only.

    Parameters
    ----------
    host, port
        Bootstrap address (PLAINTEXT only).
    timeout
        Socket timeout in seconds for connect and each read.

    Returns
    -------
    list of (node_id, host, port)
        The brokers from the Metadata response (never empty on success).

    Raises
    ------
    OSError
        The broker does not answer, closes the connection or answers with an error.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = _kafka_call(sock, api_key=18, version=0, body=b"", correlation_id=1)
        (error_code, count) = struct.unpack_from(">hi", body, 0)
        if error_code:
            raise ConnectionError(f"ApiVersions error code {error_code}")
        versions: dict[int, tuple[int, int]] = {}
        for i in range(count):
            key, low, high = struct.unpack_from(">hhh", body, 6 + 6 * i)
            versions[key] = (low, high)
        low, high = versions.get(3, (0, 0))
        if low > 8:  # only flexible Metadata versions: ApiVersions alone must do
            return [(-1, host, port)]
        version = max(low, min(high, 8))
        if version == 0:
            request = struct.pack(">i", 0)
        else:
            request = struct.pack(">i", -1)  # null topic list: all topics
            if version >= 4:
                request += b"\x00"  # allow_auto_topic_creation = false
            if version >= 8:
                request += b"\x00\x00"  # no authorized operations
        meta = _kafka_call(sock, api_key=3, version=version, body=request, correlation_id=2)
        pos = 4 if version >= 3 else 0  # throttle_time_ms
        (n_brokers,) = struct.unpack_from(">i", meta, pos)
        pos += 4
        brokers: list[tuple[int, str, int]] = []
        for _ in range(n_brokers):
            (node_id,) = struct.unpack_from(">i", meta, pos)
            name, pos = _read_string(meta, pos + 4)
            (broker_port,) = struct.unpack_from(">i", meta, pos)
            pos += 4
            if version >= 1:
                _rack, pos = _read_string(meta, pos)
            brokers.append((node_id, name or "", broker_port))
        if not brokers:
            raise ConnectionError("Metadata response lists no broker")
        return brokers


def _split_bootstrap(servers: str) -> list[tuple[str, int]]:
    """Parse ``host:port[,host:port]`` (optionally ``kafka://``-prefixed) into pairs."""
    pairs: list[tuple[str, int]] = []
    for item in servers.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if "://" in item:
            item = item.split("://", 1)[1]
        item = item.rstrip("/")
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "9092"
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def kafka_answers(servers: str, timeout: float = 2.0) -> bool:
    """Tell whether any broker of a bootstrap list answers.

    PLAINTEXT brokers must answer a Metadata request. When ``KAFKA_SECURITY_PROTOCOL`` is
    set to anything but ``PLAINTEXT`` (TLS or SASL), a TCP connect is all that is checked.

    Parameters
    ----------
    servers
        ``host:port[,host:port...]``, the format of ``KAFKA_BOOTSTRAP_SERVERS``.
    timeout
        Seconds per broker.

    Returns
    -------
    bool
        ``True`` when at least one broker answers.
    """
    protocol = os.environ.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    try:
        pairs = _split_bootstrap(servers)
    except ValueError:
        return False
    for host, port in pairs:
        if protocol != "PLAINTEXT":
            if _tcp_answers(host, port, timeout):
                return True
            continue
        try:
            kafka_brokers(host, port, timeout)
        except (OSError, struct.error):
            continue
        return True
    return False


# ------------------------------------------------------------- Redis protocol probe


def _resp_command(*parts: str) -> bytes:
    """Encode a command as a RESP array of bulk strings."""
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _resp_line(sock: socket.socket) -> bytes:
    """Read one RESP line (up to CRLF)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
        if len(data) > 4096:
            raise ConnectionError("RESP line too long")
    return data


def redis_answers(
    url: str,
    timeout: float = 1.0,
    *,
    password: str | None = None,
    username: str | None = None,
) -> bool:
    """Tell whether the Redis/Valkey server at ``url`` answers ``PING`` with ``PONG``.

    Handles ``redis://``, ``rediss://`` (TLS, certificates not verified: this is a
    liveness probe) and ``unix://`` URLs, and authenticates with the URL's credentials,
    else with ``password`` (and ``username``).

    Parameters
    ----------
    url
        A Redis URL such as ``redis://:secret@127.0.0.1:6379/0``.
    timeout
        Socket timeout in seconds.
    password, username
        Credentials for a URL without a password (``REDIS_PASSWORD``, ``REDIS_USERNAME``).

    Returns
    -------
    bool
        ``True`` when the server replies ``+PONG``.
    """
    return redis_ping(url, timeout, password=password, username=username) == "ok"


def redis_ping(
    url: str,
    timeout: float = 1.0,
    *,
    password: str | None = None,
    username: str | None = None,
) -> str:
    """Ask the Redis/Valkey server at ``url`` for ``PING``, as :func:`redis_answers` does.

    Returns
    -------
    str
        ``"ok"`` (``PONG``), ``"auth"`` (the server answers but refuses the credentials or
        wants some: ``NOAUTH``, ``WRONGPASS``...) or ``"down"`` (no answer).
    """
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(timeout)
            raw.connect(parts.path)
        elif parts.scheme in ("redis", "rediss", "valkey", "valkeys"):
            raw = socket.create_connection(
                (parts.hostname or LOCALHOST, parts.port or 6379), timeout=timeout
            )
        else:
            return "down"
        with contextlib.ExitStack() as stack:
            sock: socket.socket = stack.enter_context(raw)
            if parts.scheme in ("rediss", "valkeys"):
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = stack.enter_context(context.wrap_socket(raw, server_hostname=parts.hostname))
            sock.settimeout(timeout)
            if parts.password is not None:
                password = unquote(parts.password)
                username = unquote(parts.username) if parts.username else None
            if password is not None:
                auth = ["AUTH"]
                if username:
                    auth.append(username)
                auth.append(password)
                sock.sendall(_resp_command(*auth))
                if not _resp_line(sock).startswith(b"+OK"):
                    return "auth"
            sock.sendall(_resp_command("PING"))
            reply = _resp_line(sock)
            if reply.startswith(b"+PONG"):
                return "ok"
            return "auth" if reply.startswith(b"-NOAUTH") else "down"
    except (OSError, ValueError):
        return "down"
