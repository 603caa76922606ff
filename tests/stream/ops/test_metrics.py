"""Batch observation of the end-to-end latency histogram."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from stream.ops import metrics


def histogram_samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    """``(sample name, le)`` -> value, for the ``_bucket``, ``_sum`` and ``_count`` series."""
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def assert_end_to_end_adds_what_one_by_one_adds(produced_at_ms: list[int], now: float) -> None:
    """``observe_end_to_end_many`` adds to the histogram what observing each latency on its
    own adds (every bucket, the sum and the count)."""
    reference = Histogram(
        "reference_seconds",
        "one by one",
        buckets=metrics.LATENCY_BUCKETS,
        registry=CollectorRegistry(),
    )
    for ts in produced_at_ms:
        reference.observe(max(0.0, now - ts / 1000))
    before = histogram_samples(metrics.END_TO_END_LATENCY)
    metrics.observe_end_to_end_many(produced_at_ms, now)
    after = histogram_samples(metrics.END_TO_END_LATENCY)
    added = {
        (name.replace("customer_ai_end_to_end_latency", "reference"), le): value
        - before[(name, le)]
        for (name, le), value in after.items()
    }
    expected = histogram_samples(reference)
    assert added.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(added[key] - value) < 1e-6, key
    assert added[("reference_seconds_count", "")] == len(produced_at_ms)


def test_many_observations_at_once_equal_one_by_one() -> None:
    now = 1_000_000.0
    # on, below and above bucket bounds, a future timestamp (clock skew: 0) and duplicates
    produced_at_ms = [now * 1000 - d for d in (0, 1, 5, 5, 10, 10.5, 250, 999, 60_000, 10**9)]
    produced_at_ms += [now * 1000 + 300]
    assert_end_to_end_adds_what_one_by_one_adds([int(ts) for ts in produced_at_ms], now)
