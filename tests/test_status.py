"""Decoding result-backend records into the status object."""

from __future__ import annotations

import json

from taskcast.status import decode_status

TASK_ID = "0f0c9e2a-1111-4222-8333-944455556666"


def record(**meta: object) -> bytes:
    return json.dumps(meta).encode()


def test_progress_percent_is_computed_from_current_and_total() -> None:
    status = decode_status(TASK_ID, record(status="PROGRESS", result={"current": 3, "total": 10}))
    assert status == {
        "task_id": TASK_ID,
        "state": "PROGRESS",
        "final": False,
        # Liveness comes from the heartbeat, read with the record by REST and the hub.
        "stalled": False,
        # One record says nothing of pace: only the hub, which sees changes, knows it.
        "progress": {
            "current": 3,
            "total": 10,
            "percent": 30.0,
            "message": None,
            "rate": None,
            "eta_s": None,
        },
        "result": None,
        "error": None,
    }


def test_percent_given_by_the_task_wins_and_is_clamped() -> None:
    given = decode_status(
        TASK_ID, record(status="PROGRESS", result={"current": 1, "total": 4, "percent": 40})
    )
    assert given["progress"]["percent"] == 40.0
    over = decode_status(TASK_ID, record(status="PROGRESS", result={"current": 9, "total": 4}))
    assert over["progress"]["percent"] == 100.0


def test_message_is_passed_through() -> None:
    status = decode_status(
        TASK_ID,
        record(status="PROGRESS", result={"current": 1, "total": 2, "message": "sending"}),
    )
    assert status["progress"]["message"] == "sending"


def test_success_after_progress_shows_one_hundred_percent() -> None:
    status = decode_status(
        TASK_ID,
        record(status="SUCCESS", result={"ok": 1}, progress={"current": 7, "total": 8}),
    )
    assert status["final"] is True
    assert status["result"] == {"ok": 1}
    assert status["progress"] == {
        "current": 8,
        "total": 8,
        "percent": 100.0,
        "message": None,
        "rate": None,
        "eta_s": 0.0,
    }


def test_success_without_progress_has_none() -> None:
    status = decode_status(TASK_ID, record(status="SUCCESS", result="done"))
    assert status["progress"] is None
    assert status["result"] == "done"


def test_failure_and_revoked_carry_an_error() -> None:
    failure = decode_status(
        TASK_ID,
        record(
            status="FAILURE",
            result={"exc_type": "ValueError", "exc_message": ["bad", 2], "exc_module": "b"},
        ),
    )
    assert failure["final"] is True
    assert failure["error"] == {"type": "ValueError", "message": "bad, 2"}
    assert failure["result"] is None
    revoked = decode_status(
        TASK_ID,
        record(status="REVOKED", result={"exc_type": "TaskRevokedError", "exc_message": "x"}),
    )
    assert revoked["error"] == {"type": "TaskRevokedError", "message": "x"}


def test_started_and_sent_are_not_final_and_hide_worker_details() -> None:
    started = decode_status(TASK_ID, record(status="STARTED", result={"pid": 1, "hostname": "h"}))
    assert (started["state"], started["final"], started["progress"]) == ("STARTED", False, None)
    assert started["result"] is None
    sent = decode_status(TASK_ID, record(status="SENT", result=None))
    assert (sent["state"], sent["final"]) == ("SENT", False)


def test_custom_state_with_counters_reports_progress() -> None:
    status = decode_status(TASK_ID, record(status="UPLOADING", result={"current": 1, "total": 3}))
    assert status["state"] == "UPLOADING"
    assert status["progress"]["percent"] == 33.33


def test_non_numeric_counters_are_ignored() -> None:
    status = decode_status(
        TASK_ID, record(status="PROGRESS", result={"current": "three", "total": True})
    )
    assert status["progress"] is None


def test_unreadable_record_is_reported_not_raised() -> None:
    status = decode_status(TASK_ID, b"\x80not json")
    assert status["state"] == "UNREADABLE"
    assert status["error"]["type"] == "UnreadableRecord"
