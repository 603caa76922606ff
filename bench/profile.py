"""Profile one scoring worker with py-spy while it replays events.

Pre-produces ``--events`` over ``--profiles`` (as ``bench/throughput.py`` does), seeds
trained models, starts one ``customer-ai worker``, attaches ``py-spy record`` (100 Hz,
CPU samples only: time spent waiting in the event loop's ``epoll`` is not sampled) once
the worker serves, and stops it when every event is committed. Writes to ``--out``:

- ``scorer.pyspy.txt``: collapsed stacks (open in https://speedscope.app or feed
  ``flamegraph.pl``);
- ``scorer.svg``: the flamegraph (rendered by py-spy from a second, identical run
  only with ``--svg``);
- ``profile.md``: the share of CPU samples per area and the top functions (self and
  inclusive), the tables ``bench/README.md`` quotes.

Usage: ``python bench/profile.py [--events 100000] [--profiles 50000] [--out bench/out/profile]``
(``out/`` is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    REPO,
    create_topics,
    emit,
    log,
    on_signals_exit,
    produce_all,
    run_id,
    sample_events,
    seed_models,
    servers,
    start_workers,
    wait_committed,
)

#: Areas a sample is charged to: the innermost frame outside asyncio/uvloop/threading
#: that matches one (so a socket write by redis-py counts as redis-py); samples whose
#: innermost such frame is the worker's run loop are uvloop's C code and callbacks.
AREAS: list[tuple[str, re.Pattern[str]]] = [
    (
        "models/ (core: features, model, engine, state)",
        re.compile(r"^models/|__native_customer_ai_native\.c"),  # or its compiled C
    ),
    ("stream/worker/scorer.py (decode, batch, messages)", re.compile(r"^stream/worker/scorer\.py")),
    (
        "stream/worker/ store modules",
        re.compile(
            r"^stream/worker/(store|profile_store|model_store|redis_scripts|store_connection)\.py"
        ),
    ),
    ("stream/worker/producer.py", re.compile(r"^stream/worker/producer\.py")),
    (
        "stream/ops/metrics.py + prometheus_client",
        re.compile(r"^stream/ops/metrics\.py|prometheus_client/"),
    ),
    ("stream/ other (app, lag poller, web)", re.compile(r"^stream/")),
    ("redis-py (commands, pipeline, parser)", re.compile(r"^redis/")),
    ("aiokafka (fetch, produce)", re.compile(r"^aiokafka/")),
    ("event loop (uvloop C code, callbacks)", re.compile(r"^mode/worker\.py")),
    ("faust + mode (consumer, streams, take_events, acks)", re.compile(r"^(faust|mode)/")),
]
TRANSPARENT = re.compile(r"^(asyncio|uvloop|concurrent|threading\.py|selectors\.py|<)")
#: ``--native`` samples of a thread blocked (in epoll, or waiting for the GIL under one of
#: its last frames): not CPU time, left out
IDLE = re.compile(r"^(epoll_wait|epoll_pwait|pthread_cond_wait|pthread_cond_timedwait|poll)$")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--profiles", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "profile")
    p.add_argument("--svg", action="store_true", help="also record a flamegraph SVG")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--native",
        action="store_true",
        help="sample C frames too (the compiled core, uvloop); pauses the worker per sample",
    )
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    return p


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(REPO) + "/", "python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for raw in stack.split(";"):
        m = FRAME.match(raw.strip())
        if m:
            out.append((m.group("func"), _short(m.group("file"))))
        else:
            out.append((raw.strip(), ""))
    return out


def analyse(collapsed: Path, top: int) -> tuple[str, dict[str, float]]:
    """Markdown tables of a py-spy collapsed-stacks file, and the share per area."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = _frames(stack)
        if not frames:
            continue
        func, file = frames[-1]
        if any(IDLE.match(f) for f, _ in frames[-3:]):
            idle += count
            continue
        total += count
        self_t[f"{func} ({file})"] += count
        for key in {f"{f} ({p})" for f, p in frames}:
            incl[key] += count
        area = "other (interpreter, threads, imports)"
        for _func, path in reversed(frames):
            if TRANSPARENT.match(path):
                continue
            matched = next((name for name, rx in AREAS if rx.search(path)), None)
            if matched is None and not path.endswith(".py"):
                continue  # C code (--native) counts for the nearest Python or core caller
            area = matched or area
            break
        else:
            area = "event loop (uvloop C code, callbacks)"
        areas[area] += count
    if total == 0:
        return "no samples\n", {}

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f} %"

    waiting = f" ({idle:,} samples of blocked threads left out)" if idle else ""
    lines = [
        f"{total:,} CPU samples{waiting}.",
        "",
        "| area (innermost frame) | share |",
        "|---|---|",
    ]
    lines += [f"| {a} | {pct(n)} |" for a, n in areas.most_common()]
    lines += ["", "| function (self time) | share |", "|---|---|"]
    lines += [f"| `{k}` | {pct(n)} |" for k, n in self_t.most_common(top)]
    lines += ["", "| function (inclusive, project code) | share |", "|---|---|"]
    project = [
        (k, n)
        for k, n in incl.most_common()
        if re.search(r"\((stream|models)/", k) and not re.match(r"(<module>|main|cmd_worker) ", k)
    ][:top]
    lines += [f"| `{k}` | {pct(n)} |" for k, n in project]
    return "\n".join(lines) + "\n", {a: n / total for a, n in areas.items()}


