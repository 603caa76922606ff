"""The topics ``customer-ai dev up`` creates before any worker runs.

Only ``<prefix>.profile-scores``: a consumer of each profile's latest scores may start
before the first worker, and a topic auto-created by its subscription would not be
compacted. The worker declares the same topic, with the same configuration, at start
(``stream/worker/app.py``).
"""

from __future__ import annotations

import asyncio

from stream.worker.settings import PROFILE_SCORES_CONFIG, Settings

__all__ = ["create_profile_scores_topic"]


def create_profile_scores_topic(bootstrap: str, settings: Settings) -> bool:
    """Create ``settings.topic("profile-scores")`` compacted (``settings.partitions``
    partitions) unless it exists. Returns True if it was created."""
    return asyncio.run(_create(bootstrap, settings))


async def _create(bootstrap: str, settings: Settings) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = settings.topic("profile-scores")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        if name in set(await admin.list_topics()):
            return False
        topic = NewTopic(name, settings.partitions, 1, topic_configs=dict(PROFILE_SCORES_CONFIG))
        await admin.create_topics([topic])
        return True
    finally:
        await admin.close()
