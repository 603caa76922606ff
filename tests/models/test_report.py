"""Evaluation metrics, tables and curves of a backtest (models.report)."""

from __future__ import annotations

import random

import pytest

from models.config import DAY_MS, load_config
from models.metrics import expected_calibration_error, log_loss, roc_auc
from models.outcome import Example
from models.report import (
    auc_over_time,
    bucket_table,
    build_report,
    calibration_curve,
    closed_window_examples,
    decile_table,
    goal_metrics,
    top_factors_by_bucket,
)
from tests.harness import CONFIG

CFG = load_config(CONFIG)


def _calibrated(n: int, seed: int = 3) -> tuple[list[float], list[int]]:
    rng = random.Random(seed)
    probs = [rng.random() ** 2 for _ in range(n)]
    return probs, [int(rng.random() < p) for p in probs]


def test_goal_metrics_agree_with_the_metric_functions() -> None:
    probs, labels = _calibrated(4000)
    m = goal_metrics(probs, labels)
    assert m["n_examples"] == 4000 and m["n_positive"] == sum(labels)
    assert m["auc"] == pytest.approx(roc_auc(probs, labels), abs=1e-4)
    assert m["logloss"] == pytest.approx(log_loss(probs, labels), abs=1e-4)
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-4)
    assert m["base_rate"] == pytest.approx(sum(labels) / 4000, abs=1e-4)
    assert m["ece"] < 0.03  # calibrated by construction
    assert m["lift_top_decile"] > 2.0


def test_deciles_lift_and_gains() -> None:
    probs, labels = _calibrated(5000)
    rows = decile_table(probs, labels)
    assert [r["decile"] for r in rows] == list(range(1, 11))
    assert sum(r["n"] for r in rows) == 5000
    gains = [r["cumulative_gain"] for r in rows]
    assert gains == sorted(gains) and gains[-1] == 1.0
    # population-weighted mean lift is 1; a good model front-loads it
    assert sum(r["lift"] * r["n"] for r in rows) / 5000 == pytest.approx(1.0, abs=1e-3)
    assert rows[0]["lift"] > rows[4]["lift"] > rows[9]["lift"]
    assert goal_metrics(probs, labels)["lift_top_decile"] == rows[0]["lift"]


def test_calibration_curve_of_calibrated_scores_follows_the_diagonal() -> None:
    probs, labels = _calibrated(20000)
    curve = calibration_curve(probs, labels)
    assert sum(c["n"] for c in curve) == 20000
    for c in curve:
        assert c["lo"] <= c["mean_probability"] <= c["hi"]
        assert abs(c["rate"] - c["mean_probability"]) < 0.05, c


def test_buckets_follow_thresholds_and_compare_expected_with_actual() -> None:
    probs, labels = _calibrated(4000)
    rows = bucket_table(probs, labels, (25.0, 75.0), ("low", "medium", "high"))
    assert [r["bucket"] for r in rows] == ["low", "medium", "high"]
    assert [r["n"] for r in rows] == [1000, 2000, 1000]
    assert rows[0]["expected"] < rows[1]["expected"] < rows[2]["expected"]
    for r in rows:
        assert abs(r["expected"] - r["actual"]) < 0.05


def test_auc_over_time_splits_by_prediction_time() -> None:
    probs, labels = _calibrated(1200)
    times = [i * DAY_MS for i in range(1200)]
    rows = auc_over_time(times, probs, labels, periods=6)
    assert len(rows) == 6 and sum(r["n"] for r in rows) == 1200
    assert [r["start_ms"] for r in rows] == sorted(r["start_ms"] for r in rows)
    assert all(0.6 < r["auc"] <= 1.0 for r in rows)


def test_open_windows_are_left_out_of_the_metrics() -> None:
    window = CFG.goal("conversion").window_ms
    examples = [
        Example(f"e{i}", "conversion", "p", i * DAY_MS, i % 2, 0.5, 1, [], i * DAY_MS + 1)
        for i in range(60)
    ]
    watermark = 50 * DAY_MS
    kept = closed_window_examples(examples, CFG, watermark)
    assert kept and all(e.prediction_ts + window < watermark for e in kept)
    assert len(kept) == sum(1 for e in examples if e.prediction_ts + window < watermark)


def test_top_factors_per_bucket_count_profiles_and_average_contributions() -> None:
    docs = [
        {"scores": {"g": {"bucket": "high", "factors": [
            {"feature": "a", "label": "A", "value": 1, "contribution": 0.6},
            {"feature": "b", "label": "B", "value": 1, "contribution": -0.2}]}}},
        {"scores": {"g": {"bucket": "high", "factors": [
            {"feature": "a", "label": "A", "value": 1, "contribution": 0.2}]}}},
        {"scores": {"g": {"bucket": "low", "factors": []}}},
        {"scores": {}},
    ]  # fmt: skip
    top = top_factors_by_bucket(docs, "g")
    assert top["high"][0] == {"feature": "a", "label": "A", "share": 1.0, "mean_contribution": 0.4}
    assert top["high"][1]["feature"] == "b" and top["high"][1]["share"] == 0.5
    assert "low" not in top


