"""Identity stitching: one profile per person, whatever identity an event names it by.

``[identity] namespaces`` ranks the ``identityMap`` namespaces to use, first the highest
(``["CRMID", "Email", "ECID"]``). An event's identities are those of these namespaces
(:func:`~models.events.ranked_identities`), in rank order; its profile id is the first of them: the primary
identity of the highest-ranked namespace present, else that namespace's first identity.

A **person** is one profile (its *canonical* id) and its *aliases*, the identities it
absorbed. An event that carries identities of two persons links them: the person whose
canonical id ranks first (:func:`winner`: lower namespace rank, then the smaller id)
absorbs the other (:func:`absorb`). Its state takes the other's history: counts and sums
add (decayed ones brought to the newer time first), first seen and last seen take their
extremes, pending label snapshots are kept, attribute values merge in time; the absorbed
id and its aliases become aliases of the winner. The winner of every merge is the best
identity of the two persons, so a person's canonical id is its best identity whatever
the order of the merges, and its state the sum of its parts.

A person holds at most ``[identity] max_identities`` identities (50, as Adobe's identity
graph): a link that would make a larger one is refused (:func:`fits`), and the event is
applied to the profile it reached.

Examples
--------
>>> body = {"identityMap": {"ECID": [{"id": "e-1"}], "Email": [{"id": "a@x.org"}]}}
>>> ranked_identities(body, ("CRMID", "Email", "ECID"))
[(1, 'a@x.org'), (2, 'e-1')]
>>> winner((2, "e-1"), (1, "a@x.org"))
(1, 'a@x.org')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from models.attributes import MAX_HISTORY, prune
from models.config_types import GoalConfig
from models.events import Identity, ranked_identities
from models.features import Featurizer
from models.identity_config import MAX_IDENTITIES
from models.labels import resolve_goal_event
from models.state import NEVER, GoalState, ProfileState

__all__ = [
    "MAX_IDENTITIES",
    "absorb",
    "fits",
    "ranked_identities",
    "winner",
]


def winner(a: Identity, b: Identity) -> Identity:
    """The canonical id of two persons merged: the lower namespace rank, then the
    smaller id (a total order: every merge of the same persons picks the same one)."""
    return a if a <= b else b


def fits(a: ProfileState | None, b: ProfileState | None, cap: int) -> bool:
    """Whether the persons of ``a`` and ``b`` (``None``: a new identity) hold at most
    ``cap`` identities together."""
    size = 2 + (len(a.aliases) if a is not None else 0) + (len(b.aliases) if b is not None else 0)
    return size <= cap


def absorb(
    kept: ProfileState | None,
    absorbed: ProfileState | None,
    kept_id: Identity,
    absorbed_id: str,
    featurizer: Featurizer,
) -> ProfileState:
    """The state of the person ``kept_id`` after it absorbed ``absorbed_id`` (whose state
    is ``absorbed``; ``None`` for either: no state yet, then an empty one holds the
    aliases until the first event). ``absorbed`` is read, never changed; ``kept`` is
    changed in place when it is not ``None``. Both follow ``featurizer``'s layout."""
    taus_ms, n_valued = featurizer.taus_ms, len(featurizer.valued)
    if absorbed is None and kept is None:
        merged = featurizer.new_state(NEVER)
    elif kept is None:
        assert absorbed is not None
        merged = ProfileState.from_bytes(absorbed.to_bytes(), list(absorbed.goals))
        merged.aliases = []
    elif absorbed is None:
        merged = kept
    else:
        _decide_across(kept, absorbed, featurizer.config.goals)
        merged = _merge(kept, absorbed, taus_ms, n_valued)
    aliases = merged.aliases if kept is not None else []  # (a copy of absorbed's was cleared)
    for alias in [absorbed_id, *(absorbed.aliases if absorbed is not None else [])]:
        if alias not in aliases and alias != kept_id[1]:
            aliases.append(alias)
    merged.aliases = aliases
    merged.rank = kept_id[0]
    return merged


