"""Memory: Redis bytes per profile and the worker's resident set, after a long replay.

One ``customer-ai worker`` (trained models seeded in Redis first) replays, in two steps:

1. *history*: every event of the synthetic shop over ``--profiles`` profiles (default
   100,000) for the shortest simulated period giving at least ``--events`` events
   (default 1,000,000), in event-time order. Label windows close as event time moves,
   so pending snapshots, the due index, expiries and training all run as in a backfill.
   ``redis_bytes_per_profile`` is then the mean ``MEMORY USAGE`` (``SAMPLES 0``: exact)
   of ``--sample`` random profile keys of this step (default 2,000), and
   ``redis_used_bytes_per_profile`` the growth of Redis ``used_memory`` over the step per
   profile (every key: profile hashes, due index, segment sets, watermarks, models).
   ``worst_case_profile_bytes`` is the ``MEMORY USAGE`` of the largest sampled profile
   rewritten with every pending label slot of every goal full (``max_pending`` snapshots
   holding the whole feature vector and a 36-character event id), every recent-id slot
   full and a 36-character profile id: the most one profile's key can hold.
2. *breadth*: one page view for each further profile until ``--total-profiles`` profiles
   (default 1,000,000) have state in Redis.

``worker_rss_mb`` is the worker's peak resident set (``VmHWM``) over both steps.
Skip step 2 with ``--total-profiles 0``.

With ``--attributes`` the worker's configuration adds three profile attributes
(:data:`ATTRIBUTES`: a categorical loyalty tier of three values, a numeric credit limit, a
birth date) and every history profile gets one fragment setting all three, produced to
``<prefix>.profiles`` before its events: the bytes per profile then include them.

With ``--aliases N`` the configuration stitches identities (``[identity] namespaces =
["Email", "ECID"]``) and, after the history, one event per history profile links it to
an email id and ``N - 1`` more device ids: each person is then the email's profile
holding the history, with ``N`` aliases (the history profile and the new devices).
``redis_bytes_per_person`` is the mean ``MEMORY USAGE`` of a sampled person's profile key
plus its alias records' keys, ``alias_record_bytes`` the mean of one alias record.

Usage: ``python bench/memory.py [--events 1000000] [--profiles 100000]``; the last line of
stdout is the JSON result, everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
import redis  # noqa: E402

from bench.common import (  # noqa: E402
    REPO,
    create_topics,
    days_for,
    emit,
    log,
    natural_events,
    on_signals_exit,
    proc_memory_mb,
    produce_all,
    run_id,
    seed_models,
    servers,
    start_workers,
    wait_committed,
)

ATTRIBUTES = """
[[attributes]]
name = "tier"
label = "Loyalty tier"
field = "person.loyalty.tier"
type = "categorical"
values = ["bronze", "silver", "gold"]

[[attributes]]
name = "credit"
label = "Credit limit"
field = "person.creditLimit"
type = "numeric"

[[attributes]]
name = "birth"
label = "Birth date"
field = "person.birthDate"
type = "date"
"""


def fragments(ids: list[str], ts: str, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """One profile fragment per profile of ``ids`` setting the three attributes."""
    rng = random.Random(seed)
    for pid in ids:
        person = {
            "loyalty": {"tier": rng.choice(["bronze", "silver", "gold", "platinum"])},
            "creditLimit": rng.randint(0, 20_000),
            "birthDate": f"{rng.randint(1940, 2005)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
        }
        body = {"timestamp": ts, "identityMap": {"ECID": [{"id": pid, "primary": True}]}}
        yield pid.encode(), orjson.dumps({**body, "person": person})


def link_events(ids: list[str], aliases: int, when: datetime) -> Iterator[tuple[bytes, bytes]]:
    """Per profile, one page view linking it to an email id and ``aliases - 1`` new
    device ids, keyed by the email (its person's id)."""
    ts = when.isoformat().replace("+00:00", "Z")
    for pid in ids:
        email = f"{pid}@mail.example"
        devices = [pid] + [f"{pid}-d{k}" for k in range(1, aliases)]
        body = {
            "_id": f"link-{pid}",
            "timestamp": ts,
            "eventType": "web.webpagedetails.pageViews",
            "identityMap": {
                "Email": [{"id": email, "primary": True}],
                "ECID": [{"id": d} for d in devices],
            },
        }
        yield email.encode(), orjson.dumps(body)


def person_bytes(
    client: redis.Redis, prefix: str, ids: list[str], aliases: int
) -> dict[str, float]:
    """The bytes of sampled persons: the profile key plus its alias records' keys."""
    totals, records = [], []
    for pid in ids:
        person = client.memory_usage(f"{prefix}:p:{{{pid}@mail.example}}", samples=0)
        if person is None:
            continue
        keys = [pid] + [f"{pid}-d{k}" for k in range(1, aliases)]
        sizes = [client.memory_usage(f"{prefix}:p:{{{k}}}", samples=0) or 0 for k in keys]
        records.extend(sizes)
        totals.append(person + sum(sizes))
    log(
        f"{len(totals):,} persons of {aliases} aliases: {statistics.mean(totals):,.0f} B each "
        f"(profile and alias records), an alias record {statistics.mean(records):,.0f} B"
    )
    return {
        "redis_bytes_per_person": round(statistics.mean(totals)),
        "alias_record_bytes": round(statistics.mean(records)),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="at least this many")
    p.add_argument("--profiles", type=int, default=100_000)
    p.add_argument("--total-profiles", type=int, default=1_000_000)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per step")
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--worker-repo", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--attributes", action="store_true", help="three profile attributes each")
    p.add_argument("--aliases", type=int, default=0, help="stitched identities per person")
    return p


