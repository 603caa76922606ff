"""The batched store scripts (:data:`~stream.worker.store.CAS_BATCH_SCRIPT`,
:data:`~stream.worker.store.DUE_BATCH_SCRIPT`, :data:`~stream.worker.store.LOAD_BATCH_SCRIPT`) on a
real Redis/Valkey.

- each write of a chunk is fenced or applied on its own, across chunk boundaries;
- the segment sets move inside the script, each set passed once per chunk;
- the result equals one :data:`~stream.worker.store.CAS_SCRIPT` call per write (the script the
  batch replaces), over random rounds with fenced writes;
- due entries move only at the version they were computed from;
- ``load`` returns what one ``HMGET`` per profile returns;
- scripts go by ``EVALSHA`` without ``SCRIPT EXISTS``, and a flushed script cache or a
  restarted server is recovered from.

Contract: docs/DESIGN.md, sections "Profile hash" and "Writes".
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import stream.worker.profile_store as store_module
from stream.devservers import ValkeyProcess
from stream.worker.store import (
    CAS_SCRIPT,
    SCRIPT_CHUNK,
    RedisStore,
    SegmentEntry,
)
from tests.stream.store_helpers import members, write

DUE = "cai:due:t:0"
BUCKETS = ("low", "medium", "high")
FEATURES = [f"f{i}" for i in range(12)]


def set_contents(client: redis.Redis, prefix: str) -> dict[str, set[str]]:
    """Every non-empty ``seg``/``segf`` set under ``prefix``, keyed without the prefix."""
    out = {}
    for pattern in (f"{prefix}:seg:*", f"{prefix}:segf:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            out[key.decode()[len(prefix) :]] = members(client, key)
    return out


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of at most 3 writes and 10 set moves: many chunk boundaries per batch."""
    monkeypatch.setattr(store_module, "SCRIPT_CHUNK", 3)
    monkeypatch.setattr(store_module, "SCRIPT_CHUNK_MOVES", 10)


def test_chunks_respect_both_limits(small_chunks: None) -> None:
    entry: dict[str, SegmentEntry] = {"g": ("high", ("a", "b", "c", "d"))}  # 5 sets
    writes = [write(f"p-{i}", "", {}, entry if 2 <= i <= 5 else {}) for i in range(8)]
    moves = {w.profile_id: ([], [f"k{j}" for j in range(5 * bool(w.index_after))]) for w in writes}
    sizes = [[w.profile_id for w in c] for c in store_module._chunks(writes, moves)]
    # p-3 and p-4 move 10 sets (the limit), p-5 would pass it
    assert sizes == [["p-0", "p-1", "p-2"], ["p-3", "p-4"], ["p-5", "p-6", "p-7"]]
    big: dict[str, SegmentEntry] = {"g": ("high", tuple("abcdefghijklmnop"))}
    one = [write("p-x", "", {}, big)]  # more moves than the limit: a chunk of its own
    assert [len(c) for c in store_module._chunks(one, {"p-x": ([], ["k"] * 17)})] == [1]


