"""Factors explained per batch (numpy) are exactly those explained one score at a time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import load_config
from models.engine import Engine
from models.events import validate_event
from models.explain import EXPLAIN_BATCH_MIN, explain_scores
from models.model import LinearModel, transform
from models.outcome import Outcome, Score
from models.state import ProfileState
from models.synthetic import iter_events
from tests.harness import CONFIG

CFG = load_config(CONFIG)

# few distinct values, so that equal contributions (ties, broken by name) are common
WEIGHTS = st.sampled_from([0.0, 0.0, 1.0, -1.0, 0.5, -2.25, 1e-9, 3.0])
FEATURE_VALUES = st.sampled_from([0.0, 0.0, 1.0, 2.0, 0.5, 1e-7, 3.75, 1e6, -4.0])


def _model(
    goal: str, names: list[str], weights: list[float], mean: float, std: float
) -> LinearModel:
    d = len(names)
    return LinearModel(goal, 1, names, [mean] * d, [std] * d, weights, -1.0, warming_up=False)


@st.composite
def scored_batches(draw: st.DrawFn) -> tuple[list[Score], list[Score]]:
    """Two identical lists of unexplained scores over two models (and a few explained)."""
    d = draw(st.integers(1, 12))
    # names not in position order, so "ties by name" differs from "ties by position"
    names = draw(st.permutations([f"f{chr(97 + i)}" for i in range(d)]))
    parts = [(n, n.upper()) for n in names]
    models = [
        _model(
            goal,
            names,
            draw(st.lists(WEIGHTS, min_size=d, max_size=d)),
            draw(st.sampled_from([0.0, 0.25, 1.5])),
            draw(st.sampled_from([1.0, 0.3, 7.0])),
        )
        for goal in ("a", "b")
    ]
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, 1),
                st.lists(FEATURE_VALUES, min_size=d, max_size=d),
                st.sampled_from([False] * 7 + [True]),
            ),
            # both paths: most draws give a model EXPLAIN_BATCH_MIN unexplained scores
            min_size=EXPLAIN_BATCH_MIN // 2,
            max_size=5 * EXPLAIN_BATCH_MIN,
        )
    )

    def scores() -> list[Score]:
        made = []
        for which, vector, known in rows:
            model = models[which]
            basis = (model, vector, transform(vector), parts)
            score = Score("p", model.goal, 0.5, 50.0, "m", 1, False, None, "e", 0, basis)
            if known:
                score.factors = [
                    {"feature": "kept", "label": "", "value": 0.0, "contribution": 0.0}
                ]
            made.append(score)
        return made

    return scores(), scores()


@settings(max_examples=300, deadline=None)
@given(scored_batches())
def test_batch_factors_equal_one_by_one(batches: tuple[list[Score], list[Score]]) -> None:
    batch, one_by_one = batches
    explain_scores(batch)
    assert [s.factors for s in batch] == [s.factors for s in one_by_one]


def test_engine_scores_explained_in_batch_equal_the_lazy_factors() -> None:
    engine = Engine(CFG)
    names = engine.featurizer.names
    for k, goal in enumerate(engine.models):
        weights = [((i * 7 + k) % 5 - 2) * 0.4 for i in range(len(names))]
        engine.set_model(_model(goal, names, weights, 0.3, 1.2))
    batch, lazy = Outcome(), Outcome()
    states: dict[str, ProfileState] = {}
    for body in iter_events(60, 30, seed=5):
        event = validate_event(body)
        states[event.profile_id] = engine.process(states.get(event.profile_id), event, batch)
    for score in batch.scores:  # the same scores, to be explained one by one
        lazy.scores.append(
            Score(
                score.profile_id,
                score.goal,
                score.probability,
                score.percentile,
                score.bucket,
                score.model_version,
                score.warming_up,
                None,
                score.event_id,
                score.event_time_ms,
                score._basis,
            )
        )
    assert len(batch.scores) > 4 * EXPLAIN_BATCH_MIN
    explain_scores(batch.scores)
    assert all(s._factors is not None for s in batch.scores)  # every one explained
    assert [s.factors for s in batch.scores] == [s.factors for s in lazy.scores]
    assert all(len(s.factors) == 5 for s in batch.scores)


@st.composite
def shared_vector_batches(draw: st.DrawFn) -> tuple[list[Score], list[Score]]:
    """As the engine makes them: per event one transformed list, shared by the scores of
    the goals that scored it (some events by one goal only, in either order)."""
    d = draw(st.integers(1, 8))
    names = [f"f{i}" for i in range(d)]
    parts = [(n, n.upper()) for n in names]
    models = [
        _model(goal, names, draw(st.lists(WEIGHTS, min_size=d, max_size=d)), 0.25, 1.5)
        for goal in ("a", "b")
    ]
    # some batches where one goal scores a subset of the other's events (row orders differ)
    subsets = draw(
        st.sampled_from([[(0,), (1,), (0, 1), (1, 0)], [(1,), (0, 1), (1, 0)], [(0, 1), (1, 0)]])
    )
    events = draw(
        st.lists(
            st.tuples(st.lists(FEATURE_VALUES, min_size=d, max_size=d), st.sampled_from(subsets)),
            min_size=EXPLAIN_BATCH_MIN,
            max_size=4 * EXPLAIN_BATCH_MIN,
        )
    )

    def scores() -> list[Score]:
        made = []
        for vector, which in events:
            transformed = transform(vector)
            for m in which:
                basis = (models[m], vector, transformed, parts)
                made.append(
                    Score("p", models[m].goal, 0.5, 50.0, "m", 1, False, None, "e", 0, basis)
                )
        return made

    return scores(), scores()


@settings(max_examples=300, deadline=None)
@given(shared_vector_batches())
def test_batch_factors_equal_one_by_one_when_goals_share_vectors(
    batches: tuple[list[Score], list[Score]],
) -> None:
    batch, one_by_one = batches
    explain_scores(batch)
    assert [s.factors for s in batch] == [s.factors for s in one_by_one]
