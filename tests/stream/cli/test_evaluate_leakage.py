"""``customer-ai evaluate``'s leakage guard (:mod:`models.leakage`) on a planted leak.

The events: half the profiles buy on day 20 (some on day 0 too) and, on day 0, send a
"tell" event that no other profile sends; every profile views pages every other day. A feature of the
tell separates the conversion examples almost perfectly: the guard flags it
``auc_alone`` in metrics.json, in the printed summary and in report.html, beside the
goal's own-event features (``goal_event``), and flags nothing else.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.config import load_config
from models.leakage import AUC_ALONE_THRESHOLD, goal_event_features
from models.synthetic import write_jsonl
from tests.harness import CONFIG, REPO

TELL = """
[[events]]
name = "tell"
label = "Tells"
when = { field = "eventType", op = "equals", value = "custom.tell" }
"""


def event(pid: str, n: int, when: datetime, kind: str, **body: Any) -> dict[str, Any]:
    return {
        "_id": f"{pid}-{n}",
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "eventType": kind,
        "identityMap": {"ECID": [{"id": pid, "primary": True}]},
        **body,
    }


def planted_events() -> list[dict[str, Any]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i in range(200):
        pid, buyer = f"p{i}", i % 2 == 0
        at = start + timedelta(minutes=i)
        days = range(0, 20, 2) if buyer else range(0, 42, 2)
        if buyer:
            events.append(event(pid, 0, at, "custom.tell"))
        for day in days:
            events.append(
                event(
                    pid, day + 1, at + timedelta(days=day, hours=1), "web.webpagedetails.pageViews"
                )
            )
        if buyer and i % 4 == 0:  # some buy on day 0 too: the purchase features vary
            order = {"order": {"priceTotal": 5.0}}
            events.append(
                event(pid, 98, at + timedelta(minutes=30), "commerce.purchases", commerce=order)
            )
        if buyer:
            order = {"order": {"priceTotal": 20.0}}
            events.append(
                event(pid, 99, at + timedelta(days=20), "commerce.purchases", commerce=order)
            )
        # a last event on day 90 moves the watermark past every window above
        events.append(event(pid, 100, at + timedelta(days=90), "web.webpagedetails.pageViews"))
    return sorted(events, key=lambda e: e["timestamp"])


def test_evaluate_flags_a_planted_leak_and_the_goals_own_event(tmp_path: Path) -> None:
    config = tmp_path / "customer-ai.toml"
    text = CONFIG.read_text().replace("rescore_every_hours = 24", "rescore_every_hours = 0")
    config.write_text(text.replace("# ---- Goals:", TELL + "\n# ---- Goals:", 1))
    events = tmp_path / "events.jsonl"
    write_jsonl(planted_events(), events)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", str(events), "--config", str(config),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    leakage = orjson.loads((out / "metrics.json").read_bytes())["conversion"]["leakage"]
    assert leakage["auc_alone_threshold"] == AUC_ALONE_THRESHOLD
    assert leakage["n_examples_checked"] > 500
    flagged = {r["feature"]: r for r in leakage["flagged"]}
    tells = {f"tell_count_{h}d" for h in (7, 30, 90)} | {"tell_days_since_last", "tell_count_total"}
    own = set(goal_event_features(load_config(config))["conversion"])
    assert set(flagged) == tells | own, sorted(flagged)
    for name in tells:
        assert flagged[name]["reasons"] == ["auc_alone"], flagged[name]
        assert flagged[name]["auc_alone"] >= AUC_ALONE_THRESHOLD
        assert "Tells" in flagged[name]["label"]
    for name in own:
        assert "goal_event" in flagged[name]["reasons"]
    # the summary names them; the report shows them with their labels
    summary = " ".join(proc.stderr.split())
    assert "conversion: leakage check flags" in summary
    assert f"tell_count_total (AUC alone {flagged['tell_count_total']['auc_alone']:.3f})" in summary
    html = (out / "report.html").read_text()
    assert html.count("Leakage check") == 2  # a card per goal
    assert "<td class='l'>Tells, all time</td><td class='l'>tell_count_total</td>" in html


@pytest.mark.parametrize("flag", ["auc_alone", "goal_event"])
def test_the_report_explains_each_flag(tmp_path: Path, flag: str) -> None:
    from models.report_html import _leakage_card

    card = _leakage_card(
        {
            "auc_alone_threshold": 0.95,
            "n_examples_checked": 10,
            "flagged": [{"feature": "x", "label": "X", "reasons": [flag], "auc_alone": 0.97}],
        }
    )
    assert f"{flag}:" in card and "<td class='l'>X</td>" in card
