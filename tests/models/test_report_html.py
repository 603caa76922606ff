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


def test_html_escapes_text() -> None:
    page = render_html({"goals": {}, "bucket_names": [], "summary": {"source": "<b>&x</b>"}})
    assert "<b>&x" not in page and "&lt;b&gt;&amp;x" in page
