"""A CLI without surprises: a user's mistake is one line and an exit status, never a traceback.

Every command runs as a subprocess (``python -m stream.cli``) in an empty directory with a
controlled environment: no ``CUSTOMER_AI_*``, Kafka or Redis variables unless the test sets
them, and no ``.customer-ai/dev.env`` unless the test writes one. Servers that do not
answer are a free (closed) port, or a socket that accepts connections and never answers.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.config import load_config
from stream.cli.main import build_parser, version
from stream.devservers import find_free_port
from tests.harness import CONFIG, REPO

GOALS = [g.name for g in load_config(CONFIG).goals]
SERVER_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every setting the CLI reads, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CUSTOMER_AI_", "REDIS_", "KAFKA_"))
    }
    env["PYTHONPATH"] = str(REPO)  # the worktree's code, from any working directory
    env.update(extra)
    return env


def cli(
    cwd: Path, *args: str, timeout: float = 60, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``customer-ai ARGS`` in ``cwd``; the result and the seconds it took."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - started


def one_line_error(proc: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert the command failed with ``status`` and one line on stderr; return that line."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def closed_port_url(password: str | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{find_free_port()}/0"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# ---- --version, --help ----------------------------------------------------------------


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    proc, _ = cli(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"customer-ai {version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version())


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_says_what_it_does_and_its_default() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {
        "dev", "worker", "generate", "replay", "tail", "profile", "evaluate", "lag",
        "segment", "models", "demo", "quarantine", "watermarks", "backfill", "erase",
    }  # fmt: skip
    for name, sub in {"customer-ai": parser, **commands}.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                rendered = formatter._expand_help(action)
                assert f"(default: {action.default})" in rendered, where


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_help_lists_every_option(tmp_path: Path, command: str) -> None:
    proc, _ = cli(tmp_path, command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for action in _subparsers(build_parser())[command]._actions:
        for option in action.option_strings:
            assert option in text, f"{command} --help does not list {option}"


# ---- bad numbers, missing files --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["generate", "--days", "-5", "--out", "x.jsonl"], "--days"),
        (["generate", "--profiles", "0", "--out", "x.jsonl"], "--profiles"),
        (["generate", "--profiles", "many", "--out", "x.jsonl"], "--profiles"),
        (["demo", "--days", "-1"], "--days"),
        (["replay", "events.jsonl", "--rate", "-3"], "--rate"),
        (["tail", "--limit", "0"], "--limit"),
        (["segment", "--goal", "conversion", "--limit", "-1"], "--limit"),
        (["lag", "--interval", "0"], "--interval"),
    ],
)
def test_a_bad_number_is_a_usage_error(tmp_path: Path, args: list[str], option: str) -> None:
    proc, _ = cli(tmp_path, *args)
    line = one_line_error(proc, 2)
    assert option in line and "must be" in line
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    "args",
    [["replay", "missing.jsonl"], ["evaluate", "missing.jsonl", "--out", "out"]],
    ids=["replay", "evaluate"],
)
def test_a_missing_events_file(tmp_path: Path, args: list[str]) -> None:
    proc, elapsed = cli(
        tmp_path,
        *args,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{find_free_port()}",
        CUSTOMER_AI_CONFIG=str(CONFIG),
    )
    line = one_line_error(proc, 2)
    assert "'missing.jsonl' not found" in line
    assert elapsed < 10


def test_generate_into_a_missing_directory(tmp_path: Path) -> None:
    proc, _ = cli(tmp_path, "generate", "--profiles", "3", "--days", "2", "--out", "no/dir.jsonl")
    line = one_line_error(proc, 2)
    assert "no/dir.jsonl" in line


# ---- configuration ---------------------------------------------------------------------

#: every command that loads the configuration, with the arguments it needs to get there
CONFIG_COMMANDS = {
    "worker": [],
    "replay": ["{events}"],
    "tail": ["--goal", "conversion"],
    "profile": ["p-1"],
    "segment": ["--goal", "conversion"],
    "models": [],
    "quarantine": ["release", "p-1", "--reset"],
    "evaluate": ["{events}", "--out", "out"],
    "backfill": ["{events}", "--partitions", "4"],
    "demo": [],
}


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_every_command_that_reads_the_config_takes_config(tmp_path: Path, command: str) -> None:
    """The config error says "pass --config PATH": every command it can come from takes it."""
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    args = [a.format(events=events) for a in CONFIG_COMMANDS[command]]
    closed = f"127.0.0.1:{find_free_port()}"  # the config is read before any connection
    proc, _ = cli(
        tmp_path,
        command,
        *args,
        "--config",
        "nowhere.toml",
        KAFKA_BOOTSTRAP_SERVERS=closed,
        REDIS_URL=f"redis://{closed}/0",
    )
    line = one_line_error(proc, 2)
    assert "configuration error" in line and "nowhere.toml' not found" in line
    assert "pass --config PATH" in line
    assert not (tmp_path / ".customer-ai").exists()  # the demo started nothing


def test_tail_of_an_unknown_goal_fails_at_once_listing_the_goals(tmp_path: Path) -> None:
    proc, elapsed = cli(
        tmp_path,
        "tail",
        "--goal",
        "convrsion",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{find_free_port()}",
        CUSTOMER_AI_CONFIG=str(CONFIG),
        timeout=30,
    )
    line = one_line_error(proc, 2)
    assert "unknown goal 'convrsion'" in line
    for goal in GOALS:
        assert goal in line
    assert elapsed < 10


# ---- servers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (["profile", "p-1"], "REDIS_URL"),
        (["segment", "--goal", "conversion"], "REDIS_URL"),
        (["models"], "REDIS_URL"),
        (["quarantine"], "REDIS_URL"),
        (["tail"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["replay", "events.jsonl"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["lag"], "KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_no_servers_configured(tmp_path: Path, args: list[str], variable: str) -> None:
    """After ``dev down`` (no dev.env) and without the variable: no guess at localhost."""
    (tmp_path / "events.jsonl").write_text("{}\n")
    proc, elapsed = cli(tmp_path, *args, CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 2)
    assert "no servers are configured" in line
    assert variable in line and "customer-ai dev up" in line
    assert elapsed < 10


def test_the_servers_of_dev_env_are_used(tmp_path: Path) -> None:
    url = closed_port_url()
    (tmp_path / ".customer-ai").mkdir()
    (tmp_path / ".customer-ai" / "dev.env").write_text(f"REDIS_URL={url}\n")
    proc, _ = cli(tmp_path, "profile", "p-1", CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 1)
    assert f"cannot reach Redis at {url}" in line


@pytest.mark.parametrize(
    "command",
    [["profile", "p-1"], ["segment", "--goal", "conversion"], ["models"], ["quarantine"],
     ["quarantine", "show", "p-1"], ["quarantine", "release", "p-1", "--restore"]],
)  # fmt: skip
def test_unreachable_redis_is_named_with_its_password_redacted(
    tmp_path: Path, command: list[str]
) -> None:
    url = closed_port_url(password="s3cret")
    proc, elapsed = cli(tmp_path, *command, REDIS_URL=url, CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 1)
    assert "cannot reach Redis at " + url.replace(":s3cret@", ":***@") in line
    assert "s3cret" not in proc.stderr + proc.stdout
    assert elapsed < 6


def test_a_redis_that_never_answers_fails_within_5_seconds(
    tmp_path: Path, silent_server: int
) -> None:
    url = f"redis://127.0.0.1:{silent_server}/0"
    proc, elapsed = cli(tmp_path, "profile", "p-1", REDIS_URL=url, CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 1)
    assert f"cannot reach Redis at {url}" in line
    assert elapsed < 9  # the 5 s bound, plus starting Python


@pytest.mark.parametrize(
    "args", [["tail", "--limit", "1"], ["replay", "events.jsonl"]], ids=["tail", "replay"]
)
def test_unreachable_kafka_is_named(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "events.jsonl").write_text("{}\n")
    bootstrap = f"127.0.0.1:{find_free_port()}"
    proc, _ = cli(
        tmp_path, *args, KAFKA_BOOTSTRAP_SERVERS=bootstrap, CUSTOMER_AI_CONFIG=str(CONFIG)
    )
    line = one_line_error(proc, 1)
    assert f"cannot reach Kafka at {bootstrap}" in line


def test_a_worker_without_a_broker_waits_and_stops_cleanly(tmp_path: Path) -> None:
    """It waits (one line per attempt naming the address), and SIGTERM ends the wait: 0."""
    bootstrap = f"127.0.0.1:{find_free_port()}"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--config", str(CONFIG)],
            cwd=tmp_path,
            env=clean_env(KAFKA_BOOTSTRAP_SERVERS=bootstrap, REDIS_URL=closed_port_url("pw")),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        waiting = f"waiting for the broker at {bootstrap}: attempt "
        deadline = time.monotonic() + 60
        while log.read_text().count(waiting) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert log.read_text().count(waiting) >= 2, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "pw@" not in text, text
    assert "stopped while waiting" in text


def test_a_worker_without_redis_waits_with_the_password_masked(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Once the broker answers it waits for Redis: the URL is shown, its password never."""
    port = find_free_port()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--config", str(CONFIG)],
            cwd=tmp_path,
            env=clean_env(
                KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        waiting = f"waiting for Redis at redis://:***@127.0.0.1:{port}/0: attempt "
        deadline = time.monotonic() + 60
        while log.read_text().count(waiting) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert log.read_text().count(waiting) >= 2, log.read_text()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "s3cret-pw" not in text, text


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CUSTOMER_AI_WEB_PORT", "0"), ("CUSTOMER_AI_PARTITIONS", "four")],
)
def test_a_bad_setting_is_named(tmp_path: Path, variable: str, value: str) -> None:
    proc, _ = cli(
        tmp_path,
        "worker",
        "--config",
        str(CONFIG),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{find_free_port()}",
        **{variable: value},
    )
    line = one_line_error(proc, 2)
    assert variable in line and repr(value) in line


