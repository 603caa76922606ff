"""The evaluation report as one self-contained HTML page: inline CSS and SVG charts.

:func:`render_html` turns what :func:`models.report.build_report` gathered into a page
with, per goal, the metrics (every example and those served by a live model, beside the
running base rate's), the score distribution, lift by decile, cumulative gains,
calibration, expected against actual rate per bucket, quality over time (log loss by
month against the base rate's, AUC by month), the promotion history (or the published
versions) with what each version served, and the top factors per bucket. No script and no external asset: the page opens offline and can be mailed.

Examples
--------
>>> page = render_html({"goals": {}, "bucket_names": [], "summary": {"events": 12}})
>>> "<h1>Customer AI evaluation</h1>" in page and "events: 12" in page
True
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from models.profile import format_time

__all__ = ["render_html"]

_W, _H = 460, 260
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 48, 12, 14, 36
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2933;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
h3{font-size:14px;margin:4px 0;color:#334e68}.muted{color:#627d98;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:18px}.card{border:1px solid #d9e2ec;border-radius:6px;padding:10px;box-sizing:border-box;
max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eef2f7;text-align:right}
th{background:#f5f7fa}td.l,th.l{text-align:left}svg text{font-size:11px;fill:#486581}
.axis{stroke:#9fb3c8;stroke-width:1}.grid-line{stroke:#eef2f7}.ref{stroke:#bcccdc;stroke-dasharray:4 3}
.bar{fill:#2f80ed}.bar.alt{fill:#f2994a}.line{fill:none;stroke:#2f80ed;stroke-width:2}
.line.alt{stroke:#f2994a}.point{fill:#2f80ed}.point.alt{fill:#f2994a}
.legend{fill:#2f80ed;font-weight:600}.legend.alt{fill:#f2994a}
.pos{color:#c0392b}.neg{color:#1e7b34}.mark{fill:none;stroke:#c0392b;stroke-width:2}
tr.worse td{background:#fdecea}
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
    marks: Sequence[tuple[float, float]] = (),
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
    for x, y in marks:
        body.append(f'<circle class="mark" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="6"/>')
    return _svg(chart, body, title)


def _card(title: str, inner: str, note: str = "") -> str:
    note_html = f'<div class="muted">{_esc(note)}</div>' if note else ""
    return f'<div class="card"><h3>{_esc(title)}</h3>{inner}{note_html}</div>'


_QUALITY = ["n", "positives", "auc", "logloss", "base_rate_logloss", "ece"]


def _quality_table(m: dict[str, Any]) -> str:
    """Served figures of every example and of those a live model served, beside the base rate's."""
    rows = "".join(
        f"<tr><td class='l'>{which}</td>"
        + "".join(f"<td>{_fmt(m[which].get(k))}</td>" for k in _QUALITY)
        + "</tr>"
        for which in ("all", "live")
        if which in m
    )
    if not rows:
        return ""
    return (
        "<table class='quality'><tr><th class='l'>examples</th>"
        + "".join(f"<th>{k}</th>" for k in _QUALITY)
        + f"</tr>{rows}</table><div class='muted'>live: served by a model out of warm-up; "
        "base_rate_logloss: the log loss of the running base rate (the rate among the "
        "goal's examples that had matured when each one was served).</div>"
    )


def _month_ticks(months: Sequence[dict[str, Any]]) -> list[tuple[float, str]]:
    step = max(1, math.ceil(len(months) / 8))
    return [(i, r["month"]) for i, r in enumerate(months) if i % step == 0]


