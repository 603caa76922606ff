"""Fixtures shared by the tests of ``models/``."""

from __future__ import annotations

from typing import Any

import pytest

from models.backtest import run_backtest
from models.config import load_config
from models.profile import profile_document
from models.report import build_report
from models.synthetic import generate_events
from tests.harness import CONFIG


@pytest.fixture(scope="session")
def backtest_report() -> dict[str, Any]:
    """The evaluation report of a backtest on 400 synthetic profiles over 330 days (churn,
    a 90-day goal, has its first examples served a probability after about 200)."""
    config = load_config(CONFIG)
    result = run_backtest(generate_events(profiles=400, days=330, seed=5), config)
    profiles = [profile_document(result.engine, p, s) for p, s in result.states.items()]
    newest = max(s.ref_ts for s in result.states.values())
    return build_report(result.examples, config, newest, profiles, models=result.models)
