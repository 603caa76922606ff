"""The scoring core shared by the live stream and the backtest.

:class:`Engine` takes a profile's state and one of its events and returns the new
state plus what the event caused (:mod:`models.outcome`): a score per eligible goal,
bucket changes, and the examples that matured. It is pure: no I/O, no clock (``scored_at`` is the
adapter's business), so ``customer-ai evaluate`` and the Faust worker produce the
same examples and the same final state from the same events.

Order of work for one event at time ``t`` (per goal unless said):

0. duplicates: if the hash of the event's ``_id`` (:func:`event_hash`) is among the
   profile's ``recent`` hashes (the newest ``[dedupe] recent_ids`` applied), skip the
   event: no state change, no score, no snapshot; ``Outcome.duplicates`` counts it;
1. mature pending snapshots whose window closed before ``t`` (the profile's own clock);
2. if the event is the goal event, mature snapshots whose window contains ``t``;
3. apply the event to the rolling counters (once, shared by all goals) and remember its
   id's hash in ``recent`` (the oldest dropped beyond ``recent_ids``);
4. featurize as of ``t``; for each goal the profile is eligible for: score, rank,
   bucket, and possibly open a label snapshot holding the features and the served
   probability.

Examples
--------
>>> from models.config import parse_config
>>> from models.events import Event
>>> cfg = parse_config(open("customer-ai.toml").read())
>>> engine = Engine(cfg)
>>> out = Outcome()
>>> ev = Event("e-1", "p-1", "commerce.purchases", 0, {"eventType": "commerce.purchases",
...            "commerce": {"order": {"priceTotal": 20.0}}})
>>> state = engine.process(None, ev, out)
>>> [(s.goal, s.warming_up) for s in out.scores]
[('conversion', True), ('churn', True)]
>>> out.clear()
>>> state = engine.process(state, ev, out)  # the same _id again (a producer retry)
>>> out.duplicates, out.scores, state.n_events, state.recent
(1, [], 1, ['712e0a9f8fc4'])
"""

from __future__ import annotations

from hashlib import blake2b

from models.config import DAY_MS, Config
from models.events import Event, InvalidEvent, get_path
from models.factors import Factor, FactorBasis
from models.features import Featurizer
from models.labels import example_id, resolve_closed, resolve_goal_event
from models.model import LinearModel, transform
from models.outcome import Example, Outcome, Score, SegmentChange
from models.rounding import rounded, rounded_list
from models.state import NEVER, ProfileState, Snapshot

__all__ = ["Engine", "event_hash"]


def event_hash(event_id: str) -> str:
    """The short hash of an event id kept in ``ProfileState.recent``: 12 hex digits (48 bits).

    BLAKE2b, so the same in every process and replay (Python's ``hash`` of a string is
    salted per process). Two different ids of one profile share a hash with probability
    2**-48; an event is compared with at most ``recent_ids`` hashes, so with 8 a distinct
    event is taken for a duplicate with probability 8 / 2**48, about 2.8e-14: one wrongly
    skipped event expected in 3.5e13 events.

    >>> event_hash("e-1")
    '712e0a9f8fc4'
    """
    return blake2b(event_id.encode(), digest_size=6).hexdigest()


