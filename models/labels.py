"""Delayed labels: label snapshots open at scoring moments and mature on event time.

A snapshot opened at ``open_ts`` watches the window ``(open_ts, open_ts + window]``.

- ``occurs``: it matures **positive** as soon as a goal event arrives inside the
  window, **negative** once the window has closed without one.
- ``does_not_occur``: the mirror; a goal event inside the window makes it
  **negative** at once, a window closed without one makes it **positive**.

A window is *closed* once the profile's own newer event or the partition's
event-time watermark is strictly past ``open_ts + window``: a goal event exactly at
the edge still counts. Wall-clock time never matters, so a backtest and the live
stream label identically.

Examples
--------
>>> from models.state import Snapshot
>>> DAY = 86_400_000
>>> pending = [Snapshot(0, "e-1", 0.2, 1, [1.0]), Snapshot(5 * DAY, "e-2", 0.3, 1, [2.0])]
>>> remaining, matured = resolve_goal_event(pending, ts=31 * DAY, window_ms=30 * DAY, goal_type="occurs")
>>> [(s.event_id, y) for s, y in matured], [s.event_id for s in remaining]
([('e-2', 1)], ['e-1'])
>>> remaining, matured = resolve_closed(remaining, now=31 * DAY, window_ms=30 * DAY, goal_type="occurs")
>>> [(s.event_id, y) for s, y in matured], remaining
([('e-1', 0)], [])
"""

from __future__ import annotations

from models.state import Snapshot

__all__ = ["example_id", "example_id_prefix", "resolve_closed", "resolve_goal_event"]


def resolve_closed(
    pending: list[Snapshot], now: int, window_ms: int, goal_type: str
) -> tuple[list[Snapshot], list[tuple[Snapshot, int]]]:
    """Mature snapshots whose window closed strictly before ``now`` (event time).

    Returns ``(still_pending, [(snapshot, label), ...])``; a closed window is a
    negative for ``occurs`` and a positive for ``does_not_occur``.
    """
    if not pending or pending[0].open_ts + window_ms >= now:
        return pending, []
    timeout_label = 0 if goal_type == "occurs" else 1
    matured = [
        (s, timeout_label if s.label is None else s.label)
        for s in pending
        if s.open_ts + window_ms < now
    ]
    return [s for s in pending if s.open_ts + window_ms >= now], matured


def resolve_goal_event(
    pending: list[Snapshot],
    ts: int,
    window_ms: int,
    goal_type: str,
    release_at_close: bool = False,
) -> tuple[list[Snapshot], list[tuple[Snapshot, int]]]:
    """Decide snapshots whose window ``(open_ts, open_ts + window]`` contains a goal event at ``ts``.

    Returns ``(still_pending, [(snapshot, label), ...])``: positive for ``occurs``,
    negative for ``does_not_occur``. With ``release_at_close`` the label is only
    recorded on the snapshot, which stays pending until its window closes: every
    example of a cohort then reaches the learner at the same time, whatever its
    label, so the learner does not see one class a whole window before the other.

    >>> from models.state import Snapshot
    >>> pending = [Snapshot(0, "e-1", 0.2, 1, [1.0])]
    >>> still, done = resolve_goal_event(pending, 5, 10, "does_not_occur", release_at_close=True)
    >>> done, still[0].label
    ([], 0)
    >>> resolve_closed(still, 11, 10, "does_not_occur")[1][0][1]
    0
    """
    label = 1 if goal_type == "occurs" else 0
    if release_at_close:
        for s in pending:
            if s.label is None and s.open_ts < ts <= s.open_ts + window_ms:
                s.label = label
        return pending, []
    hit = [s for s in pending if s.open_ts < ts <= s.open_ts + window_ms]
    if not hit:
        return pending, []
    return [s for s in pending if not s.open_ts < ts <= s.open_ts + window_ms], [
        (s, label) for s in hit
    ]


def _escape_id(value: str) -> str:
    """``value`` with ``\\`` and ``|`` escaped by a backslash (unchanged without either)."""
    if "|" not in value and "\\" not in value:
        return value
    return value.replace("\\", "\\\\").replace("|", "\\|")


def example_id_prefix(profile_id: str, goal: str) -> str:
    """The start every :func:`example_id` of ``profile_id`` and ``goal`` shares (an
    erasure finds the person's learnt ids by it).

    >>> print(example_id_prefix("a|b", "churn"))
    a\\|b|churn|
    >>> snapshot = Snapshot(1000, "c", 0.5, 0, [])
    >>> example_id("a|b", "churn", snapshot).startswith(example_id_prefix("a|b", "churn"))
    True
    >>> example_id("a|bc", "churn", snapshot).startswith(example_id_prefix("a|b", "churn"))
    False
    """
    return f"{_escape_id(profile_id)}|{goal}|"


def example_id(profile_id: str, goal: str, snapshot: Snapshot) -> str:
    """Deterministic id of the example a snapshot matures into (the same in every replay).

    ``<profile_id>|<goal>|<prediction_time>|<event_id>``, with ``\\`` and ``|`` inside
    the profile and event ids escaped by a backslash, so two different examples never
    share an id: the four parts are split at the ``|`` not preceded by an escaping
    backslash (goal names and times hold neither character). Ids without ``\\`` or ``|``
    read as before the escaping.

    >>> example_id("p-1", "churn", Snapshot(1000, "e-9", 0.5, 0, []))
    'p-1|churn|1000|e-9'
    >>> print(example_id("a|b", "churn", Snapshot(1000, "c", 0.5, 0, [])))
    a\\|b|churn|1000|c
    >>> print(example_id("a", "churn", Snapshot(1000, "b|c", 0.5, 0, [])))
    a|churn|1000|b\\|c
    """
    return f"{_escape_id(profile_id)}|{goal}|{snapshot.open_ts}|{_escape_id(snapshot.event_id)}"
