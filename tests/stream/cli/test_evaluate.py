"""``customer-ai evaluate``: its four files, and the report rendered by headless Chromium."""

from __future__ import annotations

import csv
import math
import re
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from models.backtest import run_backtest
from models.config import load_config
from models.features import Featurizer
from models.profile import profile_document
from models.synthetic import generate_events, write_jsonl
from tests.harness import CONFIG, REPO

CFG = load_config(CONFIG)
FIRST_COLUMNS = [
    "goal", "profile_id", "prediction_time", "label", "probability", "model_version",
    "warming_up", "trigger",
]  # fmt: skip
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    events = root / "events.jsonl"
    # 330 days: churn (90 days) has examples served a probability after about 200
    write_jsonl(generate_events(profiles=400, days=330, seed=3), events)
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", str(events), "--config", str(CONFIG),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return events, out


def test_writes_metrics_per_goal(evaluated: tuple[Path, Path]) -> None:
    _, out = evaluated
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    assert set(metrics) == {g.name for g in CFG.goals}
    for goal, m in metrics.items():
        for key in ("auc", "logloss", "ece", "base_rate", "n_examples", "n_positive",
                    "lift_top_decile"):  # fmt: skip
            assert key in m, (goal, key)
        assert m["n_examples"] > 0 and 0 < m["n_positive"] < m["n_examples"]
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["ece"] <= 1.0 and m["logloss"] > 0
        assert m["status"] in ("warming_up", "live", "poor")
        for decision in m["promotions"]:
            assert {"version", "n_examples", "candidate_logloss", "serving_logloss",
                    "base_rate_logloss", "promoted"} <= set(decision)  # fmt: skip
        if m["status"] != "warming_up":
            assert any(d["promoted"] for d in m["promotions"])


def test_examples_csv_rows_match_the_backtest(evaluated: tuple[Path, Path]) -> None:
    events, out = evaluated
    with (out / "examples.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    names = Featurizer(CFG).names
    assert header == FIRST_COLUMNS + names
    with events.open("rb") as fh:
        result = run_backtest(fh, CFG)
    assert len(body) == len(result.examples)
    for row, ex in zip(body, result.examples):
        assert row[:2] == [ex.goal, ex.profile_id]
        when = datetime.fromisoformat(row[2].replace("Z", "+00:00"))
        assert round(when.timestamp() * 1000) == ex.prediction_ts
        assert row[3] in ("0", "1") and int(row[3]) == ex.label
        if ex.probability is None:  # served none: a cold goal without a prior
            assert row[4] == "" and ex.served_warming_up
        else:
            assert float(row[4]) == ex.probability and 0.0 <= ex.probability <= 1.0
        assert int(row[5]) == ex.model_version
        assert row[6] == ("1" if ex.served_warming_up else "0")
        assert row[7] == getattr(ex, "trigger", "event") and row[7] in ("event", "schedule")
        assert [float(v) for v in row[8:]] == ex.features
    assert {r[6] for r in body} == {"0", "1"}  # warm-up and live models both served
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    for goal, m in metrics.items():
        assert m["n_matured"] == sum(1 for r in body if r[0] == goal)


def test_metrics_have_all_live_and_monthly_figures(evaluated: tuple[Path, Path]) -> None:
    _, out = evaluated
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    keys = {"n", "positives", "auc", "logloss", "base_rate_logloss", "ece"}
    for goal, m in metrics.items():
        assert keys <= set(m["all"]) and keys <= set(m["live"]), goal
        assert m["all"]["n"] == m["n_examples"] and m["all"]["logloss"] == m["logloss"]
        assert 0 <= m["live"]["n"] <= m["all"]["n"]
        months = m["months"]
        assert [r["month"] for r in months] == sorted({r["month"] for r in months})
        assert sum(r["n"] for r in months) == m["n_examples"]
        assert sum(r["n_live"] for r in months) == m["live"]["n"]
        assert sum(r["positives"] for r in months) == m["n_positive"]
        assert sum(r["n"] for r in m["versions"]) == m["n_examples"]
        for r in months:
            assert keys | {"month", "n_live", "worse_than_base_rate"} <= set(r)
    # conversion leaves warm-up within the history; churn (90-day window) may not
    assert 0 < metrics["conversion"]["live"]["n"] < metrics["conversion"]["all"]["n"]


def test_profiles_jsonl_has_the_profile_command_schema(evaluated: tuple[Path, Path]) -> None:
    events, out = evaluated
    docs = [orjson.loads(line) for line in (out / "profiles.jsonl").read_bytes().splitlines()]
    with events.open("rb") as fh:
        result = run_backtest(fh, CFG)
    assert [d["profile_id"] for d in docs] == list(result.states)
    for doc in docs[::37]:
        expected = profile_document(
            result.engine, doc["profile_id"], result.states[doc["profile_id"]]
        )
        assert doc == orjson.loads(orjson.dumps(expected))


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_report_renders_charts_in_chromium(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = evaluated
    url = (out / "report.html").resolve().as_uri()
    proc = _run_chromium(
        ["--enable-logging=stderr", "--v=0", "--dump-dom", url], tmp_path / "profile-dom"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the page logs nothing to the console (no error, no blocked or missing resource)
    assert ":CONSOLE" not in proc.stderr, proc.stderr[-2000:]
    dom = proc.stdout
    charts = re.findall(r'<svg class="chart" data-chart="([a-z-]+)".*?</svg>', dom, re.S)
    for goal in ("conversion", "churn"):
        assert f'id="goal-{goal}"' in dom
    for chart in ("score-distribution", "lift", "gains", "calibration", "buckets", "auc-over-time",
                  "logloss-by-month"):  # fmt: skip
        assert charts.count(chart) >= 1, chart
    assert dom.count('<table class="months">') == dom.count('<table class="quality">') == 2
    # the leakage check's flags (the goals' own-event features) in a table per goal
    assert dom.count('<table class="leakage">') == 2
    for svg in re.findall(r'<svg class="chart".*?</svg>', dom, re.S):
        points = re.findall(r'class="(?:bar|point)[^"]*" data-(?:value|x)="([-+0-9.e]+)"', svg)
        assert points and all(math.isfinite(float(v)) for v in points)


def test_report_fits_the_window_width(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    """No card (the promotion history's many columns) widens the page past the window: a
    wide table scrolls inside its card."""
    _, out = evaluated
    page = tmp_path / "report.html"
    measure = (
        "<script>document.body.dataset.widths = "
        "document.documentElement.scrollWidth + '/' + window.innerWidth</script></body>"
    )
    page.write_text((out / "report.html").read_text().replace("</body>", measure))
    proc = _run_chromium(
        ["--window-size=1200,1600", "--dump-dom", page.resolve().as_uri()],
        tmp_path / "profile-width",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-widths="(\d+)/(\d+)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    page_width, window_width = int(found[1]), int(found[2])
    assert window_width == 1200 and page_width <= window_width


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the inflated scanlines of a PNG (enough to tell it from a blank one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_report_screenshot_is_not_blank(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = evaluated
    shot = tmp_path / "report.png"
    url = (out / "report.html").resolve().as_uri()
    proc = _run_chromium(
        [f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", url],
        tmp_path / "profile-shot",
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, height, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    # a blank page inflates to a handful of byte values; charts, text and colours to many
    assert len(set(pixels)) > 64
    # the charts' blue (#2f80ed) is on the page
    assert b"\x2f\x80\xed" in pixels or pixels.count(0) < len(pixels) * 0.99