class Engine:
    """Per-event state update, scoring and labelling (see the module docstring).

    Parameters
    ----------
    config
        The validated configuration.
    models
        Served model per goal; missing goals start cold (warming up, version 0).
    """

    def __init__(self, config: Config, models: dict[str, LinearModel] | None = None) -> None:
        self.config = config
        self.featurizer = Featurizer(config)
        self._factor_parts = [(n, self.featurizer.labels[n]) for n in self.featurizer.names]
        self.goals = list(config.goals)
        self.windows = {g.name: g.window_ms for g in self.goals}
        self._window_items = list(self.windows.items())
        self._longest_ms = max(config.horizons_days) * DAY_MS
        self.models: dict[str, LinearModel] = {
            g.name: LinearModel.cold(g.name, self.featurizer.names) for g in self.goals
        }
        for model in (models or {}).values():
            self.set_model(model)
        # eligibility conditions see a dict of just the features they read (a profile
        # feature dict minus fields no condition asks for: the same answers, cheaper)
        index = self.featurizer.index
        read = {f for g in self.goals if g.eligibility is not None for f in g.eligibility_fields}
        if any(g.eligibility is not None and not g.eligibility_fields for g in self.goals):
            read = set(index)  # a GoalConfig built by hand, without its fields: all of them
        self._eligibility_slots = [(name, index[name]) for name in sorted(read) if name in index]
        self._needs_feature_dict = any(g.eligibility is not None for g in self.goals)
        self._recent_ids = config.recent_ids

    def set_model(self, model: LinearModel) -> bool:
        """Serve ``model`` for its goal if it is newer than the current one.

        A model trained on other features (an edited configuration) is projected onto
        the current ones by name (:meth:`LinearModel.project`): it serves on, never
        misaligned, until the trainer's new lineage is ready.
        """
        current = self.models.get(model.goal)
        if current is None or model.version <= current.version:
            return False
        if model.feature_names != self.featurizer.names:
            model = model.project(self.featurizer.names)
        self.models[model.goal] = model
        return True

    def match(self, event: Event) -> tuple[list[int], list[float]]:
        """Tracked events the event matches, with their values. Mutates nothing.

        Raises
        ------
        InvalidEvent
            ``wrong_type`` if a value field is not a number; ``bad_value`` if it is one
            outside the tracked event's ``[value_min, value_max]`` (not finite included).
        """
        matched: list[int] = []
        values: list[float] = []
        body = event.body
        for i, tracked in enumerate(self.config.events):
            if not tracked.when(body):
                continue
            value = 0.0
            if tracked.value_field:
                raw = get_path(body, tracked.value_field)
                if raw is not None:
                    if type(raw) not in (int, float):
                        raise InvalidEvent(
                            "wrong_type", f"{tracked.value_field} must be a number, got {raw!r:.40}"
                        )
                    # a NaN compares false: refused too; a huge int compares exactly
                    if not tracked.value_min <= raw <= tracked.value_max:
                        raise InvalidEvent(
                            "bad_value",
                            f"{tracked.value_field} = {raw!r:.40} is outside [{tracked.value_min:g}, "
                            f"{tracked.value_max:g}]; change [[events]] value_min / value_max of "
                            f"{tracked.name!r} to accept it",
                        )
                    value = float(raw)
            matched.append(i)
            values.append(value)
        return matched, values

    def process(
        self,
        state: ProfileState | None,
        event: Event,
        out: Outcome,
        matched: tuple[list[int], list[float]] | None = None,
    ) -> ProfileState:
        """Apply ``event`` to ``state`` (``None``: a new profile) and append results to ``out``.

        An event whose id the profile applied among its newest ``recent_ids`` is skipped:
        ``state`` is returned unchanged and ``out.duplicates`` counts it.
        """
        n_recent = self._recent_ids
        id_hash = ""
        if n_recent:
            id_hash = event_hash(event.event_id)
            if state is not None and id_hash in state.recent:
                out.duplicates += 1
                return state
        matched_events, values = matched if matched is not None else self.match(event)
        ts = event.timestamp_ms
        pid = event.profile_id
        if state is None:
            state = self.featurizer.new_state(ts)
        for goal in self.goals:
            gs = state.goals[goal.name]
            if gs.pending:
                gs.pending, done = resolve_closed(gs.pending, ts, goal.window_ms, goal.type)
                if goal.event_index in matched_events and gs.pending:
                    gs.pending, hit = resolve_goal_event(
                        gs.pending, ts, goal.window_ms, goal.type, goal.release == "at_window_close"
                    )
                    done.extend(hit)
                self._emit_examples(pid, goal.name, done, ts, out)
        fz = self.featurizer
        fz.apply(state, ts, matched_events, values)
        recent = state.recent
        if n_recent:
            recent.append(id_hash)
            if len(recent) > n_recent:
                del recent[: len(recent) - n_recent]
        elif recent:
            state.recent = []  # turned off: the hashes go with the profile's next write
        if state.restarted:  # features a config edit restarted: flagged for one horizon
            state.prune_restarted(self._longest_ms)
        vector = fz.vector(state)
        transformed: list[float] | None = None  # shared by every goal's model
        feature_dict: dict[str, float] = (
            {name: vector[i] for name, i in self._eligibility_slots}
            if self._needs_feature_dict
            else {}
        )
        buckets = self.config.buckets
        snapshot_features: list[float] | None = None  # rounded once, shared by every goal
        for goal in self.goals:
            if goal.eligibility is not None and not goal.eligibility(feature_dict):
                continue
            gs = state.goals[goal.name]
            model = self.models[goal.name]
            if model.warming_up:
                probability = model.base_rate
                basis: FactorBasis | None = None
                factors: list[Factor] | None = []
            else:
                if transformed is None:
                    transformed = transform(vector)
                probability = model.probability_t(transformed)
                basis = (model, vector, transformed, self._factor_parts)
                factors = None
            percentile = model.percentile(probability)
            bucket = buckets.bucket(percentile)
            out.scores.append(
                Score(
                    pid,
                    goal.name,
                    probability,
                    percentile,
                    bucket,
                    model.version,
                    model.warming_up,
                    factors,
                    event.event_id,
                    ts,
                    basis,
                )
            )
            if bucket != gs.bucket:
                out.segment_changes.append(
                    SegmentChange(pid, goal.name, gs.bucket, bucket, probability, ts)
                )
            gs.probability, gs.percentile, gs.bucket, gs.model_version = (
                probability,
                percentile,
                bucket,
                model.version,
            )
            if len(gs.pending) < goal.max_pending and (
                gs.last_open_ts == NEVER or ts - gs.last_open_ts >= goal.min_interval_ms
            ):
                if snapshot_features is None:
                    snapshot_features = rounded_list(vector, 4)
                gs.pending.append(
                    Snapshot(
                        ts,
                        event.event_id,
                        rounded(probability, 6),
                        model.version,
                        snapshot_features,
                        warming_up=model.warming_up,
                    )
                )
                if len(gs.pending) > 1 and gs.pending[-2].open_ts > ts:
                    gs.pending.sort(key=lambda s: s.open_ts)
                gs.last_open_ts = ts
        return state

    def expire(self, profile_id: str, state: ProfileState, watermark: int, out: Outcome) -> bool:
        """Mature snapshots whose window closed before the partition ``watermark``.

        Returns True if the state changed.
        """
        changed = False
        for goal in self.goals:
            gs = state.goals[goal.name]
            if gs.pending:
                gs.pending, done = resolve_closed(gs.pending, watermark, goal.window_ms, goal.type)
                if done:
                    changed = True
                    self._emit_examples(profile_id, goal.name, done, watermark, out)
        return changed

    def next_due(self, state: ProfileState) -> int | None:
        """Event time at which the earliest pending window of ``state`` closes."""
        best = None
        goals = state.goals
        for name, window in self._window_items:
            gs = goals.get(name)
            if gs is not None and gs.pending:
                due = gs.pending[0].open_ts + window
                if best is None or due < best:
                    best = due
        return best

    def _emit_examples(
        self, pid: str, goal: str, done: list[tuple[Snapshot, int]], now: int, out: Outcome
    ) -> None:
        layout = self.featurizer.fingerprint  # snapshots follow it (models/migrate.py)
        for snap, label in done:
            out.examples.append(
                Example(
                    example_id(pid, goal, snap),
                    goal,
                    pid,
                    snap.open_ts,
                    label,
                    snap.probability,
                    snap.model_version,
                    snap.features,
                    now,
                    snap.warming_up,
                    layout,
                )
            )
