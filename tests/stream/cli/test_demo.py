"""``customer-ai demo``: what the README's "What the demo shows" promises, piped to a file."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import demo
from tests.harness import CONFIG, REPO

WARMING_UP = {
    "profile_id": "p-7",
    "goal": "conversion",
    "probability": 0.05,
    "percentile": None,  # a warm-up score is not ranked
    "bucket": None,
    "model_version": 0,
    "warming_up": True,
    "factors": [],
    "event_time": "2026-01-01T10:00:00.000Z",
}
MODELS_HEADER = (
    "goal",
    "model version",
    "status",
    "examples (positive)",
    "live AUC",
    "log loss",
    "base-rate log loss",
    "base rate",
)


def test_a_warming_up_score_line_shows_the_marker() -> None:
    with demo.console.capture() as captured:
        demo.print_score_line(WARMING_UP)
    line = captured.get().strip()
    assert line.endswith("v0 [warming up]"), line
    assert "p-7" in line and "conversion" in line


def _one_line_with(text: str, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in text.splitlines())


@pytest.mark.integration
def test_the_demo_piped_shows_warm_up_and_whole_tables(tmp_path: Path) -> None:
    """Run, too, in a deployment's environment: secrets (never shown nor written, and
    the demo's Valkey requires REDIS_PASSWORD) and Kafka security settings (not used by
    the embedded PLAINTEXT broker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTOMER_AI_", "COLUMNS"))}
    env.update(CUSTOMER_AI_CONFIG=str(CONFIG), PYTHONPATH=str(REPO))
    secrets = {"REDIS_PASSWORD": "demo-S3CRET-redis", "KAFKA_SASL_PASSWORD": "demo-S3CRET-sasl"}
    env.update(secrets, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="customer-ai")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--profiles", "150", "--days", "90"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:] + out[-3000:]
    assert "Traceback" not in proc.stderr + out
    # score lines of goals still warming up carry the marker
    assert re.search(r"p-\d+\s+(conversion|churn)\s+p=\S+\s+pct=.* v\d+ \[warming up\]", out), out
    # the models table is not cut to 80 columns: its header and rows are whole lines
    assert _one_line_with(out, *MODELS_HEADER), out
    for goal in ("conversion", "churn"):
        assert re.search(rf"│ {goal}\s+│ \d+\s+│ (warming up|live)\s+│ [\d,]+ \([\d,]+\)", out), out
    assert "stopped everything." in out
    state_dir = tmp_path / ".customer-ai"
    written = [path for path in state_dir.rglob("*") if path.is_file()]
    assert {"valkey.log", "worker.log", "events.jsonl"} <= {path.name for path in written}
    for secret in secrets.values():
        assert secret not in out + proc.stderr
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
    for path in [state_dir, state_dir / "demo"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ("valkey.log", "worker.log", "tansu.log"):
        assert stat.S_IMODE((state_dir / "demo" / name).stat().st_mode) == 0o600, name
