"""Structured conditions: data that selects events or profiles, never code.

A condition is a mapping, as written in ``customer-ai.toml``:

- a leaf ``{field = "eventType", op = "equals", value = "commerce.purchases"}``
  where ``op`` is one of :data:`OPS`;
- ``{all = [cond, ...]}`` (every one holds) or ``{any = [cond, ...]}`` (at least one).

:func:`compile_condition` validates the mapping and returns a predicate over a
record (a decoded event, or a profile's feature dict). Nothing is ever evaluated
as Python: each op is a fixed comparison.

Examples
--------
>>> purchase = compile_condition(
...     {"all": [{"field": "eventType", "op": "equals", "value": "commerce.purchases"},
...              {"field": "commerce.order.priceTotal", "op": "gt", "value": 0}]})
>>> purchase({"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 10}}})
True
>>> purchase({"eventType": "commerce.purchases"})
False
>>> compile_condition({"field": "x", "op": "matches_regex", "value": "."})
Traceback (most recent call last):
...
models.conditions.ConditionError: condition.op: unknown op 'matches_regex'; use one of exists, equals, not_equals, in, starts_with, gt, gte, lt, lte
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from models.events import get_path

__all__ = ["OPS", "ConditionError", "Predicate", "compile_condition", "condition_fields"]

Predicate = Callable[[Mapping[str, Any]], bool]

OPS = ("exists", "equals", "not_equals", "in", "starts_with", "gt", "gte", "lt", "lte")
_MAX_DEPTH = 16
_MAX_IN_VALUES = 10_000


class ConditionError(ValueError):
    """A condition that is not well-formed. The message names the path and the fix."""


def _is_number(value: Any) -> bool:
    # ints are always finite (math.isfinite would overflow on ints beyond a float's range)
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _leaf(field: str, op: str, value: Any, where: str) -> Predicate:
    missing = object()

    def lookup(record: Mapping[str, Any]) -> Any:
        return get_path(record, field, missing)

    if op == "exists":
        return lambda r: lookup(r) is not missing
    if op in ("equals", "not_equals"):
        if type(value) not in (str, int, float, bool):
            raise ConditionError(f"{where}.value: {op} needs a string, number or boolean")
        if op == "equals":
            return lambda r: lookup(r) == value
        return lambda r: (v := lookup(r)) is not missing and v != value
    if op == "in":
        if type(value) is not list or not value or len(value) > _MAX_IN_VALUES:
            raise ConditionError(f"{where}.value: 'in' needs a non-empty list of values")
        if any(type(v) not in (str, int, float, bool) for v in value):
            raise ConditionError(f"{where}.value: 'in' values must be strings, numbers or booleans")
        choices = frozenset(value)

        def is_in(r: Mapping[str, Any]) -> bool:
            v = lookup(r)
            return type(v) in (str, int, float, bool) and v in choices

        return is_in
    if op == "starts_with":
        if type(value) is not str:
            raise ConditionError(f"{where}.value: starts_with needs a string")
        return lambda r: type(v := lookup(r)) is str and v.startswith(value)
    if not _is_number(value):
        raise ConditionError(f"{where}.value: {op} needs a finite number")
    compare: Callable[[float], bool] = {
        "gt": lambda v: v > value,
        "gte": lambda v: v >= value,
        "lt": lambda v: v < value,
        "lte": lambda v: v <= value,
    }[op]

    def numeric(r: Mapping[str, Any]) -> bool:
        v = lookup(r)
        return _is_number(v) and type(v) is not bool and compare(v)

    return numeric


def compile_condition(spec: Any, where: str = "condition", _depth: int = 0) -> Predicate:
    """Validate a condition mapping and return its predicate.

    Parameters
    ----------
    spec
        The condition mapping (see the module docstring).
    where
        The config path of ``spec``, used in error messages.

    Raises
    ------
    ConditionError
        Naming the offending path and how to fix it.
    """
    if _depth > _MAX_DEPTH:
        raise ConditionError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(spec, Mapping):
        raise ConditionError(
            f"{where}: a condition must be a table like "
            '{field = "eventType", op = "equals", value = "..."} or {all = [...]} / {any = [...]}'
        )
    keys = set(spec)
    for combinator in ("all", "any"):
        if combinator in keys:
            if keys != {combinator}:
                raise ConditionError(
                    f"{where}: '{combinator}' cannot be mixed with {sorted(keys - {combinator})}"
                )
            children = spec[combinator]
            if not isinstance(children, list) or not children:
                raise ConditionError(f"{where}.{combinator}: needs a non-empty list of conditions")
            preds = [
                compile_condition(c, f"{where}.{combinator}[{i}]", _depth + 1)
                for i, c in enumerate(children)
            ]
            if len(preds) == 1:
                return preds[0]
            if combinator == "all":
                return lambda r: all(p(r) for p in preds)
            return lambda r: any(p(r) for p in preds)
    unknown = keys - {"field", "op", "value"}
    if unknown:
        raise ConditionError(
            f"{where}: unknown key(s) {sorted(unknown)}; a leaf has field, op and value"
        )
    field = spec.get("field")
    if type(field) is not str or not field:
        raise ConditionError(f'{where}.field: needs a dotted field path such as "eventType"')
    op = spec.get("op")
    if op not in OPS:
        raise ConditionError(f"{where}.op: unknown op {op!r}; use one of {', '.join(OPS)}")
    if op == "exists":
        if "value" in spec:
            raise ConditionError(f"{where}.value: 'exists' takes no value")
        return _leaf(field, op, None, where)
    if "value" not in spec:
        raise ConditionError(f"{where}.value: op {op!r} needs a value")
    return _leaf(field, op, spec["value"], where)


def condition_fields(spec: Any) -> list[str]:
    """The field paths a (valid) condition reads, in first-use order.

    >>> condition_fields({"any": [{"field": "a", "op": "exists"},
    ...                           {"all": [{"field": "b.c", "op": "gt", "value": 1},
    ...                                    {"field": "a", "op": "lt", "value": 9}]}]})
    ['a', 'b.c']
    """
    fields: list[str] = []
    stack = [spec]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        for combinator in ("all", "any"):
            children = node.get(combinator)
            if isinstance(children, list):
                stack.extend(reversed(children))
        field = node.get("field")
        if type(field) is str and field not in fields:
            fields.append(field)
    return fields
