"""A promoted model's status follows the live AUC shown beside it (docs/OPERATING.md,
"Model status": ``poor`` while the live AUC over ``metrics_window`` is below ``min_auc``).

The status used to be the one the version was published with: a model promoted while its
AUC was fine kept ``live`` in ``customer-ai models``, ``GET /models`` and
``customer_ai_model_status`` however low its live AUC fell while the trainer refused every
later candidate, and a ``min_auc`` raised in the configuration changed nothing until the
next promotion.
"""

from __future__ import annotations

import orjson

from models.model import LinearModel
from stream.ops import metrics
from stream.ops.models_view import model_summary


def _published(status: str, warming_up: bool = False) -> LinearModel:
    model = LinearModel.from_json(LinearModel.cold("conversion", ["a"]).to_json())
    model.version, model.status, model.warming_up = 7, status, warming_up
    return model


def _learner(scores: list[float], labels: list[int]) -> bytes:
    return orjson.dumps({"metrics": {"scores": scores, "labels": labels}})


GOOD = _learner([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])  # live AUC 1.0
BAD = _learner([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])  # live AUC 0.0


def test_a_live_version_whose_live_auc_fell_below_min_auc_is_poor() -> None:
    row = model_summary(_published("live"), BAD, 0.65)
    assert (row["live"]["auc"], row["status"]) == (0.0, "poor")
    assert model_summary(_published("poor"), GOOD, 0.65)["status"] == "live"
    assert model_summary(_published("live"), GOOD, 1.1)["status"] == "poor"  # min_auc edited


def test_warming_up_and_unknown_figures_keep_the_published_status() -> None:
    assert model_summary(_published("warming_up", True), BAD, 0.65)["status"] == "warming_up"
    assert model_summary(_published("live"), None, 0.65)["status"] == "live"  # no live AUC
    assert model_summary(_published("live"), BAD)["status"] == "live"  # no min_auc given


def test_the_status_series_follows_the_trainer() -> None:
    metrics.observe_model("g-status", 3, {}, "live")
    metrics.observe_status("g-status", "poor")
    values = {
        s: metrics.MODEL_STATUS.labels(goal="g-status", status=s)._value.get()
        for s in metrics.MODEL_STATUSES
    }
    assert values == {"warming_up": 0.0, "live": 0.0, "poor": 1.0}


def test_a_cold_goal_shows_no_made_up_base_rate() -> None:
    row = model_summary(LinearModel.cold("conversion", ["a"]), None, 0.65)
    assert (row["version"], row["n_examples"], row["base_rate"]) == (0, 0, None)
    published = _published("warming_up", True)
    published.base_rate = 0.07
    assert model_summary(published, None, 0.65)["base_rate"] == 0.07
