"""The OpenAPI description of the REST API, served at ``/openapi.json``.

Built once per app, from what it serves: its routes (each with the guard it declares),
the exposed tasks and their parameter models,
and the payload types themselves (``Status``, ``GroupStatus``, the links, the error
body): every schema is generated from the one typed definition of its payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from taskcast.api.dispatching import GroupCancelled, GroupLinks, TaskLinks, service_root
from taskcast.api.errors import ErrorBody
from taskcast.api.guards import Guard, app_state, guarded
from taskcast.api.queries import EmailQuery, HistoryQuery, ProgressQuery, SleepQuery
from taskcast.api.responses import json_response
from taskcast.bars import GroupProgress, TaskProgress
from taskcast.catalog import TaskList
from taskcast.groups import GroupStatus
from taskcast.history import HistoryPage
from taskcast.ids import OWNER_PATTERN
from taskcast.status import Status
from taskcast_celery.expose import Exposure
from taskcast_celery.owners import MAX_TAGS, TAG_PATTERN

_REF = "#/components/schemas/{model}"
# The payloads the API answers with, by the name their schema goes under.
_PAYLOADS: dict[str, Any] = {
    "Status": Status,
    "GroupStatus": GroupStatus,
    "TaskLinks": TaskLinks,
    "GroupLinks": GroupLinks,
    "GroupCancelled": GroupCancelled,
    "TaskList": TaskList,
    "ErrorBody": ErrorBody,
    "CeleryProgressTask": TaskProgress,
    "CeleryProgressGroup": GroupProgress,
    "HistoryPage": HistoryPage,
}
_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_GROUP_ID = {**_ID, "name": "group_id"}
_OWNER = {
    "name": "owner",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": OWNER_PATTERN},
}
# A dispatch's owner and tags (``guards.ownership_of``): in the query, so that the body
# stays the task's own parameters.
_OWNED = [
    {
        "name": "owner",
        "in": "query",
        "required": False,
        "description": "Whose task it is (its history and live feed): with an API key, or "
        "where no keys are set; with TASKCAST_FEED_TOKENS_MAY_START, the feed token's owner.",
        "schema": {"type": "string", "pattern": OWNER_PATTERN},
    },
    {
        "name": "tag",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "description": "A tag of the task (repeat it for more); only with owner.",
        "schema": {
            "type": "array",
            "items": {"type": "string", "pattern": TAG_PATTERN},
            "maxItems": MAX_TAGS,
        },
    },
]

# OpenAPI security requirements: any one of the alternatives, each a scheme by name.
_Security = list[dict[str, list[str]]]

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "One of TASKCAST_API_KEYS; where a task is read, also that task's "
        "watch token; where an owner's tasks are listed, its feed token.",
    },
    "watchToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The task's watch token, as its dispatch returned it; for an "
        "owner's feed, its feed token (taskcast.sign_feed_token).",
    },
}


def _error(description: str) -> dict[str, Any]:
    return _ok(description, {"$ref": _REF.format(model="ErrorBody")})


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _guarded(operation: dict[str, Any], security: _Security) -> dict[str, Any]:
    """``operation`` with its security requirement and 401, when this deployment has one."""
    if not security:
        return operation
    responses = {**operation["responses"], "401": _error("Missing, wrong or expired credentials.")}
    return {**operation, "security": security, "responses": responses}


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _schemas(
    tasks: Mapping[str, Exposure],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """References to each payload's schema and to each task's parameters, and every
    schema they need, generated together so that they share one namespace."""
    Mode = Literal["validation", "serialization"]
    inputs: list[tuple[str, Mode, TypeAdapter[Any]]] = [
        (name, "serialization", TypeAdapter(payload)) for name, payload in _PAYLOADS.items()
    ]
    inputs += [
        (f"task:{name}", "validation", TypeAdapter(exposure.params))
        for name, exposure in tasks.items()
    ]
    refs, definitions = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    components: dict[str, dict[str, Any]] = definitions.get("$defs", {})
    by_name = {key: ref for (key, _mode), ref in refs.items()}
    payloads = {name: by_name[name] for name in _PAYLOADS}
    params = {name: by_name[f"task:{name}"] for name in tasks}
    return {**payloads, **params}, components


def _group_request(params_ref: dict[str, Any], params_required: bool, most: int) -> dict[str, Any]:
    """``{"count", "params"}`` or ``{"tasks": [params, ...]}``: exactly one of the two."""
    by_count = {
        "type": "object",
        "additionalProperties": False,
        "required": ["count", "params"] if params_required else ["count"],
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": most},
            "params": params_ref,
        },
    }
    by_list = {
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "minItems": 1, "maxItems": most, "items": params_ref}
        },
    }
    return {"oneOf": [by_count, by_list]}


def build(
    tasks: Mapping[str, Exposure],
    routes: list[BaseRoute],
    *,
    keys: bool = False,
    tokens: bool = False,
    max_group_size: int = 1000,
) -> dict[str, Any]:
    """The document for an app exposing ``tasks`` on ``routes`` (dev mode's among them
    when it is on), in its mode: which credentials it wants (API keys, watch tokens) and
    its group size cap. Each route's
    security comes from the guard it declares (``taskcast.api.guards``)."""
    refs, components = _schemas(tasks)
    paths: dict[str, Any] = {}
    paths["/tasks"] = {
        "get": {
            "summary": "The tasks clients may start, with their parameters' JSON Schema.",
            "operationId": "list_tasks",
            "responses": {"200": _ok("The tasks.", refs["TaskList"])},
        }
    }
    for name, exposure in tasks.items():
        params_ref = refs[name]
        required = bool(exposure.params.model_json_schema().get("required"))
        paths[f"/tasks/{name}"] = {
            "post": {
                "summary": exposure.summary or f"Start {name}.",
                "operationId": f"submit_{name}",
                "parameters": _OWNED,
                "requestBody": {
                    # No body means no parameters: fine unless the task requires some.
                    "required": required,
                    "content": {"application/json": {"schema": params_ref}},
                },
                "responses": {
                    "202": _ok("Queued.", refs["TaskLinks"]),
                    "400": _error("Body is not JSON."),
                    "403": _error("A page of another site, or a feed token not allowed."),
                    "413": _error("Body too large."),
                    "422": _error("Invalid parameters, owner or tags."),
                    "503": _error("Broker unavailable."),
                },
            }
        }
        paths[f"/groups/{name}"] = {
            "post": {
                "summary": f"Start a group of {name} tasks: count copies, or one per params.",
                "operationId": f"submit_group_{name}",
                "parameters": _OWNED,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _group_request(params_ref, required, max_group_size)
                        }
                    },
                },
                "responses": {
                    "202": _ok("Queued.", refs["GroupLinks"]),
                    "400": _error("Body is not JSON."),
                    "403": _error("A page of another site, or a feed token not allowed."),
                    "413": _error("Body too large."),
                    "422": _error("Invalid parameters, owner or tags."),
                    "503": _error("Broker unavailable."),
                },
            }
        }
    paths["/tasks/{task_id}"] = {
        "get": {
            "summary": "Current status of a task.",
            "operationId": "get_status",
            "parameters": [_ID],
            "responses": {
                "200": _ok("The status object.", refs["Status"]),
                "404": _error("Unknown task."),
                "422": _error("Malformed task id."),
            },
        },
        "delete": {
            "summary": "Cancel a task: a queued one never runs, a running one is stopped.",
            "operationId": "cancel_task",
            "parameters": [_ID],
            "responses": {
                "202": _ok("Cancelled; the task ends REVOKED.", refs["TaskLinks"]),
                "404": _error("Unknown task."),
                "409": _error("The task already ended."),
                "422": _error("Malformed task id."),
            },
        },
    }
    paths["/groups/{group_id}"] = {
        "get": {
            "summary": "Current status of a group: its members added up.",
            "operationId": "get_group_status",
            "parameters": [_GROUP_ID],
            "responses": {
                "200": _ok("The group status object.", refs["GroupStatus"]),
                "404": _error("Unknown group."),
                "422": _error("Malformed group id."),
            },
        },
        "delete": {
            "summary": "Cancel every member of a group that has not ended.",
            "operationId": "cancel_group",
            "parameters": [_GROUP_ID],
            "responses": {
                "202": _ok("Cancelled.", refs["GroupCancelled"]),
                "404": _error("Unknown group."),
                "409": _error("Every member already ended."),
                "422": _error("Malformed group id."),
            },
        },
    }
    paths["/feeds/{owner}/tasks"] = {
        "get": {
            "summary": "An owner's tasks, newest first, a page at a time (docs/protocol.md, "
            "Owners and history).",
            "operationId": "list_feed_tasks",
            # (Its token is the watchToken security scheme's.)
            "parameters": [_OWNER, *(p for p in _query(HistoryQuery) if p["name"] != "token")],
            "responses": {
                "200": _ok("A page of the owner's tasks.", refs["HistoryPage"]),
                "422": _error("Malformed owner or query."),
            },
        }
    }
    probe = {"type": "object", "properties": {"status": {"type": "string"}}}
    paths["/healthz"] = {
        "get": {"summary": "Process alive.", "responses": {"200": _ok("Alive.", probe)}}
    }
    readiness = {
        "type": "object",
        "required": ["status", "redis", "broker"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "degraded"]},
            "redis": {
                "type": "string",
                "enum": ["ok", "unreachable", "timed out", "recovering"],
                "description": "The result store: records, heartbeats, their channels.",
            },
            "broker": {
                "type": "string",
                "enum": ["ok", "unreachable", "timed out"],
                "description": "The Celery app's broker (Redis or RabbitMQ): where dispatches go.",
            },
            "detail": {
                "type": "string",
                "description": "When the broker is not ok: which one (its URL without "
                "the password), and what failed.",
            },
        },
    }
    paths["/readyz"] = {
        "get": {
            "summary": "Redis and the broker answer, each within TASKCAST_READY_TIMEOUT.",
            "description": "Ready: the result store answers (and the hub has caught up "
            "with it after an outage), and the broker takes a connection (checked at most "
            "once a second per process; probes in between get the last verdict). Either "
            "down: 503, saying which.",
            "responses": {
                "200": _ok("Ready.", readiness),
                "503": _ok("Degraded: Redis or the broker is down.", readiness),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics of this process (docs/operations.md).",
            "responses": {
                "200": {"description": "Text exposition format.", "content": {"text/plain": {}}}
            },
        }
    }
    paths["/"] = {
        "get": {
            "summary": "The demo page: start, follow and cancel tasks in a browser.",
            "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}},
        }
    }
    paths.update(_stream_paths())
    paths.update(_celery_progress_paths(refs))
    tutorial_paths = _tutorial_paths(tasks)
    paths.update(tutorial_paths)
    # (Served only in dev mode: described only where the route is there.)
    paths["/dev/outbox"] = {
        "get": {
            "summary": "Dev mode only: e-mail kept instead of sent, newest first.",
            "responses": {"200": _ok("The dev outbox.", {"type": "object"})},
        }
    }
    # What each operation needs in this deployment (docs/security.md), from the guard
    # its route declares. Cancelling needs an API key when keys are set (which also
    # reads any task); else what reading needs.
    keyed: _Security = [{"bearer": []}] if keys else []
    watched: _Security = [{"watchToken": []}, {"bearer": []}] if tokens else []
    security = {
        Guard.OPEN: [],
        Guard.WORK: keyed,
        Guard.START: keyed,
        Guard.FEED: watched,
        Guard.WATCH: watched,
        Guard.WATCH_EACH: watched,
        Guard.CANCEL: keyed or watched,
    }
    documented: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        guard = getattr(route, "guard", Guard.OPEN)
        # One route per exposed task's name in the document: each has its own parameters.
        route_paths = (
            [route.path.replace("{name}", name) for name in tasks]
            if "{name}" in route.path
            else [route.path]
        )
        for path in route_paths:
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                operation = paths.get(path, {}).get(method.lower())
                if operation is None:
                    raise LookupError(f"{method} {path} is served but not described")
                documented.setdefault(path, {})[method.lower()] = _guarded(
                    operation, security[guard]
                )
    paths = documented
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskcast", "version": "1"},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


def _tutorial_paths(tasks: Mapping[str, Exposure]) -> dict[str, Any]:
    """The tutorial's paths this app serves (those of the tasks it exposes)."""
    sleep_query = _query(SleepQuery)
    queued = {"200": _ok("Queued.", {"type": "object"}), "422": _error("Bad query.")}
    paths: dict[str, Any] = {}
    if "sleep" in tasks:
        paths["/sync-process/"] = {
            "get": {
                "summary": "Tutorial: run the job inside the request.",
                "parameters": sleep_query,
                "responses": {
                    "200": _ok("Done.", {"type": "object"}),
                    "422": _error("Bad query."),
                },
            }
        }
        paths["/async-process/"] = {
            "get": {
                "summary": "Tutorial: queue the job.",
                "parameters": sleep_query,
                "responses": queued,
            }
        }
    if "email" in tasks:
        data = tasks["email"].params.model_json_schema().get("properties", {}).get("data", {})
        paths["/process-and-email/"] = {
            "post": {
                "summary": "Tutorial: queue the e-mail job; the JSON body is the data to process.",
                "parameters": _query(EmailQuery),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": data}},
                },
                "responses": {
                    **queued,
                    "400": _error("Body is not JSON."),
                    "413": _error("Body too large."),
                    "422": _error("Bad query or data."),
                    "503": _error("Broker unavailable."),
                },
            }
        }
    if "progress" in tasks:
        paths["/process-data-with-status/"] = {
            "post": {
                "summary": "Tutorial: queue a job that reports progress.",
                "parameters": _query(ProgressQuery),
                "responses": queued,
            }
        }
    paths["/task-status/{task_id}"] = {
        "get": {
            "summary": "Tutorial: status in the tutorial's shape.",
            "parameters": [_ID],
            "responses": {
                "200": _ok("Status.", {"type": "object"}),
                "404": _error("Unknown task."),
                "422": _error("Malformed task id."),
            },
        }
    }
    return paths


