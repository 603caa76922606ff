"""``customer-ai dev up|down|status``: detached servers that outlive the command.

:func:`dev_up` starts them (or reuses running ones), records them in
``.customer-ai/dev.json`` and writes ``.customer-ai/dev.env`` with
``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``; :func:`dev_down` stops them and
:func:`dev_status` says what answers. The command's rendering is :mod:`stream.cli.dev`.

No password is written: the state directory is the owner's only (0700, its files 0600,
each written whole under a temporary name then renamed), URLs are kept without their
password, and a Redis password is read from the environment whenever it is needed
(``REDIS_PASSWORD``, or the password of the ``REDIS_URL`` that named the server). With
``REDIS_PASSWORD`` set, the Valkey ``dev up`` starts requires it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from stream.devservers.probes import kafka_answers, port_is_free, redis_ping
from stream.devservers.process import (
    DevServerError,
    ServerProcess,
    pid_runs,
    terminate_pid,
)
from stream.devservers.servers import (
    DEFAULT_BROKER_PORT,
    DEFAULT_VALKEY_PORT,
    BrokerProcess,
    ValkeyProcess,
)
from stream.redaction import redact_url, strip_password

__all__ = ["dev_down", "dev_status", "dev_up", "env_file", "read_state"]

_STATE_VERSION = 1
_SERVICES = ("kafka", "redis")
_ENV_VARS = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "redis": "REDIS_URL"}


_PROCESS_CLASSES: dict[str, type[ServerProcess]] = {"kafka": BrokerProcess, "redis": ValkeyProcess}
_DEFAULT_PORTS = {"kafka": DEFAULT_BROKER_PORT, "redis": DEFAULT_VALKEY_PORT}


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "dev.json"


def env_file(state_dir: Path) -> Path:
    return Path(state_dir) / "dev.env"


def read_state(state_dir: Path) -> dict[str, Any]:
    """Load ``dev.json`` (empty state when missing or unreadable)."""
    try:
        data = json.loads(_state_file(state_dir).read_text())
    except (OSError, ValueError):
        return {"version": _STATE_VERSION, "services": {}}
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        return {"version": _STATE_VERSION, "services": {}}
    return data


#: mode of the state directory and of every file ``dev up`` writes in it
DIR_MODE = 0o700
FILE_MODE = 0o600


def secure_dir(state_dir: Path) -> Path:
    """Create the state directory readable by its owner only (0700; tightened if it exists).

    Parameters
    ----------
    state_dir
        The directory (``.customer-ai``); its parents are created as usual.

    Returns
    -------
    Path
        ``state_dir``.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours (a shared directory named by the user)
        if state_dir.stat().st_uid == os.getuid():
            os.chmod(state_dir, DIR_MODE)
    return state_dir