def _quality_cards(name: str, m: dict[str, Any]) -> list[str]:
    """Log loss by month against the base rate's, AUC by month and the monthly table."""
    months = m.get("months", [])
    if not months:
        return []
    x_range = (-0.5, len(months) - 0.5)
    served = [(i, r["logloss"]) for i, r in enumerate(months)]
    base = [(i, r["base_rate_logloss"]) for i, r in enumerate(months)]
    worse = [(i, r["logloss"]) for i, r in enumerate(months) if r["worse_than_base_rate"]]
    top = max([v for _, v in served + base] + [0.01]) * 1.1
    table_rows = "".join(
        f"<tr class='{'worse' if r['worse_than_base_rate'] else ''}'>"
        f"<td class='l'>{_esc(r['month'])}</td>"
        + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in [*_QUALITY, "n_live"])
        + f"<td>{'worse' if r['worse_than_base_rate'] else ''}</td></tr>"
        for r in months
    )
    cards = [
        _card(
            "Quality over time: log loss by month",
            _line_chart(
                "logloss-by-month",
                [("served", served), ("base rate", base)],
                "month of prediction",
                "log loss",
                f"{name}: log loss by month",
                x_range,
                (0.0, top),
                x_ticks=_month_ticks(months),
                marks=worse,
            )
            + "<table class='months'><tr><th class='l'>month</th>"
            + "".join(f"<th>{k}</th>" for k in [*_QUALITY, "n_live"])
            + f"<th></th></tr>{table_rows}</table>",
            "Log loss of the served probabilities against the running base rate's, per UTC "
            "month of prediction time; circled and shaded: months where the served "
            "probabilities did worse.",
        )
    ]
    aucs = [(i, r["auc"]) for i, r in enumerate(months) if r["auc"] is not None]
    if aucs:
        lo = min(a for _, a in aucs)
        cards.append(
            _card(
                "AUC by month",
                _line_chart(
                    "auc-over-time",
                    [("AUC", aucs)],
                    "month of prediction",
                    "ROC AUC",
                    f"{name}: AUC by month",
                    x_range,
                    (0.0, 1.0),
                    x_ticks=_month_ticks(months),
                ),
                f"Served probabilities, per UTC month of prediction time (lowest: {lo:.2f}; "
                "months with one class have none).",
            )
        )
    return cards


_HISTORY_ROWS = 60


def _cell(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and (key == "time" or key.endswith(("_ms", "_ts"))):
        return format_time(value)
    return _fmt(value)


def _history_card(history: dict[str, Any] | None, versions: Sequence[dict[str, Any]]) -> str:
    """The promotion decisions (or the published versions) and what each version served."""
    history = history or {"kind": "versions", "rows": []}
    rows = list(history["rows"])
    served = {v["version"]: v for v in versions}
    if history["kind"] == "versions":
        title = "Published versions"
        note = (
            "Each version the backtest published (created: wall-clock time of the replay), "
            "and what it served: examples, AUC and log loss against the base rate's."
        )
        for r in rows:
            v = served.get(r["version"], {})
            r.update(
                {f"served_{k}": v.get(k) for k in ("n", "auc", "logloss", "base_rate_logloss")}
            )
    else:
        title = "Promotion history"
        note = "Each candidate version and the trainer's decision: promoted or refused."
    shown = rows[-_HISTORY_ROWS:]
    if len(rows) > len(shown):
        note += f" The latest {len(shown)} of {len(rows)}."
    if not shown:
        return _card(title, "<div class='muted'>none</div>", note)
    keys: list[str] = []
    for r in shown:
        keys.extend(k for k in r if k not in keys and k != "goal")
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_cell(k, r.get(k)))}</td>" for k in keys) + "</tr>"
        for r in shown
    )
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    return _card(title, f"<table class='history'><tr>{head}</tr>{body}</table>", note)


def _leakage_card(leakage: dict[str, Any] | None) -> str:
    """The features the leakage guard flagged (:mod:`models.leakage`)."""
    if leakage is None:
        return ""
    checked = leakage["n_examples_checked"]
    note = (
        f"auc_alone: the feature alone ranks the {checked} closed examples with an AUC of "
        f"at least {leakage['auc_alone_threshold']:g} (either way round): often the label in "
        "disguise. "
        if checked
        else "auc_alone: not checked (too few examples of a label). "
    ) + (
        "goal_event: it reads the goal's own event within the goal window (a repeat of "
        "the goal event is what it predicts)."
    )
    rows = leakage["flagged"]
    if not rows:
        return _card("Leakage check", "<div class='muted'>no feature flagged</div>", note)
    body = "".join(
        f"<tr><td class='l'>{_esc(r['label'])}</td><td class='l'>{_esc(r['feature'])}</td>"
        f"<td class='l'>{_esc(', '.join(r['reasons']))}</td><td>{_fmt(r['auc_alone'])}</td></tr>"
        for r in rows
    )
    head = (
        "<tr><th class='l'>feature</th><th class='l'>name</th><th class='l'>flags</th>"
        "<th>AUC alone</th></tr>"
    )
    return _card("Leakage check", f"<table class='leakage'>{head}{body}</table>", note)


def _goal_section(name: str, data: dict[str, Any], bucket_names: Sequence[str]) -> str:
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
    parts.append(_quality_table(m))
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
    cards.extend(_quality_cards(name, m))
    cards.append(_history_card(data.get("history"), m.get("versions", [])))
    cards.append(_leakage_card(m.get("leakage")))
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
