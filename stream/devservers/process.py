"""A server binary run as a child process on a loopback port, and the pid helpers it uses."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, TypeVar

from stream.devservers.probes import LOCALHOST, find_free_port, port_is_free

__all__ = ["DevServerError", "ServerProcess", "parent_death_signal", "pid_alive", "terminate_pid"]

S = TypeVar("S", bound="ServerProcess")


class DevServerError(RuntimeError):
    """A development server could not be found, started, reached or stopped."""


# ------------------------------------------------------------------ pid helpers


def pid_alive(pid: int) -> bool:
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


def pid_runs(pid: int, binary: str) -> bool:
    """Tell whether ``pid`` is alive and runs ``binary`` (guards against pid reuse)."""
    if not pid_alive(pid):
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


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate_pid(pid: int, timeout: float = 5.0) -> bool:
    """Stop a process that is not our child: SIGTERM, then SIGKILL after ``timeout``.

    Returns
    -------
    bool
        ``True`` when the process is gone.
    """
    signal_group(pid, signal.SIGTERM)
    signal_group(pid, signal.SIGCONT)  # a paused server must run to handle SIGTERM
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def parent_death_signal() -> Callable[[], None] | None:
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


def log_tail(path: Path, max_chars: int = 3000) -> str:
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

    def stdin_config(self) -> bytes | None:
        """Configuration given to the server on its standard input (secrets: never argv).

        ``None`` (the default): the server's stdin is ``/dev/null``.
        """
        return None

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
            preexec = parent_death_signal()
        started = time.monotonic()
        stdin_config = self.stdin_config()
        # the log is the owner's only (0600 from its creation): it may name addresses
        with os.fdopen(
            os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
        ) as log:
            with contextlib.suppress(OSError):  # a log an older version created 0644
                os.fchmod(log.fileno(), 0o600)
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL if stdin_config is None else subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(log_path.parent),
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except OSError as exc:
                self._proc = None
                raise DevServerError(f"cannot run {binary}: {exc}") from exc
            if stdin_config is not None and self._proc.stdin is not None:
                with contextlib.suppress(OSError):  # it exited: reported below
                    self._proc.stdin.write(stdin_config)
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
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
                output = log_tail(log_path)[-3000:]
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
                    f"{log_tail(log_path)[-3000:]}"
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
            signal_group(proc.pid, signal.SIGTERM)
            signal_group(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
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
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10.0)
        self._forget()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open but nothing answers."""
        if not self.is_running():
            raise DevServerError(f"{self.kind} is not running: nothing to pause")
        signal_group(self._proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        self._paused = True

    def resume(self) -> None:
        """Continue a server frozen by :meth:`pause` (SIGCONT)."""
        if not self.is_running():
            raise DevServerError(f"{self.kind} is not running: nothing to resume")
        signal_group(self._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
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
