"""The product learns both goals of the planted ground truth (backtest of the same core)."""

from __future__ import annotations

import pytest

from models.backtest import run_backtest
from models.config import load_config
from models.metrics import roc_auc
from models.synthetic import generate_events
from models.synthetic_behaviour import GROUND_TRUTH
from tests.harness import CONFIG


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return run_backtest(generate_events(profiles=2000, days=540, seed=1), load_config(CONFIG))


@pytest.mark.parametrize("goal", ["conversion", "churn"])
def test_prequential_auc_of_served_model_scores(result, goal: str) -> None:  # type: ignore[no-untyped-def]
    examples = [e for e in result.examples if e.goal == goal]
    warm_up = [e for e in examples if e.served_warming_up]
    assert warm_up and all(
        e.probability == warm_up[0].probability or e.model_version > 0 for e in warm_up
    )
    # accuracy of the scores the models served (not of the base rate served while warming up)
    examples = [e for e in examples if not e.served_warming_up]
    assert len({e.label for e in examples}) == 2
    auc = roc_auc([e.probability for e in examples], [e.label for e in examples])
    assert auc is not None and auc >= 0.75, (
        f"{goal}: prequential AUC {auc:.3f} over {len(examples)} examples"
    )


@pytest.mark.parametrize("goal", ["conversion", "churn"])
def test_models_leave_warm_up_and_recover_key_drivers(result, goal: str) -> None:  # type: ignore[no-untyped-def]
    model = result.engine.models[goal]
    assert not model.warming_up and model.version > 0
    weights = dict(zip(model.feature_names, model.weights))
    for feature in GROUND_TRUTH[goal]["key_drivers"]:
        sign = GROUND_TRUTH[goal]["drivers"][feature]
        assert weights[feature] * sign > 0, (
            f"{goal}: {feature} weight {weights[feature]:+.3f}, planted sign {sign:+d}"
        )
