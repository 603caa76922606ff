"""The segment index (``seg`` / ``segf`` sets) and ``customer-ai segment``, on a real Valkey.

- single Redis: the index moves inside the state's compare-and-set script (MONITOR shows
  every SADD/SREM running in Lua), and a fenced write changes nothing;
- Redis Cluster (a one-node Valkey cluster, so every cross-slot rule applies): the
  script would be refused (CROSSSLOT), the ``cluster=True`` fallback writes the index in a
  pipeline after the state;
- the command: sorting, limit, stale entries, factor filter, bucket sizes, exit codes.

The end-to-end check against a real worker is in ``test_ops.py``.

Contract: docs/DESIGN.md, sections "Redis keys" and "Writes".
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.exceptions import ResponseError

from models.messages import scores_field
from models.state import GoalState
from stream.cli.segment import segment_main
from stream.devservers import ValkeyProcess, find_free_port
from stream.ops.segments import read_segment
from stream.worker.store import (
    RedisStore,
    SegmentEntry,
    decode_top_factors,
    encode_top_factors,
)
from tests.stream.store_helpers import members, write

REPO = Path(__file__).resolve().parents[3]
BUCKETS = ["low", "medium", "high"]


def test_top_factors_encoding_round_trips() -> None:
    entries: dict[str, SegmentEntry] = {
        "conversion": ("high", ("purchase_count_30d", "tenure_days")),
        "churn": ("low", ()),
    }
    raw = encode_top_factors(entries)
    assert raw == "conversion:purchase_count_30d,tenure_days"
    assert decode_top_factors(raw.encode()) == {"conversion": ("purchase_count_30d", "tenure_days")}
    assert decode_top_factors(None) == {} and encode_top_factors({}) == ""


async def test_the_index_moves_inside_the_cas_script(
    store: RedisStore, redis_client: redis.Redis, redis_url: str
) -> None:
    first: dict[str, SegmentEntry] = {"conversion": ("high", ("a", "b")), "churn": (None, ())}
    seen: list[tuple[str, str]] = []  # (source, command) from MONITOR
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    listening = threading.Event()

    def monitor() -> None:
        with redis_client.monitor() as m:
            listening.set()
            for cmd in m.listen():
                text = cmd["command"]
                if text.startswith("ECHO monitor-done"):
                    return
                if cmd.get("db") == db:  # other clients of a shared server use other dbs
                    seen.append((str(cmd.get("client_type") or cmd.get("client_address")), text))

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    assert listening.wait(5)
    time.sleep(0.2)
    assert await store.save([write("p-1", "", {}, first)], {}, "cai:due:t:0", None, None) == set()
    second: dict[str, SegmentEntry] = {"conversion": ("medium", ("b", "c")), "churn": (None, ())}
    assert await store.save([write("p-1", "1", first, second)], {}, "cai:due:t:0", None, None) == (
        set()
    )
    other = redis.Redis.from_url(redis_url)
    other.echo("monitor-done")
    other.close()
    thread.join(5)
    set_cmds = [(src, c) for src, c in seen if c.split(" ", 1)[0] in ("SADD", "SREM")]
    assert len(set_cmds) == 3 + 6  # join 3 sets; then leave 3 and join 3 (bucket moved)
    assert all(src == "lua" for src, _ in set_cmds), set_cmds

    assert members(redis_client, "cai:seg:conversion:medium") == {"p-1"}
    assert members(redis_client, "cai:segf:conversion:medium:b") == {"p-1"}
    assert members(redis_client, "cai:segf:conversion:medium:c") == {"p-1"}
    for gone in ("cai:seg:conversion:high", "cai:segf:conversion:high:a"):
        assert not redis_client.exists(gone), gone
    assert redis_client.hget("cai:p:{p-1}", "tf") == b"conversion:b,c"


async def test_a_fenced_write_changes_neither_state_nor_index(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    first: dict[str, SegmentEntry] = {"conversion": ("high", ("a",))}
    await store.save([write("p-1", "", {}, first)], {}, "cai:due:t:0", None, None)
    before = redis_client.hgetall("cai:p:{p-1}")
    zombie: dict[str, SegmentEntry] = {"conversion": ("low", ("z",))}
    fenced = await store.save([write("p-1", "", first, zombie)], {}, "cai:due:t:0", None, None)
    assert fenced == {"p-1"}
    assert redis_client.hgetall("cai:p:{p-1}") == before
    assert members(redis_client, "cai:seg:conversion:high") == {"p-1"}
    assert not redis_client.exists("cai:seg:conversion:low", "cai:segf:conversion:low:z")


async def test_warming_up_scores_leave_the_factor_sets(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    first: dict[str, SegmentEntry] = {"conversion": ("high", ("a",))}
    await store.save([write("p-1", "", {}, first)], {}, "cai:due:t:0", None, None)
    loaded = await store.load(["p-1"], "o:t:0")
    assert loaded["p-1"].top_factors == {"conversion": ("a",)}
    cold: dict[str, SegmentEntry] = {"conversion": ("high", ())}
    await store.save([write("p-1", "1", first, cold)], {}, "cai:due:t:0", None, None)
    assert members(redis_client, "cai:seg:conversion:high") == {"p-1"}
    assert not redis_client.exists("cai:segf:conversion:high:a")
    assert not redis_client.hexists("cai:p:{p-1}", "tf")


# --- Redis Cluster fallback --------------------------------------------------------------


class ClusterValkey(ValkeyProcess):
    """A one-node Valkey cluster owning all 16384 slots."""

    kind = "valkey-cluster"

    def command(self, binary: str, port: int) -> list[str]:
        return [
            *super().command(binary, port),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-port",  # default port + 10000 may not exist (ports above 55535)
            str(find_free_port()),
        ]


@pytest.fixture
def cluster_url(tmp_path: Path) -> Iterator[str]:
    with ClusterValkey(log_path=tmp_path / "valkey-cluster.log") as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 20
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "cluster did not become ok"
                time.sleep(0.1)
        finally:
            client.close()
        yield server.url


async def test_cluster_fallback_keeps_the_index_in_a_pipeline(cluster_url: str) -> None:
    first: dict[str, SegmentEntry] = {"conversion": ("high", ("a",))}
    plain = RedisStore(cluster_url, key_prefix="cai")
    try:  # the atomic script names keys of several slots: a cluster refuses it
        with pytest.raises(ResponseError, match="CROSSSLOT|hash to the same slot"):
            await plain.save([write("p-1", "", {}, first)], {}, "cai:due:t:0", None, None)
    finally:
        await plain.close()

    store = RedisStore(cluster_url, key_prefix="cai", cluster=True)
    try:
        writes = [write(f"p-{i}", "", {}, first, probability=i / 10) for i in range(1, 6)]
        assert await store.save(writes, {"p-1": 123}, "cai:due:t:0", "cai:wm:t:0", 7) == set()
        second: dict[str, SegmentEntry] = {"conversion": ("low", ("b",))}
        await store.save([write("p-1", "1", first, second)], {}, "cai:due:t:0", None, None)
        fenced = await store.save([write("p-2", "", first, second)], {}, "cai:due:t:0", None, None)
        assert fenced == {"p-2"}  # fenced writes do not touch the index either
        sizes = await store.bucket_sizes(["conversion"], BUCKETS)
        assert sizes == {
            ("conversion", "low"): 1,
            ("conversion", "medium"): 0,
            ("conversion", "high"): 4,
        }
        listing = await read_segment(store, "conversion", "high", BUCKETS, factor="a", limit=2)
        assert [p["profile_id"] for p in listing.profiles] == ["p-5", "p-4"]
        assert listing.factor_sizes == {"low": 0, "medium": 0, "high": 4}
        await store.publish_models([("conversion", 3, b"{}", b"{}")], offsets={0: 9})
        assert await store.model_versions() == {"conversion": 3}
        assert await store.trainer_offsets() == {0: 9}
    finally:
        await store.close()


# --- the command -------------------------------------------------------------------------


@pytest.fixture
def segment_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CUSTOMER_AI_CONFIG", str(REPO / "customer-ai.toml"))
    monkeypatch.setenv("CUSTOMER_AI_KEY_PREFIX", "cai")
    monkeypatch.delenv("CUSTOMER_AI_REDIS_CLUSTER", raising=False)
    return redis_url


def _feature_names() -> list[str]:
    from models.config import load_config
    from models.features import Featurizer

    return Featurizer(load_config(REPO / "customer-ai.toml")).names


def _seed(redis_url: str) -> None:
    async def run() -> None:
        store = RedisStore(redis_url, key_prefix="cai", feature_names=_feature_names())
        try:
            writes = []
            for i in range(1, 8):
                factors = ("purchase_count_30d",) if i % 2 else ("tenure_days",)
                entry: dict[str, SegmentEntry] = {"conversion": ("high", factors)}
                writes.append(write(f"p-{i}", "", {}, entry, probability=i / 10))
            writes.append(write("p-9", "", {}, {"conversion": ("low", ())}, probability=0.01))
            await store.save(writes, {}, "cai:due:t:0", None, None)
        finally:
            await store.close()

    asyncio.run(run())


def _run(*args: Any) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = segment_main(*args, out=out)
    return code, json.loads(out.getvalue()) if code == 0 and out.getvalue().startswith("{") else {}


def test_segment_lists_the_most_probable_profiles_with_sizes(
    segment_env: str, redis_client: redis.Redis
) -> None:
    _seed(segment_env)
    names = _feature_names()  # tf holds positions in the feature vector, not names
    assert redis_client.hget("cai:p:{p-7}", "tf") == (
        f"conversion:{names.index('purchase_count_30d')}".encode()
    )
    # a stale entry (possible only with the cluster fallback) is skipped, not listed
    redis_client.sadd("cai:seg:conversion:high", "p-9")
    code, doc = _run("conversion", "high", None, 3, True)
    assert code == 0
    assert [p["profile_id"] for p in doc["profiles"]] == ["p-7", "p-6", "p-5"]
    assert doc["profiles"][0] == {
        "profile_id": "p-7",
        "probability": 0.7,
        "percentile": 50.0,
        "model_version": 1,
        "top_factors": ["purchase_count_30d"],
    }
    assert doc["sizes"] == {"low": 1, "medium": 0, "high": 8}
    assert doc["members"] == 8 and doc["stale"] == 1
    # a member whose key is not a hash (a poison record not quarantined yet): stale too
    redis_client.sadd("cai:seg:conversion:high", "p-bad")
    redis_client.set("cai:p:{p-bad}", "not a hash")
    code, doc = _run("conversion", "high", None, 3, True)
    assert code == 0 and doc["members"] == 9 and doc["stale"] == 2
    assert [p["profile_id"] for p in doc["profiles"]] == ["p-7", "p-6", "p-5"]
    redis_client.srem("cai:seg:conversion:high", "p-bad")

    code, doc = _run("conversion", "high", "purchase_count_30d", 0, True)
    assert code == 0
    assert [p["profile_id"] for p in doc["profiles"]] == ["p-7", "p-5", "p-3", "p-1"]
    assert doc["factor_sizes"] == {"low": 0, "medium": 0, "high": 4}

    out = io.StringIO()
    assert segment_main("conversion", "high", None, 2, False, out=out) == 0
    text = out.getvalue()
    assert "p-7" in text and "p-6" in text and "p-5" not in text
    assert "bucket sizes of conversion: low 1  medium 0  high 8" in text


async def test_ties_rank_by_profile_id_whatever_the_limit(store: RedisStore) -> None:
    entry: dict[str, SegmentEntry] = {"conversion": ("high", ())}
    writes = [write(pid, "", {}, entry, probability=0.5) for pid in ("p-b", "p-c", "p-a")]
    writes.append(write("p-z", "", {}, entry, probability=0.9))
    await store.save(writes, {}, "cai:due:t:0", None, None)
    for limit, expected in (
        (1, ["p-z"]),
        (3, ["p-z", "p-a", "p-b"]),
        (0, ["p-z", "p-a", "p-b", "p-c"]),
    ):
        listing = await read_segment(store, "conversion", "high", BUCKETS, limit=limit)
        assert [p["profile_id"] for p in listing.profiles] == expected, limit


@pytest.mark.parametrize(
    ("goal", "bucket", "factor", "message"),
    [
        ("nope", "high", None, "unknown goal"),
        ("conversion", "top", None, "unknown bucket"),
        ("conversion", "high", "nope", "unknown feature"),
    ],
)
def test_segment_rejects_unknown_names(
    segment_env: str,
    capsys: pytest.CaptureFixture[str],
    goal: str,
    bucket: str,
    factor: str | None,
    message: str,
) -> None:
    assert segment_main(goal, bucket, factor, 10, True, out=io.StringIO()) == 2
    assert message in capsys.readouterr().err


def test_segment_fails_fast_when_redis_is_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{find_free_port()}/0")
    monkeypatch.setenv("CUSTOMER_AI_CONFIG", str(REPO / "customer-ai.toml"))
    started = time.monotonic()
    assert segment_main("conversion", "high", None, 10, True, out=io.StringIO()) == 1
    assert time.monotonic() - started < 10
    assert "cannot reach Redis" in capsys.readouterr().err


def test_scores_field_is_what_segment_reads() -> None:
    raw = scores_field({"conversion": GoalState(0.25, 80.0, "high", 2), "churn": GoalState()})
    assert orjson.loads(raw) == {
        "conversion": {
            "probability": 0.25,
            "percentile": 80.0,
            "bucket": "high",
            "model_version": 2,
        }
    }
