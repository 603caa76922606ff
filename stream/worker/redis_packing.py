"""Redis commands packed by hiredis instead of redis-py's pure-Python packer.

redis-py's asyncio connection packs every command in Python, re-joining its output
buffer once per argument (up to 6 KB at a time): for a chunk of 200 profile writes of
about 10 arguments each that is most of a write's client CPU, several times what
``hiredis.pack_command`` costs (``bench/store_speed.py``). redis-py's synchronous client
already packs with hiredis when it can; its asyncio client does not. The bytes sent are
the same (``tests/stream/worker/test_redis_packing.py``).

:func:`use_hiredis_packing` switches a client's connection pool to a subclass of its
connection class (plain TCP, TLS or Unix socket alike) whose ``pack_command`` calls
hiredis. Anything hiredis refuses (a ``memoryview``, an invalid type) goes through
redis-py's own packer, which packs it or raises redis-py's usual ``DataError``.

It relies on redis-py's asyncio connection packing every command with its public
``pack_command`` and on the pool's public ``connection_class``; nothing private.
:func:`stream.worker.compat.hiredis_packing_supported` checks the first (once), and
without it the client keeps redis-py's own packer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from stream.worker import compat

__all__ = ["hiredis_packing_class", "use_hiredis_packing"]

_pack_command: Callable[..., Any] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack_command = None


class _HiredisPacking:
    """Mixin over a redis-py asyncio connection class (see the module docstring)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # like redis-py: a command name with spaces ("SCRIPT LOAD") is several arguments
        first = args[0]
        if isinstance(first, str):
            if " " in first:
                args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_pack_command(args)]  # type: ignore[misc]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc]


@cache
def hiredis_packing_class(connection_class: type) -> type:
    """``connection_class`` with hiredis packing (one subclass per class)."""
    if issubclass(connection_class, _HiredisPacking):
        return connection_class
    return type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})


def use_hiredis_packing(client: Any) -> bool:
    """Make the connections ``client``'s pool creates from now on pack with hiredis.

    Returns False (and changes nothing) without hiredis, without a connection pool
    (e.g. a cluster client) or when redis-py does not pack with ``pack_command``.
    """
    pool = getattr(client, "connection_pool", None)
    if _pack_command is None or pool is None or not compat.hiredis_packing_supported():
        return False
    pool.connection_class = hiredis_packing_class(pool.connection_class)
    return True
