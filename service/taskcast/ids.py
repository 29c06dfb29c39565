"""Task and group ids: UUIDs, kept in lower case as Celery writes them."""

from __future__ import annotations

import re

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)


def is_task_id(raw: str) -> bool:
    """Whether ``raw`` is a well-formed UUID, the only shape a task or group id may take."""
    return _UUID.fullmatch(raw) is not None
