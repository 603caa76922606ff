"""``customer-ai generate``: its period ends today unless ``--start`` says otherwise.

``customer-ai replay`` gives records the broker time of the replay, and the worker refuses
events dated after it (``future_timestamp``) or more than ``[input] max_age_days`` before
it: generated events must lie in the recent past to be scored.

Contract: docs/DESIGN.md, section "Input events".
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from models.events import parse_timestamp
from tests.stream.cli.test_cli_errors import cli, one_line_error

DAY_MS = 86_400_000


def timestamps(path: Path) -> list[int]:
    return [
        parse_timestamp(orjson.loads(line)["timestamp"]) for line in path.read_bytes().splitlines()
    ]


def test_the_default_period_ends_today(tmp_path: Path) -> None:
    proc, _ = cli(tmp_path, "generate", "--profiles", "20", "--days", "3", "--out", "e.jsonl")
    assert proc.returncode == 0, proc.stderr
    times = timestamps(tmp_path / "e.jsonl")
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    assert times and today - 3 * DAY_MS <= min(times) and max(times) < today


def test_start_picks_the_period(tmp_path: Path) -> None:
    proc, _ = cli(
        tmp_path, "generate", "--profiles", "20", "--days", "3", "--start", "2026-01-01",
        "--out", "e.jsonl",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    start = parse_timestamp("2026-01-01T00:00:00Z")
    times = timestamps(tmp_path / "e.jsonl")
    assert times and start <= min(times) and max(times) < start + 3 * DAY_MS
    assert "from 2026-01-01" in proc.stderr


def test_a_bad_start_is_one_line(tmp_path: Path) -> None:
    proc, _ = cli(tmp_path, "generate", "--start", "soon", "--out", "e.jsonl")
    assert "--start" in one_line_error(proc, 2)
