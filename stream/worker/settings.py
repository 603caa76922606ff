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
CUSTOMER_AI_STALL_SECONDS          120                         an assigned partition with lag
                                                               whose committed offset has not
                                                               moved for longer makes
                                                               ``/healthz`` answer 503
CUSTOMER_AI_ALLOW_EVICTION         0                           1: start although Redis'
                                                               ``maxmemory-policy`` evicts keys
                                                               (exactly-once no longer holds)
CUSTOMER_AI_PROFILE_SCORES         0                           1: write each scored profile's
                                                               latest scores to the compacted
                                                               ``<prefix>.profile-scores``
=================================  ==========================  =================================

Kafka SASL/SSL and Redis AUTH/TLS variables are read by :mod:`stream.worker.security`.
A numeric variable that is not a number in its range is refused (:class:`SettingsError`,
naming the variable). The worker uses the defaults above; the commands that inspect the
servers (``customer-ai replay``, ``tail``, ``lag``, ``profile``, ``segment``) never fall
back to the default servers (:func:`stream.cli.common.require_servers`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from stream.redaction import redact_url

__all__ = ["PROFILE_SCORES_CONFIG", "Settings", "SettingsError"]

#: the topic configuration of ``<prefix>.profile-scores`` (each profile's latest scores):
#: compacted, so the broker keeps at least the newest message of every profile
PROFILE_SCORES_CONFIG = {"cleanup.policy": "compact"}

N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A variable's value is not usable; the message names the variable and what it takes."""


def _redis_url(env: Mapping[str, str], default: str) -> str:
    """``REDIS_URL`` if it parses as a URL with a valid port, else :class:`SettingsError`
    (naming the variable, its password masked), instead of redis-py's error at first use."""
    url = env.get("REDIS_URL") or default
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise SettingsError(
            f"REDIS_URL={redact_url(url)} is not a valid URL ({exc}); "
            "e.g. redis://host:6379/0, rediss://user:password@host:6380/0"
        ) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            f"REDIS_URL={redact_url(url)} must start with redis://, rediss:// or unix://"
        )
    return url


def _number(
    env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N], low: N, high: N
) -> N:
    """``env[name]`` as a number in ``[low, high]``, else ``default`` when it is unset."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    what = "a whole number" if kind is int else "a number"
    bound = f"from {low:g} to {high:g}" if high != math.inf else f">= {low:g}"
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be {what} {bound}, got {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(f"{name} must be {what} {bound}, got {raw!r}")
    return value


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
    replication_factor: int = 1
    retention_interval: float = 60.0
    #: seconds between two ticks of the quiet-partition clock (0: off, event time moves
    #: only with events, as in the backtest)
    clock_interval: float = 10.0
    stall_seconds: float = 120.0
    allow_eviction: bool = False
    #: write each scored profile's latest scores to ``<prefix>.profile-scores``
    profile_scores: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: ``os.environ``).

        Raises
        ------
        SettingsError
            A numeric variable is not a number in its range (e.g. ``CUSTOMER_AI_WEB_PORT=0``).
        """
        e = os.environ if env is None else env
        d = cls()
        inf = math.inf
        return cls(
            bootstrap=e.get("KAFKA_BOOTSTRAP_SERVERS") or d.bootstrap,
            redis_url=_redis_url(e, d.redis_url),
            config_path=e.get("CUSTOMER_AI_CONFIG") or d.config_path,
            app_id=e.get("CUSTOMER_AI_APP_ID", d.app_id),
            topic_prefix=e.get("CUSTOMER_AI_TOPIC_PREFIX", d.topic_prefix),
            partitions=_number(e, "CUSTOMER_AI_PARTITIONS", d.partitions, int, 1, 10_000),
            key_prefix=e.get("CUSTOMER_AI_KEY_PREFIX", d.key_prefix),
            redis_cluster=e.get("CUSTOMER_AI_REDIS_CLUSTER", "0").strip().lower()
            in ("1", "true", "yes", "on"),
            web_host=e.get("CUSTOMER_AI_WEB_HOST", d.web_host),
            web_port=_number(e, "CUSTOMER_AI_WEB_PORT", d.web_port, int, 1, 65_535),
            batch_max=_number(e, "CUSTOMER_AI_BATCH_MAX", d.batch_max, int, 1, 10_000_000),
            batch_within=_number(e, "CUSTOMER_AI_BATCH_WITHIN", d.batch_within, float, 0.0, inf),
            pipeline_depth=_number(e, "CUSTOMER_AI_PIPELINE_DEPTH", d.pipeline_depth, int, 1, 64),
            fetch_max_wait_ms=_number(
                e, "CUSTOMER_AI_FETCH_MAX_WAIT_MS", d.fetch_max_wait_ms, int, 0, 3_600_000
            ),
            session_timeout=_number(
                e, "CUSTOMER_AI_SESSION_TIMEOUT", d.session_timeout, float, 0.001, inf
            ),
            rebalance_timeout=_number(
                e, "CUSTOMER_AI_REBALANCE_TIMEOUT", d.rebalance_timeout, float, 0.001, inf
            ),
            metrics_interval=_number(
                e, "CUSTOMER_AI_METRICS_INTERVAL", d.metrics_interval, float, 0.001, inf
            ),
            replication_factor=_number(
                e, "CUSTOMER_AI_REPLICATION_FACTOR", d.replication_factor, int, 1, 32_767
            ),
            retention_interval=_number(
                e, "CUSTOMER_AI_RETENTION_INTERVAL", d.retention_interval, float, 1.0, inf
            ),
            clock_interval=_number(
                e, "CUSTOMER_AI_CLOCK_INTERVAL", d.clock_interval, float, 0.0, inf
            ),
            stall_seconds=_number(
                e, "CUSTOMER_AI_STALL_SECONDS", d.stall_seconds, float, 0.001, inf
            ),
            allow_eviction=e.get("CUSTOMER_AI_ALLOW_EVICTION", "0").strip().lower()
            in ("1", "true", "yes", "on"),
            profile_scores=e.get("CUSTOMER_AI_PROFILE_SCORES", "0").strip().lower()
            in ("1", "true", "yes", "on"),
        )

    def tombstone_topics(self) -> list[str]:
        """Where a removed profile's tombstone goes (retention, erasure): the scores topic,
        and the latest-scores topic when it is written.

        >>> Settings(profile_scores=True).tombstone_topics()
        ['customer-ai.scores', 'customer-ai.profile-scores']
        """
        topics = [self.topic("scores")]
        if self.profile_scores:
            topics.append(self.topic("profile-scores"))
        return topics

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("scores") == "customer-ai.scores"``."""
        return f"{self.topic_prefix}.{name}"
