"""The public JSON view of one profile, shared by ``customer-ai profile ID --json``,
``GET /profiles/{id}`` and the backtest's ``profiles.jsonl`` (one schema everywhere).

Examples
--------
>>> from models.config import parse_config
>>> from models.engine import Engine
>>> from models.outcome import Outcome
>>> from models.events import Event
>>> text = open("customer-ai.toml").read().replace("window_days = 30", "window_days = 30" + chr(10) + "prior = 0.05")
>>> engine = Engine(parse_config(text))
>>> ev = Event("e-1", "p-1", "commerce.productViews", 0, {"eventType": "commerce.productViews"})
>>> doc = profile_document(engine, "p-1", engine.process(None, ev, Outcome()))
>>> doc["features"]["product_view_count_total"], sorted(doc["scores"])
(1.0, ['conversion'])
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from models.engine import Engine
from models.explain import explain_scores
from models.factors import Factor, importance
from models.migrate import partial_features
from models.rounding import rounded
from models.state import NEVER, GoalState, ProfileState

__all__ = [
    "format_time",
    "profile_document",
    "profile_documents",
    "profile_scores",
    "served_factors",
]


_DAY_MS = 86_400_000
_day_prefixes: dict[int, str] = {}
_DIGITS2: list[str] = [f"{i:02d}" for i in range(100)]
_DIGITS3: list[str] = [f"{i:03d}" for i in range(1000)]


def format_time(ms: int) -> str:
    """Epoch milliseconds -> ISO-8601 UTC with millisecond precision.

    Called for every score message: the date part is looked up per day, the time of
    day is plain integer arithmetic (a third of ``datetime.strftime``'s cost).

    >>> format_time(0), format_time(1772359200123)
    ('1970-01-01T00:00:00.000Z', '2026-03-01T10:00:00.123Z')
    """
    day, rest = divmod(ms, _DAY_MS)
    prefix = _day_prefixes.get(day)
    if prefix is None:
        if len(_day_prefixes) > 100_000:
            _day_prefixes.clear()
        prefix = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")
        _day_prefixes[day] = prefix
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    # zero-padded digits from tables: the same text as f"{hour:02d}..." at a third of its
    # cost once compiled (mypyc formats a format spec generically)
    return "".join(
        (
            prefix,
            _DIGITS2[hour],
            ":",
            _DIGITS2[minute],
            ":",
            _DIGITS2[second],
            ".",
            _DIGITS3[millis],
            "Z",
        )
    )


def profile_document(engine: Engine, profile_id: str, state: ProfileState) -> dict[str, Any]:
    """Features (as of the profile's newest event), last scores per goal (each with the
    event time of the features it saw, ``scored_at``), pending labels.

    ``scores`` holds only goals the profile has been served a probability for. Each is
    the goal's last served score as the state holds it: ``probability``, ``percentile``,
    ``bucket``, ``model_version``, ``warming_up`` and ``factors`` all from that one
    scoring (the model version that served it, on the features it saw), never
    recomputed with the model served now. A warm-up score has no factors; so has a score
    stored by a version that did not keep factors in the state, until the goal is scored
    again. Each factor gets its label (from the configuration; the feature's name if it
    is no longer configured) and its :func:`~models.factors.importance`.
    ``partial_features`` (feature -> time) lists the features a configuration edit
    started or restarted at that time (:mod:`models.migrate`) that the profile has not
    yet been seen over the longest horizon since: they cover less history than their
    names say.
    """
    fz = engine.featurizer
    vector = fz.vector(state)
    return {
        "profile_id": profile_id,
        "first_seen": format_time(state.first_ts),
        "last_event_time": format_time(state.ref_ts),
        "events_applied": state.n_events,
        "features": {n: _round6(v) for n, v in zip(fz.names, vector)},
        "scores": profile_scores(engine, state),
        "pending_labels": {name: len(gs.pending) for name, gs in state.goals.items()},
        "partial_features": {
            n: format_time(t) for n, t in partial_features(state, fz.layout).items()
        },
    }


def profile_scores(engine: Engine, state: ProfileState) -> dict[str, Any]:
    """The ``scores`` of :func:`profile_document`: per goal the profile has been served a
    probability for, its last served score whole (``probability``, ``percentile``,
    ``bucket``, ``model_version``, ``warming_up``, ``factors`` and ``scored_at``). The
    value of the latest-scores topic (:func:`models.messages.profile_scores_message`)."""
    fz = engine.featurizer
    names, labels = fz.names, fz.labels
    scores: dict[str, Any] = {}
    for name, gs in state.goals.items():
        if gs.probability is None:
            continue  # never scored, or only while cold with no prior (no probability)
        scores[name] = {
            # the probability and percentile as the score message wrote them (6, 1 decimals)
            "probability": rounded(gs.probability, 6),
            "percentile": None if gs.percentile is None else rounded(gs.percentile, 1),
            "bucket": gs.bucket,
            "model_version": gs.model_version,
            "warming_up": gs.warming_up,
            "factors": served_factors(gs, names, labels),
            # the event time of the features that score saw (a scheduled rescoring's is
            # later than the last event: ``features`` are as of the last event)
            "scored_at": format_time(gs.scored_ts if gs.scored_ts != NEVER else state.ref_ts),
        }
    return scores


def profile_documents(engine: Engine, states: Mapping[str, ProfileState]) -> list[dict[str, Any]]:
    """:func:`profile_document` of every profile of ``states`` (profile id -> state), in
    its order: the same documents, built in one batch.

    The factors of the profiles' last served scores not read yet are computed together,
    per model (:func:`models.explain.explain_scores`: the very doubles the one-by-one
    path gives).

    >>> from models.config import parse_config
    >>> from models.engine import Engine
    >>> from models.outcome import Outcome
    >>> from models.events import Event
    >>> engine = Engine(parse_config(open("customer-ai.toml").read()))
    >>> ev = Event("e-1", "p-1", "commerce.productViews", 0, {"eventType": "commerce.productViews"})
    >>> states = {"p-1": engine.process(None, ev, Outcome())}
    >>> profile_documents(engine, states) == [profile_document(engine, "p-1", states["p-1"])]
    True
    """
    explain_scores(
        [
            gs._served
            for state in states.values()
            for gs in state.goals.values()
            if gs._served is not None
        ]
    )
    return [profile_document(engine, profile_id, state) for profile_id, state in states.items()]


def _round6(v: float) -> float:
    """``v`` to 6 decimals (:func:`~models.rounding.rounded`, as every served number),
    skipped for a whole number (counts, capped recencies, zeros: most features), which
    it returns unchanged.

    >>> _round6(3.0), _round6(2 / 3), _round6(-0.0), _round6(1e300)
    (3.0, 0.666667, -0.0, 1e+300)
    """
    return v if v == v // 1.0 else rounded(v, 6)


def served_factors(gs: GoalState, names: list[str], labels: dict[str, str]) -> list[Factor]:
    """The factors of a goal's last served score, as the score message wrote them.

    ``names`` are the features of the state's layout (the state's factors name a feature
    by its position in them, or by name when the layout lost it), ``labels`` their labels.

    >>> gs = GoalState(0.3, 80.0, "high", 4, factors=[[1, 2.0, -0.9], ["gone", 1.0, 0.25]])
    >>> [(f["feature"], f["label"], f["contribution"], f["importance"])
    ...  for f in served_factors(gs, ["a", "b"], {"a": "A", "b": "B"})]
    [('b', 'B', -0.9, 'high'), ('gone', 'gone', 0.25, 'medium')]
    """
    served = gs._served
    if served is not None:
        # scored in this process (a backtest, the scorer's batch): the score's own factor
        # dicts, the very values the rows below rebuild; the score stays (freed with the
        # state, or when the state is encoded)
        factors: list[Factor] = served.factors
        return factors
    factors = []
    for key, value, contribution in gs.factor_rows():
        feature = names[key] if isinstance(key, int) and 0 <= key < len(names) else str(key)
        factors.append(
            {
                "feature": feature,
                "label": labels.get(feature, feature),
                "value": value,
                "contribution": contribution,
                "importance": importance(contribution),
            }
        )
    return factors