def breadth_events(first: int, last: int, start_ms: int) -> Iterator[tuple[bytes, bytes]]:
    """One page view each for profiles ``q-<first>`` .. ``q-<last>``, 1 ms apart."""
    for i in range(first, last + 1):
        pid = f"q-{i}"
        yield (
            pid.encode(),
            orjson.dumps(
                {
                    "_id": f"b-{i}",
                    "timestamp": start_ms + i,
                    "eventType": "web.webpagedetails.pageViews",
                    "identityMap": {"ECID": [{"id": pid, "primary": True}]},
                    "web": {"webPageDetails": {"name": "home", "pageViews": {"value": 1}}},
                }
            ),
        )


def worst_case_bytes(
    client: redis.Redis,
    key_prefix: str,
    ids: list[str],
    sizes: list[int],
    config_path: str | None = None,
) -> int:
    """``MEMORY USAGE`` of the largest of ``ids`` rewritten with every slot full.

    A copy of that profile's hash under a 36-character id, whose state has
    ``max_pending`` snapshots per goal (each with the whole feature vector, 4 decimals,
    and a 36-character event id) and ``recent_ids`` recent event-id hashes.
    """
    from models.config import load_config
    from models.features import Featurizer
    from models.state import ProfileState, Snapshot

    config = load_config(config_path or REPO / "customer-ai.toml")
    goals = [g.name for g in config.goals]
    largest = ids[max(range(len(sizes)), key=sizes.__getitem__)]
    fields = client.hgetall(f"{key_prefix}:p:{{{largest}}}")
    state = ProfileState.from_bytes(fields[b"s"], goals)
    fz = Featurizer(config)
    vector = [round(v + 0.123456, 4) for v in fz.vector(state)]
    for goal in config.goals:
        gs = state.goals[goal.name]
        gs.pending = [
            Snapshot(
                state.ref_ts - k * 3_600_000,
                f"{k:08d}-aaaa-bbbb-cccc-dddddddddddd",
                0.123456,
                9999,
                vector,
            )
            for k in range(goal.max_pending)
        ]
    state.recent = [f"{k:012x}" for k in range(config.recent_ids)]
    fields[b"s"] = state.to_bytes()
    key = f"{key_prefix}:p:{{{'f' * 8}-0000-4000-8000-{'e' * 12}}}"
    client.hset(key, mapping=fields)
    try:
        return int(client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0"))
    finally:
        client.delete(key)


def profile_bytes(client: redis.Redis, key_prefix: str, ids: list[str]) -> list[int]:
    """``MEMORY USAGE`` of each profile's key (exact: ``SAMPLES 0``)."""
    pipe = client.pipeline(transaction=False)
    for pid in ids:
        pipe.execute_command("MEMORY", "USAGE", f"{key_prefix}:p:{{{pid}}}", "SAMPLES", "0")
    return [int(n) for n in pipe.execute() if n is not None]


async def run(args: argparse.Namespace, bootstrap: str, redis_url: str, workdir: Path) -> dict:
    prefix = f"bench-{run_id()}-memory"
    app_id, topic = f"{prefix}-app", f"{prefix}.events"
    days = days_for(args.events, args.profiles, args.seed)
    log(f"history: {args.profiles:,} profiles over {days} simulated days")
    await create_topics(bootstrap, {topic: 4})
    newest = 0
    ids: set[str] = set()

    def history() -> Iterator[tuple[bytes, bytes]]:
        nonlocal newest
        for key, value in natural_events(args.profiles, days, args.seed):
            ids.add(key.decode())
            yield key, value
        newest = orjson.loads(value)["timestamp"]

    # with attributes, the profile ids first: their fragments go before their events
    events: Iterable[tuple[bytes, bytes]] = list(history()) if args.attributes else history()
    profiles_topic, fragment_ends = f"{prefix}.profiles", {}
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    if args.attributes or args.aliases:
        config_path = workdir / "customer-ai-bench.toml"
        text = (args.worker_repo or REPO).joinpath("customer-ai.toml").read_text()
        if args.attributes:
            text = text.replace("# ---- Goals:", ATTRIBUTES + "\n# ---- Goals:", 1)
        if args.aliases:
            text = text.replace('namespace = "ECID"\n', 'namespaces = ["Email", "ECID"]\n', 1)
        config_path.write_text(text)
        worker_env["CUSTOMER_AI_CONFIG"] = str(config_path)
    if args.attributes:
        await create_topics(bootstrap, {profiles_topic: 4})
        first = orjson.loads(next(iter(events))[1])["timestamp"]
        fragment_ends = await produce_all(
            bootstrap, profiles_topic, fragments(sorted(ids), first, args.seed), len(ids),
            "produce fragments",
        )  # fmt: skip
    ends = await produce_all(bootstrap, topic, events, None, "produce history")
    del events
    n_history = sum(ends.values())
    log(f"history: {n_history:,} events over {len(ids):,} profiles")
    seed_models(redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    used_before = int(client.info("memory")["used_memory"])
    (worker,) = start_workers(
        1,
        bootstrap,
        redis_url,
        workdir,
        app_id=app_id,
        topic_prefix=prefix,
        key_prefix=prefix,
        name="memory-",
        repo=args.worker_repo,
        **worker_env,
    )
    assert worker.proc is not None
    pid = worker.proc.pid
    try:
        started = time.perf_counter()
        if fragment_ends:
            await wait_committed(
                bootstrap, app_id, profiles_topic, fragment_ends, args.timeout,
                "worker: fragments", lambda: worker.alive,
            )  # fmt: skip
        await wait_committed(
            bootstrap, app_id, topic, ends, args.timeout, "worker: history", lambda: worker.alive
        )
        log(f"history replayed in {time.perf_counter() - started:,.0f}s; RSS {proc_memory_mb(pid)}")
        sample = random.Random(args.seed).sample(sorted(ids), min(args.sample, len(ids)))
        persons: dict[str, float] = {}
        if args.aliases:
            stamp = datetime.fromisoformat(newest.replace("Z", "+00:00")) + timedelta(seconds=1)
            links = await produce_all(
                bootstrap, topic, link_events(sorted(ids), args.aliases, stamp), len(ids),
                "produce links",
            )  # fmt: skip
            started = time.perf_counter()
            await wait_committed(
                bootstrap, app_id, topic, links, args.timeout, "worker: links",
                lambda: worker.alive,
            )  # fmt: skip
            log(f"links applied in {time.perf_counter() - started:,.0f}s")
            persons = person_bytes(client, prefix, sample, args.aliases)
            sample = [f"{s}@mail.example" for s in sample]  # the persons' profile keys
        used_history = int(client.info("memory")["used_memory"]) - used_before
        sizes = profile_bytes(client, prefix, sample)
        found = [pid_ for pid_ in sample if client.exists(f"{prefix}:p:{{{pid_}}}")]
        worst = worst_case_bytes(
            client,
            prefix,
            found,
            profile_bytes(client, prefix, found),
            worker_env.get("CUSTOMER_AI_CONFIG"),
        )
        if len(sizes) < len(sample):
            log(f"[yellow]{len(sample) - len(sizes)} sampled profiles have no key[/]")
        qs = statistics.quantiles(sizes, n=100)
        log(
            f"MEMORY USAGE of {len(sizes):,} history profiles: mean {statistics.mean(sizes):,.0f} B, "
            f"p50 {qs[49]:,.0f}, p99 {qs[98]:,.0f}, max {max(sizes):,} B; every slot full: "
            f"{worst:,} B; used_memory grew {used_history / len(ids):,.0f} B per profile"
        )
        extra = args.total_profiles - len(ids)
        if extra > 0:
            start_ms = int(datetime.fromisoformat(newest.replace("Z", "+00:00")).timestamp() * 1000)
            more = await produce_all(
                bootstrap, topic, breadth_events(1, extra, start_ms), extra, "produce breadth"
            )
            started = time.perf_counter()
            await wait_committed(
                bootstrap,
                app_id,
                topic,
                more,
                args.timeout,
                "worker: breadth",
                lambda: worker.alive,
            )
            log(f"breadth replayed in {time.perf_counter() - started:,.0f}s")
            tail = profile_bytes(client, prefix, [f"q-{i}" for i in range(1, min(extra, 500) + 1)])
            log(f"MEMORY USAGE of single-event profiles: mean {statistics.mean(tail):,.0f} B")
        rss, peak = proc_memory_mb(pid)
        info = client.info("memory")
        n_profiles = sum(1 for _ in client.scan_iter(match=f"{prefix}:p:*", count=10_000))
        log(
            f"{n_profiles:,} profile keys in Redis, used_memory {info['used_memory'] / 2**20:,.0f} MiB; "
            f"worker RSS {rss:,.0f} MiB now, {peak:,.0f} MiB peak"
        )
    finally:
        worker.stop()
        client.close()
    return {
        "attributes": len(ATTRIBUTES.split("[[attributes]]")) - 1 if args.attributes else 0,
        "aliases": args.aliases,
        **persons,
        "redis_bytes_per_profile": round(statistics.mean(sizes)),
        "redis_bytes_per_profile_p99": round(qs[98]),
        "redis_used_bytes_per_profile": round(used_history / len(ids)),
        "worst_case_profile_bytes": worst,
        "worker_rss_mb": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    on_signals_exit()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cai-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"logs in {workdir}")
    with servers(workdir) as (bootstrap, redis_url):
        result = asyncio.run(run(args, bootstrap, redis_url, workdir))
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
