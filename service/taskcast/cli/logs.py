"""Log output of ``taskcast serve``: uvicorn's text lines, or one JSON object a line.

Applied through uvicorn's ``log_config``, which every worker process applies before it
builds the app, so uvicorn's own loggers (startup, access, WebSocket lines) and
taskcast's (through the root logger) share one format and one stream set-up.
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from uvicorn.config import LOGGING_CONFIG


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the task id if known.

    Only these fields, never the record's other attributes: what reaches a log is what
    a log site chose to say (``extra={"task_id": ...}``), not whatever it had at hand.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            entry["task_id"] = task_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: its own set-up, plus the root logger for taskcast's
    loggers at ``level``, with every formatter JSON when ``log_format`` is ``json``."""
    config = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        # Under uvicorn's names, which its handlers refer to.
        config["formatters"] = {name: {"()": JsonFormatter} for name in ("default", "access")}
    config["root"] = {"handlers": ["default"], "level": level.upper()}
    return config
