"""The trainer core: one :class:`~models.learner.OnlineLearner` per goal, exactly-once
learning by example id, the cadence at which model versions are published, and per goal
a :class:`~models.sample.ProfileSample` of profiles whose probabilities under each
published version give its percentile cut points (``LinearModel.quantiles``).

Used by the stream's single-partition trainer agent and by the backtest.

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
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from models.config import Config
from models.features import Featurizer
from models.learner import OnlineLearner
from models.model import LinearModel
from models.outcome import Example
from models.sample import SAMPLE_PROFILES, ProfileSample, cut_points, probabilities

__all__ = ["Trainer"]


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
        self._aging = Featurizer(config).aging()
        self.since_snapshot = {g.name: 0 for g in config.goals}
        self.published_warming: dict[str, bool] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.dedup_capacity = dedup_capacity
        self.duplicates = 0

    def restore(
        self,
        goal: str,
        state: bytes,
        sample: dict[str, bytes] | dict[bytes, bytes] | None = None,
    ) -> bool:
        """Resume a goal's learner from :meth:`OnlineLearner.to_state` JSON, and its
        profile sample from :meth:`ProfileSample.fields` (``None``: none stored).

        A learner on other features (an edited configuration) is not resumed: a new
        lineage starts (:meth:`OnlineLearner.successor`), its versions continuing the old
        one's, its models held back while it warms up, its sample empty (the stored one
        follows the old features and is replaced: :meth:`sample_changes`). Returns False
        in that case. A sample that cannot be read is replaced by an empty one too.
        """
        learner = OnlineLearner.from_state(state, **self.learner_kwargs)
        if learner.feature_names != self.feature_names:
            self.learners[goal] = OnlineLearner.successor(
                learner, self.feature_names, **self.learner_kwargs
            )
            self._fresh_sample(goal)
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
        served = example.probability
        learner.learn(
            example.features,
            example.label,
            0.5 if served is None else served,  # None: warming up, not measured
            example.served_warming_up or served is None,
        )
        self.samples[example.goal].add(example.profile_id, example.prediction_ts, example.features)
        self.since_snapshot[example.goal] += 1
        return True

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

    def snapshot(self, goal: str) -> LinearModel:
        """Export a new version of ``goal``'s model, with the cut points of its
        probabilities over the goal's sample of profiles (none while warming up: every
        profile gets the one base rate, percentile 50)."""
        self.since_snapshot[goal] = 0
        model = self.learners[goal].snapshot()
        if not model.warming_up:
            sample = self.samples[goal]
            if len(sample):
                # the sampled profiles as of the goal's newest maturation (its newest
                # prediction time + the window: a function of the sample, the same after a
                # restart), each aged from its example's prediction time as rescoring
                # serves a quiet profile
                now = sample.newest() + self.config.goal(goal).window_ms
                vectors = sample.matrix_at(now, self._aging)
                model.quantiles = cut_points(probabilities(model, vectors).tolist())
        self.published_warming[goal] = model.warming_up
        return model
