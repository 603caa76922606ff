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
``backfill EVENTS``            import a history into Redis: states, learners, models
``lag``                        consumer lag read from the broker (``--watch``, ``--json``)
``segment``                    profiles of a goal's bucket (optionally by top factor)
``models``                     per goal: served version, status, live metrics, last promotion
``quarantine``                 profiles whose record cannot be read; ``show ID``, ``release ID``
``watermarks [reset]``         each partition's stored watermark; move one that ran ahead back
``demo``                       everything end to end on embedded servers, then stop
=============================  ===============================================================

Errors a user can fix (a missing file, a bad number, an unknown goal, a bad configuration,
no servers configured or a server that does not answer) end the command with one red
line on stderr saying what to do, never a traceback: exit status 2 for a usage or
configuration error, 1 for a runtime failure (:func:`run`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from stream.cli.common import (
    CliError,
    apply_dev_env,
    console,
    kafka_unreachable,
    redis_lost,
    require_servers,
    security_error,
    settings_from_env,
)
from stream.cli.erase import add_erase_arguments, cmd_erase
from stream.cli.profile import cmd_profile
from stream.cli.quarantine import cmd_quarantine
from stream.cli.replay import cmd_generate, cmd_replay
from stream.cli.scores import cmd_tail
from stream.cli.watermarks import cmd_watermarks

__all__ = ["SERVERS_NEEDED", "build_parser", "main", "run", "version"]

#: the servers each command talks to: they must be named (environment or ``dev.env``)
SERVERS_NEEDED: dict[str, tuple[str, ...]] = {
    "replay": ("kafka",),
    "tail": ("kafka",),
    "lag": ("kafka",),
    "profile": ("redis",),
    "segment": ("redis",),
    "models": ("redis",),
    "quarantine": ("redis",),
    "watermarks": ("redis",),
    "backfill": ("redis",),
    "erase": ("kafka", "redis"),
}
#: commands that use the servers of ``.customer-ai/dev.env`` (``dev up``) if the env names none
USES_DEV_SERVERS = frozenset({"worker", *SERVERS_NEEDED})


def version() -> str:
    """The installed package's version, else the one in the source tree's pyproject.toml."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("customer-ai")
    except PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


# ---- commands ----------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from stream.cli.evaluate import evaluate_main

    return evaluate_main(Path(args.events), args.config, Path(args.out), args.attributes)


def cmd_backfill(args: argparse.Namespace) -> int:
    from stream.cli.backfill import backfill_main

    return backfill_main(
        Path(args.events), args.config, args.until, args.partitions, force=args.force
    )


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

    return segment_main(
        args.goal, args.bucket, args.factor, args.limit, args.json, config_path=args.config
    )


def cmd_models(args: argparse.Namespace) -> int:
    from stream.cli.models import models_main

    return models_main(args.json, config_path=args.config)


def cmd_dev(args: argparse.Namespace) -> int:
    from stream.cli.dev import dev_main

    return dev_main(args.action, Path(args.state_dir))


def cmd_worker(args: argparse.Namespace) -> int:
    """``customer-ai worker``: checks the configuration and the broker, then runs Faust."""
    from stream.cli.common import load_cli_config
    from stream.worker import compat
    from stream.worker.security import redact_url

    s = settings_from_env()
    config = load_cli_config(s.config_path)  # a bad file fails before anything is started
    # a dependency outside its supported range: one message naming the version to install
    # (DependencyError exits with status 1), before any server is asked
    compat.check_versions()
    if web_port_taken(s.web_host, s.web_port):  # Faust would fail with a traceback later
        raise CliError(
            f"port {s.web_port} on {s.web_host} is in use (another worker?); "
            "set CUSTOMER_AI_WEB_PORT to a free port",
            1,
        )

    def origin(variable: str) -> str:
        return "" if os.environ.get(variable) else f" (default: {variable} is not set)"

    # the worker keeps its documented defaults (docs/OPERATING.md): say which servers it uses
    console.print(
        f"customer-ai worker: Kafka {redact_url(s.bootstrap)}{origin('KAFKA_BOOTSTRAP_SERVERS')}, "
        f"Redis {redact_url(s.redis_url)}{origin('REDIS_URL')}, config {s.config_path}",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    # Faust crashes with a traceback when the broker does not answer at start: wait for
    # it and for Redis first (one line per attempt), and refuse a Redis that evicts keys
    from stream.worker.startup import StartupError, prepare

    def say(line: str) -> None:
        console.print(f"customer-ai worker: {line}", soft_wrap=True, highlight=False, markup=False)

    try:
        warnings = prepare(s, say=say, stitching=bool(config.identity_namespaces))
    except StartupError as exc:
        raise CliError(str(exc), 2) from None
    from models.leakage import goal_event_warnings

    for line in warnings + goal_event_warnings(config):
        say(f"warning: {line}")
    from stream.worker.app import main as worker_main

    sys.argv = [sys.argv[0], "worker"]
    worker_main()
    return 0


def web_port_taken(host: str, port: int) -> bool:
    """Whether another process listens on ``host:port`` (the worker's HTTP views).

    False when the address cannot be resolved or bound for another reason: Faust then
    reports it.
    """
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return False
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.cli.demo import demo_main

    return demo_main(
        profiles=args.profiles, days=args.days, seed=args.seed, config_path=args.config
    )


# ---- the parser --------------------------------------------------------------------------


def _number(kind: Callable[[str], Any], minimum: float, strict: bool) -> Callable[[str], Any]:
    what = "a whole number" if kind is int else "a number"
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


def _start_date(text: str) -> Any:
    """An ISO-8601 date or time, UTC unless it names a zone."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO-8601 date such as 2026-01-01, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


#: argparse types: ``--days 0`` or ``--days -5`` is a usage error, not a traceback
positive_int = _number(int, 0, strict=True)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0, strict=True)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "%(default)" not in text and default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one red line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        from rich.markup import escape

        console.print(
            f"[red]{escape(self.prog)}:[/] {escape(message)} (see {escape(self.prog)} --help)",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(2)


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="the events and goals configuration (default: $CUSTOMER_AI_CONFIG, else "
        "./customer-ai.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``customer-ai`` parser: one sub-parser per command, every option with its help."""
    parser = _Parser(
        prog="customer-ai",
        description="Real-time Customer AI on Kafka + Redis",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"customer-ai {version()}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="the command to run"
    )

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )

    p = command("dev", "embedded Tansu broker + Valkey for development")
    p.add_argument(
        "action",
        choices=["up", "down", "status"],
        help="up: start the servers (unless the environment names servers) and write "
        "STATE_DIR/dev.env; down: stop them and remove dev.env; status: show them",
    )
    p.add_argument(
        "--state-dir",
        default=".customer-ai",
        help="directory of the servers' state (dev.json), dev.env and logs; the other "
        "commands read ./.customer-ai/dev.env",
    )
    p.set_defaults(fn=cmd_dev)

    p = command("worker", "run a scoring and training worker (until SIGTERM or Ctrl-C)")
    _config_option(p)
    p.set_defaults(fn=cmd_worker)

    p = command("generate", "synthetic events with a planted ground truth (JSON lines)")
    p.add_argument("--profiles", type=positive_int, default=2000, help="number of profiles")
    p.add_argument("--days", type=positive_int, default=120, help="days of events")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same events)")
    p.add_argument(
        "--start",
        type=_start_date,
        metavar="DATE",
        help="first day, ISO-8601 such as 2026-01-01 (default: the period ends today, so that "
        "a replay's events are neither in the future nor too old for the worker)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the JSONL file to write")
    p.set_defaults(fn=cmd_generate)

    p = command("replay", "produce a JSONL file of events, keyed by profile id")
    p.add_argument("file", help="JSON lines, one event each (e.g. from `customer-ai generate`)")
    p.add_argument(
        "--rate",
        type=positive_float,
        help="events per second, > 0 (default: as fast as possible)",
    )
    p.add_argument("--topic", help="default: <prefix>.events; <prefix>.profiles for fragments")
    _config_option(p)
    p.set_defaults(fn=cmd_replay)

    p = command("tail", "follow live scores (until Ctrl-C or --limit)")
    p.add_argument("--goal", help="only this goal's scores (default: every goal)")
    p.add_argument(
        "--limit", type=positive_int, help="stop after N scores (default: follow until Ctrl-C)"
    )
    p.add_argument("--json", action="store_true", help="print the score messages as JSON lines")
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the topic's first score (default: only new ones)",
    )
    _config_option(p)
    p.set_defaults(fn=cmd_tail)

    p = command("profile", "a profile's state, features, scores and factors")
    p.add_argument("profile_id", help="the profile's id (its primary identity)")
    p.add_argument("--json", action="store_true", help="print the profile document as JSON")
    _config_option(p)
    p.set_defaults(fn=cmd_profile)

    p = command("erase", "remove people: profile, index entries, unlearnt examples (waits)")
    add_erase_arguments(p, positive_float)
    p.set_defaults(fn=cmd_erase)

    p = command("evaluate", "backtest: metrics.json, examples.csv, profiles.jsonl, report.html")
    p.add_argument("events", help="JSON lines of events (optionally .gz)")
    p.add_argument("--attributes", metavar="FILE", help="profile fragments (JSON lines, .gz too)")
    _config_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the four files")
    p.set_defaults(fn=cmd_evaluate)

    p = command("backfill", "import a history into Redis: profile states, learners, models")
    p.add_argument("events", help="JSON lines of events (optionally .gz), as evaluate reads")
    p.add_argument(
        "--until",
        metavar="TIME",
        help="ISO-8601 time: import only the events before it (default: all)",
    )
    p.add_argument(
        "--partitions",
        type=positive_int,
        help="partitions of <prefix>.events (default: asked of KAFKA_BOOTSTRAP_SERVERS)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite the profiles and models Redis holds already (stop the workers first)",
    )
    _config_option(p)
    p.set_defaults(fn=cmd_backfill)

    p = command("lag", "consumer lag read from the broker")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object per partition and line")
    p.add_argument(
        "--group", help="consumer group (default: the worker's, $CUSTOMER_AI_APP_ID or customer-ai)"
    )
    p.add_argument(
        "--interval", type=positive_float, default=2.0, help="seconds between --watch refreshes"
    )
    p.set_defaults(fn=cmd_lag)

    p = command("segment", "profiles in a goal's bucket, and the bucket sizes")
    p.add_argument("--goal", required=True, help="a configured goal, e.g. conversion")
    p.add_argument("--bucket", default="high", help="a configured bucket")
    p.add_argument(
        "--factor",
        metavar="FEATURE",
        help="only profiles with this feature among their top factors (default: all)",
    )
    p.add_argument(
        "--limit", type=non_negative_int, default=50, help="the most probable N profiles (0: all)"
    )
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    _config_option(p)
    p.set_defaults(fn=cmd_segment)

    p = command("models", "per goal: served version, status, live metrics, last promotion")
    p.add_argument("--json", action="store_true", help="print the models as one JSON object")
    _config_option(p)
    p.set_defaults(fn=cmd_models)

    p = command("quarantine", "profiles whose stored record cannot be read (default: list them)")
    p.add_argument("--json", action="store_true", help="list them as JSON lines")
    actions = p.add_subparsers(
        dest="action", metavar="ACTION", help="show ID, or release ID (default: list them)"
    )
    q = actions.add_parser(
        "show",
        help="a quarantined record's note and raw bytes",
        description="a quarantined record's note and raw bytes (truncated)",
        formatter_class=_HelpFormatter,
    )
    q.add_argument("profile_id", help="the quarantined profile's id")
    _config_option(q)
    q = actions.add_parser(
        "release",
        help="drop (--reset) or put back (--restore) a quarantined record",
        description="drop (--reset) or put back (--restore) a quarantined record",
        formatter_class=_HelpFormatter,
    )
    q.add_argument("profile_id", help="the quarantined profile's id")
    how = q.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--reset",
        action="store_true",
        help="delete the record: the profile starts fresh at its next event",
    )
    how.add_argument(
        "--restore",
        action="store_true",
        help="move the record back (once this version can read it)",
    )
    _config_option(q)
    p.set_defaults(fn=cmd_quarantine)
    p = command(
        "watermarks",
        "each source partition's stored event-time watermark; reset one that ran ahead",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["show", "reset"],
        default="show",
        help="show: list them, flagging one beyond now + [input] max_future_minutes; reset: "
        "move one back (stop the workers first: docs/OPERATING.md)",
    )
    p.add_argument("--topic", help="reset: the source topic, e.g. customer-ai.events")
    p.add_argument("--partition", type=non_negative_int, help="reset: the partition, e.g. 0")
    p.add_argument(
        "--to",
        metavar="TIME",
        help="reset: ISO-8601 time to move it back to (default: the newest trusted event "
        "time of the partition's last records, read from Kafka; now if it cannot be read)",
    )
    p.add_argument("--json", action="store_true", help="show: one JSON object per partition")
    _config_option(p)
    p.set_defaults(fn=cmd_watermarks)

    p = command("demo", "run everything end to end on embedded servers, then stop")
    p.add_argument("--profiles", type=positive_int, default=1500, help="number of profiles")
    p.add_argument("--days", type=positive_int, default=365, help="days of events")
    p.add_argument("--seed", type=int, default=7, help="random seed of the events")
    _config_option(p)
    p.set_defaults(fn=cmd_demo)
    return parser


