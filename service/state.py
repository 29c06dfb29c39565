"""What the lifespan opens and every handler shares."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from service.auth import Auth
from service.dispatch import Dispatcher
from service.hub import Hub
from service.limits import ClientConnections
from service.metrics import Metrics
from service.settings import Settings
from service.store import ResultStore


@dataclass(slots=True)
class AppState:
    """Shared clients of one service process, available as ``app.state.taskcast``."""

    settings: Settings
    redis: Redis
    store: ResultStore
    dispatcher: Dispatcher
    hub: Hub
    metrics: Metrics
    # Open WebSocket connections by client address, for their per-client cap.
    clients: ClientConnections
    auth: Auth
