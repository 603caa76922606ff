"""Fast decimal rounding for stored and served numbers.

``floor(x * 10**k + 0.5) / 10**k`` is the double nearest a number with ``k``
decimals, so its ``repr`` (and its JSON) is as short as ``round(x, k)``'s, at about a
quarter of the cost. Halves round up (``round`` rounds them to even), which does not
matter as long as every path that must agree (stream and backtest) uses these.

The floor is taken as ``y // 1.0``: for a finite double it is ``math.floor(y)`` as a
double (the same value; an integer above 2**53 is a double already), and compiled it is
one C operation instead of a call to ``math.floor`` and an integer division
(``bench/core_speed.py``). Like everything served, the values are finite.

Examples
--------
>>> rounded(2 / 3, 4), rounded(-2 / 3, 4), rounded(0.1 + 0.2, 6)
(0.6667, -0.6667, 0.3)
>>> rounded_list([1 / 3, 2.0, 1e-9], 6)
[0.333333, 2.0, 0.0]
>>> rounded_array(np.array([2 / 3, -2 / 3]), 4).tolist()
[0.6667, -0.6667]
"""

from __future__ import annotations

import numpy as np

__all__ = ["rounded", "rounded_array", "rounded_list"]

_SCALES = [10.0**k for k in range(16)]


def rounded(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` decimals (halves up)."""
    scale = _SCALES[digits]
    return (x * scale + 0.5) // 1.0 / scale


def rounded_list(values: list[float], digits: int) -> list[float]:
    """Every value of ``values`` rounded to ``digits`` decimals (halves up)."""
    scale = _SCALES[digits]
    return [(x * scale + 0.5) // 1.0 / scale for x in values]


def rounded_array(values: np.ndarray, digits: int) -> np.ndarray:
    """Every value of ``values`` rounded to ``digits`` decimals: the doubles :func:`rounded` gives."""
    scale = _SCALES[digits]
    return np.floor(values * scale + 0.5) / scale
