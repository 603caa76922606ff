"""Runtime settings, from the environment only (secrets never live in files).

=================================  ==========================  =================================
variable                           default                     meaning
=================================  ==========================  =================================
KAFKA_BOOTSTRAP_SERVERS            127.0.0.1:9092              Kafka bootstrap servers
REDIS_URL                          redis://127.0.0.1:6379/0    Redis (``rediss://`` for TLS)
CUSTOMER_AI_CONFIG                 customer-ai.toml            the tracked events and goals
CUSTOMER_AI_APP_ID                 customer-ai                 Faust app id = consumer group
CUSTOMER_AI_TOPIC_PREFIX           customer-ai                 topics are ``<prefix>.events``...
CUSTOMER_AI_PARTITIONS             4                           partitions of created topics
CUSTOMER_AI_KEY_PREFIX             cai                         Redis key prefix
CUSTOMER_AI_REDIS_CLUSTER          0                           1: REDIS_URL is a Redis Cluster
                                                               node (cluster client; segment
                                                               index in a separate pipeline)
CUSTOMER_AI_WEB_HOST / _WEB_PORT   127.0.0.1 / 6066            HTTP views and /metrics
CUSTOMER_AI_BATCH_MAX              5000                        events per batch, at most
CUSTOMER_AI_BATCH_WITHIN           0.005                       longest a batch keeps collecting
                                                               while events still arrive (s);
                                                               it never waits for events that
                                                               are not coming
CUSTOMER_AI_PIPELINE_DEPTH         2                           batches in progress at once (the
                                                               next one is scored while the
                                                               last one's writes are in flight;
                                                               1: one at a time)
CUSTOMER_AI_FETCH_MAX_WAIT_MS      20                          longest a fetch waits for new
                                                               events (Faust hard-codes 1500;
                                                               Tansu re-checks a waiting fetch
                                                               only at 1/2, 3/4... of it)
CUSTOMER_AI_SESSION_TIMEOUT        10                          consumer session timeout (s)
CUSTOMER_AI_REBALANCE_TIMEOUT      5                           rebalance timeout (s)
CUSTOMER_AI_METRICS_INTERVAL       5                           seconds between lag readings
                                                               and bucket-size counts
=================================  ==========================  =================================

Kafka SASL/SSL and Redis AUTH/TLS variables are read by :mod:`stream.worker.security`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Connection and tuning settings."""

    bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    config_path: str = "customer-ai.toml"
    app_id: str = "customer-ai"
    topic_prefix: str = "customer-ai"
    partitions: int = 4
    key_prefix: str = "cai"
    redis_cluster: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    batch_max: int = 5000
    batch_within: float = 0.005
    pipeline_depth: int = 2
    fetch_max_wait_ms: int = 20
    session_timeout: float = 10.0
    rebalance_timeout: float = 5.0
    metrics_interval: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: ``os.environ``)."""
        e = os.environ if env is None else env
        d = cls()
        return cls(
            bootstrap=e.get("KAFKA_BOOTSTRAP_SERVERS", d.bootstrap),
            redis_url=e.get("REDIS_URL", d.redis_url),
            config_path=e.get("CUSTOMER_AI_CONFIG", d.config_path),
            app_id=e.get("CUSTOMER_AI_APP_ID", d.app_id),
            topic_prefix=e.get("CUSTOMER_AI_TOPIC_PREFIX", d.topic_prefix),
            partitions=int(e.get("CUSTOMER_AI_PARTITIONS", d.partitions)),
            key_prefix=e.get("CUSTOMER_AI_KEY_PREFIX", d.key_prefix),
            redis_cluster=e.get("CUSTOMER_AI_REDIS_CLUSTER", "0").strip().lower()
            in ("1", "true", "yes", "on"),
            web_host=e.get("CUSTOMER_AI_WEB_HOST", d.web_host),
            web_port=int(e.get("CUSTOMER_AI_WEB_PORT", d.web_port)),
            batch_max=int(e.get("CUSTOMER_AI_BATCH_MAX", d.batch_max)),
            batch_within=float(e.get("CUSTOMER_AI_BATCH_WITHIN", d.batch_within)),
            pipeline_depth=int(e.get("CUSTOMER_AI_PIPELINE_DEPTH", d.pipeline_depth)),
            fetch_max_wait_ms=int(e.get("CUSTOMER_AI_FETCH_MAX_WAIT_MS", d.fetch_max_wait_ms)),
            session_timeout=float(e.get("CUSTOMER_AI_SESSION_TIMEOUT", d.session_timeout)),
            rebalance_timeout=float(e.get("CUSTOMER_AI_REBALANCE_TIMEOUT", d.rebalance_timeout)),
            metrics_interval=float(e.get("CUSTOMER_AI_METRICS_INTERVAL", d.metrics_interval)),
        )

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("scores") == "customer-ai.scores"``."""
        return f"{self.topic_prefix}.{name}"