def _merge(
    kept: ProfileState, other: ProfileState, taus_ms: Sequence[float], n_valued: int
) -> ProfileState:
    """``kept`` with ``other``'s history added (in place)."""
    # the newer part's event ids last (the next event trims the oldest): both kept a while
    older, newer = (other, kept) if other.ref_ts <= kept.ref_ts else (kept, other)
    recent = older.recent + [h for h in newer.recent if h not in older.recent]
    if other.n_events and kept.n_events:
        ref = max(kept.ref_ts, other.ref_ts)
        n_h = len(taus_ms)
        kept.decayed[:] = _add_decayed(
            kept.decayed, kept.ref_ts, other.decayed, other.ref_ts, ref, taus_ms, n_h, 6
        )
        if n_valued:
            kept.values[:] = _add_decayed(
                kept.values, kept.ref_ts, other.values, other.ref_ts, ref, taus_ms, n_h, 4
            )
        kept.gap_ms = _gap(kept, other)
        kept.first_ts = min(kept.first_ts, other.first_ts)
        kept.ref_ts = ref
    elif other.n_events:  # kept knows attributes only: its times are the fragments'
        kept.decayed[:] = other.decayed
        kept.values[:] = other.values
        kept.gap_ms, kept.first_ts, kept.ref_ts = other.gap_ms, other.first_ts, other.ref_ts
    elif not kept.n_events:  # both attributes only
        kept.first_ts = min(kept.first_ts, other.first_ts)
        kept.ref_ts = max(kept.ref_ts, other.ref_ts)
    kept.n_events += other.n_events
    kept.counts[:] = [a + b for a, b in zip(kept.counts, other.counts)]
    kept.last_ts[:] = [max(a, b) for a, b in zip(kept.last_ts, other.last_ts)]
    kept.value_totals[:] = [round(a + b, 4) for a, b in zip(kept.value_totals, other.value_totals)]
    kept.recent = recent
    for name, since in other.restarted.items():
        kept.restarted[name] = max(since, kept.restarted.get(name, since))
    for name, history in other.attributes.items():
        kept.attributes[name] = _merge_history(kept.attributes.get(name, []), history)
    if kept.attributes and kept.n_events:
        prune(kept.attributes, kept.ref_ts)
    for name, goal in kept.goals.items():
        theirs = other.goals.get(name)
        if theirs is not None:
            _merge_goal(goal, theirs)
    return kept


def _decide_across(a: ProfileState, b: ProfileState, goals: Sequence[GoalConfig]) -> None:
    """Label the pending snapshots of each part that the other part's last goal event
    falls in the window of (the label is recorded; the example goes at window close)."""
    for goal in goals:
        for mine, theirs in ((a, b), (b, a)):
            gs = mine.goals.get(goal.name)
            ts = (
                theirs.last_ts[goal.event_index]
                if goal.event_index < len(theirs.last_ts)
                else NEVER
            )
            if gs is not None and gs.pending and ts != NEVER:
                resolve_goal_event(gs.pending, ts, goal.window_ms, goal.type, release_at_close=True)


def _add_decayed(
    a: list[float],
    a_ts: int,
    b: list[float],
    b_ts: int,
    ref: int,
    taus_ms: Sequence[float],
    n_h: int,
    digits: int,
) -> list[float]:
    """Two rows of decayed sums, each as of its own time, added as of ``ref``."""
    fa = [math.exp(-(ref - a_ts) / tau) for tau in taus_ms]
    fb = [math.exp(-(ref - b_ts) / tau) for tau in taus_ms]
    return [round(x * fa[i % n_h] + y * fb[i % n_h], digits) for i, (x, y) in enumerate(zip(a, b))]


