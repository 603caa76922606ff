"""hiredis packing sends exactly the bytes redis-py's own packer sends."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from stream.worker.redis_packing import hiredis_packing_class
from stream.worker.store import RedisStore

COMMANDS = [
    ("SET", "k", "v"),
    ("SCRIPT LOAD", "return 1"),
    (b"CONFIG GET", b"maxmemory"),
    ("EVALSHA", "a" * 40, 2, "cai:p:1", "cai:p:2", 17, -3, 0.1, 1.5e300, float("inf")),
    ("SET", "é", b"\x00\xff" * 5000, 10**20),  # over redis-py's 6,000-byte buffer cutoff
    ("ZADD", "due", 1.25, "p-1", 7, "p-2"),
]


def packed(connection: Connection, *args: object) -> bytes:
    return b"".join(connection.pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS)
def test_same_bytes_as_redis_py(args: tuple) -> None:
    fast = hiredis_packing_class(Connection)()
    assert packed(fast, *args) == packed(Connection(), *args)


def test_pipelines_pack_the_same() -> None:
    fast = hiredis_packing_class(Connection)()
    assert b"".join(fast.pack_commands(COMMANDS)) == b"".join(Connection().pack_commands(COMMANDS))


def test_what_hiredis_refuses_goes_through_redis_py() -> None:
    fast = hiredis_packing_class(Connection)()
    view = memoryview(b"payload")
    assert packed(fast, "SET", "k", view) == packed(Connection(), "SET", "k", view)
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", None)
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", True)


def test_every_connection_kind_keeps_its_class() -> None:
    for kind in (Connection, SSLConnection, UnixDomainSocketConnection):
        fast = hiredis_packing_class(kind)
        assert issubclass(fast, kind) and hiredis_packing_class(fast) is fast


async def test_the_store_talks_to_redis_through_hiredis_packing(redis_url: str) -> None:
    store = RedisStore(redis_url, key_prefix="packing-test")
    try:
        assert store.redis.connection_pool.connection_class.__name__ == "HiredisConnection"
        value = "é" * 10_000
        await store.redis.set("packing-test:k", value)
        assert (await store.redis.get("packing-test:k")).decode() == value
        await store.redis.delete("packing-test:k")
    finally:
        await store.close()
