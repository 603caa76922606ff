"""Fast rounding and time formatting agree with the slow, obvious versions."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import numpy as np

from models.profile import format_time
from models.rounding import rounded, rounded_array, rounded_list


def test_rounded_is_within_half_a_unit_and_as_short_as_round() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        x = rng.random() * rng.choice([1.0, 10.0, 1e3, 1e6]) * rng.choice([1, -1])
        for digits in (1, 4, 6):
            r = rounded(x, digits)
            assert abs(r - x) <= 0.5 * 10.0**-digits + 1e-9
            assert len(repr(r)) <= len(repr(round(x, digits)))


def test_rounded_is_the_floor_formula() -> None:
    rng = random.Random(5)
    values = [0.0, 0.5e-4, -0.5e-4, 1.23455, -1.23455, 2.0**60 / 3, -(2.0**60) / 3, 1e300] + [
        rng.uniform(-1e6, 1e6) * rng.choice([1.0, 1e-3, 1e-6, 1e-12]) for _ in range(20_000)
    ]
    for digits in (1, 4, 6):
        scale = 10.0**digits
        for v in values:
            assert rounded(v, digits) == math.floor(v * scale + 0.5) / scale


def test_rounded_list_matches_rounded() -> None:
    values = [0.0, 1 / 3, 2 / 3, 12.3456789, 1e-9]
    assert rounded_list(values, 4) == [rounded(v, 4) for v in values]


def test_rounded_array_gives_the_doubles_of_rounded() -> None:
    rng = random.Random(11)
    values = [0.0, 0.5e-4, -0.5e-4, 1.23455, -1.23455, 1e12 / 3] + [
        rng.uniform(-1e6, 1e6) * rng.choice([1.0, 1e-3, 1e-6]) for _ in range(20_000)
    ]
    for digits in (4, 6):
        assert rounded_array(np.array(values), digits).tolist() == [
            rounded(v, digits) for v in values
        ]


def test_format_time_matches_datetime() -> None:
    rng = random.Random(3)
    for ms in [0, 999, 86_399_999, 951_782_400_000] + [
        rng.randrange(0, 7_258_118_400_000) for _ in range(20_000)
    ]:
        expected = (
            datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
            + f".{ms % 1000:03d}Z"
        )
        assert format_time(ms) == expected
