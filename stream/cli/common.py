"""What every command shares: consoles, expected errors, settings, servers, configuration.

Expected failures (a user's mistake, a server that does not answer) are raised as
:class:`CliError` with the one line to show and the exit status; :func:`stream.cli.main.main`
turns them (and :class:`~models.config.ConfigError`, unreadable files...) into one red
line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console

from stream.worker.settings import Settings

if TYPE_CHECKING:
    from models.config import Config
    from stream.worker.store import RedisStore

__all__ = [
    "DEV_STATE_DIR",
    "PING_TIMEOUT",
    "SERVER_VARIABLES",
    "CliError",
    "apply_dev_env",
    "check_goal",
    "connect_store",
    "console",
    "kafka_unreachable",
    "load_cli_config",
    "output_console",
    "redis_lost",
    "require_servers",
    "security_error",
    "settings_from_env",
]

#: where ``customer-ai dev up`` keeps its state and ``dev.env``, relative to the cwd
DEV_STATE_DIR = Path(".customer-ai")
#: seconds a command waits for Redis to answer before it gives up
PING_TIMEOUT = 5.0
#: the variable naming each kind of server
SERVER_VARIABLES = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "redis": "REDIS_URL"}
#: width of rich output that is not a terminal (a pipe or file: no 80-column cut)
PIPE_WIDTH = 160


class CliError(Exception):
    """An expected failure: ``message`` is the one line shown, ``status`` the exit status.

    Parameters
    ----------
    message : str
        What went wrong and how to fix it, on one line.
    status : int
        2 for a usage or configuration error, 1 for a runtime failure (default).
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def output_console(file: IO[str] | None = None, *, stderr: bool = False, **kwargs: Any) -> Console:
    """A rich console as wide as the terminal, or :data:`PIPE_WIDTH` columns when piped.

    Parameters
    ----------
    file : IO[str], optional
        Where to print; default stdout (or stderr with ``stderr=True``).
    stderr : bool
        Print to stderr.
    **kwargs
        More :class:`rich.console.Console` arguments.

    Returns
    -------
    rich.console.Console
    """
    stream = file or (sys.stderr if stderr else sys.stdout)
    width = None if _is_terminal(stream) else PIPE_WIDTH
    return Console(file=file, stderr=stderr, width=width, **kwargs)


#: messages and progress go to stderr; stdout carries the command's output
console = output_console(stderr=True)


def settings_from_env() -> Settings:
    """The worker's settings as the environment gives them (``CUSTOMER_AI_*``, ...)."""
    return Settings.from_env()


def apply_dev_env(state_dir: Path = DEV_STATE_DIR) -> None:
    """Use the servers of ``customer-ai dev up`` unless the environment names others."""
    env_file = state_dir / "dev.env"
    if not env_file.is_file():
        return
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            os.environ.setdefault(key.strip(), value.strip())


def require_servers(needs: Iterable[str], state_dir: Path = DEV_STATE_DIR) -> None:
    """Refuse to guess servers: each one needed must be named by the environment.

    Call after :func:`apply_dev_env` (``dev.env`` counts as naming them).

    Parameters
    ----------
    needs : iterable of str
        ``"kafka"`` and/or ``"redis"``.
    state_dir : Path
        The ``dev up`` state directory the message points to.

    Raises
    ------
    CliError
        Status 2, naming the missing variables and the two ways to set them.
    """
    missing = [SERVER_VARIABLES[n] for n in needs if not os.environ.get(SERVER_VARIABLES[n])]
    if not missing:
        return
    names = " and ".join(missing)
    raise CliError(
        f"no servers are configured: {names} {'is' if len(missing) == 1 else 'are'} not set "
        f"and there is no {state_dir / 'dev.env'} here; run `customer-ai dev up` for embedded "
        f"servers, or set {names}",
        status=2,
    )


def load_cli_config(path: str | None = None) -> Config:
    """The configuration of ``--config``, ``CUSTOMER_AI_CONFIG`` or ``./customer-ai.toml``."""
    from models.config import load_config

    return load_config(path or settings_from_env().config_path)


def check_goal(config: Config, goal: str) -> None:
    """Raise a usage error listing the configured goals unless ``goal`` is one of them."""
    goals = [g.name for g in config.goals]
    if goal not in goals:
        raise CliError(
            f"unknown goal {goal!r}; the goals of {config.source} are: {', '.join(goals)}",
            status=2,
        )


async def connect_store(
    settings: Settings, feature_names: Sequence[str] | None = None
) -> RedisStore:
    """A store on ``settings.redis_url`` that answered a ping within :data:`PING_TIMEOUT`.

    The store retries failed calls forever (a worker must wait for Redis); a command
    must not, so it pings first.

    Raises
    ------
    CliError
        Status 1, naming the URL tried (password redacted) and the error.
    """
    from stream.worker.security import redact_url, redis_connection_kwargs
    from stream.worker.store import RedisStore

    store = RedisStore(
        **redis_connection_kwargs({**os.environ, "REDIS_URL": settings.redis_url}),
        key_prefix=settings.key_prefix,
        cluster=settings.redis_cluster,
        feature_names=feature_names,
    )
    try:
        await asyncio.wait_for(store.redis.ping(), timeout=PING_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure to answer is reported the same way
        await store.close()
        reason = "no answer" if isinstance(exc, asyncio.TimeoutError) else _reason(exc)
        raise CliError(
            f"cannot reach Redis at {redact_url(settings.redis_url)} ({reason}) within "
            f"{PING_TIMEOUT:g} s; is it running? (REDIS_URL, or `customer-ai dev up`)"
        ) from None
    return store


def _reason(exc: BaseException) -> str:
    """A short, secret-free description of a connection error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# The error classes the command runner (``stream.cli.main.run``) maps to one line, imported
# only when an error is being matched (an ``except`` clause evaluates its expression then):
# a command that uses no server, ``evaluate`` say, does not import aiokafka and redis.
def security_error() -> type[Exception]:
    """:class:`stream.worker.security.SecurityConfigError`."""
    from stream.worker.security import SecurityConfigError

    return SecurityConfigError


def kafka_unreachable() -> type[Exception]:
    """aiokafka's ``KafkaConnectionError``."""
    from aiokafka.errors import KafkaConnectionError

    return KafkaConnectionError


def redis_lost() -> tuple[type[Exception], ...]:
    """redis' ``ConnectionError`` and ``TimeoutError``."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError)