def test_report_covers_every_goal(backtest_report: dict) -> None:
    report = backtest_report
    assert set(report["goals"]) == {g.name for g in CFG.goals}
    for data in report["goals"].values():
        m = data["metrics"]
        for key in ("auc", "logloss", "ece", "base_rate", "n_examples", "n_positive",
                    "lift_top_decile"):  # fmt: skip
            assert key in m
        assert m["n_examples"] + m["n_open_window"] + m["n_no_probability"] == m["n_matured"]
        assert len(data["deciles"]) == 10 and data["calibration"] and data["auc_over_time"]
        assert sum(data["score_histogram"]) == data["n_scored_profiles"] > 0


def test_all_live_and_monthly_figures_of_a_hand_made_history() -> None:
    """Three months of conversion examples (March holds negatives only): the report's
    figures equal a direct computation, with the running base rate as defined."""
    march = 1740787200000  # 2025-03-01T00:00:00Z
    jan, feb = march - 59 * DAY_MS, march - 28 * DAY_MS
    rows = [  # prediction time, label, served probability, model version, warming up
        (jan + 1, 1, 0.5, 0, True),
        (jan + 2 * DAY_MS, 0, 0.5, 0, True),
        (jan + 9 * DAY_MS, 1, 0.7, 1, False),
        (feb + 3 * DAY_MS, 0, 0.2, 1, False),
        (feb + 5 * DAY_MS, 1, 0.6, 2, False),
        (feb + 6 * DAY_MS, 0, 0.9, 2, False),
        (march + DAY_MS, 0, 0.1, 2, False),
        (march + 2 * DAY_MS, 0, 0.3, 2, False),
    ]
    examples = [
        Example(f"e{i}", "conversion", f"p{i}", t, y, p, v, [], t + (8 - i) * DAY_MS, w)
        for i, (t, y, p, v, w) in enumerate(rows)
    ]
    examples.append(  # matured, its window still open: counts in the running base rate only
        Example("late", "conversion", "q", march + 20 * DAY_MS, 1, 0.4, 2, [], march)
    )
    watermark = march + 10 * DAY_MS + CFG.goal("conversion").window_ms
    report = build_report(examples, CFG, watermark, [])
    m = report["goals"]["conversion"]["metrics"]
    assert m["n_examples"] == 8 and m["n_open_window"] == 1

    # running base rate: (positives + 1) / (n + 2) over the examples that had matured
    # by the example's prediction time
    rate: dict[str, float] = {}
    for e in examples:
        known = [b for b in examples if b.matured_ts <= e.prediction_ts]
        rate[e.example_id] = (sum(b.label for b in known) + 1) / (len(known) + 2)
    # e0 (1), e1 (0) and e2 (1) had matured when e3 was served, e3 itself not yet
    assert rate["e0"] == 0.5 and rate["e3"] == pytest.approx(3 / 5)

    def direct(chosen: list[Example]) -> dict:
        p, y = [e.probability for e in chosen], [e.label for e in chosen]
        r = [rate[e.example_id] for e in chosen]
        return {
            "n": len(chosen),
            "positives": sum(y),
            "auc": roc_auc(p, y),
            "logloss": log_loss(p, y),
            "base_rate_logloss": log_loss(r, y),
            "ece": expected_calibration_error(p, y),
        }

    def same(got: dict, want: dict) -> None:
        for key, value in want.items():
            if value is None:
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(value, abs=1e-4), key

    closed = examples[:8]
    same(m["all"], direct(closed))
    same(m["live"], direct([e for e in closed if not e.served_warming_up]))
    assert m["live"]["n"] == 6
    assert [r["month"] for r in m["months"]] == ["2025-01", "2025-02", "2025-03"]
    for row, chosen in zip(m["months"], [closed[:3], closed[3:6], closed[6:]]):
        same(row, direct(chosen))
        assert row["n_live"] == sum(1 for e in chosen if not e.served_warming_up)
        assert row["worse_than_base_rate"] == (row["logloss"] > row["base_rate_logloss"])
    assert m["months"][2]["auc"] is None and m["months"][2]["positives"] == 0
    assert [v["version"] for v in m["versions"]] == [0, 1, 2]
    for row, chosen in zip(m["versions"], [closed[:2], closed[2:4], closed[4:]]):
        same(row, direct(chosen))
    assert m["versions"][1]["first_served"].startswith("2025-01-10")
    assert report["goals"]["conversion"]["history"] == {"kind": "versions", "rows": []}


def test_history_lists_promotions_when_the_trainer_keeps_them() -> None:
    promotions = [
        {"goal": "conversion", "version": 3, "promoted": True},
        {"goal": "churn", "version": 1, "promoted": False},
    ]
    report = build_report([], CFG, 0, [], promotions=promotions)
    history = report["goals"]["conversion"]["history"]
    assert history == {"kind": "promotions", "rows": [promotions[0]]}
