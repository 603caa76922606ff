"""The trainer's sample of profiles (the percentile basis) persists in ``P:sample:<goal>``
with its learners, so a restarted trainer publishes the cut points an uninterrupted one
would; a published version ranks the sampled profiles' stored states (issue 17 item 5)."""

from __future__ import annotations

import random
from dataclasses import replace

import redis

from models.config import load_config
from models.engine import Engine
from models.events import validate_event
from models.features import Featurizer
from models.model import LinearModel
from models.outcome import Example, Outcome
from models.sample import cut_points, probabilities
from models.state import ProfileState
from models.training import Trainer
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from stream.worker.trainer import TrainerStep
from tests.harness import CONFIG
from tests.stream.worker.test_faults import make_examples, training_records
from tests.stream.worker.test_retry_steps import CollectingProducer

CFG = load_config(CONFIG)
GOALS = [g.name for g in CFG.goals]
DAY = 86_400_000


def stored_samples(url: str) -> dict[str, dict[str, bytes]]:
    client = redis.Redis.from_url(url)
    try:
        return {
            g: {k.decode(): v for k, v in client.hgetall(f"cai:sample:{g}").items()} for g in GOALS
        }
    finally:
        client.close()


def informative_examples(n: int, seed: int) -> list[Example]:
    """Examples whose label follows their first feature: candidates beat the base rate and
    are promoted, so the published versions carry cut points."""
    rng = random.Random(seed)
    return [
        replace(ex, label=int(ex.features[0] + 0.3 * rng.random() > 0.8))
        for ex in make_examples(n, seed=seed)
    ]


async def test_a_restarted_trainer_continues_its_sample_identically(redis_url: str) -> None:
    examples = informative_examples(800, seed=3)
    first, second = examples[:500], examples[500:]
    core = Trainer(CFG)  # the uninterrupted reference: every example, in order
    for ex in examples:
        core.learn(ex)
    store = RedisStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        assert await step.process(training_records(first)) == 500
        after_first = stored_samples(redis_url)
        assert all(after_first[g] == step.trainer.samples[g].fields() for g in GOALS)
        assert all(len(after_first[g]) == 250 for g in GOALS)
        again = TrainerStep(CFG, store, CollectingProducer(), Settings())  # a restart
        assert await again.process(training_records(second, first_offset=500)) == 300
    finally:
        await store.close()
    stored = stored_samples(redis_url)
    for goal in GOALS:
        assert stored[goal] == core.samples[goal].fields() == again.trainer.samples[goal].fields()
        resumed = Trainer(CFG)
        assert resumed.restore(goal, again.trainer.state(goal), stored[goal])
        mine, want = resumed.snapshot(goal), core.snapshot(goal)
        assert not want.warming_up and len(want.quantiles) == 201
        assert mine.quantiles == want.quantiles


async def test_a_learner_started_afresh_replaces_the_stored_sample(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        step = TrainerStep(CFG, store, CollectingProducer(), Settings())
        await step.process(training_records(make_examples(100)))
        client = redis.Redis.from_url(redis_url)
        try:
            client.delete("cai:learner:conversion")  # the learner's state is lost
        finally:
            client.close()
        again = TrainerStep(CFG, store, CollectingProducer(), Settings())
        await again.process(training_records(make_examples(102)[100:], first_offset=100))
    finally:
        await store.close()
    stored = stored_samples(redis_url)
    assert stored["conversion"] == again.trainer.samples["conversion"].fields()
    assert len(stored["conversion"]) == 1  # the lost learner's profiles left with it
    assert len(stored["churn"]) == 51


async def test_published_cut_points_rank_the_sampled_profiles_stored_states(
    redis_url: str,
) -> None:
    """A version's cut points rank the sampled profiles as the profile store holds them at
    publication (their current features), not as their last learnt example had them; a
    profile without a stored state keeps its example's vector."""
    examples = informative_examples(600, seed=5)
    engine = Engine(CFG)
    client = redis.Redis.from_url(redis_url)
    stored: dict[str, ProfileState] = {}
    try:
        for i in range(0, 600, 3):  # a third of the profiles have a state: heavy buyers
            pid = f"p-{i}"
            state = None
            for k in range(12):
                body = {
                    "_id": f"{pid}-{k}",
                    "timestamp": DAY * (1 + k),
                    "eventType": "commerce.purchases",
                    "identityMap": {"ECID": [{"id": pid, "primary": True}]},
                    "commerce": {"order": {"priceTotal": 50.0}},
                }
                state = engine.process(state, validate_event(body), Outcome())
            assert state is not None
            stored[pid] = state
            client.hset(f"cai:p:{{{pid}}}", mapping={"s": state.to_bytes(), "v": "1"})
        store = RedisStore(redis_url)
        producer = CollectingProducer()
        try:
            step = TrainerStep(CFG, store, producer, Settings())
            assert await step.process(training_records(examples)) == 600
        finally:
            await store.close()
    finally:
        client.close()
    published = [LinearModel.from_json(v) for t, _, v in producer.messages if t.endswith(".models")]
    trainer = step.trainer
    for goal in GOALS:
        model = next(m for m in reversed(published) if m.goal == goal)
        assert not model.warming_up and len(model.quantiles) == 201, goal
        sample = trainer.samples[goal]
        clock = trainer.sample_clock(goal)
        current = {pid: s for pid, s in stored.items() if pid in sample.entries}
        assert current, goal
        # what the version ranks: the stored states' features where there is one
        vectors = sample.matrix_at(clock, Featurizer(CFG).aging())
        fz = Featurizer(CFG)
        for row, pid in enumerate(sorted(sample.entries)):
            if pid in current:
                vectors[row] = fz.vector_at(current[pid], clock)
        assert model.quantiles == cut_points(probabilities(model, vectors).tolist()), goal
        # ... which the examples' vectors alone would not give
        aged = sample.matrix_at(clock, Featurizer(CFG).aging())
        assert model.quantiles != cut_points(probabilities(model, aged).tolist()), goal
