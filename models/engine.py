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

from models.attributes import Fragment, prune, record
from models.config import DAY_MS, Config, GoalConfig
from models.events import Event, InvalidEvent, get_path
from models.factors import Factor, FactorBasis
from models.features import Featurizer
from models.labels import example_id, resolve_closed, resolve_goal_event
from models.model import LinearModel, clamp_probability, transform
from models.outcome import EVENT, MODEL, SCHEDULE, Example, Outcome, Score, SegmentChange
from models.rounding import rounded, rounded_list
from models.state import NEVER, GoalState, ProfileState, Snapshot

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

    def __init__(
        self,
        config: Config,
        models: dict[str, LinearModel] | None = None,
        *,
        every_rescore: bool = True,
    ) -> None:
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
        #: the stream computes and emits every scheduled rescoring; the backtest
        #: (``False``) computes only those that may open a label snapshot, counts the
        #: others (``Outcome.rescores_skipped``) and brings the served scores up to date
        #: with :meth:`settle`: the same snapshots, examples and final state, far fewer
        #: computations
        self.every_rescore = every_rescore
        self._scheduled = [g for g in config.goals if g.rescore_every_ms > 0]
        # eligibility that reads only features constant between events (all-time counts,
        # the gap between visits): a profile ineligible at its last event stays so until
        # the next one (the backtest then plans no scheduled snapshot for it)
        constant = {f"{e.name}_count_total" for e in config.events}  # not an attribute's
        constant.add("days_since_previous_visit")
        self._static_eligibility = {
            g.name: g.eligibility is not None
            and bool(g.eligibility_fields)
            and set(g.eligibility_fields) <= constant
            for g in config.goals
        }
        self._ineligible: set[tuple[str, str]] = set()
        #: (``every_rescore`` off) per profile, the watermark :meth:`advance` let it pass to
        self._passed: dict[str, int] = {}

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
        ``state`` is returned unchanged and ``out.duplicates`` counts it. Scheduled
        rescorings due before the event are done first (:meth:`advance`).
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
        elif self._scheduled:
            self._rescore_until(pid, state, ts, out)
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
        if state.attributes:  # the values no scoring reads any more (models/attributes.py)
            prune(state.attributes, state.ref_ts)
        self._score(pid, state, fz.vector(state), ts, event.event_id, EVENT, self.goals, out)
        return state

    def apply_fragment(self, state: ProfileState | None, fragment: Fragment) -> ProfileState | None:
        """Keep a profile fragment's attribute values (:mod:`models.attributes`) in
        ``state`` (``None``: a profile known from its attributes only, until its first
        event; still ``None`` when the fragment sets no value). No score: the profile's
        next scoring (an event, a scheduled rescoring) reads the values its time allows."""
        ts = fragment.timestamp_ms
        if state is None:
            if all(value is None for value in fragment.values.values()):
                return None  # nothing to keep: no profile is made of it
            state = self.featurizer.new_state(ts)
        now: int | None = state.ref_ts
        if not state.n_events:
            # no scoring time yet (its first event sets first_ts and ref_ts): the view
            # reads the newest values; none is dropped but the oldest beyond the cap
            # (the first event may be older than them)
            state.first_ts = min(state.first_ts, ts)
            state.ref_ts = max(state.ref_ts, ts)
            now = None
        record(state.attributes, fragment.values, ts, now)
        return state

    def _withdraw(
        self,
        pid: str,
        gs: GoalState,
        goal: str,
        event_id: str | None,
        ts: int,
        trigger: str,
        out: Outcome,
    ) -> None:
        """Withdraw the served score of a goal the profile is no longer eligible for (an
        eligibility that can turn false again, e.g. on a 30-day count): a score message
        with a null probability, percentile and bucket, the profile's move out of the
        goal's buckets, and the state's served score cleared (the profile view omits the
        goal until it is eligible and scored again)."""
        model = self.models[goal]
        score = Score(
            pid, goal, None, None, None, model.version, model.warming_up, [], event_id, ts,
            None, trigger,
        )  # fmt: skip
        out.scores.append(score)
        if gs.bucket is not None:
            out.segment_changes.append(SegmentChange(pid, goal, gs.bucket, None, None, ts))
        gs.serve(score, self.featurizer.index)

    def _score(
        self,
        pid: str,
        state: ProfileState,
        vector: list[float],
        ts: int,
        event_id: str | None,
        trigger: str,
        goals: list[GoalConfig],
        out: Outcome,
    ) -> None:
        """Score ``goals`` on ``vector`` (features as of ``ts``) and open label snapshots.

        ``trigger`` is ``EVENT``, ``SCHEDULE`` (a rescoring due by the schedule: it opens a
        snapshot at most every ``schedule_min_interval_hours``) or ``MODEL`` (a new model
        version's refresh of the served score: it opens none and keeps ``scored_ts``).
        """
        transformed: list[float] | None = None  # shared by every goal's model
        feature_dict: dict[str, float] = (
            {name: vector[i] for name, i in self._eligibility_slots}
            if self._needs_feature_dict
            else {}
        )
        buckets = self.config.buckets
        snapshot_features: list[float] | None = None  # rounded once, shared by every goal
        lazy = not self.every_rescore
        for goal in goals:
            gs = state.goals[goal.name]
            if trigger != MODEL and ts > gs.scored_ts:
                gs.scored_ts = ts
            if goal.eligibility is not None and not goal.eligibility(feature_dict):
                if lazy and trigger == EVENT and self._static_eligibility[goal.name]:
                    self._ineligible.add((pid, goal.name))
                if gs.probability is not None:  # eligible before, no longer: withdrawn
                    self._withdraw(pid, gs, goal.name, event_id, ts, trigger, out)
                continue
            if lazy and trigger == EVENT and self._static_eligibility[goal.name]:
                self._ineligible.discard((pid, goal.name))
            model = self.models[goal.name]
            probability: float | None
            if model.warming_up:
                # the running base rate once the trainer published one, else the prior
                probability = model.base_rate if model.version > 0 else goal.prior
                if probability is not None:
                    probability = clamp_probability(probability)
                basis: FactorBasis | None = None
                factors: list[Factor] | None = []
            else:
                if transformed is None:
                    transformed = transform(vector)
                probability = model.probability_t(transformed)
                basis = (model, vector, transformed, self._factor_parts)
                factors = None
            # a warm-up score is not ranked: every profile is served the same base rate
            # (or prior), so a rank among them would be made up (all at 50, one bucket)
            percentile: float | None = None
            bucket: str | None = None
            if probability is not None and not model.warming_up:
                percentile = model.percentile(probability)
                bucket = buckets.bucket(percentile)
            score = Score(
                pid,
                goal.name,
                probability,
                percentile,
                bucket,
                model.version,
                model.warming_up,
                factors,
                event_id,
                ts,
                basis,
                trigger,
            )
            out.scores.append(score)
            if bucket != gs.bucket and probability is not None:
                # into a bucket, or out of one when the goal serves a warm-up score again
                out.segment_changes.append(
                    SegmentChange(pid, goal.name, gs.bucket, bucket, probability, ts)
                )
            # the served score, factors included (read from it when the state is written)
            gs.serve(score, self.featurizer.index)
            if trigger == MODEL or len(gs.pending) >= goal.max_pending:
                continue
            if trigger == SCHEDULE and ts - state.ref_ts >= goal.window_ms:
                continue  # quiet for a whole window: no more snapshots until the next event
            last_open = gs.last_open_ts
            interval = goal.min_interval_ms
            if trigger == SCHEDULE and goal.schedule_min_interval_ms > interval:
                interval = goal.schedule_min_interval_ms
            if last_open == NEVER or ts - last_open >= interval:
                if snapshot_features is None:
                    snapshot_features = rounded_list(vector, 4)
                gs.pending.append(
                    Snapshot(
                        ts,
                        event_id or "",
                        None if probability is None else rounded(probability, 6),
                        model.version,
                        snapshot_features,
                        warming_up=model.warming_up,
                    )
                )
                if len(gs.pending) > 1 and gs.pending[-2].open_ts > ts:
                    gs.pending.sort(key=lambda s: s.open_ts)
                gs.last_open_ts = ts

    # ---- time passing -----------------------------------------------------------------
    def _scored_ts(self, gs: GoalState, state: ProfileState) -> int:
        """When the goal was last evaluated (a state from before rescoring: its newest event)."""
        return gs.scored_ts if gs.scored_ts != NEVER else state.ref_ts

    def _next_rescore(self, pid: str, state: ProfileState, goal: GoalConfig) -> int | None:
        """The next scheduled rescoring of ``goal`` this engine computes.

        Every one of them (``every_rescore``), or the first at which a label snapshot may
        open: a free pending slot (windows close strictly before it), the snapshot
        intervals passed, and not known ineligible until the next event.
        """
        if not state.n_events:  # known from its attributes only: not scored yet
            return None
        period = goal.rescore_every_ms
        gs = state.goals[goal.name]
        base = self._scored_ts(gs, state)
        if self.every_rescore:
            return base + period
        if (pid, goal.name) in self._ineligible:
            return None
        earliest = base + period
        if gs.last_open_ts != NEVER:
            interval = max(goal.min_interval_ms, goal.schedule_min_interval_ms)
            earliest = max(earliest, gs.last_open_ts + interval)
        pending = gs.pending
        if len(pending) >= goal.max_pending:  # a slot frees once a window has closed
            earliest = max(
                earliest, pending[len(pending) - goal.max_pending].open_ts + goal.window_ms + 1
            )
        # the rescorings before the time the profile was let pass to (advance) were done
        # (none opened a snapshot: slots full, intervals not passed): the stream's
        # scored_ts moved past them, a freed slot is for the next one after it
        passed = self._passed.get(pid)
        if passed is not None and passed > earliest:
            earliest = passed
        steps = -(-(earliest - base) // period)  # onto the schedule: base + k * period
        when = base + max(steps, 1) * period
        # a snapshot opens only within one goal window of the newest event
        return when if when - state.ref_ts < goal.window_ms else None

    def _rescore_until(self, pid: str, state: ProfileState, until: int, out: Outcome) -> bool:
        """Scheduled rescorings strictly before ``until``, in time order, each after the
        label windows closed before it. Returns True if any was done."""
        done = False
        while True:
            when = None
            due: list[GoalConfig] = []
            for goal in self._scheduled:
                t = self._next_rescore(pid, state, goal)
                if t is None or t >= until:
                    continue
                if when is None or t < when:
                    when, due = t, [goal]
                elif t == when:
                    due.append(goal)
            if when is None:
                return done
            if not self.every_rescore:  # the rescorings skipped to get here: counted only
                for goal in due:
                    gs = state.goals[goal.name]
                    skipped = (when - self._scored_ts(gs, state)) // goal.rescore_every_ms - 1
                    out.rescores_skipped += skipped
            self._close_windows(pid, state, when, out)
            vector = self.featurizer.vector_at(state, when)
            self._score(pid, state, vector, when, None, SCHEDULE, due, out)
            done = True

    def _close_windows(self, pid: str, state: ProfileState, now: int, out: Outcome) -> bool:
        changed = False
        for goal in self.goals:
            gs = state.goals[goal.name]
            if gs.pending:
                gs.pending, done = resolve_closed(gs.pending, now, goal.window_ms, goal.type)
                if done:
                    changed = True
                    self._emit_examples(pid, goal.name, done, now, out)
        return changed

    def advance(self, profile_id: str, state: ProfileState, watermark: int, out: Outcome) -> bool:
        """Let event time pass up to the partition ``watermark`` for an idle profile:
        scheduled rescorings due before it (each may open a label snapshot) and label
        windows closed before it. Returns True if the state changed.
        """
        changed = bool(self._scheduled) and self._rescore_until(profile_id, state, watermark, out)
        if self._scheduled and not self.every_rescore:
            self._passed[profile_id] = watermark
        return self._close_windows(profile_id, state, watermark, out) or changed

    def expire(self, profile_id: str, state: ProfileState, watermark: int, out: Outcome) -> bool:
        """Mature snapshots whose window closed before ``watermark`` (no rescoring).

        Returns True if the state changed.
        """
        return self._close_windows(profile_id, state, watermark, out)

    def settle(self, profile_id: str, state: ProfileState, watermark: int, out: Outcome) -> bool:
        """Bring the served scores to what the stream serves at ``watermark``: the
        scheduled rescorings :meth:`advance` skipped (``every_rescore`` off), the last of
        each goal's before ``watermark`` computed (never a snapshot: :meth:`advance`
        opened every one due). Returns True if the state changed."""
        changed = self.advance(profile_id, state, watermark, out)
        if self.every_rescore or not state.n_events:  # attributes only: never scored yet
            return changed
        for goal in self._scheduled:
            gs = state.goals[goal.name]
            base = self._scored_ts(gs, state)
            period = goal.rescore_every_ms
            steps = (watermark - 1 - base) // period
            if steps < 1:
                continue
            when = base + steps * period
            out.rescores_skipped += steps - 1
            vector = self.featurizer.vector_at(state, when)
            pending, last_open = len(gs.pending), gs.last_open_ts
            self._score(profile_id, state, vector, when, None, SCHEDULE, [goal], out)
            if len(gs.pending) != pending:  # cannot happen after advance(): keep it so
                raise AssertionError("settle opened a label snapshot")
            gs.last_open_ts = last_open
            changed = True
        return changed

    def refresh(self, profile_id: str, state: ProfileState, goal_name: str, out: Outcome) -> bool:
        """Re-serve ``goal_name``'s score with the model served now (a new version), on the
        features as of the goal's last scoring: trigger ``MODEL``, no label snapshot, the
        schedule unchanged. Returns False (nothing done) if the profile has no score for
        the goal or was scored by this version already."""
        gs = state.goals.get(goal_name)
        model = self.models.get(goal_name)
        if gs is None or model is None or gs.model_version == model.version:
            return False
        if gs.probability is None and gs.scored_ts == NEVER:
            return False
        goal = self.config.goal(goal_name)
        when = self._scored_ts(gs, state)
        vector = self.featurizer.vector_at(state, when)
        n = len(out.scores)
        self._score(profile_id, state, vector, when, None, MODEL, [goal], out)
        return len(out.scores) > n

    def next_due(self, state: ProfileState, profile_id: str = "") -> int | None:
        """Event time of the next work due on ``state`` while it is idle: its earliest
        pending window close, or its next scheduled rescoring (:meth:`advance`)."""
        best = None
        goals = state.goals
        for name, window in self._window_items:
            gs = goals.get(name)
            if gs is not None and gs.pending:
                due = gs.pending[0].open_ts + window
                if best is None or due < best:
                    best = due
        for goal in self._scheduled:
            t = self._next_rescore(profile_id, state, goal)
            if t is not None and (best is None or t < best):
                best = t
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
                    EVENT if snap.event_id else SCHEDULE,
                )
            )
