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

:func:`build_report` gathers everything the report shows, as plain JSON-able data;
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

from models.config import Config
from models.metrics import expected_calibration_error, log_loss, roc_auc
from models.model import LinearModel
from models.outcome import Example
from models.profile import format_time
from models.quality import grouped_quality, is_live, month_of, quality_figures, running_base_rates

__all__ = [
    "auc_over_time",
    "bucket_table",
    "build_report",
    "calibration_curve",
    "closed_window_examples",
    "decile_table",
    "goal_metrics",
    "histogram",
    "top_factors_by_bucket",
    "version_history",
]


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


def decile_table(probabilities: Sequence[float], labels: Sequence[int]) -> list[dict[str, Any]]:
    """Lift and cumulative gains by decile of probability (decile 1: the top 10 %).

    Ties are broken by input order after sorting by decreasing probability.

    >>> rows = decile_table([i / 20 for i in range(20)], [0] * 10 + [1] * 10)
    >>> [(r["decile"], r["n"], r["rate"], r["lift"], r["cumulative_gain"]) for r in rows[:2]]
    [(1, 2, 1.0, 2.0, 0.2), (2, 2, 1.0, 2.0, 0.4)]
    >>> rows[-1]["cumulative_gain"]
    1.0
    """
    n = len(probabilities)
    total_pos = sum(1 for y in labels if y)
    if n == 0:
        return []
    base = total_pos / n
    order = sorted(range(n), key=lambda i: -probabilities[i])
    rows: list[dict[str, Any]] = []
    captured = 0
    for d in range(10):
        lo, hi = (d * n) // 10, ((d + 1) * n) // 10
        idx = order[lo:hi]
        pos = sum(1 for i in idx if labels[i])
        captured += pos
        rate = pos / len(idx) if idx else 0.0
        rows.append(
            {
                "decile": d + 1,
                "n": len(idx),
                "positives": pos,
                "mean_probability": _round(sum(probabilities[i] for i in idx) / len(idx))
                if idx
                else None,
                "rate": round(rate, 4),
                "lift": round(rate / base, 4) if base > 0 else None,
                "cumulative_population": round(hi / n, 4),
                "cumulative_gain": round(captured / total_pos, 4) if total_pos else None,
            }
        )
    return rows


def calibration_curve(
    probabilities: Sequence[float], labels: Sequence[int], bins: int = 10
) -> list[dict[str, Any]]:
    """Mean predicted probability against the observed rate in equal-width bins (empty bins left out).

    >>> calibration_curve([0.05, 0.15, 0.15, 0.95], [0, 0, 1, 1])
    [{'lo': 0.0, 'hi': 0.1, 'n': 1, 'mean_probability': 0.05, 'rate': 0.0}, {'lo': 0.1, 'hi': 0.2, 'n': 2, 'mean_probability': 0.15, 'rate': 0.5}, {'lo': 0.9, 'hi': 1.0, 'n': 1, 'mean_probability': 0.95, 'rate': 1.0}]
    """
    sum_p = [0.0] * bins
    sum_y = [0] * bins
    count = [0] * bins
    for p, y in zip(probabilities, labels):
        b = min(int(p * bins), bins - 1)
        sum_p[b] += p
        sum_y[b] += 1 if y else 0
        count[b] += 1
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
    probabilities: Sequence[float],
    labels: Sequence[int],
    thresholds: Sequence[float],
    names: Sequence[str],
) -> list[dict[str, Any]]:
    """Expected (mean probability) against actual rate per bucket of probability rank.

    >>> rows = bucket_table([0.1, 0.2, 0.3, 0.9], [0, 0, 1, 1], [25, 75], ["low", "medium", "high"])
    >>> [(r["bucket"], r["n"], r["expected"], r["actual"]) for r in rows]
    [('low', 1, 0.1, 0.0), ('medium', 2, 0.25, 0.5), ('high', 1, 0.9, 1.0)]
    """
    n = len(probabilities)
    order = sorted(range(n), key=lambda i: probabilities[i])
    members: dict[str, list[int]] = {name: [] for name in names}
    for rank, i in enumerate(order):
        percentile = 100.0 * rank / n
        name = names[-1]
        for threshold, candidate in zip(thresholds, names):
            if percentile < threshold:
                name = candidate
                break
        members[name].append(i)
    rows = []
    for name in names:
        idx = members[name]
        rows.append(
            {
                "bucket": name,
                "n": len(idx),
                "expected": _round(sum(probabilities[i] for i in idx) / len(idx)) if idx else None,
                "actual": _round(sum(1 for i in idx if labels[i]) / len(idx)) if idx else None,
            }
        )
    return rows