async def _replay(
    args: argparse.Namespace, bootstrap: str, redis_url: str, workdir: Path, fmt: str, out: Path
) -> float:
    rid = run_id()
    prefix = f"bench-{rid}-profile"
    events_topic = f"{prefix}.events"
    messages = sample_events(args.events, args.profiles, args.seed)
    await create_topics(bootstrap, {events_topic: 4})
    target = await produce_all(bootstrap, events_topic, messages, len(messages), "produce input")
    seed_models(redis_url, prefix)
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    (worker,) = start_workers(
        1,
        bootstrap,
        redis_url,
        workdir,
        app_id=f"{prefix}-app",
        topic_prefix=prefix,
        key_prefix=prefix,
        name=f"profile-{fmt}-",
        **worker_env,
    )
    assert worker.proc is not None
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(worker.proc.pid),
            "--rate",
            str(args.rate),
            "--format",
            fmt,
            "--output",
            str(out),
            *(["--native"] if args.native else ["--nonblocking"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"py-spy-{fmt}.log", "ab"),  # noqa: SIM115
    )
    started = time.perf_counter()
    try:
        await wait_committed(
            bootstrap,
            f"{prefix}-app",
            events_topic,
            target,
            3600,
            "worker replay",
            alive=lambda: worker.alive,
        )
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        worker.stop()
    return time.perf_counter() - started


async def run(args: argparse.Namespace, bootstrap: str, redis_url: str, workdir: Path) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    collapsed = args.out / "scorer.pyspy.txt"
    seconds = await _replay(args, bootstrap, redis_url, workdir, "raw", collapsed)
    log(f"recorded {seconds:.1f}s of the worker into {collapsed}")
    if args.svg:
        await _replay(args, bootstrap, redis_url, workdir, "flamegraph", args.out / "scorer.svg")
    table, areas = analyse(collapsed, args.top)
    header = (
        f"# Scorer profile\n\npy-spy {args.rate} Hz on one worker replaying {args.events:,} "
        f"events over {args.profiles:,} profiles (`python bench/profile.py --events "
        f"{args.events} --profiles {args.profiles}`), {time.strftime('%Y-%m-%d %H:%M')}.\n\n"
    )
    (args.out / "profile.md").write_text(header + table)
    log(f"wrote {args.out / 'profile.md'}")
    console_table = table.replace("|---|---|\n", "")
    sys.stderr.write(console_table)
    return {"samples_file": str(collapsed), "areas": {k: round(v, 4) for k, v in areas.items()}}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    on_signals_exit()
    workdir = Path(tempfile.mkdtemp(prefix="cai-bench-profile-"))
    log(f"logs in {workdir}")
    with servers(workdir) as (bootstrap, redis_url):
        result = asyncio.run(run(args, bootstrap, redis_url, workdir))
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
