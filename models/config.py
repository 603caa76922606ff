"""The ``customer-ai.toml`` configuration: tracked events, goals, labels, model, buckets.

Everything that selects events or profiles is a structured condition (see
:mod:`models.conditions`), never code. :func:`load_config` refuses a bad file at
start-up with a :class:`ConfigError` whose message names the field and the fix.

Examples
--------
>>> cfg = parse_config('''
... [[events]]
... name = "purchase"
... label = "Purchases"
... when = { field = "eventType", op = "equals", value = "commerce.purchases" }
... value = "commerce.order.priceTotal"
...
... [[goals]]
... name = "conversion"
... type = "occurs"
... event = "purchase"
... window_days = 30
... ''')
>>> [g.name for g in cfg.goals], cfg.goals[0].window_ms // 86_400_000
(['conversion'], 30)
>>> parse_config('[[goals]]\\nname = "x"\\ntype = "occurs"\\nevent = "nope"\\nwindow_days = 3')
Traceback (most recent call last):
...
models.config.ConfigError: goals[0].event: unknown event 'nope'; define it under [[events]] (known: none)
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from models.attribute_config import feature_layout, parse_attributes
from models.conditions import ConditionError, Predicate, compile_condition, condition_fields
from models.config_types import (
    DAY_MS,
    GOAL_TYPES,
    MAX_RECENT_IDS,
    MAX_VALUE_BOUND,
    MAX_WINDOW_DAYS,
    NAME_PATTERN,
    RELEASES,
    BucketConfig,
    Config,
    GoalConfig,
    LabelConfig,
    ModelConfig,
    RetentionConfig,
    TrackedEvent,
)
from models.identity_config import parse_identity

__all__ = [
    "DAY_MS",
    "BucketConfig",
    "Config",
    "ConfigError",
    "GoalConfig",
    "LabelConfig",
    "ModelConfig",
    "RetentionConfig",
    "TrackedEvent",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration that cannot run. The message names the field and the fix."""


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}]: must be a table, e.g. [{key}] followed by key = value lines")
    return value


def _model_min_auc(table: dict[str, Any], default: float) -> float:
    value = float(_number(table, "min_auc", "model", default, minimum=0))
    if value > 1:
        raise ConfigError("model.min_auc: must be a number between 0 and 1, e.g. 0.65")
    return value


