"""Event time you can trust: an event's time checked against when its record arrived.

An event carries the time its producer says it happened; a phone with a wrong clock says
2199 or 1970. The stream checks every event against its record's *reference time*: the
broker timestamp of the Kafka record, or the worker's clock when the record has none
(``None`` or negative) or when it is later than the worker's clock (a producer sets a
record's ``CreateTime``, so a wrong clock can reach it too). An event more than
``[input] max_future_minutes`` ahead of that time is refused as ``future_timestamp``; one
more than ``[input] max_age_days`` behind it as ``too_old``
(:func:`check_event_time`). The partition's watermark never passes the newest reference
time of its batch plus ``max_future_minutes`` (:func:`watermark_ceiling`), whatever an
event says.

Pure: the adapter passes the clock in, so the same checks run in tests and (with
another reference) wherever else they are needed.

Examples
--------
>>> check_event_time(1_000, reference_ms=0, max_future_ms=3_600_000, max_age_ms=86_400_000)
>>> check_event_time(7_200_000, 0, 3_600_000, 86_400_000)
Traceback (most recent call last):
...
models.events.InvalidEvent: future_timestamp: event time 1970-01-01T02:00:00.000Z is 120 min ahead of the record's broker time 1970-01-01T00:00:00.000Z; at most [input] max_future_minutes = 60 is allowed
"""

from __future__ import annotations

from models.events import InvalidEvent
from models.profile import format_time

__all__ = ["check_event_time", "reference_time", "watermark_ceiling"]


def reference_time(broker_ms: int | None, now_ms: int) -> int:
    """The time an event is checked against: its record's broker time, at most ``now_ms``.

    Parameters
    ----------
    broker_ms
        The Kafka record's timestamp (epoch ms); ``None`` or negative when it has none.
    now_ms
        The worker's clock (epoch ms).

    Examples
    --------
    >>> reference_time(5_000, 9_000), reference_time(None, 9_000), reference_time(-1, 9_000)
    (5000, 9000, 9000)
    >>> reference_time(20_000, 9_000)  # a producer's clock ahead of the worker's
    9000
    """
    if broker_ms is None or broker_ms < 0 or broker_ms > now_ms:
        return now_ms
    return broker_ms


def check_event_time(event_ms: int, reference_ms: int, max_future_ms: int, max_age_ms: int) -> None:
    """Refuse an event time too far ahead of, or behind, its reference time.

    Parameters
    ----------
    event_ms
        The event's ``timestamp`` (epoch ms).
    reference_ms
        Its record's reference time (:func:`reference_time`).
    max_future_ms, max_age_ms
        ``[input] max_future_minutes`` and ``max_age_days``, in ms.

    Raises
    ------
    InvalidEvent
        ``future_timestamp`` or ``too_old``; the detail names the event time, the
        reference time and the configuration key to change.

    Examples
    --------
    >>> day = 86_400_000
    >>> check_event_time(10 * day, 10 * day + 3_600_000, 0, day)  # an hour late: fine
    >>> check_event_time(0, 2 * day, 3_600_000, day)
    Traceback (most recent call last):
    ...
    models.events.InvalidEvent: too_old: event time 1970-01-01T00:00:00.000Z is 2.0 days behind the record's broker time 1970-01-03T00:00:00.000Z; at most [input] max_age_days = 1 is allowed
    """
    ahead = event_ms - reference_ms
    if ahead > max_future_ms:
        raise InvalidEvent(
            "future_timestamp",
            f"event time {format_time(event_ms)} is {ahead / 60_000:.0f} min ahead of the "
            f"record's broker time {format_time(reference_ms)}; at most [input] "
            f"max_future_minutes = {max_future_ms / 60_000:g} is allowed",
        )
    if -ahead > max_age_ms:
        raise InvalidEvent(
            "too_old",
            f"event time {format_time(event_ms)} is {-ahead / 86_400_000:.1f} days behind the "
            f"record's broker time {format_time(reference_ms)}; at most [input] "
            f"max_age_days = {max_age_ms / 86_400_000:g} is allowed",
        )


def watermark_ceiling(newest_reference_ms: int, max_future_ms: int) -> int:
    """The latest a partition's watermark may be after a batch: newest reference + skew.

    Parameters
    ----------
    newest_reference_ms
        The newest reference time (:func:`reference_time`) of the batch's records of
        the partition.
    max_future_ms
        ``[input] max_future_minutes`` in ms, the allowed skew.

    Examples
    --------
    >>> watermark_ceiling(1_000_000, 3_600_000)
    4600000
    """
    return newest_reference_ms + max_future_ms
