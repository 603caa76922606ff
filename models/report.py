"""Evaluation of a backtest: the metrics, tables and curves per goal that the report shows.

Pure functions over matured examples (the probability *served* at prediction time
and the label that matured later), so every number is an honest prequential one.

Which examples are scored
    Near the end of a replay an ``occurs`` goal's positives mature early (the goal
    event arrived) while its negatives are still pending, and ``does_not_occur``
    mirrors that. Metrics therefore use only the examples whose window had closed by
    the final watermark (:func:`closed_window_examples`); ``n_matured`` counts every
    matured example (the rows of ``examples.csv``) and ``n_open_window`` those left out.
Buckets
    An example's bucket is its probability's rank among the goal's examples, cut at
    the configured percentile thresholds (served scores are ranked among the goal's
    profiles under their model version instead: ``LinearModel.percentile``).

:func:`build_report` gathers everything the report shows, as plain JSON-able data
(:func:`examples_report`, then :func:`with_profiles`);
:func:`models.report_html.render_html` turns it into one HTML page.

Examples
--------
>>> probs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
>>> labels = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
>>> m = goal_metrics(probs, labels)
>>> m["n_examples"], m["n_positive"], m["base_rate"], m["lift_top_decile"]
(10, 3, 0.3, 3.3333)
>>> round(m["auc"], 4)
0.9524
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from models.config import DAY_MS, Config
from models.features import Featurizer
from models.leakage import leakage_report
from models.metrics import Floats, Labels, expected_calibration_error, log_loss, roc_auc
from models.model import LinearModel
from models.outcome import Example
from models.profile import format_time
from models.quality import (
    grouped_quality,
    is_live,
    month_of,
    quality_figures,
    running_base_rates_of,
)

__all__ = [
    "BUCKET_TOP_FEATURES",
    "auc_over_time",
    "bucket_table",
    "build_report",
    "calibration_curve",
    "closed_window_examples",
    "decile_table",
    "examples_report",
    "goal_metrics",
    "histogram",
    "top_factors_by_bucket",
    "version_history",
    "with_profiles",
]


#: the features listed per bucket in the report's top factors (not the factors per score:
#: :data:`models.model.TOP_FACTORS`)
BUCKET_TOP_FEATURES = 5


def closed_window_examples(
    examples: Iterable[Example], config: Config, watermark_ms: int
) -> list[Example]:
    """Examples whose goal window closed strictly before ``watermark_ms``.

    >>> from models.config import parse_config
    >>> cfg = parse_config(open("customer-ai.toml").read())
    >>> day = 86_400_000
    >>> ex = [Example("a", "conversion", "p", 0, 1, 0.5, 0, [], 1),
    ...       Example("b", "conversion", "p", 20 * day, 1, 0.5, 0, [], 21 * day)]
    >>> [e.example_id for e in closed_window_examples(ex, cfg, 40 * day)]
    ['a']
    """
    windows = {g.name: g.window_ms for g in config.goals}
    return [
        e
        for e in examples
        if e.goal in windows and e.prediction_ts + windows[e.goal] < watermark_ms
    ]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def decile_table(probabilities: Floats, labels: Labels) -> list[dict[str, Any]]:
    """Lift and cumulative gains by decile of probability (decile 1: the top 10 %).

    Ties are broken by input order after sorting by decreasing probability.

    >>> rows = decile_table([i / 20 for i in range(20)], [0] * 10 + [1] * 10)
    >>> [(r["decile"], r["n"], r["rate"], r["lift"], r["cumulative_gain"]) for r in rows[:2]]
    [(1, 2, 1.0, 2.0, 0.2), (2, 2, 1.0, 2.0, 0.4)]
    >>> rows[-1]["cumulative_gain"]
    1.0
    """
    n = len(probabilities)
    if n == 0:
        return []
    p, y = _floats(probabilities), _truths(labels)
    total_pos = int(np.count_nonzero(y))
    base = total_pos / n
    # a stable sort by decreasing probability: ties in input order
    order = np.argsort(-p, kind="stable")
    sorted_p, sorted_y = p[order].tolist(), y[order]
    rows: list[dict[str, Any]] = []
    captured = 0
    for d in range(10):
        lo, hi = (d * n) // 10, ((d + 1) * n) // 10
        size = hi - lo
        pos = int(np.count_nonzero(sorted_y[lo:hi]))
        captured += pos
        rate = pos / size if size else 0.0
        rows.append(
            {
                "decile": d + 1,
                "n": size,
                "positives": pos,
                "mean_probability": _round(sum(sorted_p[lo:hi]) / size) if size else None,
                "rate": round(rate, 4),
                "lift": round(rate / base, 4) if base > 0 else None,
                "cumulative_population": round(hi / n, 4),
                "cumulative_gain": round(captured / total_pos, 4) if total_pos else None,
            }
        )
    return rows


def calibration_curve(
    probabilities: Floats, labels: Labels, bins: int = 10
) -> list[dict[str, Any]]:
    """Mean predicted probability against the observed rate in equal-width bins (empty bins left out).

    >>> calibration_curve([0.05, 0.15, 0.15, 0.95], [0, 0, 1, 1])
    [{'lo': 0.0, 'hi': 0.1, 'n': 1, 'mean_probability': 0.05, 'rate': 0.0}, {'lo': 0.1, 'hi': 0.2, 'n': 2, 'mean_probability': 0.15, 'rate': 0.5}, {'lo': 0.9, 'hi': 1.0, 'n': 1, 'mean_probability': 0.95, 'rate': 1.0}]
    """
    p, y = _floats(probabilities), _truths(labels)
    n = min(len(p), len(y))
    p, y = p[:n], y[:n]
    # int() truncates toward zero, as astype does
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    # bincount adds each bin's weights one after another in input order: the sums the
    # loop over the examples made
    sum_p = np.bincount(b, weights=p, minlength=bins).tolist()
    sum_y = np.bincount(b[y], minlength=bins).tolist()
    count = np.bincount(b, minlength=bins).tolist()
    return [
        {
            "lo": round(b / bins, 4),
            "hi": round((b + 1) / bins, 4),
            "n": count[b],
            "mean_probability": round(sum_p[b] / count[b], 4),
            "rate": round(sum_y[b] / count[b], 4),
        }
        for b in range(bins)
        if count[b]
    ]


def bucket_table(
    probabilities: Floats,
    labels: Labels,
    thresholds: Sequence[float],
    names: Sequence[str],
) -> list[dict[str, Any]]:
    """Expected (mean probability) against actual rate per bucket of probability rank.

    >>> rows = bucket_table([0.1, 0.2, 0.3, 0.9], [0, 0, 1, 1], [25, 75], ["low", "medium", "high"])
    >>> [(r["bucket"], r["n"], r["expected"], r["actual"]) for r in rows]
    [('low', 1, 0.1, 0.0), ('medium', 2, 0.25, 0.5), ('high', 1, 0.9, 1.0)]
    """
    n = len(probabilities)
    p, y = _floats(probabilities), _truths(labels)
    order = np.argsort(p, kind="stable")  # ties in input order
    percentile = 100.0 * np.arange(n) / n  # of each rank
    # the first threshold above the rank's percentile names its bucket, else the last
    bucket = np.full(n, len(names) - 1, dtype=np.int64)
    first_of = {name: names.index(name) for name in names}  # a name given twice: one bucket
    for threshold, name in reversed(list(zip(thresholds, names))):
        bucket[percentile < threshold] = first_of[name]
    sorted_p, sorted_y = p[order], y[order]
    rows = []
    for name in names:
        in_bucket = bucket == first_of[name]
        size = int(np.count_nonzero(in_bucket))
        rows.append(
            {
                "bucket": name,
                "n": size,
                "expected": _round(sum(sorted_p[in_bucket].tolist()) / size) if size else None,
                "actual": _round(int(np.count_nonzero(sorted_y[in_bucket])) / size)
                if size
                else None,
            }
        )
    return rows


def auc_over_time(
    times_ms: Sequence[int] | np.ndarray,
    probabilities: Floats,
    labels: Labels,
    periods: int = 12,
) -> list[dict[str, Any]]:
    """AUC, base rate and mean probability over equal spans of prediction time.

    Periods whose examples hold a single class have ``auc`` None.

    >>> rows = auc_over_time([0, 1, 2, 3], [0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], periods=2)
    >>> [(r["start_ms"], r["n"], r["auc"]) for r in rows]
    [(0, 2, 1.0), (2, 2, 1.0)]
    """
    if not len(times_ms):
        return []
    times = np.asarray(times_ms, dtype=np.int64)
    t0, t1 = int(times.min()), int(times.max())
    span = max(1, t1 - t0 + 1)
    period = np.minimum(periods - 1, (times - t0) * periods // span)
    p, y = _floats(probabilities), np.asarray(labels)
    rows = []
    for k in range(periods):
        idx = np.flatnonzero(period == k)  # in input order
        if not len(idx):
            continue
        p_k, y_k = p[idx], y[idx]
        rows.append(
            {
                "start_ms": t0 + k * span // periods,
                "n": len(idx),
                "auc": _round(roc_auc(p_k, y_k)),
                "base_rate": round(sum(y_k.tolist()) / len(idx), 4),
                "mean_probability": round(sum(p_k.tolist()) / len(idx), 4),
            }
        )
    return rows


def histogram(values: Sequence[float], bins: int = 20) -> list[int]:
    """Counts of ``values`` in ``bins`` equal-width bins over [0, 1].

    >>> histogram([0.0, 0.49, 0.5, 1.0], bins=2)
    [2, 2]
    """
    counts = [0] * bins
    for v in values:
        counts[min(max(int(v * bins), 0), bins - 1)] += 1
    return counts


def goal_metrics(
    probabilities: Floats,
    labels: Labels,
    deciles: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """AUC, log loss, ECE, base rate, counts and lift of the top decile (of ``deciles``,
    the :func:`decile_table` of the same examples, when the caller has it).

    >>> goal_metrics([], [])["auc"] is None
    True
    """
    n = len(labels)
    p = _floats(probabilities)
    n_pos = int(np.count_nonzero(_truths(labels)))
    if deciles is None:
        deciles = decile_table(p, labels)
    return {
        "auc": _round(roc_auc(p, labels)),
        "logloss": _round(log_loss(p, labels)),
        "ece": _round(expected_calibration_error(p, labels)),
        "base_rate": _round(n_pos / n) if n else None,
        "mean_probability": _round(sum(p.tolist()) / n) if n else None,
        "n_examples": n,
        "n_positive": n_pos,
        "lift_top_decile": deciles[0]["lift"] if deciles and n_pos else None,
    }


def top_factors_by_bucket(
    profiles: Iterable[dict[str, Any]], goal: str, top: int = BUCKET_TOP_FEATURES
) -> dict[str, list[dict[str, Any]]]:
    """Per bucket, the features most often among the profiles' top factors for ``goal``.

    ``profiles`` are :func:`models.profile.profile_document` objects. Each row gives the
    share of the bucket's profiles that have the feature among their factors and its
    mean signed contribution there.

    >>> docs = [{"scores": {"g": {"bucket": "high", "factors": [
    ...     {"feature": "a", "label": "A", "contribution": 0.5}]}}},
    ...         {"scores": {"g": {"bucket": "high", "factors": [
    ...     {"feature": "a", "label": "A", "contribution": 0.3},
    ...     {"feature": "b", "label": "B", "contribution": -0.1}]}}}]
    >>> top_factors_by_bucket(docs, "g")["high"][0]
    {'feature': 'a', 'label': 'A', 'share': 1.0, 'mean_contribution': 0.4}
    """
    tally = _FactorTally()
    for doc in profiles:
        score = doc.get("scores", {}).get(goal)
        if score:
            tally.add(score)
    return tally.top(top)


class _FactorTally:
    """The factors of one goal's scores per bucket, as :func:`top_factors_by_bucket`
    counts them."""

    def __init__(self) -> None:
        self.n_profiles: dict[str, int] = defaultdict(int)
        self.hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.labels: dict[str, str] = {}

    def add(self, score: dict[str, Any]) -> None:
        """Count a profile's score (a profile document's ``scores[goal]``)."""
        bucket = score.get("bucket")
        if bucket is None:
            return
        self.n_profiles[bucket] += 1
        factors = score.get("factors")
        if not factors:
            return  # a bucket whose profiles have no factors has no row
        hits = self.hits[bucket]
        for f in factors:
            hits[f["feature"]].append(f["contribution"])
            self.labels[f["feature"]] = f.get("label", f["feature"])

    def top(self, top: int) -> dict[str, list[dict[str, Any]]]:
        """Per bucket the ``top`` features by share (ties by name)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for bucket, features in self.hits.items():
            ranked = sorted(features.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
            out[bucket] = [
                {
                    "feature": name,
                    "label": self.labels[name],
                    "share": round(len(cs) / self.n_profiles[bucket], 4),
                    "mean_contribution": round(sum(cs) / len(cs), 4),
                }
                for name, cs in ranked
            ]
        return out


def version_history(models: Iterable[LinearModel], goal: str) -> list[dict[str, Any]]:
    """The versions of ``goal`` published in a backtest: version, created time, counts.

    ``created_at`` is the wall-clock time the backtest published it.
    """
    return [
        {
            "version": m.version,
            "created_at": m.created_at,
            "n_examples": m.n_examples,
            "n_positive": m.n_positive,
            "warming_up": m.warming_up,
        }
        for m in models
        if m.goal == goal
    ]


def _quality(
    prediction_ts: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    rates: np.ndarray,
    live: np.ndarray,
    versions: list[int],
) -> dict[str, Any]:
    """``all``, ``live``, ``months`` and ``versions`` figures of one goal's examples (each
    served a probability), given as columns in prediction-time order."""
    keep = np.flatnonzero(live)
    # the month of each day the examples were served on, formatted once per day
    days, day_of = np.unique(prediction_ts // DAY_MS, return_inverse=True)
    month_of_day = [month_of(day * DAY_MS) for day in days.tolist()]
    months_served = [month_of_day[i] for i in day_of.tolist()]
    months = grouped_quality(months_served, probabilities, labels, rates, live)
    by_version = grouped_quality(versions, probabilities, labels, rates, live)
    first_served: dict[int, int] = {}
    for version, ts in zip(versions, prediction_ts.tolist()):  # the first is the earliest
        first_served.setdefault(version, ts)
    return {
        "all": quality_figures(probabilities, labels, rates),
        "live": quality_figures(probabilities[keep], labels[keep], rates[keep]),
        "months": [{"month": k, **row} for k, row in sorted(months.items())],
        "versions": [
            {"version": k, "first_served": format_time(first_served[k]), **row}
            for k, row in sorted(by_version.items())
        ],
    }


def build_report(
    examples: Sequence[Example],
    config: Config,
    watermark_ms: int,
    profiles: Sequence[dict[str, Any]],
    *,
    models: Sequence[LinearModel] = (),
    promotions: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, per goal, as plain JSON-able data:
    :func:`examples_report` completed by :func:`with_profiles`.

    ``examples`` are all matured examples; metrics use those whose window closed
    before ``watermark_ms``, and the running base rate (:mod:`models.quality`) counts
    every matured example. ``profiles`` are the final profile documents. A goal's
    ``history`` lists the trainer's ``promotions`` (its decisions, when it keeps them:
    rows with a ``goal`` key are filtered by it) or else the published ``models``.
    """
    report = examples_report(examples, config, watermark_ms, models=models, promotions=promotions)
    return with_profiles(report, profiles)


def examples_report(
    examples: Sequence[Example],
    config: Config,
    watermark_ms: int,
    *,
    models: Sequence[LinearModel] = (),
    promotions: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The part of :func:`build_report` that the examples make, with the profiles' parts
    (``score_histogram``, ``n_scored_profiles``, ``top_factors``) None until
    :func:`with_profiles` fills them in (``evaluate`` builds this part in another
    process while it builds the profile documents).

    A JSON value: ``json.loads(json.dumps(report))`` equals it (string keys, lists, no
    tuples), so it can come back from a child process as JSON. The examples are read
    once into columns (numpy arrays) that every figure picks from: the same values, in
    the same order, as lists of them would give.

    >>> from models.config import load_config
    >>> report = examples_report([], load_config("customer-ai.toml"), 0)
    >>> report["goals"]["conversion"]["top_factors"] is None
    True
    """
    codes: dict[str, int] = {}
    goal_of = np.array([codes.setdefault(e.goal, len(codes)) for e in examples], dtype=np.int64)
    served_list = [e.prediction_ts for e in examples]
    served = np.array(served_list, dtype=np.int64)
    label = np.array([e.label for e in examples], dtype=np.int64)
    rates = np.array(
        running_base_rates_of(
            goal_of,
            served,
            np.array([e.matured_ts for e in examples], dtype=np.int64),
            label.astype(bool),
        )
    )
    served_a_probability = np.array([e.probability is not None for e in examples], dtype=bool)
    probability = np.array(
        [0.0 if e.probability is None else e.probability for e in examples], dtype=np.float64
    )
    live = np.array([is_live(e) for e in examples], dtype=bool)
    version = [e.model_version for e in examples]
    goals: dict[str, Any] = {}
    featurizer = Featurizer(config)
    for goal in config.goals:
        of_goal = goal_of == codes.get(goal.name, -1)
        closed = of_goal & (served + goal.window_ms < watermark_ms)  # closed_window_examples
        n_closed = int(np.count_nonzero(closed))
        # an example served no probability (a cold goal without a prior) is not scored
        order = sorted(
            np.flatnonzero(closed & served_a_probability).tolist(),
            key=lambda i: (served_list[i], examples[i].example_id),
        )
        mine = np.array(order, dtype=np.intp)
        probs, labels = probability[mine], label[mine]
        deciles = decile_table(probs, labels)
        metrics = goal_metrics(probs, labels, deciles)
        n_matured = int(np.count_nonzero(of_goal))
        metrics["n_matured"] = n_matured
        metrics["n_open_window"] = n_matured - n_closed
        metrics["n_no_probability"] = n_closed - len(mine)
        # every example whose window closed, served a probability or not: the features
        closed_rows = np.flatnonzero(closed)
        metrics["leakage"] = leakage_report(
            goal,
            config,
            featurizer.names,
            featurizer.labels,
            [examples[i].features for i in closed_rows.tolist()],
            label[closed_rows],
        )
        metrics.update(
            _quality(
                served[mine], probs, labels, rates[mine], live[mine], [version[i] for i in order]
            )
        )
        if promotions is not None:
            history = {
                "kind": "promotions",
                "rows": [dict(p) for p in promotions if p.get("goal", goal.name) == goal.name],
            }
        else:
            history = {"kind": "versions", "rows": version_history(models, goal.name)}
        goals[goal.name] = {
            "label": goal.label,
            "type": goal.type,
            "window_days": goal.window_ms / 86_400_000,
            "metrics": metrics,
            "score_histogram": None,  # with_profiles
            "n_scored_profiles": None,  # with_profiles
            "deciles": deciles,
            "calibration": calibration_curve(probs, labels),
            "buckets": bucket_table(probs, labels, config.buckets.thresholds, config.buckets.names),
            "top_factors": None,  # with_profiles
            "auc_over_time": auc_over_time(served[mine], probs, labels),
            "history": history,
        }
    return {"goals": goals, "bucket_names": list(config.buckets.names)}


def with_profiles(report: dict[str, Any], profiles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fill in :func:`examples_report`'s profile parts from the final profile documents
    (:func:`models.profile.profile_document`): per goal the histogram of the profiles'
    final probabilities, how many have one, and the top factors per bucket. Returns
    ``report``, completed in place.

    >>> docs = [{"scores": {"g": {"probability": 0.2, "bucket": "low", "factors": []}}}]
    >>> report = with_profiles({"goals": {"g": {"score_histogram": None}}}, docs)
    >>> report["goals"]["g"]["n_scored_profiles"], report["goals"]["g"]["top_factors"]
    (1, {})
    """
    goals = report["goals"]
    finals: dict[str, list[float]] = {name: [] for name in goals}
    tallies = {name: _FactorTally() for name in goals}
    for doc in profiles:  # one pass for every goal
        for name, score in doc.get("scores", {}).items():
            if name in goals and score:
                if score.get("probability") is not None:
                    finals[name].append(score["probability"])
                tallies[name].add(score)
    for name, goal in goals.items():
        goal["score_histogram"] = histogram(finals[name])
        goal["n_scored_profiles"] = len(finals[name])
        goal["top_factors"] = tallies[name].top(BUCKET_TOP_FEATURES)
    return report


def _floats(values: Floats) -> np.ndarray:
    """``values`` as an array of doubles (itself when it is one already)."""
    return np.asarray(values, dtype=np.float64)


def _truths(labels: Labels) -> np.ndarray:
    """Whether each label is positive (true), as a boolean array."""
    return np.asarray(labels, dtype=bool)
