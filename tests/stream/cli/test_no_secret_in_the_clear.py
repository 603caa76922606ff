"""No password in the clear: not on a screen, not in a log, not in a file a command writes.

Every command runs with known secrets in its environment (a Redis password in
``REDIS_URL`` or ``REDIS_PASSWORD``, ``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_KEY_PASSWORD``)
against real servers: a Tansu broker and a Valkey that requires the password. The test
fails if any of those strings appears in the command's stdout or stderr, in the worker's
log, or in any file under the state directory, and if a state file is readable by
anyone but its owner.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.cli.replay import ensure_topics
from stream.devservers import BrokerProcess, ValkeyProcess, find_free_port
from stream.devservers.probes import redis_ping
from tests.harness import CONFIG, WorkerProcess
from tests.stream.cli.test_cli_errors import cli, one_line_error

pytestmark = pytest.mark.integration

REDIS_SECRET = "s3cr3t-PASS"
SASL_SECRET = "sasl-S3CRET-word"
KEY_SECRET = "tls-key-S3CRET"
WRONG_SECRET = "wr0ng-S3CRET"
SECRETS = (REDIS_SECRET, SASL_SECRET, KEY_SECRET, WRONG_SECRET)
#: secrets a deployment has in its environment; PLAINTEXT here, so Kafka does not use them
KAFKA_SECRETS = {
    "KAFKA_SASL_PASSWORD": SASL_SECRET,
    "KAFKA_SSL_KEY_PASSWORD": KEY_SECRET,
    "CUSTOMER_AI_CONFIG": str(CONFIG),
}


def assert_clean(*outputs: str) -> None:
    """No secret in any of the texts."""
    for text in outputs:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} printed:\n{text}"


def assert_private_and_clean(state_dir: Path) -> list[Path]:
    """Every file under ``state_dir``: no secret inside, mode 0600; directories 0700."""
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700, oct(state_dir.stat().st_mode)
    files = []
    for root, dirs, names in os.walk(state_dir):
        for name in dirs:
            mode = stat.S_IMODE((Path(root) / name).stat().st_mode)
            assert mode == 0o700, (Path(root) / name, oct(mode))
        for name in names:
            path = Path(root) / name
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret!r} written to {path}"
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == 0o600, (path, oct(mode))
            files.append(path)
    return files


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture
def protected_valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    """A Valkey that requires :data:`REDIS_SECRET`."""
    with ValkeyProcess(
        log_path=tmp_path / "valkey" / "valkey.log", password=REDIS_SECRET
    ) as server:
        yield server


@pytest.fixture
def dev_dir(tmp_path: Path) -> Iterator[Path]:
    """A working directory for ``dev`` commands; its servers are stopped after the test."""
    work = tmp_path / "work"
    work.mkdir()
    try:
        yield work
    finally:
        cli(work, "dev", "down")  # stops by pid: needs no password


# ---------------------------------------------------------------- the Valkey password


def test_a_valkey_with_a_password_requires_it_and_never_shows_it(
    protected_valkey: ValkeyProcess,
) -> None:
    assert protected_valkey.url == f"redis://127.0.0.1:{protected_valkey.port}"
    assert redis_ping(protected_valkey.url) == "auth"
    assert redis_ping(protected_valkey.url, password=WRONG_SECRET) == "auth"
    assert redis_ping(protected_valkey.url, password=REDIS_SECRET) == "ok"
    assert protected_valkey.pid is not None
    assert_clean(cmdline(protected_valkey.pid), protected_valkey.log_path.read_text())


# ------------------------------------------------------------------- dev up/status/down


def test_dev_with_an_external_redis_named_with_its_password(
    dev_dir: Path, protected_valkey: ValkeyProcess
) -> None:
    """REDIS_URL carries the password: used, never printed, never written."""
    bare = f"redis://127.0.0.1:{protected_valkey.port}/0"
    secret_url = f"redis://:{REDIS_SECRET}@127.0.0.1:{protected_valkey.port}/0"
    env = {"REDIS_URL": secret_url, **KAFKA_SECRETS}

    up, _ = cli(dev_dir, "dev", "up", **env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert_clean(up.stdout, up.stderr)
    assert f"REDIS_URL={bare}" in up.stdout
    assert "REDIS_URL in their environment" in up.stdout  # where the password is read
    state_dir = dev_dir / ".customer-ai"
    files = {p.name for p in assert_private_and_clean(state_dir)}
    assert {"dev.json", "dev.env", ".dev.lock", "tansu.log"} <= files
    redis_entry = json.loads((state_dir / "dev.json").read_text())["services"]["redis"]
    assert redis_entry["server"] == "external" and redis_entry["url"] == bare
    assert f"REDIS_URL={bare}" in (state_dir / "dev.env").read_text().splitlines()

    status, _ = cli(dev_dir, "dev", "status", **env)
    assert status.returncode == 0, status.stdout + status.stderr  # both answer
    assert_clean(status.stdout, status.stderr)
    assert bare in status.stdout

    # another shell: dev.env plus REDIS_PASSWORD (no REDIS_URL) reaches the same server
    found, _ = cli(dev_dir, "profile", "p-1", REDIS_PASSWORD=REDIS_SECRET, **KAFKA_SECRETS)
    assert "not found in" in one_line_error(found, 1)
    assert_clean(found.stdout, found.stderr)
    # ...and without the password, status says what is missing (and prints none)
    missing, _ = cli(dev_dir, "dev", "status", REDIS_PASSWORD=WRONG_SECRET)
    assert missing.returncode == 1
    assert "needs REDIS_PASSWORD" in missing.stdout
    assert_clean(missing.stdout, missing.stderr)

    down, _ = cli(dev_dir, "dev", "down", **env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "external (left running)" in down.stdout
    assert_clean(down.stdout, down.stderr)
    assert_private_and_clean(state_dir)
    assert redis_ping(protected_valkey.url, password=REDIS_SECRET) == "ok"


def test_dev_up_gives_its_valkey_the_password_of_the_environment(dev_dir: Path) -> None:
    """REDIS_PASSWORD set: the Valkey started requires it; it is on no command line."""
    env = {"REDIS_PASSWORD": REDIS_SECRET, **KAFKA_SECRETS}
    up, _ = cli(dev_dir, "dev", "up", **env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert_clean(up.stdout, up.stderr)
    state_dir = dev_dir / ".customer-ai"
    assert_private_and_clean(state_dir)
    services = json.loads((state_dir / "dev.json").read_text())["services"]
    valkey = services["redis"]
    assert valkey["managed"] and valkey["server"] == "valkey"
    assert redis_ping(valkey["url"]) == "auth"
    assert redis_ping(valkey["url"], password=REDIS_SECRET) == "ok"
    assert_clean(cmdline(valkey["pid"]), cmdline(services["kafka"]["pid"]))

    again, _ = cli(dev_dir, "dev", "up", **env)  # reused: it answers with the password
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        json.loads((state_dir / "dev.json").read_text())["services"]["redis"]["pid"]
        == (valkey["pid"])
    )
    wrong, _ = cli(dev_dir, "dev", "up", REDIS_PASSWORD=WRONG_SECRET)
    assert wrong.returncode == 1 and "REDIS_PASSWORD" in wrong.stdout
    assert_clean(up.stdout, again.stdout, again.stderr, wrong.stdout, wrong.stderr)

    status, _ = cli(dev_dir, "dev", "status", **env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert_clean(status.stdout, status.stderr)
    down, _ = cli(dev_dir, "dev", "down", **env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert_clean(down.stdout, down.stderr)
    assert_private_and_clean(state_dir)


# ------------------------------------------------------------------ the worker's log


@pytest.mark.parametrize("where", ["in REDIS_URL", "in REDIS_PASSWORD"])
def test_the_worker_log_shows_no_password(
    kafka_broker: BrokerProcess, protected_valkey: ValkeyProcess, tmp_path: Path, where: str
) -> None:
    asyncio.run(ensure_topics(kafka_broker.bootstrap, {"customer-ai.events": 4}, {}))
    port = protected_valkey.port
    if where == "in REDIS_URL":
        url, extra = f"redis://:{REDIS_SECRET}@127.0.0.1:{port}/0", {}
    else:
        url, extra = f"redis://127.0.0.1:{port}/0", {"REDIS_PASSWORD": REDIS_SECRET}
    worker = WorkerProcess(kafka_broker.bootstrap, url, tmp_path, **extra, **KAFKA_SECRETS)
    with worker:  # ready: /healthz 200, so it reached Redis with the password
        _, health = worker.get("/healthz")
        _, models = worker.get("/models")
    log = worker.log_path.read_text(errors="replace")
    assert log.startswith(
        f"customer-ai worker: Kafka {kafka_broker.bootstrap}, "
        f"Redis redis://{':***@' if where == 'in REDIS_URL' else ''}127.0.0.1:{port}/0"
    ), log[:400]
    assert_clean(log, health.decode(), models.decode())


def test_a_worker_refused_by_redis_logs_no_password(
    kafka_broker: BrokerProcess, protected_valkey: ValkeyProcess, tmp_path: Path
) -> None:
    """A wrong password: the worker stops at start and says why, without the password
    (a refused password is a mistake to fix, not a server to wait for)."""
    url = f"redis://:{WRONG_SECRET}@127.0.0.1:{protected_valkey.port}/0"
    proc, _ = cli(
        tmp_path,
        "worker",
        KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
        REDIS_URL=url,
        **KAFKA_SECRETS,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refused the credentials" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_clean(proc.stdout, proc.stderr)


# ------------------------------------------------------------ lag, errors, settings


def test_lag_shows_no_password(kafka_broker: BrokerProcess) -> None:
    secret_url = f"redis://:{REDIS_SECRET}@127.0.0.1:{find_free_port()}/0"
    env = {"REDIS_URL": secret_url, **KAFKA_SECRETS}
    table, _ = cli(Path.cwd(), "lag", KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap, **env)
    assert table.returncode == 0, table.stderr
    closed = f"127.0.0.1:{find_free_port()}"
    down, _ = cli(Path.cwd(), "lag", KAFKA_BOOTSTRAP_SERVERS=closed, **env)
    assert down.returncode == 1 and "cannot read lag" in down.stderr
    sasl, _ = cli(
        Path.cwd(),
        "lag",
        KAFKA_BOOTSTRAP_SERVERS=closed,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="customer-ai",
        **env,
    )
    assert sasl.returncode == 1, sasl.stderr
    assert_clean(table.stdout, table.stderr, down.stdout, down.stderr, sasl.stdout, sasl.stderr)


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (("worker",), {"REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:notaport/0"}),
        (("profile", "p-1"), {"REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:notaport/0"}),
        (("profile", "p-1"), {"REDIS_URL": f"http://u:{REDIS_SECRET}@127.0.0.1/0"}),
        (("lag",), {"KAFKA_SECURITY_PROTOCOL": "SASL_SOMETHING"}),
        (("lag",), {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": ""}),
        (("worker",), {"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_SSL_CERTFILE": "c.pem"}),
    ],
    ids=[
        "worker-bad-port",
        "profile-bad-port",
        "profile-bad-scheme",
        "bad-protocol",
        "no-user",
        "tls",
    ],
)
def test_a_settings_error_shows_no_password(
    tmp_path: Path, command: tuple[str, ...], env: dict[str, str]
) -> None:
    proc, _ = cli(
        tmp_path,
        *command,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{find_free_port()}",
        REDIS_PASSWORD=REDIS_SECRET,
        **{**KAFKA_SECRETS, "REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:1/0", **env},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert_clean(proc.stdout, proc.stderr)


def test_a_refused_password_is_not_printed(protected_valkey: ValkeyProcess, tmp_path: Path) -> None:
    wrong = f"redis://:{WRONG_SECRET}@127.0.0.1:{protected_valkey.port}/0"
    proc, _ = cli(tmp_path, "profile", "p-1", REDIS_URL=wrong, **KAFKA_SECRETS)
    line = one_line_error(proc, 1)
    assert "cannot reach Redis at redis://:***@127.0.0.1" in line, line
    assert_clean(proc.stdout, proc.stderr)
    # the right one works, and is not printed either
    right, _ = cli(
        tmp_path,
        "profile",
        "p-1",
        REDIS_URL=protected_valkey.url + "/0",
        REDIS_PASSWORD=REDIS_SECRET,
        **KAFKA_SECRETS,
    )
    assert "not found in" in one_line_error(right, 1)
    assert_clean(right.stdout, right.stderr)
