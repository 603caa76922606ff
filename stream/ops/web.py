"""Read-only HTTP views on the worker (bound to 127.0.0.1 unless configured).

- ``GET /healthz``: 200 once partitions are assigned, Redis answers and no condition of
  :data:`stream.ops.health.HEALTH` lasts (Redis failing, the broker unreachable, an
  assigned partition making no progress), else 503 with the reasons in the body;
- ``GET /profiles/{id}``: features and, per goal, the last served score whole (probability,
  percentile, bucket, version, factors with their importance: :func:`models.profile.profile_document`;
  404 if unknown);
- ``GET /models``: per goal: served version, status, live metrics, last promotion decision;
- ``GET /metrics``: Prometheus exposition.

The worker's entry point (:func:`stream.worker.app.main`) calls :func:`register_views`
with its app and runtime: this module imports nothing of the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from faust.web import Request, Response, View
from redis.exceptions import ResponseError

from models.engine import Engine
from models.profile import profile_document
from models.state import ProfileState
from stream.ops import metrics
from stream.ops.health import HEALTH
from stream.ops.models_view import model_summary, read_learners

__all__ = ["PROFILE_ROUTE", "models_document", "register_views"]

#: The profile view's route. aiohttp's default ``{name}`` pattern is ``[^{}/]+``: a profile
#: id with a brace (a GUID written ``{3F2504E0-...}``) would get the router's plain-text
#: 404 although the profile exists. Any id without a ``/`` matches (``%2F`` is one).
PROFILE_ROUTE = "/profiles/{profile_id:[^/]+}"


class _Store(Protocol):
    redis: Any

    async def get_profile(self, profile_id: str) -> bytes | None: ...

    async def resolve_profile(self, profile_id: str) -> tuple[str, bytes | None]: ...

    async def get_learner(self, goal: str) -> bytes | None: ...

    def quarantine_key(self, profile_id: str) -> str: ...


class _Scorer(Protocol):
    async def refresh_models(self) -> list[str]: ...

    async def read_state(self, raw: bytes) -> ProfileState: ...


class WorkerRuntime(Protocol):
    """What the views read of the worker's runtime (:class:`stream.worker.app.Runtime`)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def store(self) -> _Store: ...

    @property
    def scorer(self) -> _Scorer: ...


def models_document(
    engine: Engine, learners: dict[str, bytes | None] | None = None
) -> dict[str, Any]:
    """Per goal: served version, status, examples, live metrics, last promotion decision
    (:func:`stream.ops.models_view.model_summary`; ``learners``: the trainer states)."""
    learners = learners or {}
    min_auc = engine.config.model.min_auc
    return {
        goal: model_summary(m, learners.get(goal), min_auc) for goal, m in engine.models.items()
    }


def register_views(
    app: Any, runtime: Callable[[], WorkerRuntime], assigned_partitions: Callable[[], int]
) -> None:
    """Add the views to the Faust ``app``; ``runtime()`` gives the worker's resources."""

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            # partitions of the agents' topics (0 during start-up: 503, not an error)
            assigned = assigned_partitions()
            metrics.PARTITIONS_ASSIGNED.set(assigned)
            try:  # bounded: a frozen Redis must make the probe fail, not hang
                redis_ok = bool(await asyncio.wait_for(runtime().store.redis.ping(), timeout=2.0))
            except Exception:  # noqa: BLE001 - any failure means not ready
                redis_ok = False
            reasons = HEALTH.reasons()
            if not redis_ok and HEALTH.get("redis") is None:
                reasons.append("redis: no answer to PING within 2s")
            if assigned == 0:
                reasons.append("no partition assigned (starting, or rebalancing)")
            ready = not reasons
            return self.json(
                {
                    "ready": ready,
                    "partitions_assigned": assigned,
                    "redis": redis_ok,
                    "reasons": reasons,
                },
                status=200 if ready else 503,
            )

    @app.page(PROFILE_ROUTE)
    class Profile(View):
        async def get(self, request: Request, profile_id: str) -> Response:
            rt = runtime()
            try:
                pid, raw = await rt.store.resolve_profile(profile_id)  # an alias: its person
            except ResponseError as exc:  # WRONGTYPE: the key is not a profile hash
                error = f"profile {profile_id!r}: its record cannot be read ({exc})"
                return self.json({"error": error}, status=500)
            if raw is None:
                error = f"profile {profile_id!r} not found"
                if await rt.store.redis.exists(rt.store.quarantine_key(profile_id)):
                    error = f"profile {profile_id!r} is quarantined (customer-ai quarantine)"
                return self.json({"error": error}, status=404)
            try:  # written with another config's layout: mapped by feature name
                state = await rt.scorer.read_state(raw)
            except ValueError as exc:  # unknown layout or unreadable: say so, in JSON
                return self.json({"error": f"profile {profile_id!r}: {exc}"}, status=500)
            document = profile_document(rt.engine, pid, state)
            if pid != profile_id:
                document["alias"] = profile_id  # the id asked for is one of the person's
            return self.json(document)

    @app.page("/models")
    class Models(View):
        async def get(self, request: Request) -> Response:
            rt = runtime()
            await rt.scorer.refresh_models()
            learners = await read_learners(rt.store, list(rt.engine.models))
            return self.json(models_document(rt.engine, learners))

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            payload, content_type = metrics.render()
            return self.bytes(payload, content_type=content_type.split(";")[0])
