"""The output messages of docs/DESIGN.md, encoded from what the engine produced.

Pure functions of the core's objects (no I/O): :func:`score_message`,
:func:`segment_message` and :func:`example_message` write one message each;
:func:`encode_outcome` writes a whole batch's :class:`~models.outcome.Outcome` (factors
computed per model in numpy, one time text per event time) and counts what it wrote, so
the scorer only hands the messages to the producer.

Examples
--------
>>> from models.outcome import SegmentChange
>>> segment_message(SegmentChange("p-1", "churn", None, "high", 0.7123456789, 0))
b'{"profile_id":"p-1","goal":"churn","from":null,"to":"high","probability":0.712346,"event_time":"1970-01-01T00:00:00.000Z"}'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from models.engine import Engine
from models.explain import explain_scores
from models.outcome import Example, Outcome, Score, SegmentChange
from models.profile import format_time, profile_scores
from models.rounding import rounded
from models.state import GoalState, ProfileState

__all__ = [
    "EncodedOutcome",
    "OutMessage",
    "encode_outcome",
    "example_from_message",
    "example_message",
    "latest_score_part",
    "latest_scores_message",
    "profile_scores_message",
    "score_message",
    "scores_field",
    "segment_message",
]

#: ``(topic, key, value)``; a ``None`` value is a tombstone (the key's profile was removed)
OutMessage = tuple[str, "bytes | None", "bytes | None"]


def score_message(score: Score, scored_at: str, event_time: str | None = None) -> bytes:
    """The ``customer-ai.scores`` message of docs/DESIGN.md.

    ``event_time`` is ``format_time(score.event_time_ms)``, when the caller has it.
    """
    return orjson.dumps(
        {
            "profile_id": score.profile_id,
            "goal": score.goal,
            "probability": None if score.probability is None else rounded(score.probability, 6),
            "percentile": None if score.percentile is None else rounded(score.percentile, 1),
            "bucket": score.bucket,
            "model_version": score.model_version,
            "warming_up": score.warming_up,
            "factors": score.factors,  # Factor dicts: feature, label, value, contribution
            "event_id": score.event_id,
            "event_time": event_time or format_time(score.event_time_ms),
            "scored_at": scored_at,
            "trigger": score.trigger,
        }
    )


def segment_message(change: SegmentChange, event_time: str | None = None) -> bytes:
    """The ``customer-ai.segments`` message.

    ``event_time`` is ``format_time(change.event_time_ms)``, when the caller has it.
    """
    return orjson.dumps(
        {
            "profile_id": change.profile_id,
            "goal": change.goal,
            "from": change.from_bucket,
            "to": change.to_bucket,
            "probability": None if change.probability is None else rounded(change.probability, 6),
            "event_time": event_time or format_time(change.event_time_ms),
        }
    )


def example_message(example: Example) -> bytes:
    """The ``customer-ai.training`` message: a matured example with its served probability."""
    return orjson.dumps(
        {
            "example_id": example.example_id,
            "goal": example.goal,
            "profile_id": example.profile_id,
            "prediction_time": example.prediction_ts,
            "label": example.label,
            "probability": example.probability,
            "model_version": example.model_version,
            "features": example.features,
            "matured_time": example.matured_ts,
            "served_warming_up": example.served_warming_up,
            "layout": example.layout,
            "trigger": example.trigger,
        }
    )


def example_from_message(raw: bytes) -> Example:
    """The :class:`~models.outcome.Example` of a :func:`example_message`."""
    d = orjson.loads(raw)
    return Example(
        d["example_id"],
        d["goal"],
        d["profile_id"],
        d["prediction_time"],
        d["label"],
        d["probability"],
        d["model_version"],
        d["features"],
        d["matured_time"],
        bool(d.get("served_warming_up", False)),
        str(d.get("layout", "")),
        str(d.get("trigger", "event")),
    )


def profile_scores_message(profile_id: str, scores: dict[str, Any]) -> bytes:
    """The ``customer-ai.profile-scores`` message (docs/DESIGN.md, "Latest scores per
    profile"): every goal's current score of one profile, ``scores`` as
    :func:`models.profile.profile_scores` gives them (the ``scores`` of ``GET
    /profiles/{id}``).

    >>> profile_scores_message("p-1", {})
    b'{"profile_id":"p-1","scores":{}}'
    """
    return orjson.dumps({"profile_id": profile_id, "scores": scores})


def latest_score_part(message: bytes, event_time: str) -> bytes:
    """One goal's value in the latest-scores message, cut from the goal's score message
    (:func:`score_message`): its fields ``probability`` to ``factors`` as they are, then
    ``scored_at``, the score's event time. The bytes :func:`profile_scores_message` writes
    for that goal, without encoding the factors a second time.

    >>> message = b'{"profile_id":"p","goal":"g","probability":0.5,"factors":[],"event_id":"e"}'
    >>> latest_score_part(message, "2026-01-01T00:00:00.000Z")
    b'{"probability":0.5,"factors":[],"scored_at":"2026-01-01T00:00:00.000Z"}'
    """
    # the keys are found as written: a string value holds a quote escaped, never bare
    start = message.index(b',"probability":') + 1
    end = message.rindex(b',"event_id":')
    return b"{" + message[start:end] + b',"scored_at":"' + event_time.encode() + b'"}'


def latest_scores_message(
    engine: Engine, profile_id: str, state: ProfileState, parts: dict[str, bytes]
) -> bytes:
    """:func:`profile_scores_message` of ``state``'s current scores, taking each goal's
    value from ``parts`` (goal -> :func:`latest_score_part` of the score it was served in
    this batch) and encoding only the others (:func:`models.profile.profile_scores`).
    The same bytes as ``profile_scores_message(profile_id, profile_scores(engine, state))``.
    """
    chunks: list[bytes] = []
    slow: dict[str, Any] | None = None
    for name, gs in state.goals.items():
        if gs.probability is None:
            continue  # left out, as the profile view leaves it out
        part = parts.get(name)
        if part is None:
            if slow is None:
                slow = profile_scores(engine, state)
            part = orjson.dumps(slow[name])
        chunks.append(orjson.dumps(name) + b":" + part)
    return b'{"profile_id":' + orjson.dumps(profile_id) + b',"scores":{' + b",".join(chunks) + b"}}"


def scores_field(goals: dict[str, GoalState]) -> bytes:
    """The profile hash's readable ``scores`` field (docs/DESIGN.md, "Profile hash"): per
    goal with a score, its probability, percentile, bucket and model version, rounded as in
    the score messages (6 and 1 decimals). ``customer-ai segment`` checks each member's
    bucket in it.

    >>> scores_field({"conversion": GoalState(0.2512345678, 80.04, "high", 2), "churn": GoalState()})
    b'{"conversion":{"probability":0.251235,"percentile":80.0,"bucket":"high","model_version":2}}'
    """
    return orjson.dumps(
        {
            g: {
                "probability": rounded(s.probability, 6),
                "percentile": None if s.percentile is None else rounded(s.percentile, 1),
                "bucket": s.bucket,
                "model_version": s.model_version,
            }
            for g, s in goals.items()
            if s.probability is not None
        }
    )


def _time_text(times: dict[int, str], ms: int) -> str:
    """``format_time(ms)``, made once per event time and kept in ``times``."""
    text = times.get(ms)
    if text is None:
        text = times[ms] = format_time(ms)
    return text


@dataclass
class EncodedOutcome:
    """What :func:`encode_outcome` wrote, counted for the worker's metrics."""

    scores_per_goal: dict[str, int] = field(default_factory=dict)
    #: ``(goal, from bucket or "None", to bucket)`` -> segment changes
    moves: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: ``(goal, "0" or "1")`` -> examples
    examples_per_label: dict[tuple[str, str], int] = field(default_factory=dict)
    #: profile id -> goal -> the features of its newest score's factors, in order
    top_factors: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    #: with ``latest``: profile id -> goal -> :func:`latest_score_part` of its newest score
    latest: dict[str, dict[str, bytes]] = field(default_factory=dict)


def encode_outcome(
    out: Outcome,
    scored_at: str,
    topics: tuple[str, str, str],
    outbox: list[OutMessage],
    latest: bool = False,
) -> EncodedOutcome:
    """Append the messages of ``out`` to ``outbox``, in order: scores, segment changes, examples.

    ``topics`` are the scores, segments and training topics. Scores and segment changes
    are keyed by profile id, examples by example id. Every score gets its factors first
    (:func:`~models.explain.explain_scores`). With ``latest``, each score's part of the
    latest-scores message is kept too (:attr:`EncodedOutcome.latest`).
    """
    scores_topic, segments_topic, training_topic = topics
    explain_scores(out.scores)
    encoded = EncodedOutcome()
    scores_per_goal = encoded.scores_per_goal
    top_factors = encoded.top_factors
    # event time -> its text: an event's scores (one per goal) and bucket changes share it
    times: dict[int, str] = {}
    parts = encoded.latest
    for score in out.scores:
        text = _time_text(times, score.event_time_ms)
        message = score_message(score, scored_at, text)
        outbox.append((scores_topic, score.profile_id.encode(), message))
        scores_per_goal[score.goal] = scores_per_goal.get(score.goal, 0) + 1
        per_goal = top_factors.get(score.profile_id)
        if per_goal is None:
            per_goal = top_factors[score.profile_id] = {}
        per_goal[score.goal] = tuple([f["feature"] for f in score.factors])
        if latest:
            of_profile = parts.get(score.profile_id)
            if of_profile is None:
                of_profile = parts[score.profile_id] = {}
            of_profile[score.goal] = latest_score_part(message, text)
    moves = encoded.moves
    for change in out.segment_changes:
        text = _time_text(times, change.event_time_ms)
        outbox.append((segments_topic, change.profile_id.encode(), segment_message(change, text)))
        move = (change.goal, str(change.from_bucket), str(change.to_bucket))
        moves[move] = moves.get(move, 0) + 1
    per_label = encoded.examples_per_label
    for example in out.examples:
        outbox.append((training_topic, example.example_id.encode(), example_message(example)))
        label = (example.goal, str(example.label))
        per_label[label] = per_label.get(label, 0) + 1
    return encoded
