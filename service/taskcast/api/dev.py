"""Routes served only in dev mode: the dev outbox, where e-mail goes without a token."""

from __future__ import annotations

from typing import cast

import orjson
from starlette.requests import Request
from starlette.responses import Response

from taskcast.api.guards import app_state, guarded
from taskcast.api.responses import json_response
from taskcast_celery.demo import keys


async def dev_outbox(request: Request) -> Response:
    """The e-mails the workers kept in the dev outbox, newest first."""
    state = app_state(request)
    key = keys.dev_outbox_key(state.served.key_prefix)
    entries = cast("list[bytes]", await state.redis.lrange(key, 0, -1))
    return json_response({"messages": [orjson.loads(entry) for entry in entries]})


routes = [guarded("/dev/outbox", dev_outbox)]
