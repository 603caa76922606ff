"""Evaluation of a backtest: metrics per goal and a self-contained HTML report.

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
    the configured percentile thresholds (the stream ranks among recent scores the
    same way).

:func:`build_report` gathers everything the report shows; :func:`render_html`
turns it into one HTML page with inline SVG charts and no external asset.

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

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from models.config import Config
from models.metrics import expected_calibration_error, log_loss, roc_auc
from models.outcome import Example

__all__ = [
    "auc_over_time",
    "bucket_table",
    "build_report",
    "calibration_curve",
    "closed_window_examples",
    "decile_table",
    "goal_metrics",
    "histogram",
    "render_html",
    "top_factors_by_bucket",
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


def goal_metrics(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    """AUC, log loss, ECE, base rate, counts and lift of the top decile.

    >>> goal_metrics([], [])["auc"] is None
    True
    """
    n = len(labels)
    n_pos = sum(1 for y in labels if y)
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


def build_report(
    examples: Sequence[Example],
    config: Config,
    watermark_ms: int,
    profiles: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Everything the report shows, per goal, as plain JSON-able data.

    ``examples`` are all matured examples; metrics use those whose window closed
    before ``watermark_ms``. ``profiles`` are the final profile documents.
    """
    closed = closed_window_examples(examples, config, watermark_ms)
    goals: dict[str, Any] = {}
    for goal in config.goals:
        mine = [e for e in closed if e.goal == goal.name]
        mine.sort(key=lambda e: (e.prediction_ts, e.example_id))
        probs = [e.probability for e in mine]
        labels = [e.label for e in mine]
        metrics = goal_metrics(probs, labels)
        n_matured = sum(1 for e in examples if e.goal == goal.name)
        metrics["n_matured"] = n_matured
        metrics["n_open_window"] = n_matured - len(mine)
        finals = [
            doc["scores"][goal.name]["probability"]
            for doc in profiles
            if goal.name in doc.get("scores", {})
        ]
        goals[goal.name] = {
            "label": goal.label,
            "type": goal.type,
            "window_days": goal.window_ms / 86_400_000,
            "metrics": metrics,
            "score_histogram": histogram(finals),
            "n_scored_profiles": len(finals),
            "deciles": decile_table(probs, labels),
            "calibration": calibration_curve(probs, labels),
            "buckets": bucket_table(probs, labels, config.buckets.thresholds, config.buckets.names),
            "top_factors": top_factors_by_bucket(profiles, goal.name),
            "auc_over_time": auc_over_time([e.prediction_ts for e in mine], probs, labels),
        }
    return {"goals": goals, "bucket_names": list(config.buckets.names)}


# ---- HTML rendering ---------------------------------------------------------------------

