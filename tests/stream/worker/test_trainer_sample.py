"""The trainer's sample of profiles (the percentile basis) persists in ``P:sample:<goal>``
with its learners, so a restarted trainer publishes the cut points an uninterrupted one
would (issue 17 item 5)."""

from __future__ import annotations

import random
from dataclasses import replace

import redis

from models.config import load_config
from models.outcome import Example
from models.training import Trainer
from stream.worker.settings import Settings
from stream.worker.store import RedisStore
from stream.worker.trainer import TrainerStep
from tests.harness import CONFIG
from tests.stream.worker.test_faults import make_examples, training_records
from tests.stream.worker.test_retry_steps import CollectingProducer

CFG = load_config(CONFIG)
GOALS = [g.name for g in CFG.goals]


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