_EVENTS = {
    "description": "An event stream (docs/protocol.md, Server-Sent Events): each event's "
    "data is the WebSocket message (status, group, error), then an end event.",
    "content": {
        "text/event-stream": {
            # One event, as schemathesis and the OpenAPI 3.2 drafts read a stream.
            "schema": {
                "type": "object",
                "properties": {
                    "event": {"enum": ["status", "group", "error", "end"]},
                    "id": {"type": "string"},
                    "data": {"type": "string", "contentMediaType": "application/json"},
                },
                "required": ["event", "id", "data"],
            }
        }
    },
}
_RESUME = {
    "name": "last_event_id",
    "in": "query",
    "required": False,
    "description": "Resume after this event (as the Last-Event-ID header does).",
    "schema": {"type": "string"},
}

_FEED_EVENTS = {
    "description": "An event stream (docs/protocol.md, Feeds): a feed event (the owner's "
    "unfinished tasks), then a status event for every status of the owner's tasks; each "
    "event's id is a time on Redis's clock (ms) to resume from.",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "properties": {
                    "event": {"enum": ["feed", "status"]},
                    "id": {"type": "string", "pattern": "^[0-9]{1,15}$"},
                    "data": {"type": "string", "contentMediaType": "application/json"},
                },
                "required": ["event", "id", "data"],
            }
        }
    },
}
_FEED_RESUME = {
    **_RESUME,
    "description": "Resume after this event (as the Last-Event-ID header does): the "
    "finals of the tasks that ended since are sent again. Empty: from the start.",
    "schema": {"type": "string", "pattern": "^([0-9]{1,15})?$"},
}