async def test_fenced_writes_in_a_chunk_leave_the_others_applied(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    first: dict[str, SegmentEntry] = {"conversion": ("high", ("a",))}
    seeded = [write(f"p-{i}", "", {}, first) for i in range(6)]
    assert await store.save(seeded, {}, DUE, None, None) == set()
    before = {i: redis_client.hgetall(f"cai:p:{{p-{i}}}") for i in range(6)}

    moved: dict[str, SegmentEntry] = {"conversion": ("low", ("b",))}
    batch = [
        # p-1 and p-4 were loaded by a zombie at the absent version: fenced
        write(f"p-{i}", "" if i in (1, 4) else "1", first, moved, offset=10 + i)
        for i in range(6)
    ]
    assert await store.save(batch, {}, DUE, None, None) == {"p-1", "p-4"}
    for i in (1, 4):
        assert redis_client.hgetall(f"cai:p:{{p-{i}}}") == before[i]
    for i in (0, 2, 3, 5):
        row = redis_client.hmget(f"cai:p:{{p-{i}}}", "v", "o:t:0", "tf", "s")
        assert row == [b"2", str(10 + i).encode(), b"conversion:b", b"state"]
    assert members(redis_client, "cai:seg:conversion:high") == {"p-1", "p-4"}
    assert members(redis_client, "cai:segf:conversion:high:a") == {"p-1", "p-4"}
    assert members(redis_client, "cai:seg:conversion:low") == {"p-0", "p-2", "p-3", "p-5"}
    assert members(redis_client, "cai:segf:conversion:low:b") == {"p-0", "p-2", "p-3", "p-5"}


async def test_chunk_boundaries(store: RedisStore, redis_client: redis.Redis) -> None:
    n = 2 * SCRIPT_CHUNK + 50
    entry: dict[str, SegmentEntry] = {"conversion": ("medium", ("a", "b"))}
    assert (
        await store.save([write(f"p-{i}", "", {}, entry) for i in range(n)], {}, DUE, None, None)
        == set()
    )
    stale = {0, SCRIPT_CHUNK - 1, SCRIPT_CHUNK, 2 * SCRIPT_CHUNK - 1, 2 * SCRIPT_CHUNK, n - 1}
    after: dict[str, SegmentEntry] = {"conversion": ("high", ("b", "c"))}
    calls: list[int] = []
    run_scripts = store._run_scripts

    async def counting(batch: list[Any], queue: Any = None) -> list[Any]:
        calls.append(len(batch))
        return await run_scripts(batch, queue)

    store._run_scripts = counting  # type: ignore[method-assign]
    writes = [write(f"p-{i}", "" if i in stale else "1", entry, after) for i in range(n)]
    fenced = await store.save(writes, {}, DUE, None, None)
    assert fenced == {f"p-{i}" for i in stale}
    assert calls[0] == 3  # ceil(450 / 200) CAS calls in one pipeline
    for i in range(n):
        v = redis_client.hget(f"cai:p:{{p-{i}}}", "v")
        assert v == (b"1" if i in stale else b"2"), i
    assert redis_client.scard("cai:seg:conversion:high") == n - len(stale)
    assert redis_client.scard("cai:seg:conversion:medium") == len(stale)
    assert redis_client.scard("cai:segf:conversion:medium:a") == len(stale)
    assert redis_client.scard("cai:segf:conversion:high:c") == n - len(stale)
    assert redis_client.scard("cai:segf:conversion:high:b") == n - len(stale)
    assert redis_client.scard("cai:segf:conversion:medium:b") == len(stale)


async def test_shared_sets_and_every_kind_of_move(
    store: RedisStore, redis_client: redis.Redis, small_chunks: None
) -> None:
    """Writes leaving and joining the same sets (each passed once per chunk), no offset
    field, no top factors, a goal without a bucket, a profile leaving every set."""
    a: dict[str, SegmentEntry] = {"conversion": ("high", ("x", "y")), "churn": ("low", ())}
    b: dict[str, SegmentEntry] = {"conversion": ("high", ("y", "z")), "churn": (None, ())}
    c: dict[str, SegmentEntry] = {"conversion": (None, ()), "churn": (None, ())}
    assert (
        await store.save([write(f"p-{i}", "", {}, a) for i in range(7)], {}, DUE, None, None)
        == set()
    )
    batch = [write(f"p-{i}", "1", a, b if i % 2 else c, offset_field="") for i in range(7)]
    assert await store.save(batch, {}, DUE, None, None) == set()
    odd = {f"p-{i}" for i in range(7) if i % 2}
    assert set_contents(redis_client, "cai") == {
        ":seg:conversion:high": odd,
        ":segf:conversion:high:y": odd,
        ":segf:conversion:high:z": odd,
    }
    assert redis_client.hmget("cai:p:{p-1}", "v", "o:t:0", "tf") == [b"2", b"1", b"conversion:y,z"]
    assert redis_client.hmget("cai:p:{p-0}", "v", "o:t:0", "tf") == [b"2", b"1", None]


def random_entries(rng: random.Random) -> dict[str, SegmentEntry]:
    out: dict[str, SegmentEntry] = {}
    for goal in ("conversion", "churn"):
        bucket = rng.choice((None, *BUCKETS))
        k = 0 if bucket is None else rng.randrange(0, 6)
        out[goal] = (bucket, tuple(rng.sample(FEATURES, k)))
    return out


async def test_batch_equals_one_cas_script_per_write(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random rounds (fenced writes, moves, chunk limits hit) give the same hashes, sets
    and fenced ids as the per-write :data:`CAS_SCRIPT` the batch replaces."""
    monkeypatch.setattr(store_module, "SCRIPT_CHUNK", 7)
    monkeypatch.setattr(store_module, "SCRIPT_CHUNK_MOVES", 40)
    rng = random.Random(7)
    store = RedisStore(redis_url, key_prefix="new", feature_names=FEATURES[::2])
    ref = RedisStore(redis_url, key_prefix="ref", feature_names=FEATURES[::2])
    cas = redis_client.register_script(CAS_SCRIPT)
    pids = [f"p-{i}" for i in range(40)]
    index: dict[str, dict[str, SegmentEntry]] = {p: {} for p in pids}
    version = dict.fromkeys(pids, "")
    try:
        for rnd in range(6):
            writes = []
            for pid in rng.sample(pids, rng.randrange(1, len(pids))):
                stale = rng.random() < 0.2
                expected = str(rng.randrange(0, 9)) if stale else version[pid]
                if expected == "0":
                    expected = ""
                after = random_entries(rng)
                writes.append(
                    write(
                        pid,
                        expected,
                        index[pid],
                        after,
                        offset=rnd * 100 + rng.randrange(100),
                        offset_field=rng.choice(("o:t:0", "o:t:1", "")),
                        state=rng.randbytes(rng.randrange(0, 50)),
                    )
                )
            want = set()
            for w in writes:  # the reference: one script per write, as before the batch
                leave, join = ref.index_moves(w)
                args = [*ref.write_args(w), len(leave)]
                if not cas(keys=[ref.profile_key(w.profile_id), *leave, *join], args=args):
                    want.add(w.profile_id)
            got = await store.save(writes, {}, "new:due", None, None)
            assert got == want, rnd
            for w in writes:
                if w.profile_id not in got:
                    index[w.profile_id] = w.index_after
                    version[w.profile_id] = str(int(version[w.profile_id] or 0) + 1)
            for pid in pids:
                assert redis_client.hgetall(f"new:p:{{{pid}}}") == redis_client.hgetall(
                    f"ref:p:{{{pid}}}"
                ), (rnd, pid)
            assert set_contents(redis_client, "new") == set_contents(redis_client, "ref"), rnd
        assert any(version.values())
    finally:
        await store.close()
        await ref.close()


async def test_due_entries_move_only_at_their_version(
    store: RedisStore, redis_client: redis.Redis, small_chunks: None
) -> None:
    entry: dict[str, SegmentEntry] = {"conversion": ("high", ())}
    await store.save([write(f"p-{i}", "", {}, entry) for i in range(8)], {}, DUE, None, None)
    redis_client.zadd(DUE, {f"p-{i}": 100 for i in range(8)})
    due: dict[str, int | None] = {
        "p-0": 200,  # at its version: moves
        "p-1": 200,  # computed from an older version (a zombie): stays
        "p-2": None,  # at its version: removed
        "p-3": None,  # older version: stays
        "p-4": 200,  # no version given: unguarded ZADD
        "p-5": None,  # no version given: unguarded ZREM
        "p-6": 300,  # its write is fenced: nothing sent
        "p-7": 200,  # its write applies, the entry is computed from the new version
    }
    versions = {"p-0": "1", "p-1": "", "p-2": "1", "p-3": "", "p-6": "2", "p-7": "2"}
    writes = [write("p-6", "", entry, entry), write("p-7", "1", entry, entry)]
    fenced = await store.save(writes, due, DUE, "cai:wm:t:0", 42, versions)
    assert fenced == {"p-6"}
    got = {m.decode(): int(s) for m, s in redis_client.zrange(DUE, 0, -1, withscores=True)}
    assert got == {"p-0": 200, "p-1": 100, "p-3": 100, "p-4": 200, "p-6": 100, "p-7": 200}
    assert redis_client.get("cai:wm:t:0") == b"42"


async def test_load_returns_what_hmget_returns(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    store.feature_names = FEATURES
    redis_client.hset(
        "cai:p:{p-full}",
        mapping={"s": b"\x00\xff bytes", "v": "3", "o:t:0": "17", "tf": "conversion:1,x,99"},
    )
    redis_client.hset("cai:p:{p-bare}", mapping={"v": "1"})
    redis_client.hset("cai:p:{p-other}", mapping={"s": b"s", "v": "2", "o:t:1": "5"})
    ids = ["p-full", "p-missing", "p-bare", "p-other", "p-full"]
    ids += [f"p-absent-{i}" for i in range(2 * SCRIPT_CHUNK)]
    got = await store.load(ids, "o:t:0")
    store.cluster = True  # the per-profile HMGET pipeline (it works on one server too)
    try:
        want = await store.load(ids, "o:t:0")
    finally:
        store.cluster = False
    assert got == want
    assert got["p-full"].state == b"\x00\xff bytes" and got["p-full"].version == "3"
    assert got["p-full"].offset == 17
    assert got["p-full"].top_factors == {"conversion": ("f1", "x")}
    assert (got["p-missing"].state, got["p-missing"].version, got["p-missing"].offset) == (
        None,
        "",
        -1,
    )
    assert got["p-other"].offset == -1 and got["p-bare"].state is None


# ---- script cache --------------------------------------------------------------------


class Monitor:
    """Names of the commands clients run on one database (not those run by scripts),
    from MONITOR in a thread."""

    def __init__(self, url: str, db: int) -> None:
        self.url, self.db = url, db
        self.client = redis.Redis.from_url(url)
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.client.monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                text = cmd["command"]
                if text.startswith("ECHO monitor-done"):
                    return
                if int(cmd.get("db", -1)) == self.db and cmd.get("client_type") != "lua":
                    self.commands.append(text.split(" ", 1)[0].upper())

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(5)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        other = redis.Redis.from_url(self.url)
        other.echo("monitor-done")
        other.close()
        self._thread.join(5)
        self.client.close()


async def test_scripts_recover_after_script_flush(
    store: RedisStore, redis_client: redis.Redis, redis_url: str
) -> None:
    entry: dict[str, SegmentEntry] = {"conversion": ("high", ("a",))}
    await store.save([write("p-1", "", {}, entry)], {}, DUE, None, None)
    redis_client.script_flush()
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    with Monitor(redis_url, db) as monitor:
        assert (await store.load(["p-1"], "o:t:0"))["p-1"].version == "1"
        fenced = await store.save(
            [write("p-1", "1", entry, entry), write("p-2", "1", {}, entry)],
            {"p-1": 5},
            DUE,
            None,
            None,
            {"p-1": "2"},
        )
        assert fenced == {"p-2"}
        await store.save([write("p-1", "2", entry, entry)], {}, DUE, None, None)  # cached again
    # load, CAS and due: EVALSHA (NOSCRIPT), then EVAL once each; then EVALSHA only
    scripts = [c for c in monitor.commands if c.startswith(("EVAL", "SCRIPT"))]
    assert scripts == ["EVALSHA", "EVAL", "EVALSHA", "EVAL", "EVALSHA", "EVAL", "EVALSHA"]
    assert redis_client.hget("cai:p:{p-1}", "v") == b"3"  # each write applied once
    assert redis_client.zscore(DUE, "p-1") == 5
    assert not redis_client.exists("cai:p:{p-2}")


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    with ValkeyProcess(log_path=tmp_path / "valkey" / "valkey.log") as server:
        yield server


async def test_scripts_recover_after_a_server_restart(valkey: ValkeyProcess) -> None:
    entry: dict[str, SegmentEntry] = {"conversion": ("high", ("a",))}
    store = RedisStore(valkey.url + "/0", key_prefix="cai")
    try:
        assert (
            await store.save(
                [write("p-1", "", {}, entry)], {"p-1": 9}, DUE, None, None, {"p-1": "1"}
            )
            == set()
        )
        valkey.restart()  # the script cache (and, without persistence, the data) is gone
        loaded = await store.load(["p-1", "p-2"], "o:t:0")
        version = loaded["p-1"].version
        writes = [write("p-1", version, {}, entry), write("p-2", "", {}, entry)]
        assert await store.save(writes, {"p-2": 7}, DUE, None, None, {"p-2": "1"}) == set()
        client = redis.Redis.from_url(valkey.url + "/0")
        try:
            assert client.hget("cai:p:{p-2}", "v") == b"1"
            assert client.zscore(DUE, "p-2") == 7
            assert members(client, "cai:seg:conversion:high") >= {"p-2"}
        finally:
            client.close()
    finally:
        await store.close()
