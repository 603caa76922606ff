"""Served quality against the running base rate, overall and per group (models.quality)."""

from __future__ import annotations

import math

import pytest

from models.outcome import Example
from models.quality import grouped_quality, month_of, quality_figures, running_base_rates


def _ex(i: int, goal: str, label: int, predicted_ts: int, matured_ts: int) -> Example:
    return Example(f"e{i}", goal, "p", predicted_ts, label, 0.5, 1, [], matured_ts)


def test_running_base_rate_counts_the_examples_matured_by_the_prediction_time() -> None:
    # input order is neither prediction nor matured order; two goals interleave
    examples = [
        _ex(0, "a", 1, 25, 30),
        _ex(1, "a", 0, 0, 10),
        _ex(2, "b", 1, 0, 5),
        _ex(3, "a", 1, 10, 20),  # e1 matured at 10: known when e3 was served at 10
        _ex(4, "a", 0, 15, 20),
        _ex(5, "b", 0, 4, 40),  # e2 matured at 5, after e5 was served at 4: not known
        _ex(6, "a", 1, 19, 50),  # e3 and e4 matured at 20, after it was served
    ]
    rates = running_base_rates(examples, digits=12)
    assert rates[1] == pytest.approx(1 / 2)  # nothing matured by 0
    assert rates[3] == pytest.approx((0 + 1) / (1 + 2))  # e1
    assert rates[4] == pytest.approx((0 + 1) / (1 + 2))  # e1
    assert rates[6] == pytest.approx((0 + 1) / (1 + 2))  # e1 only: e3, e4 matured later
    assert rates[0] == pytest.approx((1 + 1) / (3 + 2))  # e1, e3, e4
    assert rates[2] == pytest.approx(1 / 2) and rates[5] == pytest.approx(1 / 2)


def _log_loss(p: list[float], y: list[int]) -> float:
    return -sum(math.log(q) if t else math.log(1 - q) for q, t in zip(p, y)) / len(p)


def test_figures_and_groups_equal_a_direct_computation() -> None:
    probs = [0.8, 0.3, 0.6, 0.2, 0.9, 0.4, 0.7]
    labels = [1, 0, 0, 0, 1, 1, 1]
    rates = [0.5, 0.5, 0.4, 0.45, 0.5, 0.6, 0.55]
    keys = ["x", "x", "y", "x", "y", "z", "z"]
    groups = grouped_quality(keys, probs, labels, rates, live=[True] * 4 + [False] * 3)
    assert list(groups) == ["x", "y", "z"]
    for key, row in groups.items():
        idx = [i for i, k in enumerate(keys) if k == key]
        p, y, r = [probs[i] for i in idx], [labels[i] for i in idx], [rates[i] for i in idx]
        assert row["n"] == len(idx) and row["positives"] == sum(y)
        assert row["logloss"] == pytest.approx(_log_loss(p, y), abs=1e-4)
        assert row["base_rate_logloss"] == pytest.approx(_log_loss(r, y), abs=1e-4)
        assert row["worse_than_base_rate"] == (row["logloss"] > row["base_rate_logloss"])
    assert groups["x"]["auc"] == 1.0 and groups["y"]["auc"] == 1.0
    assert groups["z"]["auc"] is None  # one class
    assert [g["n_live"] for g in groups.values()] == [3, 1, 0]
    assert quality_figures(probs, labels, rates)["n"] == 7


def test_month_is_the_utc_calendar_month() -> None:
    assert month_of(1738367999999) == "2025-01"  # 2025-01-31T23:59:59.999Z
    assert month_of(1738368000000) == "2025-02"
