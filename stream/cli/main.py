"""The ``customer-ai`` command line.

=============================  ===============================================================
command                        what it does
=============================  ===============================================================
``dev up|down|status``         embedded Tansu broker + Valkey (unless the env names servers)
``worker``                     run a scoring/training worker (Faust)
``generate``                   synthetic events with a planted ground truth (JSONL)
``replay FILE``                produce a JSONL file to ``customer-ai.events``, keyed by profile
``tail``                       follow live scores, readable (or ``--json``)
``profile ID``                 a profile's state, features, scores and factors
``evaluate EVENTS``            backtest in-process: metrics, examples, profiles, report
``lag``                        consumer lag read from the broker (``--watch``, ``--json``)
``segment``                    profiles of a goal's bucket (optionally by top factor)
``demo``                       everything end to end on embedded servers, then stop
=============================  ===============================================================
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stream.cli.common import apply_dev_env, console, settings_from_env
from stream.cli.profile import cmd_profile
from stream.cli.replay import cmd_generate, cmd_replay
from stream.cli.scores import cmd_tail

__all__ = ["build_parser", "main"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stream.cli.evaluate import evaluate_main

    return evaluate_main(Path(args.events), args.config, Path(args.out))


def cmd_lag(args: argparse.Namespace) -> int:
    from stream.cli.lag import lag_main

    s = settings_from_env()
    return lag_main(
        s.bootstrap,
        args.group or s.app_id,
        watch=args.watch,
        as_json=args.json,
        interval=args.interval,
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from stream.cli.segment import segment_main

    return segment_main(args.goal, args.bucket, args.factor, args.limit, args.json)


def cmd_dev(args: argparse.Namespace) -> int:
    from stream.cli.dev import dev_main

    return dev_main(args.action, Path(args.state_dir))


def cmd_worker(args: argparse.Namespace) -> int:
    if args.config:
        os.environ["CUSTOMER_AI_CONFIG"] = args.config
    from stream.worker.app import main as worker_main

    sys.argv = [sys.argv[0], "worker"]
    worker_main()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.cli.demo import demo_main

    return demo_main(profiles=args.profiles, days=args.days, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="customer-ai", description="Real-time Customer AI on Kafka + Redis"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev", help="embedded Tansu broker + Valkey for development")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--state-dir", default=".customer-ai")
    p.set_defaults(fn=cmd_dev)

    p = sub.add_parser("worker", help="run a scoring and training worker")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("generate", help="synthetic events with a planted ground truth")
    p.add_argument("--profiles", type=int, default=2000)
    p.add_argument("--days", type=int, default=120)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("replay", help="produce a JSONL file of events, keyed by profile id")
    p.add_argument("file")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--topic", help="default: <prefix>.events")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("tail", help="follow live scores")
    p.add_argument("--goal")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--from-beginning", action="store_true")
    p.set_defaults(fn=cmd_tail)

    p = sub.add_parser("profile", help="a profile's state, features, scores and factors")
    p.add_argument("profile_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser(
        "evaluate", help="backtest: metrics.json, examples.csv, profiles.jsonl, report.html"
    )
    p.add_argument("events")
    p.add_argument("--config")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("lag", help="consumer lag read from the broker")
    p.add_argument("--watch", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--group")
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(fn=cmd_lag)

    p = sub.add_parser("segment", help="profiles in a goal's bucket")
    p.add_argument("--goal", required=True)
    p.add_argument("--bucket", default="high")
    p.add_argument("--factor", help="only profiles with this feature among their top factors")
    p.add_argument("--limit", type=int, default=50, help="most probable N (0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_segment)

    p = sub.add_parser("demo", help="run everything end to end on embedded servers")
    p.add_argument("--profiles", type=int, default=1500)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``customer-ai``."""
    args = build_parser().parse_args(argv)
    if args.command not in ("dev", "demo", "generate", "evaluate"):
        apply_dev_env()
    from models.config import ConfigError

    try:
        return int(args.fn(args) or 0)
    except ConfigError as exc:
        from rich.markup import escape

        # escaped: messages name fields like "[model]" or "goals[0]", which are not markup;
        # soft_wrap: one line, so the field and the fix are never split
        console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
