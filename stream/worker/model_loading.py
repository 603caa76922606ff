"""Serving the model versions the trainer published: read from Redis into the engine."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from models.model import LinearModel
from stream.ops import metrics

if TYPE_CHECKING:
    from models.engine import Engine
    from stream.worker.store import RedisStore

__all__ = ["load_newer_models"]

log = logging.getLogger("stream.worker.scorer")


async def load_newer_models(store: RedisStore, engine: Engine) -> list[str]:
    """Serve the model versions in Redis newer than ``engine``'s; returns the goals
    updated (a version that cannot be read is logged and skipped)."""
    updated = []
    versions = await store.model_versions()
    for goal, version in versions.items():
        current = engine.models.get(goal)
        if current is None or version <= current.version:
            continue
        raw = await store.get_model(goal)
        if raw is None:
            continue
        try:
            model = LinearModel.from_json(raw)
            if engine.set_model(model):
                updated.append(goal)
                metrics.observe_model(goal, version, model.metrics, model.status)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("cannot load model %s v%s: %s", goal, version, exc)
    return updated