# ---- running a command -------------------------------------------------------------------


def _fail(where: str, message: str, status: int) -> int:
    """Print one red line on stderr, secrets masked; return ``status``."""
    from rich.markup import escape

    from stream.redaction import redact_text

    # escaped: messages name fields like "[model]" or "goals[0]", which are not markup;
    # soft_wrap: one line, so the field and the fix are never split
    message = redact_text(message)  # a URL or a secret quoted by a library's message
    console.print(f"[red]{escape(where)}:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return status


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; expected errors become one line and an exit status.

    Returns
    -------
    int
        The command's status; 2 for a usage or configuration error, 1 for a runtime
        failure (a server that does not answer...), 130 after Ctrl-C.
    """
    from faust.exceptions import ImproperlyConfigured

    from models.config import ConfigError
    from stream.worker.settings import SettingsError

    where = f"customer-ai {args.command}"
    if args.command != "worker":  # the command reports broker errors itself, in one line
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if getattr(args, "config", None):
            os.environ["CUSTOMER_AI_CONFIG"] = args.config
        if args.command in USES_DEV_SERVERS:
            apply_dev_env()
        require_servers(SERVERS_NEEDED.get(args.command, ()))
        return int(args.fn(args) or 0)
    except CliError as exc:
        return _fail(where, exc.message, exc.status)
    except ConfigError as exc:
        return _fail(f"{where}: configuration error", str(exc), 2)
    except security_error() as exc:
        return _fail(f"{where}: security settings", str(exc), 2)
    except SettingsError as exc:
        return _fail(f"{where}: settings", str(exc), 2)
    except ImproperlyConfigured as exc:  # a setting Faust refuses
        return _fail(f"{where}: settings", str(exc), 2)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        if exc.filename is None:
            raise
        files = repr(str(exc.filename))
        if exc.filename2 is not None:  # a rename or a link: both names
            files += f" -> {str(exc.filename2)!r}"
        return _fail(where, f"{exc.strerror}: {files}", 2)
    except kafka_unreachable():
        from stream.worker.security import redact_url

        bootstrap = settings_from_env().bootstrap
        return _fail(
            where,
            f"cannot reach Kafka at {redact_url(bootstrap)}; is it running? "
            "(KAFKA_BOOTSTRAP_SERVERS, or `customer-ai dev up`)",
            1,
        )
    except redis_lost() as exc:
        from stream.worker.security import redact_url

        url = redact_url(settings_from_env().redis_url)
        return _fail(where, f"lost Redis at {url} ({exc}); is it running?", 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `customer-ai tail | head`: the reader is gone, so is our output
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``customer-ai`` with ``argv`` (the command line's arguments by default) and
    return its exit status."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
