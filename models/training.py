"""The trainer core: one :class:`~models.learner.OnlineLearner` per goal, exactly-once
learning by example id, the cadence at which model versions are published, their
promotion by quality (champion/challenger), and per goal a
:class:`~models.sample.ProfileSample` of profiles whose probabilities under each
published version give its percentile cut points (``LinearModel.quantiles``).

Used by the stream's single-partition trainer agent and by the backtest.

Promotion: every matured example is first tested (prequentially) by three models: the
*candidate* (the learner as it is, before learning the example), the *serving* model (the
version published last) and the running *base rate*. Their log losses over the last
``[model] promotion_window`` examples decide: when a version is due, the candidate is
published only if its mean log loss is no worse than the serving model's and better than
the base rate's by more than ``[model] promotion_margin_se`` standard errors (default
:data:`NOISE_SE`; on features without signal the goal serves its base rate); otherwise
the serving version stays (no version number is consumed) and the refusal is recorded in
:attr:`Trainer.promotions`. Until a goal has a promoted model it is ``warming_up``
(base-rate versions are published so the served rate follows the data); then ``live``,
or ``poor`` while the live AUC is below ``[model] min_auc``.

Examples
--------
>>> from models.config import parse_config
>>> from models.outcome import Example
>>> cfg = parse_config(open("customer-ai.toml").read())
>>> trainer = Trainer(cfg)
>>> ex = Example("p|conversion|0|e", "conversion", "p", 0, 1, 0.5, 0,
...              [0.0] * len(trainer.feature_names), 1)
>>> trainer.learn(ex), trainer.learn(ex)
(True, False)
>>> trainer.status("conversion")
'warming_up'
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from models.config import Config
from models.features import Featurizer
from models.labels import example_id_prefix
from models.learner import OnlineLearner
from models.model import LinearModel, clamp_probability, transform
from models.outcome import Example
from models.sample import (
    SAMPLE_PROFILES,
    ProfileSample,
    SampledStates,
    cut_points,
    probabilities,
)
from models.state import ProfileState

__all__ = ["NOISE_SE", "PROMOTIONS_KEPT", "Promotion", "Trainer", "log_loss"]

#: promotion decisions kept in :attr:`Trainer.promotions` (the newest)
PROMOTIONS_KEPT = 1000
_EPS = 1e-7
#: the default of ``[model] promotion_margin_se``: a candidate whose mean log loss exceeds
#: the serving model's by at most this many standard errors of their paired difference is
#: "no worse" (the difference is noise); it must be below the base rate's by more than this
#: many (beating it is not noise)
NOISE_SE = 2.0


def log_loss(p: float, y: int) -> float:
    """The log loss of probability ``p`` for label ``y`` (``p`` clipped to [1e-7, 1 - 1e-7]).

    >>> round(log_loss(0.5, 1), 4), round(log_loss(0.9, 0), 4)
    (0.6931, 2.3026)
    """
    p = _EPS if p < _EPS else 1.0 - _EPS if p > 1.0 - _EPS else p
    return -math.log(p if y else 1.0 - p)


class Promotion:
    """One goal's promotion state: the serving model and the rolling log-loss windows.

    The window holds the last ``size`` examples' log losses of the candidate, the
    serving model and the base rate, one deque each (:attr:`losses`); the means are
    recomputed exactly from them when a version is due (``math.fsum``: correctly rounded,
    whatever the order), so a resumed trainer decides exactly as before.

    >>> pr = Promotion(3)
    >>> for c, s, b in [(0.1, 0.2, 0.3)] * 5:
    ...     pr.add(c, s, b)
    >>> [round(m, 3) for m in pr.means()], pr.n_examples()
    ([0.1, 0.2, 0.3], 3)
    >>> Promotion.from_dict(pr.to_dict(), 3).means() == pr.means()
    True
    """

    def __init__(self, size: int, serving: LinearModel | None = None) -> None:
        #: the candidate's, the serving model's and the base rate's log losses, oldest first
        self.losses: tuple[deque[float], deque[float], deque[float]] = (
            deque(maxlen=size),
            deque(maxlen=size),
            deque(maxlen=size),
        )
        #: the version published last (None: nothing published yet)
        self.serving = serving
        #: True once a model (not a base rate) was promoted for the goal
        self.promoted = serving is not None and not serving.warming_up
        #: the last promotion decision (an entry of :attr:`Trainer.promotions`), if any
        self.last: dict[str, Any] | None = None

    def n_examples(self) -> int:
        """How many examples the window holds."""
        return len(self.losses[0])

    def add(self, candidate: float, serving: float, base: float) -> None:
        """Add one example's three log losses to the window."""
        losses = self.losses
        losses[0].append(candidate)
        losses[1].append(serving)
        losses[2].append(base)

    def clear(self) -> None:
        """Empty the window (a new lineage: the old one's losses do not compare)."""
        for window in self.losses:
            window.clear()

    def means(self) -> tuple[float, float, float]:
        """Mean log loss of the candidate, the serving model and the base rate."""
        n = self.n_examples()
        if not n:
            return (math.nan, math.nan, math.nan)
        c, s, b = self.losses
        return (math.fsum(c) / n, math.fsum(s) / n, math.fsum(b) / n)

    def difference_se(self, other: int = 1) -> float:
        """Standard error of the mean paired difference (candidate - serving, or with
        ``other=2`` candidate - base rate) of the log losses over the window (0.0 with
        fewer than 2 examples)."""
        n = self.n_examples()
        if n < 2:
            return 0.0
        d = [x - y for x, y in zip(self.losses[0], self.losses[other], strict=True)]
        mean = math.fsum(d) / n
        var = math.fsum([(x - mean) ** 2 for x in d]) / (n - 1)
        return math.sqrt(var / n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": [list(x) for x in zip(*self.losses, strict=True)],
            "serving": None if self.serving is None else orjson.loads(self.serving.to_json()),
            "promoted": self.promoted,
            "last": self.last,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], size: int) -> Promotion:
        serving = data.get("serving")
        pr = cls(size, None if serving is None else LinearModel.from_json(orjson.dumps(serving)))
        pr.promoted = bool(data.get("promoted", pr.promoted))
        pr.last = data.get("last")
        for c, s, b in data.get("window", []):
            pr.add(c, s, b)
        return pr


