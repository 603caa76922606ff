"""``customer-ai backfill`` warns when the workers' consumer group has members, and its
summary says when nothing was imported and where the live stream must start.

docs/OPERATING.md ("Starting from history") says to stop the workers first; nothing
checked it. A backfill ``--force`` run while a worker served left a mixture: the worker kept
serving its newer model version (the imported, older one is never loaded), rescored the
imported profiles with it, and its trainer wrote its in-memory learner over the imported
one (``customer-ai models`` then showed the import's model beside the old learner's live
figures). The check reads the workers' consumer group on the broker; it warns rather than
refuses, since Tansu (``customer-ai dev up``) lists a stopped worker as a member for good.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from models.config import load_config
from stream.cli import backfill
from stream.worker.settings import Settings
from tests.harness import CONFIG


def test_group_members_counts_every_member_of_the_described_groups() -> None:
    member = ("faust-1", "", "", b"", b"")
    stable = (0, "customer-ai", "Stable", "consumer", "", [member, member])
    empty = (0, "customer-ai", "Empty", "consumer", "", [])
    assert backfill.group_members([SimpleNamespace(groups=[stable])]) == 2
    assert backfill.group_members([SimpleNamespace(groups=[empty])]) == 0
    assert backfill.group_members([]) == 0


def test_members_in_the_workers_group_warn_before_the_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def one_member(settings: Settings) -> int:
        return 1

    class Stop(Exception):
        pass

    async def no_redis(*args: object) -> None:
        raise Stop

    out = io.StringIO()
    monkeypatch.setattr(backfill, "console", Console(file=out, width=400))
    monkeypatch.setattr(backfill, "worker_members", one_member)
    monkeypatch.setattr(backfill, "connect_store", no_redis)
    settings = Settings(bootstrap="127.0.0.1:1")
    with pytest.raises(Stop):  # the import goes on (a broker may list a stopped worker)
        asyncio.run(
            backfill._backfill(tmp_path / "h.jsonl", load_config(CONFIG), settings, None, 4, True)
        )
    text = out.getvalue()
    assert "warning: the workers' consumer group 'customer-ai' lists 1 member(s)" in text
    assert "if a worker is running, stop it and run the backfill again" in text


def test_no_broker_configured_means_no_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert asyncio.run(backfill.worker_members(Settings())) is None


def _summary_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, summary, until) -> str:
    async def imported(*args: object) -> backfill.BackfillSummary:
        return summary

    history = tmp_path / "history.jsonl"
    history.write_text("{}\n")
    out = io.StringIO()
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(backfill, "_backfill", imported)
    monkeypatch.setattr(backfill, "console", Console(file=out, width=400))
    assert backfill.backfill_main(history, str(CONFIG), until, 4) == 0
    return out.getvalue()


def test_an_until_before_every_event_says_nothing_was_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nothing = backfill.BackfillSummary(lines=9611, partitions=4)
    text = _summary_text(monkeypatch, tmp_path, nothing, "2020-01-01")
    assert "nothing imported: none of the 9,611 lines of" in text
    assert "before --until 2020-01-01T00:00:00.000Z" in text


def test_the_summary_says_where_the_live_stream_must_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    some = backfill.BackfillSummary(events=200, lines=200, partitions=4, watermark=0)
    text = _summary_text(monkeypatch, tmp_path, some, "2026-12-01T00:00:00Z")
    assert "the live stream from 2026-12-01T00:00:00.000Z on" in text
    assert "only each profile's newest 8 imported events are recognised" in text
    assert "nothing imported" not in text
    text = _summary_text(monkeypatch, tmp_path, some, None)
    assert "the live stream from 1970-01-01T00:00:00.000Z on" in text
