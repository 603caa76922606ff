"""``customer-ai dev up|down|status``: detached servers that outlive the command.

:func:`dev_up` starts them (or reuses running ones), records them in
``.customer-ai/dev.json`` and writes ``.customer-ai/dev.env`` with
``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``; :func:`dev_down` stops them and
:func:`dev_status` says what answers. The command's rendering is :mod:`stream.cli.dev`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stream.devservers.probes import kafka_answers, port_is_free, redis_answers
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
from stream.redaction import redact_url

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
    if not isinstance(pid, int) or not pid_runs(pid, str(entry.get("binary", ""))):
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
        state = read_state(state_dir)
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
                notes.append(
                    f"{var}={redact_url(from_env)} does not answer: using a local server "
                    f"(unset {var} or load {env_file(state_dir)} to use it)"
                )
            if entry.get("managed"):
                pid = entry.get("pid")
                if _managed_answers(service, entry):
                    continue
                if isinstance(pid, int) and pid_runs(pid, str(entry.get("binary", ""))):
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
            env_file(state_dir), "".join(f"{key}={value}\n" for key, value in env.items())
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
        ``managed``, ``running`` (answers right now), ``pid``, ``address``, ``url``,
        ``log``.
    """
    services: dict[str, Any] = read_state(Path(state_dir))["services"]
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
