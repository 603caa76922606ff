"""Structured conditions: every op, combinators, and validation errors.

Contract: docs/DESIGN.md, section "Conditions".
"""

from __future__ import annotations

import pytest

from models.conditions import ConditionError, compile_condition

RECORD = {
    "eventType": "commerce.purchases",
    "commerce": {"order": {"priceTotal": 50, "currency": "EUR"}},
    "flag": True,
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"field": "eventType", "op": "equals", "value": "commerce.purchases"}, True),
        ({"field": "eventType", "op": "not_equals", "value": "commerce.purchases"}, False),
        ({"field": "missing", "op": "not_equals", "value": "x"}, False),
        ({"field": "commerce.order.currency", "op": "in", "value": ["USD", "EUR"]}, True),
        ({"field": "eventType", "op": "starts_with", "value": "commerce."}, True),
        ({"field": "commerce.order.priceTotal", "op": "gt", "value": 50}, False),
        ({"field": "commerce.order.priceTotal", "op": "gte", "value": 50}, True),
        ({"field": "commerce.order.priceTotal", "op": "lt", "value": 51}, True),
        ({"field": "commerce.order.priceTotal", "op": "lte", "value": 49.9}, False),
        ({"field": "commerce.order", "op": "exists"}, True),
        ({"field": "commerce.nope", "op": "exists"}, False),
        ({"field": "flag", "op": "gt", "value": 0}, False),  # booleans are not numbers
        ({"field": "eventType", "op": "gt", "value": 0}, False),  # strings are not numbers
        (
            {
                "all": [
                    {"field": "flag", "op": "equals", "value": True},
                    {"field": "eventType", "op": "starts_with", "value": "web."},
                ]
            },
            False,
        ),
        (
            {
                "any": [
                    {"field": "flag", "op": "equals", "value": True},
                    {"field": "eventType", "op": "starts_with", "value": "web."},
                ]
            },
            True,
        ),
    ],
)
def test_ops(spec: dict, expected: bool) -> None:
    assert compile_condition(spec)(RECORD) is expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"field": "x", "op": "regex", "value": "."}, "unknown op 'regex'"),
        ({"field": "x", "op": "gt", "value": "ten"}, "needs a finite number"),
        ({"field": "x", "op": "in", "value": []}, "non-empty list"),
        ({"field": "x", "op": "equals"}, "needs a value"),
        ({"op": "equals", "value": 1}, "field"),
        ({"all": []}, "non-empty list"),
        ({"all": [{"field": "x", "op": "exists"}], "any": []}, "cannot be mixed"),
        ({"field": "x", "op": "exists", "value": 1, "extra": 2}, "unknown key"),
        ("eventType == 'x'", "must be a table"),
    ],
)
def test_invalid_conditions_name_the_problem(spec: object, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        compile_condition(spec, "events[0].when")


def test_error_names_nested_path() -> None:
    with pytest.raises(ConditionError, match=r"goals\[1\]\.eligibility\.any\[1\]\.op"):
        compile_condition(
            {"any": [{"field": "a", "op": "exists"}, {"field": "b", "op": "bogus"}]},
            "goals[1].eligibility",
        )


def test_conditions_are_never_evaluated_as_code() -> None:
    hostile = {"field": "__import__('os').system('false')", "op": "equals", "value": "x"}
    assert compile_condition(hostile)({"eventType": "x"}) is False