def _stream_paths() -> dict[str, Any]:
    """The Server-Sent Events endpoints."""
    refused = {
        "204": {"description": "The stream had ended for this client (Last-Event-ID: end)."},
        "400": _error("Malformed query."),
        "422": _error("Malformed id."),
        "503": _error("Too many connections."),
    }
    many = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "style": "form",
            "explode": True,
            "description": f"A {name} id to follow (repeat it for more; a token follows its id).",
            "schema": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        }
        for name in ("task", "group")
    ]
    return {
        "/sse": {
            "get": {
                "summary": "Follow many tasks and groups on one event stream.",
                "parameters": [*many, _RESUME],
                "responses": {"200": _EVENTS, **refused},
            }
        },
        "/sse/tasks/{task_id}": {
            "get": {
                "summary": "Follow a task on an event stream.",
                "parameters": [_ID, _RESUME],
                "responses": {"200": _EVENTS, **refused},
            }
        },
        "/sse/groups/{group_id}": {
            "get": {
                "summary": "Follow a group on an event stream.",
                "parameters": [_GROUP_ID, _RESUME],
                "responses": {"200": _EVENTS, **refused},
            }
        },
        "/sse/feeds/{owner}": {
            "get": {
                "summary": "Follow every task of an owner on an event stream (never ends).",
                "parameters": [_OWNER, _FEED_RESUME],
                "responses": {
                    "200": _FEED_EVENTS,
                    "400": _error("Malformed query or Last-Event-ID."),
                    "422": _error("Malformed owner."),
                    "503": _error("Too many connections."),
                },
            }
        },
    }


