"""The OpenAPI description of the REST API, served at ``/openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskcast.api import tutorial
from taskcast.api.responses import json_response
from taskcast.api.tasks import app_state
from taskcast.catalog import TASKS, EmailParams

_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_GROUP_ID = {**_ID, "name": "group_id"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": ref}}}


# OpenAPI security requirements: any one of the alternatives, each a scheme by name.
_Security = list[dict[str, list[str]]]


def _guarded(operation: dict[str, Any], security: _Security) -> dict[str, Any]:
    """``operation`` with its security requirement and 401, when this deployment has one."""
    if not security:
        return operation
    responses = {**operation["responses"], "401": _error("Missing, wrong or expired credentials.")}
    return {**operation, "security": security, "responses": responses}


_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "One of TASKCAST_API_KEYS; where a task is read, also that task's "
        "watch token.",
    },
    "watchToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The task's watch token, as its dispatch returned it.",
    },
}


def _query(model: type[Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    },
    "TaskLinks": {
        "type": "object",
        "required": ["task_id", "status_url", "ws_url"],
        "properties": {
            "task_id": {"type": "string", "format": "uuid"},
            "status_url": {"type": "string"},
            "ws_url": {"type": "string"},
            "token": {
                "type": "string",
                "description": "the task's watch token, present when the service signs "
                "them (TASKCAST_SECRET); status_url and ws_url carry it too",
            },
        },
    },
    "Progress": {
        "type": ["object", "null"],
        "properties": {
            "current": {"type": ["number", "null"]},
            "total": {"type": ["number", "null"]},
            "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "message": {"type": ["string", "null"]},
            "rate": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "units of current per second, as the WebSocket hub measures "
                "it; null over REST, on a final status, and until the task has advanced",
            },
            "eta_s": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "seconds left, from rate and total; 0 on SUCCESS; null over "
                "REST while running, and while rate or total is unknown",
            },
        },
    },
    "Status": {
        "type": "object",
        "required": ["task_id", "state", "final", "stalled", "progress", "result", "error"],
        "properties": {
            "task_id": {"type": "string", "format": "uuid"},
            "state": {"type": "string", "examples": ["SENT", "STARTED", "PROGRESS", "SUCCESS"]},
            "final": {"type": "boolean"},
            "stalled": {
                "type": "boolean",
                "description": "true while a running task's worker has sent no heartbeat "
                "for TASKCAST_STALL_AFTER seconds (it probably died); false otherwise",
            },
            "progress": {"$ref": "#/components/schemas/Progress"},
            "result": {},
            "error": {
                "type": ["object", "null"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "GroupLinks": {
        "type": "object",
        "required": ["group_id", "task_ids", "status_url", "ws_url"],
        "properties": {
            "group_id": {"type": "string", "format": "uuid"},
            "task_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
            "status_url": {"type": "string"},
            "ws_url": {"type": "string"},
            "token": {
                "type": "string",
                "description": "the group's watch token, present when the service signs "
                "them (TASKCAST_SECRET)",
            },
        },
    },
    "GroupStatus": {
        "type": "object",
        "required": [
            "group_id",
            "state",
            "final",
            "stalled",
            "size",
            "done",
            "states",
            "progress",
            "failures",
            "stalled_tasks",
        ],
        "properties": {
            "group_id": {"type": "string", "format": "uuid"},
            "state": {
                "type": "string",
                "description": "SENT (no member started), PROGRESS, then SUCCESS (every "
                "member succeeded), FAILURE (one or more failed) or REVOKED (none failed, "
                "one or more cancelled)",
            },
            "final": {"type": "boolean", "description": "every member has ended"},
            "stalled": {"type": "boolean", "description": "an unfinished member is stalled"},
            "size": {"type": "integer", "minimum": 1},
            "done": {"type": "integer", "minimum": 0, "description": "members ended"},
            "states": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 1},
                "description": "how many members are in each state",
            },
            "progress": {
                "type": "object",
                "properties": {
                    "current": {"type": ["number", "null"]},
                    "total": {"type": ["number", "null"]},
                    "percent": {"type": "number", "minimum": 0, "maximum": 100},
                    "eta_s": {"type": ["number", "null"], "minimum": 0},
                },
            },
            "failures": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "task_id": {"type": "string", "format": "uuid"},
                        "state": {"type": "string"},
                        "error": {"type": "object"},
                    },
                },
            },
            "stalled_tasks": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        },
    },
}


def _group_request(params_ref: dict[str, str], params_required: bool, most: int) -> dict[str, Any]:
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


@cache
def spec(
    dev: bool = False, keys: bool = False, tokens: bool = False, max_group_size: int = 1000
) -> dict[str, Any]:
    """Build the document once per mode; it only depends on code, on dev mode, on which
    credentials the service wants (API keys, watch tokens) and on the group size cap."""
    schemas = dict(_SCHEMAS)
    paths: dict[str, Any] = {}
    for name, task in TASKS.items():
        model_schema = task.params.model_json_schema()
        schemas[task.params.__name__] = model_schema
        params_ref = {"$ref": f"#/components/schemas/{task.params.__name__}"}
        paths[f"/groups/{name}"] = {
            "post": {
                "summary": f"Start a group of {name} tasks: count copies, or one per params.",
                "operationId": f"submit_group_{name}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _group_request(
                                params_ref, bool(model_schema.get("required")), max_group_size
                            )
                        }
                    },
                },
                "responses": {
                    "202": _ok("Queued.", "GroupLinks"),
                    "400": _error("Body is not JSON."),
                    "413": _error("Body too large."),
                    "422": _error("Invalid parameters."),
                    "503": _error("Broker unavailable."),
                },
            }
        }
        paths[f"/tasks/{name}"] = {
            "post": {
                "summary": task.summary,
                "operationId": f"submit_{name}",
                "requestBody": {
                    # No body means no parameters: fine unless the task requires some.
                    "required": bool(model_schema.get("required")),
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{task.params.__name__}"}
                        }
                    },
                },
                "responses": {
                    "202": _ok("Queued.", "TaskLinks"),
                    "400": _error("Body is not JSON."),
                    "413": _error("Body too large."),
                    "422": _error("Invalid parameters."),
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
                "200": _ok("The status object.", "Status"),
                "404": _error("Unknown task."),
                "422": _error("Malformed task id."),
            },
        },
        "delete": {
            "summary": "Cancel a task: a queued one never runs, a running one is stopped.",
            "operationId": "cancel_task",
            "parameters": [_ID],
            "responses": {
                "202": _ok("Cancelled; the task ends REVOKED.", "TaskLinks"),
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
                "200": _ok("The group status object.", "GroupStatus"),
                "404": _error("Unknown group."),
                "422": _error("Malformed group id."),
            },
        },
        "delete": {
            "summary": "Cancel every member of a group that has not ended.",
            "operationId": "cancel_group",
            "parameters": [_GROUP_ID],
            "responses": {
                "202": _ok("Cancelled.", "GroupLinks"),
                "404": _error("Unknown group."),
                "409": _error("Every member already ended."),
                "422": _error("Malformed group id."),
            },
        },
    }
    probe = {"type": "object", "properties": {"status": {"type": "string"}}}
    paths["/healthz"] = {
        "get": {"summary": "Process alive.", "responses": {"200": _ok("Alive.", probe)}}
    }
    paths["/readyz"] = {
        "get": {
            "summary": "Redis answers.",
            "responses": {"200": _ok("Ready.", probe), "503": _ok("Degraded.", probe)},
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
    sleep_query = _query(tutorial.SleepQuery)
    paths["/sync-process/"] = {
        "get": {
            "summary": "Tutorial: run the job inside the request.",
            "parameters": sleep_query,
            "responses": {"200": _ok("Done.", {"type": "object"}), "422": _error("Bad query.")},
        }
    }
    paths["/async-process/"] = {
        "get": {
            "summary": "Tutorial: queue the job.",
            "parameters": sleep_query,
            "responses": {"200": _ok("Queued.", {"type": "object"}), "422": _error("Bad query.")},
        }
    }
    paths["/process-and-email/"] = {
        "post": {
            "summary": "Tutorial: queue the e-mail job; the JSON body is the data to process.",
            "parameters": _query(tutorial.EmailQuery),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": EmailParams.model_json_schema()["properties"]["data"]
                    }
                },
            },
            "responses": {
                "200": _ok("Queued.", {"type": "object"}),
                "400": _error("Body is not JSON."),
                "413": _error("Body too large."),
                "422": _error("Bad query or data."),
                "503": _error("Broker unavailable."),
            },
        }
    }
    paths["/process-data-with-status/"] = {
        "post": {
            "summary": "Tutorial: queue a job that reports progress.",
            "parameters": _query(tutorial.ProgressQuery),
            "responses": {"200": _ok("Queued.", {"type": "object"}), "422": _error("Bad query.")},
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
    # What each operation needs in this deployment (docs/security.md). Cancelling needs
    # an API key when keys are set (which also reads any task); else what reading needs.
    keyed: _Security = [{"bearer": []}] if keys else []
    watched: _Security = [{"watchToken": []}, {"bearer": []}] if tokens else []
    guards = [
        *(((f"/tasks/{name}", "post"), keyed) for name in TASKS),
        *(((f"/groups/{name}", "post"), keyed) for name in TASKS),
        (("/groups/{group_id}", "get"), watched),
        (("/groups/{group_id}", "delete"), keyed or watched),
        *(((path, method), keyed) for path, method in _TUTORIAL_DISPATCH),
        (("/tasks/{task_id}", "get"), watched),
        (("/task-status/{task_id}", "get"), watched),
        (("/tasks/{task_id}", "delete"), keyed or watched),
    ]
    for (path, method), security in guards:
        paths[path][method] = _guarded(paths[path][method], security)
    if dev:
        paths["/dev/outbox"] = {
            "get": {
                "summary": "Dev mode only: e-mail kept instead of sent, newest first.",
                "responses": {"200": _ok("The dev outbox.", {"type": "object"})},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskcast", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": _SECURITY_SCHEMES},
    }


# The tutorial's paths that start work, keyed like POST /tasks/{name}.
_TUTORIAL_DISPATCH = [
    ("/sync-process/", "get"),
    ("/async-process/", "get"),
    ("/process-and-email/", "post"),
    ("/process-data-with-status/", "post"),
]


async def openapi_json(request: Request) -> Response:
    state = app_state(request)
    return json_response(
        spec(
            state.settings.dev,
            state.auth.keys_required,
            state.auth.tokens_required,
            state.settings.max_group_size,
        )
    )


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