def _write_atomic(path: Path, text: str) -> None:
    """Write a file whole, mode 0600 from its creation, under a temporary name then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash: O_EXCL below must create a new file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialize dev up/down on one state directory (advisory lock, POSIX)."""
    secure_dir(state_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(state_dir / ".dev.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entry_address(entry: Mapping[str, Any]) -> str:
    return str(entry.get("address", ""))


def _redis_credentials(url: str) -> tuple[str | None, str | None]:
    """The password and user name for the Redis server at ``url`` (kept without password).

    The password of ``REDIS_URL`` when that variable names this server, else
    ``REDIS_PASSWORD`` / ``REDIS_USERNAME``: the environment is the only place it is read.
    """
    from_env = os.environ.get("REDIS_URL", "").strip()
    if from_env and strip_password(from_env) == url:
        parts = urlsplit(from_env)
        with contextlib.suppress(ValueError):
            if parts.password is not None:
                return unquote(parts.password), unquote(parts.username or "") or None
    return os.environ.get("REDIS_PASSWORD") or None, os.environ.get("REDIS_USERNAME") or None


def _ping(service: str, url: str, address: str) -> str:
    """``"ok"``, ``"auth"`` (Redis refuses the credentials of the environment) or ``"down"``."""
    if service == "kafka":
        return "ok" if kafka_answers(address) else "down"
    password, username = _redis_credentials(strip_password(url))
    return redis_ping(url, password=password, username=username)


def _managed_ping(service: str, entry: Mapping[str, Any]) -> str:
    """:func:`_ping` for a server recorded in dev.json (``"down"`` when its pid is gone)."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or not pid_runs(pid, str(entry.get("binary", ""))):
        return "down"
    return _ping(service, str(entry.get("url", "")), _entry_address(entry))


#: what to do when a Redis answers but refuses the credentials of the environment
_PASSWORD_HINT = (
    "answers but refuses the credentials of this environment: set REDIS_PASSWORD to "
    "the password it was started with (or put it in REDIS_URL; unset REDIS_PASSWORD "
    "for a server without one)"
)


def _env_value(service: str, entry: Mapping[str, Any]) -> str:
    return str(entry["address"] if service == "kafka" else entry["url"])


def dev_up(state_dir: Path = Path(".customer-ai")) -> dict[str, str]:
    """Make sure a Kafka-compatible broker and a Redis-compatible server run.

    For each service, in order: a server named by ``KAFKA_BOOTSTRAP_SERVERS`` /
    ``REDIS_URL`` that answers is used as is (external, never stopped by
    :func:`dev_down`); a server recorded in ``state_dir/dev.json`` that still answers is
    reused; otherwise Tansu / Valkey is started detached on port 19092 / 16379 (or a free
    port when taken), logging to ``state_dir/<kind>.log``. An environment variable naming
    a server that does not answer is reported and replaced by a local server. With
    ``REDIS_PASSWORD`` set, the Valkey started requires it.

    No password is returned or written: URLs lose theirs (the commands read it from
    ``REDIS_PASSWORD``, or from the ``REDIS_URL`` of their environment, which wins over
    ``dev.env``); ``state_dir`` and its files are the owner's only (0700 / 0600).

    Parameters
    ----------
    state_dir
        Directory for ``dev.json``, ``dev.env`` and the logs.

    Returns
    -------
    dict of str to str
        ``{"KAFKA_BOOTSTRAP_SERVERS": ..., "REDIS_URL": ...}`` (no password), also
        written to ``state_dir/dev.env``.

    Raises
    ------
    DevServerError
        A recorded server is alive but does not answer (paused or hung), a Redis refuses
        the credentials of the environment, or a server cannot start.
    """
    state_dir = Path(state_dir)
    with _locked(state_dir):
        state = read_state(state_dir)
        services: dict[str, Any] = state["services"]
        notes: list[str] = []
        for service in _SERVICES:
            var = _ENV_VARS[service]
            entry = services.get(service) or {}
            from_env = os.environ.get(var, "").strip()
            named = strip_password(from_env)  # what may be recorded
            recorded_here = bool(entry.get("managed")) and named in (
                entry.get("address"),
                entry.get("url"),
            )
            if from_env and not recorded_here:
                answer = _ping(service, from_env, from_env)
                if answer == "auth":
                    raise DevServerError(f"{var}={redact_url(from_env)} {_PASSWORD_HINT}")
                if answer == "ok":
                    if entry.get("managed") and isinstance(entry.get("pid"), int):
                        # keep track of our own server so that dev_down still stops it
                        state.setdefault("retired", []).append(entry)
                    services[service] = {
                        "managed": False,
                        "server": "external",
                        "address": named,
                        "url": named,
                        "env": var,
                        **_password_source(service, from_env),
                    }
                    continue
                notes.append(
                    f"{var}={redact_url(from_env)} does not answer: using a local server "
                    f"(unset {var} or load {env_file(state_dir)} to use it)"
                )
            if entry.get("managed"):
                pid = entry.get("pid")
                answer = _managed_ping(service, entry)
                if answer == "ok":
                    continue
                if answer == "auth":
                    raise DevServerError(
                        f"{entry.get('server')} pid {pid} on {entry.get('address')} "
                        f"{_PASSWORD_HINT}; or run `customer-ai dev down`, then "
                        "`customer-ai dev up`"
                    )
                if isinstance(pid, int) and pid_runs(pid, str(entry.get("binary", ""))):
                    raise DevServerError(
                        f"{entry.get('server')} pid {pid} on {entry.get('address')} runs "
                        "but does not answer (paused or hung): run `customer-ai dev down`, "
                        "then `customer-ai dev up`"
                    )
            services[service] = _start_detached(service, state_dir)
        notes.extend(_output_topics(services["kafka"]))
        if services["redis"].get("password"):
            notes.append(
                f"the Redis password is not written to {env_file(state_dir)}: the commands "
                f"read it from {services['redis']['password']} in their environment"
            )
        state["notes"] = notes
        state["version"] = _STATE_VERSION
        _write_atomic(_state_file(state_dir), json.dumps(state, indent=2) + "\n")
        env = {_ENV_VARS[s]: strip_password(_env_value(s, services[s])) for s in _SERVICES}
        header = [
            f"# written by `customer-ai dev up`; load with: set -a; . {env_file(state_dir)}; set +a",
            "# no password is written here: Redis's is read from REDIS_PASSWORD (or from the",
            "# REDIS_URL of the environment, which wins over this file)",
        ]
        lines = [*header, *(f"{key}={value}" for key, value in env.items())]
        _write_atomic(env_file(state_dir), "".join(f"{line}\n" for line in lines))
        return env


def _output_topics(kafka: dict[str, Any]) -> list[str]:
    """Create the compacted latest-scores topic on the broker (:mod:`stream.devservers.topics`);
    a note if that fails (the worker declares it at start anyway)."""
    from stream.devservers.topics import create_profile_scores_topic
    from stream.worker.settings import Settings

    try:
        problem = create_profile_scores_topic(str(_env_value("kafka", kafka)), Settings.from_env())
    except Exception as exc:  # noqa: BLE001 - a note, not a failure of dev up
        problem = str(exc)
    if problem is None:
        return []
    return [f"could not create the profile-scores topic ({problem}): the worker creates it"]


def _password_source(service: str, url: str) -> dict[str, str]:
    """``{"password": VARIABLE}``: where a Redis server's password is read, if it has one."""
    if service != "redis":
        return {}
    if strip_password(url) != url:
        return {"password": "REDIS_URL"}
    return {"password": "REDIS_PASSWORD"} if os.environ.get("REDIS_PASSWORD") else {}


def _start_detached(service: str, state_dir: Path) -> dict[str, Any]:
    """Start one server that outlives this process and describe it for dev.json."""
    cls = _PROCESS_CLASSES[service]
    port = _DEFAULT_PORTS[service]
    options: dict[str, Any] = {}
    password = os.environ.get("REDIS_PASSWORD") or None
    if service == "redis" and password is not None:
        options["password"] = password  # handed over on the server's stdin, never argv
    server = cls(
        port=port if port_is_free(port) else None,
        log_path=Path(state_dir).resolve() / f"{cls.kind}.log",
        detach=True,
        **options,
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
        **({"password": "REDIS_PASSWORD"} if options else {}),
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
        state = read_state(state_dir)
        services: dict[str, Any] = state["services"]
        for entry in state.get("retired", []):
            pid = entry.get("pid")
            if isinstance(pid, int) and pid_runs(pid, str(entry.get("binary", ""))):
                terminate_pid(pid)
        for service in _SERVICES:
            entry = services.get(service)
            if not entry:
                result[service] = "not running"
            elif not entry.get("managed"):
                result[service] = "external (left running)"
            else:
                pid = entry.get("pid")
                if isinstance(pid, int) and pid_runs(pid, str(entry.get("binary", ""))):
                    stopped = terminate_pid(pid)
                    result[service] = "stopped" if stopped else f"could not stop pid {pid}"
                else:
                    result[service] = "not running"
        for path in (_state_file(state_dir), env_file(state_dir)):
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
        ``managed``, ``running`` (answers right now), ``needs_password`` (answers but
        refuses the credentials of the environment), ``pid``, ``address``, ``url`` (no
        password), ``log``.
    """
    services: dict[str, Any] = read_state(Path(state_dir))["services"]
    status: dict[str, dict[str, Any]] = {}
    for service in _SERVICES:
        entry = services.get(service)
        if entry and entry.get("managed"):
            answer = _managed_ping(service, entry)
        elif entry:
            answer = _ping(service, str(entry["url"]), str(entry["address"]))
        else:
            from_env = os.environ.get(_ENV_VARS[service], "").strip()
            named = strip_password(from_env)
            entry = (
                {"server": "external", "managed": False, "address": named, "url": named}
                if from_env
                else {"server": "none", "managed": False, "address": "", "url": ""}
            )
            answer = _ping(service, from_env, from_env) if from_env else "down"
        status[service] = {
            "server": entry.get("server", "none"),
            "managed": bool(entry.get("managed")),
            "running": answer == "ok",
            "needs_password": answer == "auth",
            "pid": entry.get("pid"),
            "address": strip_password(str(entry.get("address", ""))),
            "url": strip_password(str(entry.get("url", ""))),
            "log": entry.get("log", ""),
        }
    return status
