"""Creating topics on a broker: those ``customer-ai replay`` writes to, and the one
``customer-ai dev up`` creates before any worker runs.

``dev up`` creates ``<prefix>.profile-scores``: a consumer of each profile's latest scores
may start before the first worker, and a topic auto-created by its subscription would
not be compacted. The worker declares the same topic, with the same configuration, at
start when it writes it (``stream/worker/app.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from stream.worker.settings import PROFILE_SCORES_CONFIG, Settings

__all__ = ["create_missing_topics", "create_profile_scores_topic"]


async def create_missing_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    options: Mapping[str, Any],
    configs: Mapping[str, str] | None = None,
) -> str | None:
    """Create the ``topics`` (name -> partitions) that do not exist yet, each with the
    topic ``configs``; ``options`` are the admin client's (security, timeouts). Returns
    what the broker said when the creation failed (another creator raced this one), else
    None."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, n, 1, topic_configs=dict(configs or {}))
            for name, n in topics.items()
            if name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except Exception as exc:  # noqa: BLE001 - raced with another creator
                return repr(exc)
    finally:
        await admin.close()
    return None


def create_profile_scores_topic(bootstrap: str, settings: Settings) -> str | None:
    """Create ``settings.topic("profile-scores")`` compacted (``settings.partitions``
    partitions) unless it exists; what the broker said if that failed, else None."""
    topics = {settings.topic("profile-scores"): settings.partitions}
    options = {"request_timeout_ms": 10_000}
    return asyncio.run(create_missing_topics(bootstrap, topics, options, PROFILE_SCORES_CONFIG))
