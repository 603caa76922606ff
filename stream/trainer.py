"""The trainer step: learn matured examples exactly once, publish model versions.

One trainer consumes the single-partition ``customer-ai.training`` topic. For each
batch it learns every example whose offset is past the trained offset and whose id
it has not learnt, then persists every learner's full state together with the
trained offset in one Redis transaction *before* the batch is acknowledged. A
restarted trainer resumes from that state and skips offsets it already learnt, so
each example is learnt once whatever the crash.

Serving models are published (a new version in Redis and on ``customer-ai.models``)
every ``snapshot_every_examples`` examples or ``snapshot_every_seconds``, whichever
comes first; scoring workers pick them up while they run.
"""

from __future__ import annotations

import logging
import time

import orjson

from models.config import Config
from models.training import Trainer
from stream import metrics
from stream.producer import BatchProducer, OutMessage
from stream.scorer import Record, example_from_message
from stream.settings import Settings
from stream.store import RedisStore

__all__ = ["TrainerStep"]

log = logging.getLogger(__name__)


class TrainerStep:
    """Learns batches of training records (see the module docstring)."""

    def __init__(
        self, config: Config, store: RedisStore, producer: BatchProducer, settings: Settings
    ) -> None:
        self.config = config
        self.store = store
        self.producer = producer
        self.settings = settings
        self.trainer = Trainer(config)
        self.trained_offset = -1
        self.last_publish = time.monotonic()
        self.restored = False
        self.versions: dict[str, int] = {}

    async def restore(self) -> None:
        """Resume learners and the trained offset from Redis."""
        for goal in self.trainer.learners:
            raw = await self.store.get_learner(goal)
            if raw is not None:
                try:
                    self.trainer.restore(goal, raw)
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("cannot resume learner %s (%s): starting it afresh", goal, exc)
        self.trained_offset = await self.store.trainer_offset()
        self.restored = True
        log.info(
            "trainer resumed at offset %d: %s",
            self.trained_offset,
            {g: lr.n_examples for g, lr in self.trainer.learners.items()},
        )

    async def process(self, records: list[Record]) -> int:
        """Learn a batch; returns how many examples were learnt."""
        if not self.restored:
            await self.restore()
        learnt = 0
        outbox: list[OutMessage] = []
        last = self.trained_offset
        for record in records:
            if record.offset <= self.trained_offset:
                continue
            last = max(last, record.offset)
            try:
                example = example_from_message(record.value or b"")
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                outbox.append(
                    (
                        self.settings.topic("dlq"),
                        record.key,
                        orjson.dumps(
                            {
                                "reason": "bad_training_example",
                                "detail": repr(exc)[:200],
                                "topic": record.topic,
                                "partition": record.partition,
                                "offset": record.offset,
                                "original": (record.value or b"").decode("utf-8", "replace"),
                            }
                        ),
                    )
                )
                continue
            if self.trainer.learn(example):
                learnt += 1
        if last <= self.trained_offset:
            return 0
        force = time.monotonic() - self.last_publish >= self.config.model.snapshot_every_seconds
        publish = self.trainer.due(force=force)
        models = []
        for goal in publish:
            model = self.trainer.snapshot(goal)
            models.append((goal, model.version, model.to_json()))
            self._gauges(goal, model.version, model.metrics)
        states = [
            (goal, lr.version, next((m for g, _, m in models if g == goal), None), lr.to_state())
            for goal, lr in self.trainer.learners.items()
        ]
        await self.store.publish_models(states, last)
        self.trained_offset = last
        if models:
            self.last_publish = time.monotonic()
            for goal, _version, model_json in models:
                outbox.append((self.settings.topic("models"), goal.encode(), model_json))
            log.info("published %s", ", ".join(f"{g} v{v}" for g, v, _ in models))
        await self.producer.send_all(outbox)
        return learnt

    @staticmethod
    def _gauges(goal: str, version: int, live: dict) -> None:
        metrics.MODEL_VERSION.labels(goal=goal).set(version)
        for gauge, key in (
            (metrics.LIVE_AUC, "auc"),
            (metrics.LIVE_LOGLOSS, "logloss"),
            (metrics.LIVE_BASE_RATE, "base_rate"),
            (metrics.LIVE_ECE, "ece"),
        ):
            if live.get(key) is not None:
                gauge.labels(goal=goal).set(live[key])
