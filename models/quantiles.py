"""Streaming percentile of a score among recent scores of the same goal.

A fixed histogram over the logit of the probability (fine near 0 and 1, where
rare-goal probabilities live) with exponential forgetting: when the total mass
passes ``2 * window`` every bin is halved, so the ranking follows the recent
score distribution. Memory is constant; ``add`` and ``percentile`` are O(log bins)
(a Fenwick tree of prefix sums; halving is O(bins), once per ``window`` scores) and
deterministic, so a backtest ranks exactly like the stream.

Examples
--------
>>> sketch = PercentileSketch()
>>> for i in range(1, 100):
...     sketch.add(i / 100)
>>> round(sketch.percentile(0.5)), round(sketch.percentile(0.9)), round(sketch.percentile(0.05))
(50, 90, 5)
"""

from __future__ import annotations

import math

__all__ = ["PercentileSketch"]


class PercentileSketch:
    """Histogram over ``logit(p)`` in ``[-lo, lo]`` with forgetting.

    Parameters
    ----------
    bins
        Number of bins.
    limit
        Logit range covered is ``[-limit, limit]``; beyond it scores fall in the end bins.
    window
        Approximate number of recent scores that dominate the ranking.
    """

    def __init__(self, bins: int = 1200, limit: float = 12.0, window: int = 20_000) -> None:
        self.bins = bins
        self.limit = limit
        self.window = window
        self.counts = [0.0] * bins
        self.total = 0.0
        self._scale = bins / (2 * limit)
        self._tree = [0.0] * (bins + 1)  # Fenwick tree over counts (1-based)

    def _bin(self, p: float) -> int:
        p = min(max(p, 1e-12), 1 - 1e-12)
        z = math.log(p / (1 - p))
        b = int((z + self.limit) * self._scale)
        return 0 if b < 0 else self.bins - 1 if b >= self.bins else b

    def _add_bin(self, b: int) -> None:
        self.counts[b] += 1.0
        tree = self._tree
        n = self.bins
        i = b + 1
        while i <= n:
            tree[i] += 1.0
            i += i & -i
        self.total += 1.0
        if self.total > 2 * self.window:  # halving every node keeps the tree exact
            self.counts = [c * 0.5 for c in self.counts]
            self._tree = [c * 0.5 for c in self._tree]
            self.total *= 0.5

    def _percentile_bin(self, b: int) -> float:
        if self.total <= 0:
            return 50.0
        tree = self._tree
        below = 0.5 * self.counts[b]
        i = b
        while i > 0:
            below += tree[i]
            i &= i - 1
        return 100.0 * below / self.total

    def add(self, p: float) -> None:
        """Record one score."""
        self._add_bin(self._bin(p))

    def percentile(self, p: float) -> float:
        """Percent of recorded scores below ``p`` (half of its own bin counts as below)."""
        return self._percentile_bin(self._bin(p))

    def add_and_rank(self, p: float) -> float:
        """:meth:`add` then :meth:`percentile` of the same score (one bin lookup).

        >>> s = PercentileSketch()
        >>> s.add(0.2); s.add(0.4)
        >>> s.add_and_rank(0.3)
        50.0
        """
        b = self._bin(p)
        self._add_bin(b)
        return self._percentile_bin(b)
