"""Task and group ids: UUIDs, kept in lower case as Celery writes them; and owners."""

from __future__ import annotations

import re

from taskcast_celery.owners import OWNER_PATTERN, OWNER_RULE

__all__ = ["OWNER_PATTERN", "OWNER_RULE", "UUID_PATTERN", "is_owner", "is_task_id"]

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)


def is_task_id(raw: str) -> bool:
    """Whether ``raw`` is a well-formed UUID, the only shape a task or group id may take."""
    return _UUID.fullmatch(raw) is not None


def is_owner(raw: str) -> bool:
    """Whether ``raw`` is an owner taskcast takes (``taskcast_celery.owners``)."""
    return re.fullmatch(OWNER_PATTERN, raw) is not None