def _number(
    table: dict[str, Any],
    key: str,
    where: str,
    default: float,
    *,
    minimum: float,
    integer: bool = False,
    strict: bool = False,
) -> Any:
    value = table.get(key, default)
    ok_type = (int,) if integer else (int, float)
    if type(value) not in ok_type or (type(value) is float and not math.isfinite(value)):
        kind = "a whole number" if integer else "a finite number"
        raise ConfigError(f"{where}.{key}: must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{where}.{key}: must be {bound}, got {value!r}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _condition(spec: Any, where: str) -> Predicate:
    try:
        return compile_condition(spec, where)
    except ConditionError as exc:
        raise ConfigError(str(exc)) from None


def _name(value: Any, where: str) -> str:
    if type(value) is not str or not NAME_PATTERN.match(value):
        raise ConfigError(
            f"{where}: {value!r} is not a valid name; use lower_snake_case starting with a letter"
        )
    return value


def _value_bounds(spec: dict[str, Any], where: str, value_field: str | None) -> tuple[float, float]:
    """``value_min`` / ``value_max`` of an ``[[events]]`` table: finite, ordered, sane."""
    if value_field is None:
        for key in ("value_min", "value_max"):
            if key in spec:
                raise ConfigError(
                    f'{where}.{key}: bounds a value; set value = "a.field.path" too, or '
                    f"remove {key}"
                )
    low = float(_number(spec, "value_min", where, 0.0, minimum=-MAX_VALUE_BOUND))
    high = float(_number(spec, "value_max", where, 1e12, minimum=-MAX_VALUE_BOUND))
    if high > MAX_VALUE_BOUND:
        raise ConfigError(f"{where}.value_max: must be <= {MAX_VALUE_BOUND:g}, got {high!r}")
    if low > high:
        raise ConfigError(
            f"{where}.value_min: must be <= value_max ({high:g}), got {low!r}; e.g. "
            "value_min = -1000 to accept refunds"
        )
    return low, high


def _events(data: dict[str, Any]) -> tuple[TrackedEvent, ...]:
    specs = data.get("events", [])
    if not isinstance(specs, list):
        raise ConfigError("events: use [[events]] tables, one per tracked event")
    events: list[TrackedEvent] = []
    for i, spec in enumerate(specs):
        where = f"events[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a [[events]] table")
        _check_keys(
            spec,
            {"name", "label", "when", "value", "value_label", "value_min", "value_max"},
            where,
        )
        name = _name(spec.get("name"), f"{where}.name")
        if any(e.name == name for e in events):
            raise ConfigError(f"{where}.name: duplicate event name {name!r}; names must be unique")
        if "when" not in spec:
            raise ConfigError(
                f'{where}.when: required, e.g. when = {{ field = "eventType", op = "equals", value = "commerce.purchases" }}'
            )
        value_field = spec.get("value")
        if value_field is not None and (type(value_field) is not str or not value_field):
            raise ConfigError(
                f'{where}.value: must be a dotted field path such as "commerce.order.priceTotal"'
            )
        label = spec.get("label", name.replace("_", " ").capitalize())
        if type(label) is not str:
            raise ConfigError(f"{where}.label: must be a string")
        value_min, value_max = _value_bounds(spec, where, value_field)
        events.append(
            TrackedEvent(
                name=name,
                label=label,
                when=_condition(spec["when"], f"{where}.when"),
                value_field=value_field,
                value_label=str(spec.get("value_label", "Value")),
                value_min=value_min,
                value_max=value_max,
            )
        )
    return tuple(events)


def _scoring(data: dict[str, Any]) -> tuple[float, float]:
    """``[scoring]``: the default period of scheduled rescoring (``rescore_every_hours``)
    and the pace of a new model version's refresh sweep (``refresh_per_second``)."""
    table = _table(data, "scoring")
    _check_keys(table, {"rescore_every_hours", "refresh_per_second"}, "scoring")
    pace = float(_number(table, "refresh_per_second", "scoring", 200, minimum=0, strict=True))
    return _period_hours(table, "scoring", 24), pace


#: the longest rescoring period accepted (hours): ten years
MAX_RESCORE_HOURS = 87_600.0


def _period_hours(table: dict[str, Any], where: str, default: float) -> float:
    hours = float(_number(table, "rescore_every_hours", where, default, minimum=0))
    if 0 < hours < 1 or hours > MAX_RESCORE_HOURS:
        raise ConfigError(
            f"{where}.rescore_every_hours: must be 0 (rescore only at events) or between 1 "
            f"and {MAX_RESCORE_HOURS:,.0f} hours (ten years), got {hours!r}"
        )
    return hours


def _prior(spec: dict[str, Any], where: str) -> float | None:
    prior = spec.get("prior")
    if prior is None:
        return None
    if type(prior) not in (int, float) or not 0 < prior < 1:
        raise ConfigError(
            f"{where}.prior: must be a probability strictly between 0 and 1 (the share of "
            f"profiles you expect to reach the goal, e.g. prior = 0.05), got {prior!r}; "
            "leave it out to serve no probability until the goal has examples"
        )
    return float(prior)


