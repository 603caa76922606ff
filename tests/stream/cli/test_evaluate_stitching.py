"""``customer-ai evaluate`` with identity stitching: the backtest merges a person's
identities as the stream does, says how many persons it merged, and its profiles file
holds one profile per person under its best identity.

Contract: docs/DESIGN.md, section "Identity stitching".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from models.synthetic import generate_events, write_jsonl
from tests.harness import CONFIG, REPO
from tests.models.test_stitching import SHIPPED, split_person


def test_evaluate_merges_persons_and_says_so(tmp_path: Path) -> None:
    config = tmp_path / "customer-ai.toml"
    config.write_text(
        CONFIG.read_text().replace(SHIPPED, 'namespaces = ["CRMID", "Email", "ECID"]\n', 1)
    )
    events = tmp_path / "events.jsonl"
    write_jsonl(split_person(generate_events(profiles=60, days=40, seed=3), seed=3), events)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", str(events), "--config", str(config),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = " ".join(proc.stderr.split())
    merged = int(summary.split("identity stitching: ")[1].split()[0].replace(",", ""))
    assert merged > 20 and "0 links refused" in summary
    assert f"persons merged: {merged:,}" in (out / "report.html").read_text()
    profiles = [orjson.loads(line) for line in (out / "profiles.jsonl").read_bytes().splitlines()]
    # the profiles: one per person, under its best identity (the merges left fewer)
    ids = {p["profile_id"] for p in profiles}
    assert any(i.startswith("crm-") for i in ids) and any("@" in i for i in ids)
    assert len(ids) == len(profiles) < 3 * 60 - merged + 1