# ---- found by trying the CLI as a careless user ----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:notaport/0",
        "redis://:s3cret@127.0.0.1:99999/0",
        "redis://:s3cret@[bad",
        "http://:s3cret@127.0.0.1:6379/0",
    ],
    ids=["port-not-a-number", "port-out-of-range", "unclosed-bracket", "not-redis"],
)
def test_a_malformed_redis_url_is_named_without_its_password(tmp_path: Path, url: str) -> None:
    proc, _ = cli(tmp_path, "profile", "p-1", REDIS_URL=url, CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 2)
    assert "REDIS_URL=" in line
    assert "s3cret" not in proc.stderr + proc.stdout


def test_a_password_in_the_query_is_redacted(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{find_free_port()}/0?password=s3cret"
    proc, _ = cli(tmp_path, "profile", "p-1", REDIS_URL=url, CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 1)
    assert "password=***" in line
    assert "s3cret" not in proc.stderr + proc.stdout


def test_evaluate_refuses_a_file_as_its_output_directory_before_running(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("{}\n")
    (tmp_path / "out").write_text("a file\n")
    proc, _ = cli(tmp_path, "evaluate", "events.jsonl", "--out", "out", "--config", str(CONFIG))
    assert "is a file" in one_line_error(proc, 2)


@pytest.mark.parametrize("content", [b"not gzip at all\n", b"\x1f\x8b\x08\x00trunc"])
def test_evaluate_names_an_unreadable_gzip_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "events.jsonl.gz").write_bytes(content)
    proc, _ = cli(tmp_path, "evaluate", "events.jsonl.gz", "--out", "out", "--config", str(CONFIG))
    assert "not a readable gzip file" in one_line_error(proc, 2)


def test_a_closed_pipe_ends_the_output_quietly(tmp_path: Path) -> None:
    """``customer-ai generate --out - | head -1``: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "generate", "--profiles", "200", "--out", "-"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()  # the reader goes away, as head does
    stderr = proc.stderr.read().decode()
    assert proc.wait(60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_a_worker_whose_web_port_is_taken_says_so(tmp_path: Path, kafka_bootstrap: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc, _ = cli(
            tmp_path,
            "worker",
            KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
            REDIS_URL=closed_port_url(),
            CUSTOMER_AI_CONFIG=str(CONFIG),
            CUSTOMER_AI_WEB_PORT=str(port),
        )
    assert proc.returncode == 1, proc.stderr
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_replay_says_how_many_lines_are_not_events(tmp_path: Path, kafka_bootstrap: str) -> None:
    valid = (
        '{"_id": "e-1", "timestamp": "2026-03-01T10:00:00Z", "eventType": "web.webpagedetails'
        '.pageViews", "identityMap": {"ECID": [{"id": "p-1", "primary": true}]}}'
    )
    (tmp_path / "mixed.jsonl").write_text(f"{valid}\nnot json\n{{}}\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CUSTOMER_AI_CONFIG": str(CONFIG)}
    proc, _ = cli(tmp_path, "replay", "mixed.jsonl", **env)
    assert proc.returncode == 0, proc.stderr
    assert "replayed 3 lines" in proc.stderr
    assert "2 of 3 lines are not valid events" in proc.stderr
    proc, _ = cli(tmp_path, "replay", "empty.jsonl", **env)
    assert proc.returncode == 0, proc.stderr
    assert "holds no events" in proc.stderr


def test_a_missing_config_says_which_setting_named_it(tmp_path: Path) -> None:
    proc, _ = cli(tmp_path, "evaluate", "x.jsonl", "--out", "o", CUSTOMER_AI_CONFIG="nope.toml")
    assert "'nope.toml' not found (named by CUSTOMER_AI_CONFIG)" in one_line_error(proc, 2)
    proc, _ = cli(tmp_path, "evaluate", "x.jsonl", "--out", "o", "--config", str(tmp_path))
    assert "is a directory (named by --config)" in one_line_error(proc, 2)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda r: r.set("cai:p:{p-1}", "not a hash"), "its record cannot be read (WRONGTYPE"),
        (lambda r: r.hset("cai:p:{p-1}", mapping={"s": "garbage", "v": "1"}), "its state cannot"),
    ],
    ids=["wrong-type", "garbage-state"],
)
def test_an_unreadable_profile_is_one_line_naming_the_quarantine(
    tmp_path: Path, redis_url: str, redis_client: Any, write: Any, why: str
) -> None:
    """A record the worker has not quarantined yet: `customer-ai profile` says what is wrong
    and where to look, in one line (tests/stream/worker/test_poison.py covers the worker)."""
    write(redis_client)
    proc, _ = cli(tmp_path, "profile", "p-1", REDIS_URL=redis_url, CUSTOMER_AI_CONFIG=str(CONFIG))
    line = one_line_error(proc, 2)
    assert why in line and "customer-ai quarantine" in line, line


def test_backfill_refuses_a_redis_holding_this_configs_data_without_force(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    """An import would overwrite profiles and models: one line naming them and --force."""
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    redis_client.hset("cai:models", "conversion", 3)
    redis_client.hset("cai:p:{p-9}", "s", "[]")
    proc, _ = cli(
        tmp_path, "backfill", str(events), "--partitions", "4", REDIS_URL=redis_url,
        CUSTOMER_AI_CONFIG=str(CONFIG),
    )  # fmt: skip
    line = one_line_error(proc, 2)
    assert "already holds profiles (e.g. cai:p:{p-9})" in line, line
    assert "conversion v3" in line and "--force" in line
    assert redis_client.hget("cai:p:{p-9}", "s") == b"[]"  # nothing written


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--until", "yesterday", "--partitions", "4"], "--until: 'yesterday' is not an ISO-8601"),
        ([], "give --partitions N"),
    ],
    ids=["bad-until", "no-partition-count"],
)
def test_backfill_usage_errors(
    tmp_path: Path, redis_url: str, args: list[str], expected: str
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    proc, _ = cli(
        tmp_path, "backfill", str(events), *args, REDIS_URL=redis_url,
        CUSTOMER_AI_CONFIG=str(CONFIG),
    )  # fmt: skip
    line = one_line_error(proc, 2)
    assert expected in line, line


def test_backfill_names_an_unreachable_redis_without_its_password(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("{}\n")
    url = closed_port_url(password="s3cret")
    proc, _ = cli(
        tmp_path, "backfill", "events.jsonl", "--partitions", "4", REDIS_URL=url,
        CUSTOMER_AI_CONFIG=str(CONFIG),
    )  # fmt: skip
    line = one_line_error(proc, 1)
    assert "cannot reach Redis at " + url.replace(":s3cret@", ":***@") in line
    assert "s3cret" not in proc.stderr + proc.stdout