class Trainer:
    """Per-goal online learners with id de-duplication and publish cadence.

    Parameters
    ----------
    config
        The validated configuration.
    feature_names
        Feature order; defaults to the config's featurizer.
    dedup_capacity
        How many recent example ids are remembered to drop re-deliveries.
    sample_profiles
        Profiles kept per goal in :attr:`samples` (:mod:`models.sample`).
    """

    def __init__(
        self,
        config: Config,
        feature_names: list[str] | None = None,
        dedup_capacity: int = 1_000_000,
        sample_profiles: int = SAMPLE_PROFILES,
    ) -> None:
        self.config = config
        self.feature_names = feature_names or Featurizer(config).names
        m = config.model
        self.learner_kwargs: dict[str, Any] = {
            "learning_rate": m.learning_rate,
            "l2": m.l2,
            "min_examples_per_class": m.min_examples_per_class,
            "metrics_window": m.metrics_window,
        }
        self.learners = {
            g.name: OnlineLearner(g.name, self.feature_names, **self.learner_kwargs)
            for g in config.goals
        }
        self.sample_profiles = sample_profiles
        #: per goal: the sampled profiles' newest learnt vectors (the percentile basis)
        self.samples = {g.name: ProfileSample(sample_profiles) for g in config.goals}
        self._featurizer = Featurizer(config)
        self._aging = self._featurizer.aging()
        #: per goal: the sampled profiles' states as :meth:`current_matrix` last read them
        self._sampled = {g.name: SampledStates(self._featurizer) for g in config.goals}
        self.since_snapshot = {g.name: 0 for g in config.goals}
        #: per goal: the serving model and the rolling log-loss windows of the promotion
        self.promotion = {g.name: Promotion(m.promotion_window) for g in config.goals}
        #: the newest :data:`PROMOTIONS_KEPT` decisions, oldest first: ``goal``,
        #: ``version`` (promoted, or the serving one kept), ``time`` (wall clock),
        #: ``matured_ms`` (event time of the newest example learnt), ``n_examples``,
        #: ``candidate_logloss``, ``serving_logloss``, ``base_rate_logloss``,
        #: ``difference_se`` (of candidate - serving), ``base_rate_difference_se`` (of
        #: candidate - base rate), ``window``, ``promoted``
        self.promotions: list[dict[str, Any]] = []
        #: per goal: event time (ms) the newest learnt example matured at
        self.matured_ms = {g.name: 0 for g in config.goals}
        #: per goal: the latest maturation time learnt (ms; 0: none yet), the trainer's
        #: event time "now" (:meth:`sample_clock`)
        self.clock_ms = {g.name: 0 for g in config.goals}
        self.published_warming: dict[str, bool] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.dedup_capacity = dedup_capacity
        self.duplicates = 0

    def restore(
        self,
        goal: str,
        state: bytes,
        sample: dict[str, bytes] | dict[bytes, bytes] | None = None,
        *,
        serving: LinearModel | None = None,
    ) -> bool:
        """Resume a goal's learner and promotion from :meth:`state` JSON, and its profile
        sample from :meth:`ProfileSample.fields` (``None``: none stored).

        A learner on other features (an edited configuration) is not resumed: a new
        lineage starts (:meth:`OnlineLearner.successor`), its versions continuing the old
        one's, its models held back while it warms up, then promoted only if they beat the
        serving model (projected onto the new features), its sample empty (the stored one
        follows the old features and is replaced: :meth:`sample_changes`). Returns False
        in that case. A sample that cannot be read is replaced by an empty one too.
        ``serving`` (the model in the store) is used when the state has no promotion part
        (written by an older version).
        """
        learner = OnlineLearner.from_state(state, **self.learner_kwargs)
        raw = orjson.loads(state).get("promotion")
        size = self.config.model.promotion_window
        promotion = Promotion.from_dict(raw, size) if raw else Promotion(size, serving)
        if promotion.serving is not None and promotion.serving.feature_names != self.feature_names:
            promotion.serving = promotion.serving.project(self.feature_names)
        self.promotion[goal] = promotion
        if raw:
            self.since_snapshot[goal] = int(raw.get("since_snapshot", 0))
            if raw.get("published_warming") is not None:
                self.published_warming[goal] = bool(raw["published_warming"])
            self.clock_ms[goal] = int(raw.get("clock_ms", 0))
        if learner.feature_names != self.feature_names:
            self.learners[goal] = OnlineLearner.successor(
                learner, self.feature_names, **self.learner_kwargs
            )
            self._fresh_sample(goal)
            promotion.clear()  # the old lineage's candidate losses
            return False
        self.learners[goal] = learner
        try:
            self.samples[goal] = ProfileSample.from_fields(sample or {}, self.sample_profiles)
        except (ValueError, TypeError):  # unreadable: refilled from the next examples
            self._fresh_sample(goal)
        return True

    def _fresh_sample(self, goal: str) -> None:
        """An empty sample for ``goal`` whose stored copy is to be replaced."""
        self.samples[goal] = ProfileSample(self.sample_profiles)
        self.samples[goal].reset = True

    def sample_changes(self, goal: str) -> tuple[bool, dict[str, bytes], list[str]]:
        """What changed in ``goal``'s sample since the last call, to store it:
        ``(replace the stored sample whole, entries to write, profile ids to delete)``."""
        return self.samples[goal].changes()

    def state(self, goal: str) -> bytes:
        """``goal``'s learner state (:meth:`OnlineLearner.to_state`) with its promotion
        state (key ``promotion``): what :meth:`restore` resumes exactly from."""
        raw = self.learners[goal].to_state()
        promotion = self.promotion[goal].to_dict()
        # the publication cadence too, so a resumed trainer publishes when this one would
        promotion["since_snapshot"] = self.since_snapshot[goal]
        promotion["published_warming"] = self.published_warming.get(goal)
        promotion["clock_ms"] = self.clock_ms[goal]
        return raw[:-1] + b',"promotion":' + orjson.dumps(promotion) + b"}"

    def status(self, goal: str) -> str:
        """``warming_up`` (no promoted model yet), ``live``, or ``poor`` (live AUC over the
        metrics window below ``[model] min_auc``)."""
        if not self.promotion[goal].promoted:
            return "warming_up"
        auc = self.learners[goal].metrics.summary().get("auc")
        return "poor" if auc is not None and auc < self.config.model.min_auc else "live"

    def learn(self, example: Example) -> bool:
        """Learn ``example`` unless its id was learnt already. Returns True if learnt."""
        learner = self.learners.get(example.goal)
        if learner is None:
            return False
        if example.example_id in self.seen:
            self.duplicates += 1
            return False
        self.seen[example.example_id] = None
        if len(self.seen) > self.dedup_capacity:
            self.seen.popitem(last=False)
        # prequential test of the three contenders, before the example is learnt
        y = 1 if example.label else 0
        base = learner.base_rate
        serving = self.promotion[example.goal].serving
        x = transform(example.features)
        if serving is None or serving.warming_up:
            p_serving = base if serving is None else clamp_probability(serving.base_rate)
        else:
            p_serving = serving.probability_t(x)
        served = example.probability
        candidate = learner.learn(
            example.features,
            example.label,
            0.5 if served is None else served,  # None: warming up, not measured
            example.served_warming_up or served is None,
            transformed=x,
        )
        self.promotion[example.goal].add(
            log_loss(candidate, y), log_loss(p_serving, y), log_loss(base, y)
        )
        self.samples[example.goal].add(example.profile_id, example.prediction_ts, example.features)
        self.since_snapshot[example.goal] += 1
        self.matured_ms[example.goal] = example.matured_ts
        if example.matured_ts > self.clock_ms[example.goal]:
            self.clock_ms[example.goal] = example.matured_ts
        return True

    def forget(self, profile_id: str) -> int:
        """Drop what this trainer holds of one person besides its weights (an erasure):
        the profile's entries in the samples, and its example ids among the recent ones.
        Returns how many sample entries went; the sample changes carry their deletion.

        The weights, the calibration, the live metrics and the promotion windows are
        aggregates of every example learnt and are not unlearnt (docs/GUARANTEES.md).
        """
        removed = sum(sample.remove(profile_id) for sample in self.samples.values())
        prefixes = tuple(example_id_prefix(profile_id, goal) for goal in self.learners)
        for example in [e for e in self.seen if e.startswith(prefixes)]:
            del self.seen[example]
        return removed

    def due(self, force: bool = False) -> list[str]:
        """Goals with enough new examples for a new version (all with any, if ``force``)."""
        every = self.config.model.snapshot_every_examples
        warm = max(1, every // 10)  # publish the base rate often while a goal warms up
        due = []
        for g, n in self.since_snapshot.items():
            if n == 0 or (n < warm and not force and self.published_warming.get(g) is False):
                continue  # too few new examples for any rule below (the common case)
            learner = self.learners[g]
            if learner.holding_back:
                continue  # a new lineage warming up: the old model serves until it is ready
            # A young model changes fast: publish every ~10 % growth of its example count
            # (at least every `warm`, at most every `every` examples), and at once when it
            # leaves warm-up, so it serves what it learnt instead of a stale base rate.
            young = max(warm, learner.n_examples // 10)
            if (
                force
                or n >= min(every, young)
                or (learner.warming_up and n >= warm)
                or (not learner.warming_up and self.published_warming.get(g, True))
            ):
                due.append(g)
        return due

    def sample_clock(self, goal: str) -> int:
        """The event time the percentile sample is ranked at: the latest maturation time of
        the goal's learnt examples (the trainer's "now": an example matures at its window's
        close, or earlier with ``release = "when_known"``, never after the watermark). A
        state stored before this clock was kept: its sample's newest prediction time + the
        window, until the next example is learnt."""
        return self.clock_ms[goal] or self.samples[goal].newest() + self.config.goal(goal).window_ms

    def sampled(self, goal: str) -> list[str]:
        """The ids of the profiles in ``goal``'s percentile sample."""
        return list(self.samples[goal].ids())

    def current_vectors(
        self, goal: str, states: Mapping[str, ProfileState | None]
    ) -> dict[str, list[float]]:
        """The sampled profiles' features as of :meth:`sample_clock` from their current
        ``states`` (the profile store's, or the backtest's): what :meth:`snapshot` ranks
        instead of their last learnt example, a window or more old. A state missing or of
        another (or an unknown) feature layout is left out (its example's aged vector is
        used)."""
        at = self.sample_clock(goal)
        fz = self._featurizer
        out: dict[str, list[float]] = {}
        for pid in self.samples[goal].entries:
            state = states.get(pid)
            if state is not None and state.layout == fz.fingerprint:
                out[pid] = fz.vector_at(state, at)
        return out

    def current_matrix(self, goal: str, states: dict[str, ProfileState]) -> np.ndarray:
        """What :meth:`current_vectors` gives, already as the matrix :meth:`snapshot` ranks:
        one row per sampled profile in profile-id order, its current state's vector as of
        :meth:`sample_clock` (:func:`models.sample.vectors_at`, all at once), or where its
        state is missing or of another layout its newest learnt vector aged to then
        (:meth:`ProfileSample.current_matrix`: the same values). A state unchanged since
        the last call is not read again (:class:`models.sample.SampledStates`)."""
        sample = self.samples[goal]
        at = self.sample_clock(goal)
        rows, fresh = self._sampled[goal].vectors(sample.ids(), states, at)
        if len(rows) == len(sample):
            return fresh
        matrix = sample.matrix_at(at, self._aging)
        matrix[rows] = fresh
        return matrix

    def snapshot(
        self,
        goal: str,
        current: Callable[[], Mapping[str, list[float]] | np.ndarray] | None = None,
    ) -> LinearModel | None:
        """A new version of ``goal``'s model to publish, or None if it is refused.

        A learner still warming up publishes its base rate. Otherwise the candidate is
        promoted only if its mean log loss over the promotion window is no worse than the
        serving model's and better than the base rate's; a refused candidate publishes
        nothing (its version number is not consumed) unless the goal has no promoted
        model yet, which then publishes a base-rate version (``warming_up``) so the served
        rate follows the data. Every decision is appended to :attr:`promotions`.

        A promoted version carries the cut points of its probabilities over the sampled
        profiles: what ``current()`` returns (:meth:`current_vectors`, or the whole matrix:
        :meth:`current_matrix`; called only for a promoted version) where given, else each
        profile's newest learnt vector aged to :meth:`sample_clock`.
        """
        self.since_snapshot[goal] = 0
        learner = self.learners[goal]
        promotion = self.promotion[goal]
        if learner.warming_up:
            model = learner.snapshot()
            model.status = "warming_up"
            promotion.serving = model
            self.published_warming[goal] = True
            return model
        cand, serv, base = promotion.means()
        se = promotion.difference_se()
        # "no worse" within the noise of the window: two models that predict alike differ
        # by chance; only a candidate worse by more than `margin` standard errors is
        # refused. Better than the base rate beyond that noise: a model that wins by chance
        # is not served (features without signal keep the goal on its base rate)
        margin = self.config.model.promotion_margin_se
        se_base = promotion.difference_se(2)
        promoted = cand - serv <= margin * se and base - cand > margin * se_base
        decision = {
            "goal": goal,
            "version": learner.version + 1 if promoted else learner.version,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "matured_ms": self.matured_ms[goal],
            "n_examples": learner.n_examples,
            "candidate_logloss": cand,
            "serving_logloss": serv,
            "base_rate_logloss": base,
            "difference_se": se,
            "base_rate_difference_se": se_base,
            "window": promotion.n_examples(),
            "promoted": promoted,
        }
        self.promotions.append(decision)
        promotion.last = decision
        if len(self.promotions) > PROMOTIONS_KEPT:
            del self.promotions[0]
        self.published_warming[goal] = False  # no immediate re-try: the cadence decides
        if promoted:
            promotion.promoted = True
            model = learner.snapshot()
            model.status = self.status(goal)
            sample = self.samples[goal]
            if len(sample):
                # the sampled profiles as of the goal's newest maturation: their current
                # states where ``current`` gives them, else their newest learnt vector
                # aged from its prediction time as rescoring serves a quiet profile
                fresh = current() if current is not None else {}
                if isinstance(fresh, np.ndarray):
                    vectors = fresh
                else:
                    vectors = sample.current_matrix(self.sample_clock(goal), self._aging, fresh)
                model.quantiles = cut_points(probabilities(model, vectors).tolist())
        elif not promotion.promoted:
            model = learner.snapshot()  # the running base rate, served while warming up
            model.warming_up = True
            model.status = "warming_up"
            decision["version"] = model.version
        else:
            return None
        promotion.serving = model
        return model