def auc_over_time(
    times_ms: Sequence[int],
    probabilities: Sequence[float],
    labels: Sequence[int],
    periods: int = 12,
) -> list[dict[str, Any]]:
    """AUC, base rate and mean probability over equal spans of prediction time.

    Periods whose examples hold a single class have ``auc`` None.

    >>> rows = auc_over_time([0, 1, 2, 3], [0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], periods=2)
    >>> [(r["start_ms"], r["n"], r["auc"]) for r in rows]
    [(0, 2, 1.0), (2, 2, 1.0)]
    """
    if not times_ms:
        return []
    t0, t1 = min(times_ms), max(times_ms)
    span = max(1, t1 - t0 + 1)
    groups: list[list[int]] = [[] for _ in range(periods)]
    for i, t in enumerate(times_ms):
        groups[min(periods - 1, (t - t0) * periods // span)].append(i)
    rows = []
    for k, idx in enumerate(groups):
        if not idx:
            continue
        p = [probabilities[i] for i in idx]
        y = [labels[i] for i in idx]
        rows.append(
            {
                "start_ms": t0 + k * span // periods,
                "n": len(idx),
                "auc": _round(roc_auc(p, y)),
                "base_rate": round(sum(y) / len(y), 4),
                "mean_probability": round(sum(p) / len(p), 4),
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
    probabilities: Sequence[float],
    labels: Sequence[int],
    deciles: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """AUC, log loss, ECE, base rate, counts and lift of the top decile (of ``deciles``,
    the :func:`decile_table` of the same examples, when the caller has it).

    >>> goal_metrics([], [])["auc"] is None
    True
    """
    n = len(labels)
    n_pos = sum(1 for y in labels if y)
    if deciles is None:
        deciles = decile_table(probabilities, labels)
    return {
        "auc": _round(roc_auc(probabilities, labels)),
        "logloss": _round(log_loss(probabilities, labels)),
        "ece": _round(expected_calibration_error(probabilities, labels)),
        "base_rate": _round(n_pos / n) if n else None,
        "mean_probability": _round(sum(probabilities) / n) if n else None,
        "n_examples": n,
        "n_positive": n_pos,
        "lift_top_decile": deciles[0]["lift"] if deciles and n_pos else None,
    }


def top_factors_by_bucket(
    profiles: Iterable[dict[str, Any]], goal: str, top: int = 5
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
    n_profiles: dict[str, int] = defaultdict(int)
    hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[str, str] = {}
    for doc in profiles:
        score = doc.get("scores", {}).get(goal)
        if not score or score.get("bucket") is None:
            continue
        bucket = score["bucket"]
        n_profiles[bucket] += 1
        for f in score.get("factors", []):
            hits[bucket][f["feature"]].append(f["contribution"])
            labels[f["feature"]] = f.get("label", f["feature"])
    out: dict[str, list[dict[str, Any]]] = {}
    for bucket, features in hits.items():
        ranked = sorted(features.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
        out[bucket] = [
            {
                "feature": name,
                "label": labels[name],
                "share": round(len(cs) / n_profiles[bucket], 4),
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


def _quality(mine: Sequence[Example], rates: Sequence[float]) -> dict[str, Any]:
    """``all``, ``live``, ``months`` and ``versions`` figures of one goal's examples
    (each served a probability)."""
    probs = [e.probability for e in mine if e.probability is not None]
    labels = [e.label for e in mine]
    live = [is_live(e) for e in mine]
    keep = [i for i, flag in enumerate(live) if flag]
    months = grouped_quality([month_of(e.prediction_ts) for e in mine], probs, labels, rates, live)
    versions = grouped_quality([e.model_version for e in mine], probs, labels, rates, live)
    first_served: dict[int, int] = {}
    for e in mine:  # sorted by prediction time: the first is the earliest
        first_served.setdefault(e.model_version, e.prediction_ts)
    return {
        "all": quality_figures(probs, labels, rates),
        "live": quality_figures(
            [probs[i] for i in keep], [labels[i] for i in keep], [rates[i] for i in keep]
        ),
        "months": [{"month": k, **row} for k, row in sorted(months.items())],
        "versions": [
            {"version": k, "first_served": format_time(first_served[k]), **row}
            for k, row in sorted(versions.items())
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
    """Everything the report shows, per goal, as plain JSON-able data.

    ``examples`` are all matured examples; metrics use those whose window closed
    before ``watermark_ms``, and the running base rate (:mod:`models.quality`) counts
    every matured example. ``profiles`` are the final profile documents. A goal's
    ``history`` lists the trainer's ``promotions`` (its decisions, when it keeps them:
    rows with a ``goal`` key are filtered by it) or else the published ``models``.
    """
    rates = running_base_rates(examples)
    rate_of = {id(e): r for e, r in zip(examples, rates)}
    closed = closed_window_examples(examples, config, watermark_ms)
    goals: dict[str, Any] = {}
    for goal in config.goals:
        goal_closed = [e for e in closed if e.goal == goal.name]
        # an example served no probability (a cold goal without a prior) is not scored
        mine = [e for e in goal_closed if e.probability is not None]
        mine.sort(key=lambda e: (e.prediction_ts, e.example_id))
        probs = [e.probability for e in mine if e.probability is not None]
        labels = [e.label for e in mine]
        deciles = decile_table(probs, labels)
        metrics = goal_metrics(probs, labels, deciles)
        n_matured = sum(1 for e in examples if e.goal == goal.name)
        metrics["n_matured"] = n_matured
        metrics["n_open_window"] = n_matured - len(goal_closed)
        metrics["n_no_probability"] = len(goal_closed) - len(mine)
        metrics.update(_quality(mine, [rate_of[id(e)] for e in mine]))
        finals = [
            doc["scores"][goal.name]["probability"]
            for doc in profiles
            if doc.get("scores", {}).get(goal.name, {}).get("probability") is not None
        ]
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
            "score_histogram": histogram(finals),
            "n_scored_profiles": len(finals),
            "deciles": deciles,
            "calibration": calibration_curve(probs, labels),
            "buckets": bucket_table(probs, labels, config.buckets.thresholds, config.buckets.names),
            "top_factors": top_factors_by_bucket(profiles, goal.name),
            "auc_over_time": auc_over_time([e.prediction_ts for e in mine], probs, labels),
            "history": history,
        }
    return {"goals": goals, "bucket_names": list(config.buckets.names)}
