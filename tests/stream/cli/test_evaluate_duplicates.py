"""``customer-ai evaluate`` skips and reports events sent twice (issue 16, item 6).

Contract: docs/DESIGN.md, section "Duplicates".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from models.synthetic import generate_events
from tests.harness import CONFIG, REPO


def test_evaluate_reports_the_duplicates_it_skipped(tmp_path: Path) -> None:
    events = generate_events(profiles=40, days=30, seed=2)
    lines = [orjson.dumps(e) for e in events]
    twice = lines[:: len(lines) // 25][:25]  # 25 events sent again, at the end of the file
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines + twice) + b"\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", str(path), "--config", str(CONFIG),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = " ".join((proc.stdout + proc.stderr).split())
    assert "25 duplicate events skipped" in printed, printed
    assert "[dedupe] recent_ids" in printed
    assert f"{len(events):,} events" in printed
    assert "duplicates skipped: 25" in (out / "report.html").read_text()