def _gap(a: ProfileState, b: ProfileState) -> int:
    """The time between the newest event of the two histories and the one before it."""
    newest, older = (a, b) if a.ref_ts >= b.ref_ts else (b, a)
    before = older.ref_ts
    if newest.n_events > 1 and newest.gap_ms != NEVER:
        before = max(before, newest.ref_ts - newest.gap_ms)
    return newest.ref_ts - before


def _merge_history(mine: list[list[Any]], theirs: list[list[Any]]) -> list[list[Any]]:
    """Two histories of one attribute in time order; at one time, ``mine`` wins."""
    by_ts = {ts: value for ts, value in theirs}
    by_ts.update({ts: value for ts, value in mine})
    merged = [[ts, by_ts[ts]] for ts in sorted(by_ts)]
    return merged[-MAX_HISTORY:]


def _merge_goal(goal: GoalState, other: GoalState) -> None:
    """``goal`` keeps its served score (``other``'s when it served none) and takes
    ``other``'s pending snapshots, in time order."""
    if goal.probability is None and goal.scored_ts == NEVER and other.scored_ts != NEVER:
        goal.probability, goal.percentile, goal.bucket = (
            other.probability,
            other.percentile,
            other.bucket,
        )
        goal.model_version, goal.scored_ts, goal.warming_up = (
            other.model_version,
            other.scored_ts,
            other.warming_up,
        )
        goal.factors = other.factor_rows()
        goal._served = None
    goal.last_open_ts = max(goal.last_open_ts, other.last_open_ts)
    if other.pending:
        goal.pending = sorted(goal.pending + list(other.pending), key=lambda s: s.open_ts)


def rank_of(pid: str, state: ProfileState | None, ranked: list[Identity], lowest: int) -> int:
    """The namespace rank of a canonical id: its state's (set once it has aliases), else
    the event's (``ranked``), else ``lowest``."""
    if state is not None and state.rank >= 0:
        return state.rank
    for rank, identity in ranked:
        if identity == pid:
            return rank
    return lowest


class PersonIndex:
    """The persons of a backtest (:mod:`models.backtest`): alias -> canonical id, and the
    merges the events' links make, in event-time order, on the states in memory.

    Parameters
    ----------
    namespaces, cap
        ``[identity] namespaces`` and ``max_identities``.
    featurizer
        The engine's (:func:`absorb`).
    """

    def __init__(self, namespaces: tuple[str, ...], cap: int, featurizer: Featurizer) -> None:
        self.namespaces = namespaces
        self.cap = cap
        self.featurizer = featurizer
        #: alias -> the canonical id of its person
        self.canonical: dict[str, str] = {}
        self.merges = 0
        self.refused = 0

    def resolve(
        self, body: dict[str, Any], states: dict[str, ProfileState]
    ) -> tuple[str, list[str]]:
        """The canonical id an event of ``body`` is applied to, after the merges its
        identities make (in ``states``), and the ids absorbed."""
        ranked = ranked_identities(body, self.namespaces)
        lowest = len(self.namespaces)
        canonical = self.canonical
        pid = ranked[0][1]
        current = canonical.get(pid, pid)
        absorbed: list[str] = []
        for _, other in ranked:
            theirs = canonical.get(other, other)
            if theirs == current:
                continue
            mine_state, their_state = states.get(current), states.get(theirs)
            mine = (rank_of(current, mine_state, ranked, lowest), current)
            best = winner(mine, (rank_of(theirs, their_state, ranked, lowest), theirs))
            if not fits(mine_state, their_state, self.cap):
                self.refused += 1
                continue
            loser = theirs if best[1] == current else current
            kept, lost = (
                (mine_state, their_state) if best[1] == current else (their_state, mine_state)
            )
            merged = absorb(kept, lost, best, loser, self.featurizer)
            states.pop(loser, None)
            states[best[1]] = merged
            for alias in merged.aliases:
                canonical[alias] = best[1]
            canonical.pop(best[1], None)
            absorbed.append(loser)
            self.merges += 1
            current = best[1]
        return current, absorbed