def _celery_progress_paths(refs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """celery-progress's endpoints, for its JavaScript."""
    return {
        "/celery-progress/{task_id}/": {
            "get": {
                "summary": "A task as celery-progress's JSON.",
                "parameters": [_ID],
                "responses": {
                    "200": _ok("celery-progress's object.", refs["CeleryProgressTask"]),
                    "404": _error("Unknown task."),
                    "422": _error("Malformed task id."),
                },
            }
        },
        "/celery-progress/g/{group_id}/": {
            "get": {
                "summary": "A group as celery-progress's JSON.",
                "parameters": [_GROUP_ID],
                "responses": {
                    "200": _ok("celery-progress's object.", refs["CeleryProgressGroup"]),
                    "404": _error("Unknown group."),
                    "422": _error("Malformed group id."),
                },
            }
        },
    }


async def openapi_json(request: Request) -> Response:
    state = app_state(request)
    if state.openapi is None:
        # Made at the first request (it depends only on the app): a start-up need not wait.
        state.openapi = build(
            state.served.tasks,
            request.app.routes,
            keys=state.auth.keys_required,
            tokens=state.auth.tokens_required,
            max_group_size=state.settings.max_group_size,
        )
    root = service_root(request)
    if not root:
        return json_response(state.openapi)
    # Mounted under a prefix (or behind a proxy that strips one): the paths are the
    # service's own, and the server says where they start.
    return json_response({**state.openapi, "servers": [{"url": root}]})


routes = [guarded("/openapi.json", openapi_json, include_in_schema=False)]
