"""What the service changes in uvicorn's own log lines: no watch token is ever written
out, and a client's malformed frame is not logged as the server's error."""

from __future__ import annotations

import logging
import re

_TOKEN_IN_URL = re.compile(r"(?<=[?&]token=)[^&\s\"]+")
# uvicorn logs a text frame that is not UTF-8 with logger.exception: an ERROR with a
# traceback, for what is the client's fault (the socket is closed with 1007 anyway).
_CLIENT_FAULTS = frozenset({"Invalid UTF-8 sequence received from client."})


class RedactTokens(logging.Filter):
    """Blanks ``token=`` query values in uvicorn's request lines (access log, and the
    WebSocket lines of its error log), which quote each path with its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_URL.sub("[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


class ClientFaultsAsInfo(logging.Filter):
    """Logs a client's malformed input as INFO, without a traceback: an operator alerted
    on ERROR lines should not be woken by any client that sends junk."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.msg in _CLIENT_FAULTS:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
            # Shown only where INFO is (the logger let it through as an ERROR).
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


_FILTERS = (RedactTokens(), ClientFaultsAsInfo())


def filter_server_logs() -> None:
    """Install the filters on uvicorn's loggers (once: a logger keeps one copy of each)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        for log_filter in _FILTERS:
            logging.getLogger(name).addFilter(log_filter)
