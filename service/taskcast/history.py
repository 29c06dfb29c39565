"""An owner's history: the tasks started for it (``taskcast.owned_by``, or ``?owner=`` at
dispatch), newest first, read a page at a time (``GET /feeds/{owner}/tasks``).

``taskcast_celery.backend`` writes it: per task a hash, its entry (name, owner, tags,
state, times, error, result cut to ``HISTORY_RESULT_BYTES``), kept for the history's
seconds after the task was sent, whatever ``result_expires`` says of its record; per
owner a sorted set whose members (``keys.history_member``) sort newest first by their
text, all scored 0, so that a page is a ``ZRANGE ... BYLEX`` from where the last one
ended.

A page walks the set from its cursor in batches: each batch's entries in one pipeline,
then the live records of those not yet final in one ``MGET`` (an entry says ``STARTED``
where the record says ``PROGRESS``). At most ``SCAN_LIMIT`` entries are looked at per
request, so a filter that matches little costs bounded work: the page may then come
short, with a cursor to go on from. The cursor is the last member looked at, so tasks
sent meanwhile (which sort before it) never shift a page, and none is listed twice.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Annotated, Any, cast

import orjson
from pydantic import Field
from redis.asyncio import Redis

# pydantic reads TypedDicts (for their JSON Schema) only from typing_extensions on 3.11.
from typing_extensions import TypedDict

from taskcast.status import TaskError
from taskcast_celery import keys
from taskcast_celery.backend import HISTORY_RESULT_BYTES
from taskcast_celery.states import FINAL_STATES

__all__ = [
    "HISTORY_RESULT_BYTES",
    "MAX_LIMIT",
    "SCAN_LIMIT",
    "HistoryFilter",
    "HistoryItem",
    "HistoryPage",
    "decode_cursor",
    "encode_cursor",
    "read_history",
]

# Most entries one request looks at, matching or not: a bound on a request's Redis work.
SCAN_LIMIT = 1000
# Most tasks on one page.
MAX_LIMIT = 200
# Entries read per round trip once a filter has skipped some: enough that a rare filter
# takes a few round trips, not one per task.
_FILTERED_BATCH = 250
# What a listing reads of an entry (never its webhook: a URL of the producer's).
_FIELDS = (
    "task_id",
    "name",
    "owner",
    "tags",
    "state",
    "sent_at",
    "started_at",
    "finished_at",
    "error",
    "result",
)
# A member of an owner's list, as ``keys.history_member`` writes it.
_MEMBER = re.compile(r"\d{13}:[\x21-\x7e]{1,255}")


class HistoryItem(TypedDict):
    """One task of an owner's history."""

    task_id: str
    name: Annotated[str | None, Field(description="the task's Celery name")]
    state: Annotated[
        str,
        Field(
            description="the live record's state while the task runs; once it ended (or "
            "its record expired), the one its history entry kept"
        ),
    ]
    final: Annotated[bool, Field(description="true for SUCCESS, FAILURE and REVOKED")]
    owner: str
    tags: list[str]
    sent_at: Annotated[int, Field(description="when it was sent: Unix ms, Redis's clock")]
    started_at: Annotated[int | None, Field(description="when a worker started it (Unix ms)")]
    finished_at: Annotated[int | None, Field(description="when it ended (Unix ms)")]
    error: TaskError | None
    result: Annotated[
        Any,
        Field(
            description=f"on SUCCESS, the result as JSON when it takes at most "
            f"{HISTORY_RESULT_BYTES} bytes, else {{'truncated': true, 'bytes': N}}; else null"
        ),
    ]


class HistoryPage(TypedDict):
    """A page of an owner's history, newest first, and where the next one starts."""

    tasks: list[HistoryItem]
    next_cursor: Annotated[
        str | None,
        Field(
            description="pass as ?cursor= for the next page; null: nothing older is listed. "
            "A page may be short (a filter that matched little) and still have one"
        ),
    ]


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """What a listing keeps: every condition given must hold."""

    state: str | None = None
    # The names a task may have (a Celery name, and the one it is exposed under).
    names: frozenset[str] | None = None
    tag: str | None = None
    # Sent at this time or later (Unix ms, Redis's clock).
    since_ms: int | None = None

    @property
    def narrows(self) -> bool:
        """Whether it may skip entries (``since`` does not: it bounds the range read)."""
        return self.state is not None or self.names is not None or self.tag is not None


