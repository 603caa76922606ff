"""Latency: event produced -> its score message, at fixed produce rates, and the max rate.

Each phase runs a fresh ``customer-ai worker`` on fresh topics (the profiles' state in
Redis and the trained models seeded first carry over). A phase warms its worker up
(``--warmup`` seconds at up to 1,000 events/s, not counted), then produces the synthetic
shop's events as live traffic (in order, keyed by profile id, each stamped with its send
time as event time) at a fixed rate, sending every 5 ms with the producer settings of
Kafka 4 (``linger.ms`` 5: ``--linger-ms``), and waits until the worker committed every
event. The load generator does not collect garbage during a phase (its collections made
the p99 of two seconds of a 5,000/s phase 109 and 134 ms, against 25-36 ms around them).

The events and scores topics have one partition (``--partitions``): Tansu's in-memory
engine lists every record batch of a partition on each fetch and never deletes one, so
its cost per fetch grows with the batches written. Keyed live traffic over 4 partitions
writes about 4 times the batches of one, and over a 60 s phase the broker's CPU and the
latency grow with them (measured: p99 by thirds 30/45/150 ms at 1,000 events/s with 4
partitions, 25/27/34 with one); with one partition the figure is the worker's. Fresh
topics per phase keep one phase's batches from slowing the next. Phases:

- each rate of ``--rates`` (default 1,000 and 5,000 events/s) for ``--duration`` seconds
  (default 60);
- a ramp for ``max_sustained_eps``: steps of ``--step-duration`` seconds, from the highest
  fixed rate that held, times 1.25 until a step fails, then bisection steps between the
  last step that held and the first that failed, until they are within 6 %. A rate
  holds when the producer reached 97 % of it, every event got a score and the step's
  p99 latency is at most ``--slo-ms`` (default 1,000: a worker that falls behind sees
  its latency grow through the step).

Latency of an event = CreateTime of its first score message (stamped by the worker's
producer when it queues the score, whose ack it then awaits before committing) -
CreateTime of the event (stamped by this script when it hands the event to its
producer). Both clocks are this machine's.

Usage: ``python bench/latency.py [--rates 1000,5000] [--duration 60]``; the last line of
stdout is the JSON result, everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from bench.common import (  # noqa: E402
    SERVER_PIDS,
    create_topics,
    emit,
    log,
    make_progress,
    on_signals_exit,
    proc_cpu_seconds,
    producer,
    run_id,
    scan_topic,
    seed_models,
    servers,
    start_workers,
    wait_committed,
)

TICK = 0.005


async def cpu_by_thirds(pids: dict[str, int], seconds: float) -> dict[str, list[float]]:
    """CPU cores each process used in each third of the next ``seconds`` (``/proc``)."""
    third = seconds / 3
    used: dict[str, list[float]] = {name: [] for name in pids}
    last = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
    for _ in range(3):
        await asyncio.sleep(third)
        for name, pid in pids.items():
            try:
                now = proc_cpu_seconds(pid)
            except OSError:  # the process ended
                continue
            used[name].append(round((now - last[name]) / third, 2))
            last[name] = now
    return used


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="1000,5000", help="fixed produce rates, events/s")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per fixed rate")
    p.add_argument("--profiles", type=int, default=100_000)
    p.add_argument("--days", type=int, default=90, help="simulated period of the event source")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--warmup", type=float, default=3.0, help="seconds, per phase")
    p.add_argument("--step-duration", type=float, default=15.0)
    p.add_argument("--slo-ms", type=float, default=1000.0)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the worker after a phase; events still unscored then count "
        "as scored at that moment (percentiles become lower bounds)",
    )
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--no-ramp", action="store_true", help="skip max_sustained_eps")
    p.add_argument(
        "--partitions", type=int, default=1, help="partitions of the events and scores topics"
    )
    p.add_argument(
        "--linger-ms",
        type=int,
        default=5,
        help="the load generator's producer linger (5: the default of Kafka 4's producer)",
    )
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--worker-repo", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument(
        "--dump", type=Path, default=None, help="save each phase's latencies (send order), .npy"
    )
    return p


class Source:
    """The synthetic shop's events as live traffic: ``(key, event, event id)``, endlessly.

    Each event's ``timestamp`` is set to the moment it is produced (epoch ms), so event
    time advances at wall-clock speed as it does in production; replaying a history's
    own timestamps thousands of times faster than real time would close label windows
    (and run the expiry and training paths) at a rate live traffic never sees.
    """

    def __init__(self, profiles: int, days: int, seed: int) -> None:
        self.profiles, self.days, self.seed = profiles, days, seed
        self._it = self._events()

    def _events(self) -> Iterator[tuple[bytes, dict[str, Any], str]]:
        from models.synthetic import iter_events

        seed = self.seed
        while True:  # a fresh history (new event ids) once this one is used up
            for event in iter_events(self.profiles, self.days, seed):
                event["_id"] = eid = f"{event['_id']}-s{seed}"
                yield event["identityMap"]["ECID"][0]["id"].encode(), event, eid
            seed += 1

    def take(self, n: int) -> list[tuple[bytes, dict[str, Any], str]]:
        return [next(self._it) for _ in range(n)]


class Phase:
    """One produce rate held for a while, with its outcome."""

    def __init__(self, name: str, rate: float, seconds: float) -> None:
        self.name, self.rate, self.seconds = name, rate, seconds
        self.sent: dict[str, int] = {}  # event id -> CreateTime (ms)
        self.cpu: dict[str, list[float]] = {}  # process -> CPU cores per third of the phase
        self.achieved = 0.0
        self.latencies: np.ndarray = np.empty(0)
        self.missing = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies.size else float("inf")

    def p99_by_thirds(self) -> list[float]:
        """p99 of the events sent in each third of the phase (``latencies`` is in send order)."""
        thirds = np.array_split(self.latencies, 3) if self.latencies.size >= 3 else []
        return [round(float(np.percentile(t, 99)), 1) for t in thirds]

    def worst_at_s(self) -> float:
        """Seconds into the phase at which the slowest event was sent."""
        if not self.latencies.size:
            return 0.0
        return round(float(np.argmax(self.latencies)) / self.rate, 1)

    def holds(self, slo_ms: float) -> bool:
        return (
            self.achieved >= 0.97 * self.rate
            and self.missing == 0
            and self.percentile(99) <= slo_ms
        )


class Bench:
    """Runs the phases; each one on fresh topics with a fresh worker (see the docstring)."""

    def __init__(self, args: argparse.Namespace, bootstrap: str, workdir: Path) -> None:
        self.args, self.bootstrap, self.workdir = args, bootstrap, workdir
        self.source = Source(args.profiles, args.days, args.seed)
        self.base = f"bench-{run_id()}-latency"
        self.prod = producer(bootstrap, linger_ms=args.linger_ms)
        self.runs = 0

    async def produce(self, phase: Phase, topic: str, ends: dict[int, int]) -> None:
        """Produce ``phase.rate`` events/s for ``phase.seconds`` (sends every ``TICK`` s)."""
        n = int(phase.rate * phase.seconds)
        messages = self.source.take(n)
        # The load generator must not pause: collections over the events held here (and
        # the send times) delayed its sends (see the module docstring).
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            await self._produce(phase, topic, ends, messages)
        finally:
            gc.enable()
            gc.unfreeze()

    async def _produce(
        self, phase: Phase, topic: str, ends: dict[int, int], messages: list[Any]
    ) -> None:
        n = len(messages)
        futures = []
        started = time.perf_counter()
        sent = 0
        with make_progress(transient=True) as progress:
            task = progress.add_task(f"{phase.name}: {phase.rate:,.0f}/s", total=n, note="")
            while sent < n:
                due = min(n, int((time.perf_counter() - started) * phase.rate) + 1)
                while sent < due:
                    key, event, eid = messages[sent]
                    ts = int(time.time() * 1000)
                    event["timestamp"] = ts
                    value = orjson.dumps(event)
                    futures.append(
                        await self.prod.send(topic, value=value, key=key, timestamp_ms=ts)
                    )
                    phase.sent[eid] = ts
                    sent += 1
                progress.update(task, completed=sent)
                await asyncio.sleep(TICK)
            elapsed = time.perf_counter() - started
        for md in await asyncio.gather(*futures):
            if md.offset + 1 > ends.get(md.partition, 0):
                ends[md.partition] = md.offset + 1
        phase.achieved = n / elapsed if elapsed > 0 else 0.0

    async def measure(self, phase: Phase, redis_url: str) -> Phase:
        """Warm up a fresh worker on fresh topics, then run ``phase`` and read its scores."""
        args = self.args
        self.runs += 1
        prefix = f"{self.base}-{self.runs}"
        app_id, events_topic, scores_topic = f"{prefix}-app", f"{prefix}.events", f"{prefix}.scores"
        await create_topics(
            self.bootstrap, {events_topic: args.partitions, scores_topic: args.partitions}
        )
        (worker,) = start_workers(
            1,
            self.bootstrap,
            redis_url,
            self.workdir,
            app_id=app_id,
            topic_prefix=prefix,
            key_prefix=self.base,  # the profiles' state carries over from phase to phase
            name=f"latency-{self.runs}-",
            repo=args.worker_repo,
            **dict(kv.split("=", 1) for kv in args.worker_env),
        )
        ends: dict[int, int] = {}
        try:
            if args.warmup > 0:
                warm = Phase(f"{phase.name} warm-up", min(phase.rate, 1000.0), args.warmup)
                await self.produce(warm, events_topic, ends)
            assert worker.proc is not None
            pids = {"worker": worker.proc.pid}
            if "broker" in SERVER_PIDS:  # a broker this run started (not an external one)
                pids["broker"] = SERVER_PIDS["broker"]
            sampling = asyncio.ensure_future(cpu_by_thirds(pids, phase.seconds))
            await self.produce(phase, events_topic, ends)
            phase.cpu = await sampling
            try:
                await wait_committed(
                    self.bootstrap,
                    app_id,
                    events_topic,
                    ends,
                    timeout=args.drain_timeout,
                    label=f"{phase.name}: drain",
                    alive=lambda: worker.alive,
                )
            except TimeoutError as exc:
                log(f"[yellow]{exc}: unscored events count as late as the end of the wait[/]")
        finally:
            worker.stop()
        waited_until = int(time.time() * 1000)
        first: dict[str, int] = {}

        def note(record: Any) -> None:
            eid = orjson.loads(record.value)["event_id"]
            if (
                eid is not None
                and eid in phase.sent
                and (eid not in first or record.timestamp < first[eid])
            ):
                first[eid] = record.timestamp

        await scan_topic(self.bootstrap, scores_topic, idle=2.0, on_record=note)
        phase.latencies = np.asarray(
            [first.get(e, waited_until) - ts for e, ts in phase.sent.items()], dtype=float
        )  # censored: an event never scored counts as scored when the wait ended
        phase.missing = sum(1 for e in phase.sent if e not in first)
        if args.dump is not None:
            args.dump.mkdir(parents=True, exist_ok=True)
            np.save(args.dump / f"latency-{self.runs}-{phase.rate:.0f}.npy", phase.latencies)
        log(
            f"{phase.name}: target {phase.rate:,.0f}/s, produced {phase.achieved:,.0f}/s, "
            f"{len(phase.sent):,} events, p50 {phase.percentile(50):,.0f} ms, "
            f"p99 {phase.percentile(99):,.0f} ms (by thirds: "
            f"{'/'.join(f'{v:,.0f}' for v in phase.p99_by_thirds())}), "
            f"max {phase.percentile(100):,.0f} ms (sent at {phase.worst_at_s()} s); "
            "CPU cores by thirds of the phase: "
            + ", ".join(f"{name} {'/'.join(map(str, v))}" for name, v in phase.cpu.items())
            + (
                f", [red]{phase.missing:,} without a score (percentiles are lower bounds)[/]"
                if phase.missing
                else ""
            )
        )
        return phase

    async def run(self, redis_url: str) -> dict:
        seed_models(redis_url, self.base)
        await self.prod.start()
        try:
            return await self._phases(redis_url)
        finally:
            await self.prod.stop()

    async def _phases(self, redis_url: str) -> dict:
        args = self.args
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
        result: dict[str, float | None] = {}
        held = []
        for rate in rates:
            phase = await self.measure(Phase(f"{rate:,.0f}/s", rate, args.duration), redis_url)
            result[f"p50_ms_at_{rate:.0f}"] = round(phase.percentile(50), 1)
            result[f"p99_ms_at_{rate:.0f}"] = round(phase.percentile(99), 1)
            result[f"p99_ms_by_thirds_at_{rate:.0f}"] = phase.p99_by_thirds()  # type: ignore[assignment]
            for name, cores in phase.cpu.items():
                result[f"{name}_cpu_by_thirds_at_{rate:.0f}"] = cores
            if phase.holds(args.slo_ms):
                held.append(rate)
        if args.no_ramp:
            result["max_sustained_eps"] = None
            return result
        good = max(held) if held else None
        failed = [r for r in rates if r not in held and (good is None or r > good)]
        bad = min(failed) if failed else None
        for _ in range(args.max_steps):
            if good is not None and bad is not None:
                if bad / good < 1.06:  # bracketed within 6 %
                    break
                rate = (good + bad) / 2
            elif good is not None:
                rate = good * 1.25
            else:
                rate = (bad or rates[0]) / 2
                if rate < 50:
                    break
            step = Phase(f"ramp {rate:,.0f}/s", rate, args.step_duration)
            if (await self.measure(step, redis_url)).holds(args.slo_ms):
                good = rate
            else:
                bad = rate
        log(f"max sustained: {good} events/s (first failing step: {bad})")
        result["max_sustained_eps"] = round(good) if good else 0
        return result


async def amain(args: argparse.Namespace, bootstrap: str, redis_url: str, workdir: Path) -> dict:
    return await Bench(args, bootstrap, workdir).run(redis_url)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    on_signals_exit()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cai-bench-latency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs in {workdir}")
    with servers(workdir) as (bootstrap, redis_url):
        result = asyncio.run(amain(args, bootstrap, redis_url, workdir))
    keys = ["p50_ms_at_1000", "p99_ms_at_1000", "p50_ms_at_5000", "p99_ms_at_5000"]
    ordered = {k: result.get(k) for k in keys}
    ordered.update({k: v for k, v in result.items() if k not in ordered})
    ordered.update(
        partitions=args.partitions,
        linger_ms=args.linger_ms,
        worker_env=dict(kv.split("=", 1) for kv in args.worker_env),
    )
    emit(ordered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