def _goals(
    data: dict[str, Any],
    events: tuple[TrackedEvent, ...],
    labels: LabelConfig,
    rescore_every_hours: float = 24.0,
) -> tuple[GoalConfig, ...]:
    """Goals; ``max_pending`` / ``min_interval_hours`` default to the ``[labels]`` values,
    ``rescore_every_hours`` to ``[scoring]``'s, ``schedule_min_interval_hours`` to the
    goal's window."""
    specs = data.get("goals", [])
    if not isinstance(specs, list) or not specs:
        raise ConfigError("goals: define at least one goal with a [[goals]] table")
    names = [e.name for e in events]
    goals: list[GoalConfig] = []
    for i, spec in enumerate(specs):
        where = f"goals[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a [[goals]] table")
        _check_keys(
            spec,
            {
                "name",
                "type",
                "event",
                "window_days",
                "eligibility",
                "label",
                "release",
                "max_pending",
                "min_interval_hours",
                "rescore_every_hours",
                "schedule_min_interval_hours",
                "prior",
            },
            where,
        )
        name = _name(spec.get("name"), f"{where}.name")
        if any(g.name == name for g in goals):
            raise ConfigError(
                f"{where}.name: duplicate goal name {name!r}; goal names must be unique"
            )
        goal_type = spec.get("type")
        if goal_type not in GOAL_TYPES:
            raise ConfigError(
                f'{where}.type: {goal_type!r} is not a goal type; use "occurs" or "does_not_occur"'
            )
        event = spec.get("event")
        if event not in names:
            known = ", ".join(names) or "none"
            raise ConfigError(
                f"{where}.event: unknown event {event!r}; define it under [[events]] (known: {known})"
            )
        window = spec.get("window_days")
        if (
            isinstance(window, bool)
            or not isinstance(window, (int, float))
            or not 0 < window <= MAX_WINDOW_DAYS
        ):
            raise ConfigError(
                f"{where}.window_days: must be a number of days > 0 and <= {MAX_WINDOW_DAYS}, "
                f"got {window!r}; e.g. window_days = 30"
            )
        eligibility = spec.get("eligibility")
        release = spec.get("release", "when_known")
        if release not in RELEASES:
            raise ConfigError(
                f'{where}.release: {release!r} is not a release mode; use "when_known" or "at_window_close"'
            )
        goals.append(
            GoalConfig(
                name=name,
                type=goal_type,
                event=event,
                event_index=names.index(event),
                window_ms=int(window * DAY_MS),
                label=str(spec.get("label", name.replace("_", " ").capitalize())),
                eligibility=None
                if eligibility is None
                else _condition(eligibility, f"{where}.eligibility"),
                eligibility_fields=()
                if eligibility is None
                else tuple(condition_fields(eligibility)),
                release=release,
                max_pending=_number(
                    spec, "max_pending", where, labels.max_pending, minimum=1, integer=True
                ),
                min_interval_ms=int(
                    _number(
                        spec,
                        "min_interval_hours",
                        where,
                        labels.min_interval_ms / 3_600_000,
                        minimum=0,
                    )
                    * 3_600_000
                ),
                rescore_every_ms=int(_period_hours(spec, where, rescore_every_hours) * 3_600_000),
                schedule_min_interval_ms=int(
                    _number(spec, "schedule_min_interval_hours", where, window * 24.0, minimum=0)
                    * 3_600_000
                ),
                prior=_prior(spec, where),
            )
        )
    return tuple(goals)


def _retention(data: dict[str, Any], goals: tuple[GoalConfig, ...]) -> RetentionConfig:
    """``[retention]``: ``days`` > 0, and at least the longest goal window (absent: off)."""
    table = _table(data, "retention")
    _check_keys(table, {"days"}, "retention")
    if "days" not in table:
        return RetentionConfig()
    days = _number(table, "days", "retention", 0, minimum=0, strict=True)
    longest = max(goals, key=lambda g: g.window_ms)
    if days * DAY_MS < longest.window_ms:
        window = longest.window_ms / DAY_MS
        raise ConfigError(
            f"retention.days: {days!r} is shorter than the longest goal window ({window:g} days, "
            f"goal {longest.name!r}): a profile would be removed with its label snapshots "
            f"still open; use days = {window:g} or more, or leave [retention] out"
        )
    return RetentionConfig(days)