_W, _H = 460, 260
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 48, 12, 14, 36
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2933;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
h3{font-size:14px;margin:4px 0;color:#334e68}.muted{color:#627d98;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #d9e2ec;border-radius:6px;padding:10px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eef2f7;text-align:right}
th{background:#f5f7fa}td.l,th.l{text-align:left}svg text{font-size:11px;fill:#486581}
.axis{stroke:#9fb3c8;stroke-width:1}.grid-line{stroke:#eef2f7}.ref{stroke:#bcccdc;stroke-dasharray:4 3}
.bar{fill:#2f80ed}.bar.alt{fill:#f2994a}.line{fill:none;stroke:#2f80ed;stroke-width:2}
.line.alt{stroke:#f2994a}.point{fill:#2f80ed}.point.alt{fill:#f2994a}
.legend{fill:#2f80ed;font-weight:600}.legend.alt{fill:#f2994a}
.pos{color:#c0392b}.neg{color:#1e7b34}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class _Frame:
    """Maps data coordinates to the SVG plot area."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1

    def x(self, v: float) -> float:
        return _PAD_L + (v - self.x0) / (self.x1 - self.x0) * (_W - _PAD_L - _PAD_R)

    def y(self, v: float) -> float:
        return _H - _PAD_B - (v - self.y0) / (self.y1 - self.y0) * (_H - _PAD_T - _PAD_B)


def _axes(frame: _Frame, x_label: str, y_label: str, y_ticks: Sequence[float]) -> list[str]:
    parts = []
    for t in y_ticks:
        y = frame.y(t)
        parts.append(
            f'<line class="grid-line" x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(f'<text x="{_PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(
        f'<line class="axis" x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{_H - _PAD_B}" y2="{_H - _PAD_B}"/>'
    )
    parts.append(
        f'<line class="axis" x1="{_PAD_L}" x2="{_PAD_L}" y1="{_PAD_T}" y2="{_H - _PAD_B}"/>'
    )
    parts.append(
        f'<text x="{(_PAD_L + _W - _PAD_R) / 2:.0f}" y="{_H - 4}" text-anchor="middle">{_esc(x_label)}</text>'
    )
    parts.append(
        f'<text transform="translate(12,{(_PAD_T + _H - _PAD_B) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{_esc(y_label)}</text>'
    )
    return parts


def _ticks(top: float, n: int = 4) -> list[float]:
    if top <= 0:
        return [0.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    return [round(k * step, 10) for k in range(int(top / step + 1e-9) + 1)]


def _svg(chart: str, body: list[str], title: str) -> str:
    return (
        f'<svg class="chart" data-chart="{_esc(chart)}" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def _bar_chart(
    chart: str,
    values: Sequence[float],
    x_labels: Sequence[str],
    x_label: str,
    y_label: str,
    title: str,
    reference: float | None = None,
    alt: bool = False,
) -> str:
    top = max([*values, reference or 0.0, 1e-9]) * 1.1
    frame = _Frame(0, max(1, len(values)), 0, top)
    body = _axes(frame, x_label, y_label, _ticks(top))
    width = (frame.x(1) - frame.x(0)) * 0.8
    for i, (v, lab) in enumerate(zip(values, x_labels)):
        x = frame.x(i) + width * 0.125
        y = frame.y(v)
        body.append(
            f'<rect class="bar{" alt" if alt else ""}" data-value="{v:g}" x="{x:.1f}" y="{y:.1f}" '
            f'width="{width:.1f}" height="{frame.y(0) - y:.1f}"><title>{_esc(lab)}: {v:g}</title></rect>'
        )
        if len(values) <= 12 or i % max(1, len(values) // 10) == 0:
            body.append(
                f'<text x="{x + width / 2:.1f}" y="{_H - _PAD_B + 13}" text-anchor="middle">{_esc(lab)}</text>'
            )
    if reference is not None:
        y = frame.y(reference)
        body.append(
            f'<line class="ref" x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
    return _svg(chart, body, title)


def _line_chart(
    chart: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    x_label: str,
    y_label: str,
    title: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    diagonal: bool = False,
    x_ticks: Sequence[tuple[float, str]] = (),
) -> str:
    frame = _Frame(*x_range, *y_range)
    body = _axes(frame, x_label, y_label, _ticks(y_range[1]))
    for value, text in x_ticks:
        body.append(
            f'<text x="{frame.x(value):.1f}" y="{_H - _PAD_B + 13}" text-anchor="middle">{_esc(text)}</text>'
        )
    if diagonal:
        body.append(
            f'<line class="ref" x1="{frame.x(x_range[0]):.1f}" y1="{frame.y(y_range[0]):.1f}" '
            f'x2="{frame.x(x_range[1]):.1f}" y2="{frame.y(y_range[1]):.1f}"/>'
        )
    for k, (name, points) in enumerate(series):
        cls = " alt" if k % 2 else ""
        if len(points) > 1:
            path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)
            body.append(f'<polyline class="line{cls}" points="{path}"/>')
        for x, y in points:
            body.append(
                f'<circle class="point{cls}" data-x="{x:g}" data-y="{y:g}" cx="{frame.x(x):.1f}" '
                f'cy="{frame.y(y):.1f}" r="3"><title>{_esc(name)}: {x:g}, {y:g}</title></circle>'
            )
        body.append(
            f'<text x="{_W - _PAD_R - 4}" y="{_PAD_T + 12 + 13 * k}" text-anchor="end" '
            f'class="legend{cls}">{_esc(name)}</text>'
        )
    return _svg(chart, body, title)


def _card(title: str, inner: str, note: str = "") -> str:
    note_html = f'<div class="muted">{_esc(note)}</div>' if note else ""
    return f'<div class="card"><h3>{_esc(title)}</h3>{inner}{note_html}</div>'


def _goal_section(name: str, data: dict[str, Any], bucket_names: Sequence[str]) -> str:
    from models.profile import format_time

    m = data["metrics"]
    parts = [f'<section class="goal" id="goal-{_esc(name)}">']
    parts.append(
        f"<h2>{_esc(name)} <span class='muted'>{_esc(data['label'])} "
        f"({_esc(data['type'])}, {data['window_days']:g} days)</span></h2>"
    )
    keys = ["auc", "logloss", "ece", "base_rate", "mean_probability", "lift_top_decile"]
    counts = ["n_examples", "n_positive", "n_matured", "n_open_window"]
    parts.append(
        "<table class='metrics'><tr>"
        + "".join(f"<th>{k}</th>" for k in keys + counts)
        + "</tr><tr>"
        + "".join(f"<td>{_fmt(m.get(k))}</td>" for k in keys + counts)
        + "</tr></table>"
    )
    cards = []
    hist = data["score_histogram"]
    cards.append(
        _card(
            "Score distribution",
            _bar_chart(
                "score-distribution",
                hist,
                [f"{i / len(hist):.2f}" for i in range(len(hist))],
                "probability",
                "profiles",
                f"{name}: score distribution",
            ),
            f"Latest score of each of {data['n_scored_profiles']} scored profiles.",
        )
    )
    deciles = data["deciles"]
    cards.append(
        _card(
            "Lift by decile",
            _bar_chart(
                "lift",
                [d["lift"] or 0.0 for d in deciles],
                [str(d["decile"]) for d in deciles],
                "decile (1 = highest scores)",
                "lift",
                f"{name}: lift by decile",
                reference=1.0,
            ),
            "Positive rate of each decile over the overall rate (dashed: 1).",
        )
    )
    gains = [(0.0, 0.0)] + [
        (d["cumulative_population"], d["cumulative_gain"] or 0.0) for d in deciles
    ]
    cards.append(
        _card(
            "Cumulative gains",
            _line_chart(
                "gains",
                [("model", gains)],
                "share of profiles (by score)",
                "share of positives",
                f"{name}: cumulative gains",
                (0.0, 1.0),
                (0.0, 1.0),
                diagonal=True,
                x_ticks=[(t / 4, f"{t * 25}%") for t in range(5)],
            ),
            "Dashed: random targeting.",
        )
    )
    calib = [(c["mean_probability"], c["rate"]) for c in data["calibration"]]
    cards.append(
        _card(
            "Calibration",
            _line_chart(
                "calibration",
                [("observed rate", calib)],
                "mean predicted probability",
                "observed rate",
                f"{name}: calibration",
                (0.0, 1.0),
                (0.0, 1.0),
                diagonal=True,
                x_ticks=[(t / 4, f"{t / 4:g}") for t in range(5)],
            ),
            "Ten equal-width probability bins; dashed: perfect calibration.",
        )
    )
    buckets = data["buckets"]
    bucket_rows = "".join(
        f"<tr><td class='l'>{_esc(b['bucket'])}</td><td>{b['n']}</td>"
        f"<td>{_fmt(b['expected'])}</td><td>{_fmt(b['actual'])}</td></tr>"
        for b in buckets
    )
    series = [
        ("expected", [(i, b["expected"] or 0.0) for i, b in enumerate(buckets)]),
        ("actual", [(i, b["actual"] or 0.0) for i, b in enumerate(buckets)]),
    ]
    top = max([v for _, pts in series for _, v in pts] + [0.01]) * 1.15
    cards.append(
        _card(
            "Expected vs actual rate per bucket",
            _line_chart(
                "buckets",
                series,
                "bucket",
                "rate",
                f"{name}: expected vs actual per bucket",
                (-0.5, len(buckets) - 0.5),
                (0.0, min(1.0, top)),
                x_ticks=[(i, b["bucket"]) for i, b in enumerate(buckets)],
            )
            + "<table><tr><th class='l'>bucket</th><th>examples</th><th>expected</th>"
            f"<th>actual</th></tr>{bucket_rows}</table>",
            "Buckets by the rank of the served probability among the goal's examples.",
        )
    )
    over_time = [r for r in data["auc_over_time"] if r["auc"] is not None]
    if over_time:
        t0 = over_time[0]["start_ms"]
        t1 = max(over_time[-1]["start_ms"], t0 + 1)
        x_ticks = [(over_time[0]["start_ms"], format_time(over_time[0]["start_ms"])[:10])]
        x_ticks.append((over_time[-1]["start_ms"], format_time(over_time[-1]["start_ms"])[:10]))
        lo = min(0.5, min(r["auc"] for r in over_time))
        cards.append(
            _card(
                "AUC over time",
                _line_chart(
                    "auc-over-time",
                    [("AUC", [(r["start_ms"], r["auc"]) for r in over_time])],
                    "prediction time",
                    "ROC AUC",
                    f"{name}: AUC over time",
                    (t0, t1),
                    (0.0, 1.0),
                    x_ticks=x_ticks,
                ),
                f"Served probabilities, per period of prediction time (lowest: {lo:.2f}).",
            )
        )
    factor_html = []
    for bucket in bucket_names:
        rows = data["top_factors"].get(bucket, [])
        if not rows:
            continue
        body = "".join(
            f"<tr><td class='l'>{_esc(r['label'])}</td><td>{r['share'] * 100:.0f}%</td>"
            f"<td class='{'pos' if r['mean_contribution'] > 0 else 'neg'}'>"
            f"{r['mean_contribution']:+.3f}</td></tr>"
            for r in rows
        )
        factor_html.append(
            f"<div class='factors'><h3>{_esc(bucket)}</h3><table><tr><th class='l'>factor</th>"
            f"<th>profiles</th><th>mean contribution</th></tr>{body}</table></div>"
        )
    if factor_html:
        cards.append(
            _card(
                "Top factors per bucket",
                "<div class='grid'>" + "".join(factor_html) + "</div>",
                "Share of the bucket's profiles with the factor among their top 5, and its mean "
                "signed contribution (weight x standardized value) to the logit.",
            )
        )
    parts.append("<div class='grid'>" + "".join(cards) + "</div></section>")
    return "".join(parts)


def render_html(report: dict[str, Any], title: str = "Customer AI evaluation") -> str:
    """A self-contained HTML page (inline CSS and SVG, no scripts or external assets).

    >>> page = render_html({"goals": {}, "bucket_names": ["low", "high"]})
    >>> page.startswith("<!DOCTYPE html>") and "http" not in page.split("<svg")[0]
    True
    """
    sections = "".join(
        _goal_section(name, data, report["bucket_names"]) for name, data in report["goals"].items()
    )
    summary = report.get("summary", {})
    facts = " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in summary.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><div class='muted'>{facts}</div>"
        "<p class='muted'>Every probability is the one served at prediction time, before its "
        "label was known. Metrics use the examples whose window closed before the end of the "
        "replay.</p>"
        f"{sections}</body></html>"
    )
