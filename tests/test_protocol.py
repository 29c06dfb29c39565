"""Parsing client frames: every malformed frame gets a precise error code."""

from __future__ import annotations

import pytest

from taskcast.live.protocol import Ping, ProtocolError, Subscribe, Unsubscribe, parse_command

TASK_ID = "0f0c9e2a-1111-4222-8333-944455556666"


def test_valid_commands() -> None:
    assert parse_command('{"op": "ping"}') == Ping(op="ping")
    subscribe = parse_command(f'{{"op": "subscribe", "task_id": "{TASK_ID.upper()}"}}')
    assert subscribe == Subscribe(op="subscribe", task_id=TASK_ID)
    unsubscribe = parse_command(f'{{"op": "unsubscribe", "task_id": "{TASK_ID}"}}')
    assert unsubscribe == Unsubscribe(op="unsubscribe", task_id=TASK_ID)


@pytest.mark.parametrize(
    ("frame", "code", "detail"),
    [
        ("{nope", "invalid_message", "frame is not valid JSON"),
        ('{"op": "ping", "x": ' + "[" * 300 + "]" * 300 + "}", "invalid_message",
         "frame is nested too deeply to read"),
        ("[1]", "invalid_message", "frame must be a JSON object"),
        ('"ping"', "invalid_message", "frame must be a JSON object"),
        ("{}", "invalid_message", 'frame has no "op" field'),
        ('{"op": "dance"}', "unknown_op", "unknown op 'dance'; expected one of subscribe, "
         "unsubscribe, ping"),
        ('{"op": 5}', "unknown_op", "unknown op 5; expected one of subscribe, unsubscribe, ping"),
        ('{"op": "subscribe"}', "invalid_task_id",
         "task_id is required (or group_id, to follow a group, or feed, an owner's tasks)"),
        ('{"op": "unsubscribe"}', "invalid_task_id",
         "task_id is required (or group_id, to follow a group, or feed, an owner's tasks)"),
        (f'{{"op": "subscribe", "task_id": "{TASK_ID}", "group_id": "{TASK_ID}"}}',
         "invalid_message", "give one of task_id, group_id and feed"),
        ('{"op": "subscribe", "group_id": "abc"}', "invalid_group_id",
         "group_id must be a UUID string, got 'abc'"),
        ('{"op": "unsubscribe", "group_id": null}', "invalid_task_id",
         "task_id is required (or group_id, to follow a group, or feed, an owner's tasks)"),
        ('{"op": "subscribe", "task_id": "abc"}', "invalid_task_id",
         "task_id must be a UUID string, got 'abc'"),
        ('{"op": "subscribe", "task_id": 7}', "invalid_task_id",
         "task_id must be a UUID string, got 7"),
        (f'{{"op": "subscribe", "task_id": "{TASK_ID}\\n"}}', "invalid_task_id",
         f"task_id must be a UUID string, got '{TASK_ID}\\n'"),
        ('{"op": "ping", "x": 1}', "invalid_message", "unexpected field 'x'"),
        # Not "must be a UUID": the id is well-formed, but a ping takes none.
        (f'{{"op": "ping", "task_id": "{TASK_ID}"}}', "invalid_message",
         "unexpected field 'task_id'"),
    ],
)  # fmt: skip
def test_invalid_frames(frame: str, code: str, detail: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_command(frame)
    assert (raised.value.code, raised.value.detail) == (code, detail)


def test_bad_task_id_is_echoed_only_when_short() -> None:
    with pytest.raises(ProtocolError) as short:
        parse_command('{"op": "subscribe", "task_id": "abc"}')
    assert short.value.task_id == "abc"
    with pytest.raises(ProtocolError) as long:
        parse_command('{"op": "subscribe", "task_id": "' + "a" * 100 + '"}')
    assert long.value.task_id is None