def _check_eligibility(goals: tuple[GoalConfig, ...], known: list[str]) -> None:
    """Refuse an eligibility condition on a field that is not a profile feature.

    It would read as missing for every profile, so the goal would silently never score.

    >>> cfg = '''
    ... [[events]]
    ... name = "purchase"
    ... when = { field = "eventType", op = "equals", value = "buy" }
    ... [[goals]]
    ... name = "g"
    ... type = "occurs"
    ... event = "purchase"
    ... window_days = 7
    ... eligibility = { field = "purchase_count_totl", op = "gte", value = 1 }
    ... '''
    >>> parse_config(cfg)
    Traceback (most recent call last):
    ...
    models.config.ConfigError: goals[0].eligibility: 'purchase_count_totl' is not a profile feature (did you mean 'purchase_count_total'?); known features: ...
    """
    for i, goal in enumerate(goals):
        for name in goal.eligibility_fields:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"goals[{i}].eligibility: {name!r} is not a profile feature{hint}; "
                f"known features: {', '.join(known)}"
            )


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate configuration text.

    Raises
    ------
    ConfigError
        On any invalid or unknown setting; the message names the field and the fix.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    _check_keys(
        data,
        {
            "identity",
            "features",
            "events",
            "goals",
            "labels",
            "model",
            "buckets",
            "input",
            "retention",
            "dedupe",
            "scoring",
            "attributes",
        },
        "config",
    )
    events = _events(data)

    features = _table(data, "features")
    _check_keys(features, {"horizons_days"}, "features")
    horizons = features.get("horizons_days", [7, 30, 90])
    if (
        not isinstance(horizons, list)
        or not horizons
        or any(type(h) is not int or h <= 0 for h in horizons)
        or len(set(horizons)) != len(horizons)
    ):
        raise ConfigError(
            "features.horizons_days: must be a list of distinct whole days > 0, e.g. [7, 30, 90]"
        )

    try:
        namespace, namespaces, max_identities = parse_identity(_table(data, "identity"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    labels_t = _table(data, "labels")
    _check_keys(
        labels_t, {"max_pending", "min_interval_hours", "allowed_lateness_minutes"}, "labels"
    )
    labels = LabelConfig(
        max_pending=_number(labels_t, "max_pending", "labels", 2, minimum=1, integer=True),
        min_interval_ms=int(
            _number(labels_t, "min_interval_hours", "labels", 24, minimum=0) * 3_600_000
        ),
        allowed_lateness_ms=int(
            _number(labels_t, "allowed_lateness_minutes", "labels", 0, minimum=0) * 60_000
        ),
    )
    rescore_every_hours, refresh_per_second = _scoring(data)
    goals = _goals(data, events, labels, rescore_every_hours)
    try:  # [[attributes]] (models/attribute_config.py)
        attributes = parse_attributes(data.get("attributes", []), events, tuple(horizons))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _check_eligibility(goals, feature_layout(events, tuple(horizons), attributes).feature_names())

    model_t = _table(data, "model")
    defaults = ModelConfig()
    _check_keys(model_t, set(defaults.__dataclass_fields__), "model")
    model = ModelConfig(
        learning_rate=_number(
            model_t, "learning_rate", "model", defaults.learning_rate, minimum=0, strict=True
        ),
        l2=_number(model_t, "l2", "model", defaults.l2, minimum=0),
        min_examples_per_class=_number(
            model_t,
            "min_examples_per_class",
            "model",
            defaults.min_examples_per_class,
            minimum=1,
            integer=True,
        ),
        snapshot_every_examples=_number(
            model_t,
            "snapshot_every_examples",
            "model",
            defaults.snapshot_every_examples,
            minimum=1,
            integer=True,
        ),
        snapshot_every_seconds=_number(
            model_t,
            "snapshot_every_seconds",
            "model",
            defaults.snapshot_every_seconds,
            minimum=0,
            strict=True,
        ),
        metrics_window=_number(
            model_t, "metrics_window", "model", defaults.metrics_window, minimum=10, integer=True
        ),
        promotion_window=_number(
            model_t,
            "promotion_window",
            "model",
            defaults.promotion_window,
            minimum=10,
            integer=True,
        ),
        promotion_margin_se=float(
            _number(
                model_t, "promotion_margin_se", "model", defaults.promotion_margin_se, minimum=0
            )
        ),
        min_auc=_model_min_auc(model_t, defaults.min_auc),
    )

    buckets_t = _table(data, "buckets")
    _check_keys(buckets_t, {"thresholds", "names"}, "buckets")
    thresholds = buckets_t.get("thresholds", [25, 75])
    bucket_names = buckets_t.get("names", ["low", "medium", "high"])
    if (
        not isinstance(thresholds, list)
        or not thresholds
        or any(type(t) not in (int, float) or not 0 < t < 100 for t in thresholds)
        or sorted(thresholds) != thresholds
        or len(set(thresholds)) != len(thresholds)
    ):
        raise ConfigError(
            "buckets.thresholds: must be increasing percentiles between 0 and 100, e.g. [25, 75]"
        )
    if (
        not isinstance(bucket_names, list)
        or len(bucket_names) != len(thresholds) + 1
        or any(type(n) is not str or not n for n in bucket_names)
        or len(set(bucket_names)) != len(bucket_names)
    ):
        raise ConfigError(
            f"buckets.names: needs {len(thresholds) + 1} distinct non-empty strings, one more "
            f'than thresholds, e.g. ["low", "medium", "high"]; got {bucket_names!r}'
        )

    input_t = _table(data, "input")
    _check_keys(input_t, {"max_event_bytes", "max_future_minutes", "max_age_days"}, "input")
    max_bytes = _number(input_t, "max_event_bytes", "input", 1_048_576, minimum=1024, integer=True)
    max_future = _number(input_t, "max_future_minutes", "input", 60, minimum=0)
    max_age = _number(input_t, "max_age_days", "input", 1095, minimum=0, strict=True)
    for key, value, most in (
        ("max_future_minutes", max_future, 525_600),
        ("max_age_days", max_age, 36_500),
    ):
        if value > most:  # past [1970, 2200) any time passes: it would check nothing
            raise ConfigError(f"input.{key}: must be <= {most}, got {value!r}")

    dedupe_t = _table(data, "dedupe")
    _check_keys(dedupe_t, {"recent_ids"}, "dedupe")
    recent_ids = _number(dedupe_t, "recent_ids", "dedupe", 8, minimum=0, integer=True)
    if recent_ids > MAX_RECENT_IDS:
        raise ConfigError(
            f"dedupe.recent_ids: must be <= {MAX_RECENT_IDS} (each costs about 15 bytes of "
            f"every profile's Redis record), got {recent_ids!r}"
        )

    return Config(
        events=events,
        retention=_retention(data, goals),
        goals=goals,
        horizons_days=tuple(horizons),
        identity_namespace=namespace,
        identity_namespaces=namespaces,
        max_identities=max_identities,
        labels=labels,
        model=model,
        buckets=BucketConfig(tuple(float(t) for t in thresholds), tuple(bucket_names)),
        max_event_bytes=max_bytes,
        recent_ids=recent_ids,
        refresh_per_second=refresh_per_second,
        attributes=attributes,
        max_future_ms=int(max_future * 60_000),
        max_age_ms=int(max_age * DAY_MS),
        source=source,
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config from ``path``, ``$CUSTOMER_AI_CONFIG`` or ``./customer-ai.toml``."""
    from_env = os.environ.get("CUSTOMER_AI_CONFIG")
    resolved = Path(path or from_env or "customer-ai.toml")
    if not resolved.is_file():
        what = "is a directory" if resolved.is_dir() else "not found"
        named = "--config" if path else "CUSTOMER_AI_CONFIG" if from_env else "the default"
        raise ConfigError(
            f"config file {str(resolved)!r} {what} (named by {named}); pass --config PATH or set "
            "CUSTOMER_AI_CONFIG to a config file (the repository ships an example: "
            "customer-ai.toml at its root)"
        )
    return parse_config(resolved.read_text(encoding="utf-8"), source=str(resolved))
