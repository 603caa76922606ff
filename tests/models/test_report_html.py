"""The self-contained HTML report (models.report_html)."""

from __future__ import annotations

import re

from models.report_html import render_html


def test_html_is_self_contained_with_charts_per_goal(backtest_report: dict) -> None:
    page = render_html(backtest_report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and not re.search(r"(src|href)=", page)
    assert "url(" not in page and "@import" not in page
    for goal in ("conversion", "churn"):
        section = page.split(f'id="goal-{goal}"', 1)[1].split("</section>", 1)[0]
        for chart in ("score-distribution", "lift", "gains", "calibration", "buckets"):
            svg = section.split(f'data-chart="{chart}"', 1)[1].split("</svg>", 1)[0]
            assert re.search(r'class="(bar|point)', svg), (goal, chart)
    assert "Top factors per bucket" in page and 'data-chart="auc-over-time"' in page


def test_html_shows_quality_by_month_against_the_base_rate(backtest_report: dict) -> None:
    page = render_html(backtest_report)
    for goal, data in backtest_report["goals"].items():
        section = page.split(f'id="goal-{goal}"', 1)[1].split("</section>", 1)[0]
        months = data["metrics"]["months"]
        svg = section.split('data-chart="logloss-by-month"', 1)[1].split("</svg>", 1)[0]
        # one point per month for the served probabilities and one for the base rate
        assert svg.count('class="point"') == svg.count('class="point alt"') == len(months)
        worse = sum(1 for r in months if r["worse_than_base_rate"])
        assert svg.count('class="mark"') == worse == section.count("<tr class='worse'>")
        assert "<table class='quality'>" in section and "Published versions" in section
        assert section.count("<table class='history'>") == 1


def test_html_renders_a_promotion_history() -> None:
    rows = [{"version": 4, "time": 1740787200000, "n_examples": 900, "promoted": False}]
    goal = {
        "label": "L", "type": "occurs", "window_days": 30.0,
        "metrics": {"versions": []}, "score_histogram": [0] * 20, "n_scored_profiles": 0,
        "deciles": [], "calibration": [], "buckets": [], "top_factors": {},
        "history": {"kind": "promotions", "rows": rows},
    }  # fmt: skip
    page = render_html({"goals": {"g": goal}, "bucket_names": []})
    assert "Promotion history" in page
    assert "<td>2025-03-01T00:00:00.000Z</td><td>900</td><td>no</td>" in page


def test_html_escapes_text() -> None:
    page = render_html({"goals": {}, "bucket_names": [], "summary": {"source": "<b>&x</b>"}})
    assert "<b>&x" not in page and "&lt;b&gt;&amp;x" in page
