"""Output messages: the docs/DESIGN.md fields, in order, keyed and counted as the worker needs.

Contract: docs/DESIGN.md, sections "Scores", "Segment changes" and "Training examples".
"""

from __future__ import annotations

import orjson

from models.config import load_config
from models.engine import Engine
from models.events import Event
from models.messages import encode_outcome, example_from_message, example_message
from models.model import LinearModel
from models.outcome import Example, Outcome
from tests.harness import CONFIG, SCORE_FIELDS

TOPICS = ("t.scores", "t.segments", "t.training")


def _engine() -> Engine:
    config = load_config(CONFIG)
    engine = Engine(config)
    names = engine.featurizer.names
    d = len(names)
    trained = LinearModel(
        "conversion",
        3,
        list(names),
        [0.1] * d,
        [1.0] * d,
        [0.05 * (i + 1) * (-1) ** i for i in range(d)],
        -1.0,
        warming_up=False,
    )
    engine.set_model(trained)
    return engine


def _event(n: int, profile: str, ts: int) -> Event:
    return Event(
        f"e-{n}",
        profile,
        "web.webpagedetails.pageViews",
        ts,
        {"eventType": "web.webpagedetails.pageViews"},
    )


def test_a_batch_is_encoded_scores_then_segment_changes_with_their_counts() -> None:
    engine = _engine()
    out = Outcome()
    state = None
    for n, ts in enumerate([1_772_359_200_123, 1_772_359_260_000]):
        state = engine.process(state, _event(n, "p-1", ts), out)
    engine.process(None, _event(9, "p-2", 1_772_359_260_000), out)
    outbox: list = []
    encoded = encode_outcome(out, "2026-03-01T10:01:05.000Z", TOPICS, outbox)

    n_scores, n_changes = len(out.scores), len(out.segment_changes)
    assert [t for t, _, _ in outbox] == ["t.scores"] * n_scores + ["t.segments"] * n_changes
    assert n_changes >= 2  # every first score enters a bucket
    scores = [orjson.loads(v) for t, _, v in outbox if t == "t.scores"]
    for (_, key, _), message, score in zip(outbox, scores, out.scores):
        assert list(message) == list(SCORE_FIELDS)
        assert key == score.profile_id.encode()
        assert message["factors"] == score.factors
        assert message["scored_at"] == "2026-03-01T10:01:05.000Z"
    assert scores[0]["event_time"] == "2026-03-01T10:00:00.123Z"
    conversion = [m for m in scores if m["goal"] == "conversion"]
    assert conversion and all(len(m["factors"]) == 5 for m in conversion)  # trained: factors
    assert encoded.scores_per_goal == {"conversion": 3}  # churn: only after a purchase
    assert sum(encoded.moves.values()) == n_changes
    # the segment index keeps each profile's newest factors per goal
    newest = [m for m in conversion if m["profile_id"] == "p-1"][-1]
    assert encoded.top_factors["p-1"]["conversion"] == tuple(
        f["feature"] for f in newest["factors"]
    )


def test_examples_are_keyed_by_example_id_and_round_trip() -> None:
    example = Example("p-1|churn|5|e-1", "churn", "p-1", 5, 1, 0.25, 2, [0.5, 1.0], 9, True)
    out = Outcome(examples=[example])
    outbox: list = []
    encoded = encode_outcome(out, "now", TOPICS, outbox)
    assert outbox == [("t.training", b"p-1|churn|5|e-1", example_message(example))]
    assert encoded.examples_per_label == {("churn", "1"): 1}
    assert example_from_message(example_message(example)) == example


def test_a_model_snapshot_reads_every_field_it_writes_and_ignores_newer_ones() -> None:
    """LinearModel.from_json builds from the fields it knows: all of its own (none
    forgotten in the list it filters by) and none of a newer version's."""
    import dataclasses

    from models.model import _MODEL_FIELDS, LinearModel

    assert {f.name for f in dataclasses.fields(LinearModel)} == _MODEL_FIELDS
    model = LinearModel.cold("conversion", ["a", "b"])
    newer = orjson.loads(model.to_json()) | {"calibration_c": 0.5}
    assert LinearModel.from_json(orjson.dumps(newer)).to_json() == model.to_json()
