"""The leakage guard's flags (:mod:`models.leakage`), without servers."""

from __future__ import annotations

import numpy as np

from models.config import load_config, parse_config
from models.features import Featurizer
from models.leakage import (
    AUC_ALONE_THRESHOLD,
    MIN_EXAMPLES_PER_CLASS,
    goal_event_features,
    goal_event_warnings,
    leakage_flags,
    leakage_report,
)
from tests.harness import CONFIG

CFG = load_config(CONFIG)

SHORT_TEXT = """
[features]
horizons_days = [7, 90]
[[events]]
name = "visit"
label = "Visits"
when = { field = "eventType", op = "equals", value = "visit" }
[[events]]
name = "signup"
label = "Sign-ups"
when = { field = "eventType", op = "equals", value = "signup" }
[[goals]]
name = "signs_up"
type = "occurs"
event = "signup"
window_days = 14
"""
SHORT = parse_config(SHORT_TEXT)


def test_goal_event_features_are_every_feature_of_the_goals_event() -> None:
    purchase = Featurizer(CFG).layout.event_features("purchase")
    assert goal_event_features(CFG) == {"conversion": purchase, "churn": purchase}
    assert purchase[:4] == [
        "purchase_count_7d", "purchase_count_30d", "purchase_count_90d", "purchase_days_since_last",
    ]  # fmt: skip
    assert goal_event_features(SHORT) == {
        "signs_up": [
            "signup_count_7d",
            "signup_count_90d",
            "signup_days_since_last",
            "signup_count_total",
        ]
    }


def test_an_eligibility_that_leaves_out_the_event_clears_the_flags() -> None:
    first = SHORT_TEXT.replace(
        "window_days = 14",
        'window_days = 14\neligibility = { field = "signup_count_total", op = "lt", value = 1 }',
    )
    config = parse_config(first)
    assert goal_event_features(config) == {"signs_up": []}
    assert goal_event_warnings(config) == []


def test_the_worker_warning_names_the_features_and_the_fix() -> None:
    (line,) = goal_event_warnings(SHORT)
    assert "goal 'signs_up' reads its own event 'signup' through" in line
    assert "signup_count_7d, signup_count_90d, signup_days_since_last, signup_count_total" in line
    assert 'eligibility = { field = "signup_count_total", op = "lt", value = 1 }' in line
    # the condition it suggests is one the configuration takes: its goal is then eligible
    # only before the first sign-up, and the warning goes
    suggested = line.split("give it ")[1].split(" (customer-ai")[0]
    text = SHORT_TEXT.replace("window_days = 14", f"window_days = 14\n{suggested}")
    (goal,) = parse_config(text).goals
    assert goal.eligibility is not None and goal.eligibility_fields == ("signup_count_total",)
    assert goal.eligibility({"signup_count_total": 0.0})
    assert not goal.eligibility({"signup_count_total": 1.0})
    assert goal_event_warnings(parse_config(text)) == []
    # a churn goal (does_not_occur, an eligibility already): no eligibility to add
    conversion, churn = goal_event_warnings(CFG)
    assert "give it eligibility" in conversion
    assert "eligibility =" not in churn and "repeat behaviour" in churn


def check(features: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    names = [f"f{i}" for i in range(features.shape[1])]
    rows = leakage_flags(SHORT.goals[0], SHORT, names, {}, features, labels)
    return {r["feature"]: r["auc_alone"] for r in rows}


def test_auc_alone_flags_a_feature_either_way_round_at_the_threshold() -> None:
    rng = np.random.default_rng(7)
    y = np.array([0, 1] * 200)
    noise = rng.normal(size=400)
    perfect_down = -y * 3.0  # high values mean negatives: flagged too
    # exactly at the threshold: 95% of the positives above every negative
    at = np.where(y == 1, 1.0, 0.0)
    at[np.flatnonzero(y == 1)[:10]] = -1.0  # 10 of 200 positives below every negative
    flagged = check(np.column_stack([noise, perfect_down, at]), y)
    assert flagged == {"f1": 1.0, "f2": AUC_ALONE_THRESHOLD}


def test_the_threshold_is_compared_before_rounding() -> None:
    x = np.r_[np.arange(500.0), [474.5] * 49 + [473.5]]
    y = np.r_[np.zeros(500), np.ones(50)]
    assert check(x.reshape(-1, 1), y) == {}  # exactly 0.94996: rounds to 0.95, not flagged


def test_a_goal_event_feature_constant_over_the_examples_is_not_flagged() -> None:
    y = np.array([0, 1] * 40)
    features = np.column_stack([np.zeros(80), np.arange(80.0) % 5])
    rows = leakage_flags(
        SHORT.goals[0], SHORT, ["signup_count_7d", "signup_count_90d"], {}, features, y
    )
    assert [r["feature"] for r in rows] == ["signup_count_90d"]


def test_too_few_examples_of_a_label_are_not_checked() -> None:
    n = MIN_EXAMPLES_PER_CLASS - 1
    y = np.array([1] * n + [0] * 500)
    assert check(y.reshape(-1, 1) * 1.0, y) == {}
    report = leakage_report(SHORT.goals[0], SHORT, ["f0"], {}, [[float(v)] for v in y], y)
    assert report["n_examples_checked"] is None and report["flagged"] == []


def test_rows_of_another_layout_are_left_out() -> None:
    y = [0, 1] * 40
    rows = [[float(v), float(i % 3)] for i, v in enumerate(y)] + [[1.0]] * 30  # another width
    report = leakage_report(
        SHORT.goals[0], SHORT, ["echo", "signup_count_7d"], {}, rows, y + [0] * 30
    )
    assert report["n_examples_checked"] == 80
    assert [(r["feature"], r["reasons"]) for r in report["flagged"]] == [
        ("echo", ["auc_alone"]),
        ("signup_count_7d", ["goal_event"]),
    ]


def test_an_eligibility_on_an_attribute_keeps_the_flags() -> None:
    """The check cannot know a profile's attributes: it assumes they may let it in."""
    text = SHORT_TEXT.replace(
        "window_days = 14",
        'window_days = 14\neligibility = { field = "credit", op = "gt", value = 0 }',
    )
    text += '[[attributes]]\nname = "credit"\nfield = "c"\ntype = "numeric"\n'
    assert goal_event_features(parse_config(text))["signs_up"]