def encode_cursor(member: str) -> str:
    """A member of an owner's list as an opaque cursor (base64url, unpadded)."""
    return base64.urlsafe_b64encode(member.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str | None:
    """The member a cursor names; None for text that is not a cursor this service gave."""
    if len(cursor) > 400:
        return None
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return member if _MEMBER.fullmatch(member) else None


def _since_bound(since_ms: int) -> str:
    """The ZRANGE BYLEX upper bound that keeps members sent at ``since_ms`` or later:
    their 13 digits are at most those of ``since_ms`` (newer is smaller), and ``;`` sorts
    right after the ``:`` that follows the digits."""
    digits = keys.history_member(max(since_ms, 0), "").split(":", 1)[0]
    return f"({digits};"


def _int(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)


def _json(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def _live_state(raw: bytes | None) -> str | None:
    """The state a task's record says, if it has a readable one."""
    if raw is None:
        return None
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    state = meta.get("status") if isinstance(meta, dict) else None
    return state if isinstance(state, str) else None


def _item(member: str, fields: list[bytes | None]) -> HistoryItem | None:
    """An entry as a listing item (its state the entry's); None once it expired."""
    values = dict(zip(_FIELDS, fields, strict=True))
    if values["sent_at"] is None:
        return None
    tags = _json(values["tags"])
    state = (values["state"] or b"SENT").decode()
    name = values["name"]
    return {
        "task_id": (values["task_id"] or member.split(":", 1)[1].encode()).decode(),
        "name": name.decode() if name else None,
        "state": state,
        "final": state in FINAL_STATES,
        "owner": (values["owner"] or b"").decode(),
        "tags": [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else [],
        "sent_at": keys.member_sent_ms(member),
        "started_at": _int(values["started_at"]),
        "finished_at": _int(values["finished_at"]),
        "error": _json(values["error"]),
        "result": _json(values["result"]),
    }


async def read_history(
    redis: Redis,
    prefix: str,
    owner: str,
    *,
    limit: int = 50,
    after: str | None = None,
    where: HistoryFilter | None = None,
    scan_limit: int = SCAN_LIMIT,
) -> HistoryPage:
    """Up to ``limit`` tasks of ``owner`` matching ``where``, newest first, after the
    member ``after`` (a decoded cursor; None: from the newest); looking at no more than
    ``scan_limit`` entries."""
    where = where or HistoryFilter()
    key = keys.owner_tasks_key(prefix, owner)
    low = "-" if after is None else f"({after}"
    # (0: everything, which the bound would get wrong: its digits would be 14.)
    high = "+" if not where.since_ms else _since_bound(where.since_ms)
    items: list[HistoryItem] = []
    scanned = 0
    position = after
    more = True
    while more and len(items) < limit and scanned < scan_limit:
        needed = limit - len(items)
        batch = min(scan_limit - scanned, max(needed, _FILTERED_BATCH) if where.narrows else needed)
        # One more than is read: whether anything follows the batch.
        found = await redis.zrangebylex(key, low, high, 0, batch + 1)
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in found]
        more = len(members) > batch
        members = members[:batch]
        if not members:
            break
        async with redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hmget(keys.history_key(prefix, member.split(":", 1)[1]), list(_FIELDS))
            entries = await pipe.execute()
        candidates: dict[str, HistoryItem] = {}
        for member, fields in zip(members, entries, strict=True):
            item = _item(member, fields)
            if item is not None and _keeps_entry(where, item):
                candidates[member] = item
        # The live state of the unfinished ones: one MGET for the batch.
        running = [item for item in candidates.values() if not item["final"]]
        if running:
            # (The service's client answers bytes: it decodes nothing.)
            records = cast(
                "list[bytes | None]",
                await redis.mget([keys.task_meta_key(prefix, item["task_id"]) for item in running]),
            )
            for item, raw in zip(running, records, strict=True):
                live = _live_state(raw)
                if live is not None:
                    item["state"], item["final"] = live, live in FINAL_STATES
        for member in members:
            scanned += 1
            position = member
            low = f"({member}"
            match = candidates.get(member)
            if match is not None and where.state in (None, match["state"]):
                items.append(match)
                if len(items) == limit:
                    # What this batch read beyond the page is read again by the next.
                    more = more or member != members[-1]
                    break
    next_cursor = encode_cursor(position) if more and position is not None else None
    return {"tasks": items, "next_cursor": next_cursor}


def _keeps_entry(where: HistoryFilter, item: HistoryItem) -> bool:
    """The conditions an entry alone decides (the state waits for the live record)."""
    if where.names is not None and item["name"] not in where.names:
        return False
    return where.tag is None or where.tag in item["tags"]
