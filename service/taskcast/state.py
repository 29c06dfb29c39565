"""What the lifespan opens and every handler shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from taskcast.auth import Auth, Sites
from taskcast.dispatch import Dispatcher
from taskcast.groups import member_ids
from taskcast.limits import ClientConnections, InRequestJobs
from taskcast.live.hub import Hub
from taskcast.metrics import Metrics
from taskcast.served import ServedApp
from taskcast.settings import Settings
from taskcast.store import ResultStore


@dataclass(slots=True)
class AppState:
    """Shared clients of one service process, available as ``app.state.taskcast``."""

    settings: Settings
    # The Celery app served, and what the service read from it.
    served: ServedApp
    redis: Redis
    store: ResultStore
    dispatcher: Dispatcher
    hub: Hub
    metrics: Metrics
    # Open WebSocket connections by client address, for their per-client cap.
    clients: ClientConnections
    auth: Auth
    # Which pages may use the service from a browser.
    sites: Sites
    # GET /sync-process/'s jobs, on threads of their own (never dispatch's).
    sync_jobs: InRequestJobs
    # The OpenAPI document, made at its first request.
    openapi: dict[str, Any] | None = None

    async def group_members(self, group_id: str) -> tuple[str, ...] | None:
        """A group's member ids (None: no such group): from the hub while it tallies the
        group, else from one read of the group's record."""
        members = self.hub.members_of(group_id)
        if members is None:
            raw = await self.store.read_group(group_id)
            found = None if raw is None else member_ids(raw)
            members = None if found is None else tuple(found)
        return members
