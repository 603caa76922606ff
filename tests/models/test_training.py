"""Promotion by quality (champion/challenger) and goal status, in the pure trainer core."""

from __future__ import annotations

import dataclasses
import random

import orjson

from models.config import Config, parse_config
from models.model import transform
from models.outcome import Example
from models.training import Trainer

GOAL = "conversion"


def _config(**model: float) -> Config:
    with open("customer-ai.toml") as f:
        cfg = parse_config(f.read())
    defaults = {"promotion_window": 200, "snapshot_every_examples": 200, "metrics_window": 300}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{**defaults, **model}))


class Feed:
    """Examples of one goal whose label follows feature 0 (or its opposite), each served
    the probability of the model published last, as the stream does."""

    def __init__(self, trainer: Trainer, seed: int = 0) -> None:
        self.trainer = trainer
        self.rng = random.Random(seed)
        self.n = 0
        self.published: list = []

    def __call__(
        self, k: int, invert: bool = False, publish: bool = True, signal: bool = True
    ) -> None:
        t, rng, d = self.trainer, self.rng, len(self.trainer.feature_names)
        for _ in range(k):
            x = rng.random() * 10
            y = int(rng.random() < ((0.9 if x > 5 else 0.1) if signal else 0.25))
            if invert:
                y = 1 - y
            f = [0.0] * d
            f[0], f[1] = x, rng.random()
            serving = t.promotion[GOAL].serving
            if serving is None:
                p, warm = t.learners[GOAL].base_rate, True
            else:
                p, warm = serving.probability_t(transform(f)), serving.warming_up
            self.n += 1
            t.learn(Example(f"e{self.n}", GOAL, "p", self.n, y, p, 0, f, self.n, warm))
            if publish:
                for goal in t.due():
                    model = t.snapshot(goal)
                    if model is not None:
                        self.published.append(model)


def test_a_candidate_better_than_the_serving_model_and_the_base_rate_is_promoted() -> None:
    trainer = Trainer(_config())
    feed = Feed(trainer)
    feed(50)
    assert trainer.status(GOAL) == "warming_up"
    assert feed.published and all(m.status == "warming_up" for m in feed.published)
    feed(3000)
    promoted = [p for p in trainer.promotions if p["promoted"]]
    assert promoted, trainer.promotions
    first = promoted[0]
    assert first["candidate_logloss"] < first["base_rate_logloss"]
    assert first["candidate_logloss"] <= first["serving_logloss"]
    assert trainer.status(GOAL) == "live"
    serving = trainer.promotion[GOAL].serving
    assert serving is not None and not serving.warming_up and serving.status == "live"
    assert orjson.loads(serving.to_json())["status"] == "live"
    assert feed.published[-1] is serving


def test_features_without_signal_keep_the_goal_on_its_base_rate() -> None:
    """Labels independent of the features: a candidate that beats the base rate over a
    window does so by chance, within the noise of the window, and is never served."""
    for seed in range(3):
        trainer = Trainer(_config())
        feed = Feed(trainer, seed=seed)
        feed(6000, signal=False)
        decisions = trainer.promotions
        assert len(decisions) >= 20
        assert not any(d["promoted"] for d in decisions), decisions
        # some candidates did beat the base rate's mean log loss, by less than the noise
        assert any(d["candidate_logloss"] < d["base_rate_logloss"] for d in decisions)
        assert trainer.status(GOAL) == "warming_up"
        assert feed.published and all(m.warming_up for m in feed.published)


def test_a_margin_of_zero_promotes_on_any_improvement() -> None:
    """``promotion_margin_se = 0``: the same data without signal as above now promotes the
    candidates that beat the base rate by chance (the trade-off the margin exists for)."""
    promoted = []
    for seed in range(3):
        trainer = Trainer(_config(promotion_margin_se=0.0))
        Feed(trainer, seed=seed)(6000, signal=False)
        promoted += [d for d in trainer.promotions if d["promoted"]]
    assert promoted
    assert all(d["candidate_logloss"] < d["base_rate_logloss"] for d in promoted)


def test_a_worse_candidate_is_refused_and_the_serving_version_stays() -> None:
    trainer = Trainer(_config())
    feed = Feed(trainer)
    feed(3000)
    serving = trainer.promotion[GOAL].serving
    assert serving is not None and trainer.status(GOAL) == "live"
    version = trainer.learners[GOAL].version
    feed(3000, invert=True, publish=False)  # the learner unlearns what the serving model knows
    feed(200, publish=False)  # back to the truth: the candidate is worse than the serving model
    candidate, served, _ = trainer.promotion[GOAL].means()
    assert candidate > served
    assert trainer.snapshot(GOAL) is None
    refusal = trainer.promotions[-1]
    assert refusal["promoted"] is False and refusal["version"] == version
    assert trainer.promotion[GOAL].serving is serving
    assert trainer.learners[GOAL].version == version  # the number is not consumed


def test_status_goes_warming_up_live_poor() -> None:
    trainer = Trainer(_config(min_auc=0.65))
    feed = Feed(trainer)
    statuses = [trainer.status(GOAL)]
    feed(3000)
    statuses.append(trainer.status(GOAL))
    feed(400, invert=True, publish=False)  # the served model now ranks the wrong way round
    statuses.append(trainer.status(GOAL))
    assert statuses == ["warming_up", "live", "poor"]
    lenient = Trainer(_config(min_auc=0.0))
    lenient.restore(GOAL, trainer.state(GOAL))
    assert lenient.status(GOAL) == "live"


def test_promotion_state_round_trips_and_resumes_exactly() -> None:
    trainer = Trainer(_config())
    feed = Feed(trainer)
    feed(2500)
    resumed = Trainer(_config())
    assert resumed.restore(GOAL, trainer.state(GOAL))
    assert resumed.state(GOAL) == trainer.state(GOAL)
    assert resumed.promotion[GOAL].means() == trainer.promotion[GOAL].means()
    assert resumed.status(GOAL) == trainer.status(GOAL)
    # both go on identically: same decisions, same published models
    other = Feed(resumed)
    other.rng.setstate(feed.rng.getstate())
    other.n = feed.n
    feed(1500)
    other(1500)
    strip = [{k: v for k, v in p.items() if k != "time"} for p in trainer.promotions]
    strip_resumed = [{k: v for k, v in p.items() if k != "time"} for p in resumed.promotions]
    assert strip[-len(strip_resumed) :] == strip_resumed
    assert [m.version for m in other.published] == [
        m.version for m in feed.published[-len(other.published) :]
    ]
    assert _timeless(resumed.state(GOAL)) == _timeless(trainer.state(GOAL))


def _timeless(state: bytes) -> dict:
    data = orjson.loads(state)
    data["promotion"]["serving"]["created_at"] = ""  # wall-clock times
    if data["promotion"]["last"]:
        data["promotion"]["last"]["time"] = ""
    return data


def test_a_state_without_promotion_resumes_with_the_stored_serving_model() -> None:
    trainer = Trainer(_config())
    Feed(trainer)(2000)
    serving = trainer.promotion[GOAL].serving
    old_state = trainer.learners[GOAL].to_state()  # written before promotion existed
    resumed = Trainer(_config())
    resumed.restore(GOAL, old_state, serving=serving)
    assert resumed.promotion[GOAL].serving is serving
    assert resumed.status(GOAL) == trainer.status(GOAL)
