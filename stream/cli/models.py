"""``customer-ai models [--json]``: per goal, the served version, its status, live metrics
and the trainer's last promotion decision, read from Redis.

The rows are :func:`stream.ops.models_view.model_summary`, the same as ``GET /models``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

import orjson

from models.model import LinearModel
from stream.cli.common import CliError, connect_store, load_cli_config, output_console
from stream.ops.models_view import model_summary

__all__ = ["models_main"]


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _decision(last: dict[str, Any] | None, warming_up: bool = False) -> str:
    """The trainer's last decision in words. A refusal names no version of its own: the
    candidate was not published (``version`` is the one served then: the serving model,
    or while the goal warms up the base-rate version published instead).

    >>> last = {"promoted": False, "version": 32, "n_examples": 1563, "candidate_logloss": 0.135,
    ...         "serving_logloss": 0.137, "base_rate_logloss": 0.135}
    >>> _decision(last, warming_up=True)[:75]
    'candidate refused at 1,563 examples (base rate served as v32; log loss 0.13'
    >>> _decision(last)[:60]
    'candidate refused at 1,563 examples (v32 still served; log l'
    """
    if not last:
        return "-"
    version = last.get("version")
    n = f"{last.get('n_examples', 0):,}"
    if last.get("promoted"):
        head = f"promoted v{version} at {n} examples ("
    elif warming_up:
        head = f"candidate refused at {n} examples (base rate served as v{version}; "
    else:
        head = f"candidate refused at {n} examples (v{version} still served; "
    return (
        f"{head}log loss {_number(last.get('candidate_logloss'))} vs serving "
        f"{_number(last.get('serving_logloss'))}, base rate "
        f"{_number(last.get('base_rate_logloss'))})"
    )


def _examples(row: dict[str, Any]) -> str:
    """Examples learnt, with the positives: a goal warming up for good often has none (or
    nothing but) positives, which the count alone does not show."""
    n, positives = row["n_examples"], row.get("n_positive")
    return f"{n:,}" if not n or positives is None else f"{n:,} ({positives:,} pos.)"


def _print_table(document: dict[str, dict[str, Any]], out: TextIO) -> None:
    from rich.table import Table

    table = Table(title="Models")
    table.add_column("goal")
    for name in ("version", "status", "examples", "AUC", "log loss", "base-rate log loss", "ECE"):
        table.add_column(name, justify="right")
    table.add_column("last promotion decision", overflow="fold")
    for goal, row in document.items():
        live = row["live"]
        table.add_row(
            goal,
            f"v{row['version']}",
            row["status"],
            _examples(row),
            _number(live.get("auc")),
            _number(live.get("logloss")),
            _number(live.get("base_rate_logloss")),
            _number(live.get("ece")),
            _decision(row["last_promotion"], row["status"] == "warming_up"),
        )
    output_console(out).print(table)


def models_main(
    as_json: bool = False, *, out: TextIO | None = None, config_path: str | None = None
) -> int:
    """``customer-ai models [--json]``.

    Connection and configuration come from the environment, as for ``customer-ai
    segment``. Every configured goal has a row (version 0, ``warming_up``, before its
    first model).

    Returns
    -------
    int
        0; 1 when Redis cannot be reached within 5 s.
    """
    from stream.worker.settings import Settings

    out = out or sys.stdout
    settings = Settings.from_env()
    config = load_cli_config(config_path)
    goals = [g.name for g in config.goals]

    async def run() -> dict[str, dict[str, Any]]:
        store = await connect_store(settings)
        try:
            document = {}
            for goal in goals:
                raw = await store.get_model(goal)
                model = None
                if raw is not None:
                    try:
                        model = LinearModel.from_json(raw)
                    except (ValueError, TypeError, KeyError) as exc:
                        raise CliError(f"the model of {goal!r} cannot be read: {exc}") from None
                document[goal] = model_summary(
                    model, await store.get_learner(goal), config.model.min_auc
                )
            return document
        finally:
            await store.close()

    try:
        document = asyncio.run(run())
    except CliError as exc:
        print(f"customer-ai models: {exc.message}", file=sys.stderr)
        return exc.status
    if as_json:
        out.write(orjson.dumps(document).decode() + "\n")
    else:
        _print_table(document, out)
    return 0
