"""``customer-ai evaluate``'s summary says whether a month it names as lost had a live model.

A month in which only warming-up probabilities were served (the prior, or the base rate of
the last version published) is flagged ``worse_than_base_rate`` as soon as that lagging
rate loses to the running one, often by noise (``0.337 vs 0.336``): the summary named it
like a month a trained model lost, and a user read "the model is worse than the base
rate" of a goal that had no model yet.
"""

from __future__ import annotations

import io

from rich.console import Console

from stream.cli import evaluate


def _month(month: str, n: int, n_live: int, worse: bool) -> dict:
    return {
        "month": month,
        "n": n,
        "n_live": n_live,
        "logloss": 0.337,
        "base_rate_logloss": 0.336,
        "worse_than_base_rate": worse,
    }


def _figures(months: list[dict]) -> dict:
    empty = {"n": 0, "auc": None, "logloss": None, "base_rate_logloss": None, "ece": None}
    return {"all": empty, "live": empty, "lift_top_decile": None, "months": months}


def _summary(monkeypatch, metrics: dict) -> str:
    out = io.StringIO()
    monkeypatch.setattr(evaluate, "console", Console(file=out, width=400))
    evaluate.print_summary(metrics)
    return out.getvalue()


def test_a_lost_month_says_how_much_of_it_a_live_model_served(monkeypatch) -> None:
    text = _summary(
        monkeypatch,
        {
            "warm": _figures([_month("2026-08", 206, 0, True), _month("2026-09", 10, 0, False)]),
            "mixed": _figures([_month("2026-08", 206, 0, True), _month("2026-10", 50, 12, True)]),
            "live": _figures([_month("2026-11", 40, 40, True)]),
        },
    )
    assert "warm: served log loss worse than the base rate's in 1 of 2 months: " in text
    assert "2026-08 (0.337 vs 0.336, n=206, none live)" in text
    assert "warm: no live model served in those months" in text
    assert "2026-10 (0.337 vs 0.336, n=50, 12 live)" in text
    assert "mixed: no live model" not in text
    assert "2026-11 (0.337 vs 0.336, n=40, all live)" in text
    assert "live: no live model" not in text
