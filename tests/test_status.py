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


# -- progress, whichever helper wrote it -------------------------------------------------


def progress_of(meta: object, state: str = "PROGRESS") -> object:
    return decode_status(TASK_ID, record(status=state, result=meta))["progress"]


def test_celery_progress_recorder_meta_reads_its_description_as_the_message() -> None:
    # celery-progress's ProgressRecorder.set_progress writes exactly this.
    meta = {"pending": False, "current": 3, "total": 8, "percent": 37.5, "description": "rows"}
    assert progress_of(meta) == {
        "current": 3,
        "total": 8,
        "percent": 37.5,
        "message": "rows",
        "rate": None,
        "eta_s": None,
    }


def test_a_lone_percent_and_a_status_text_are_progress() -> None:
    alone = progress_of({"percent": 42})
    assert (alone["current"], alone["total"], alone["percent"]) == (None, None, 42.0)
    # The "status" text of many tutorials' meta ({"current", "total", "status"}).
    texted = progress_of({"current": 1, "total": 4, "status": "resizing"})
    assert (texted["percent"], texted["message"]) == (25.0, "resizing")
    # A message alone is still a report, with nothing to measure.
    said = progress_of({"message": "warming up"})
    assert (said["percent"], said["message"]) == (None, "warming up")
    # "message" wins over the other texts, then celery-progress's "description".
    both = progress_of({"message": "a", "description": "b", "status": "c"})
    assert both["message"] == "a"
    assert progress_of({"description": "b", "status": "c"})["message"] == "b"


def test_values_that_are_not_what_they_should_be_never_make_a_wrong_percent() -> None:
    # Text where numbers belong: no percent from them.
    assert progress_of({"current": "3", "total": "10"}) is None
    texts = progress_of({"current": "3", "total": 10, "message": "m"})
    assert (texts["current"], texts["total"], texts["percent"]) == (None, 10, None)
    # A total of 0: nothing to divide by.
    zero = progress_of({"current": 0, "total": 0})
    assert (zero["current"], zero["total"], zero["percent"]) == (0, 0, None)
    # A given percent that is not a number: computed from the counters instead.
    assert progress_of({"current": 1, "total": 4, "percent": "25%"})["percent"] == 25.0
    # Past the ends: clamped.
    assert progress_of({"percent": -5})["percent"] == 0.0
    assert progress_of({"percent": 250})["percent"] == 100.0
    # Not a dict at all (a task storing a plain value as its meta): no progress.
    assert progress_of([1, 2]) is None
    assert progress_of("halfway") is None


def test_nan_and_infinity_from_python_json_are_read_and_left_out() -> None:
    # Celery's JSON writes them as Python's json does; orjson refuses to read them.
    raw = b'{"status": "PROGRESS", "result": {"current": NaN, "total": Infinity, "percent": NaN}}'
    status = decode_status(TASK_ID, raw)
    assert status["state"] == "PROGRESS"
    assert status["progress"] is None
    counted = b'{"status": "PROGRESS", "result": {"current": 2, "total": 4, "percent": NaN}}'
    assert decode_status(TASK_ID, counted)["progress"]["percent"] == 50.0


def test_custom_states_pass_through_with_or_without_progress() -> None:
    assert decode_status(TASK_ID, record(status="CHECKING", result=None))["state"] == "CHECKING"
    uploading = decode_status(TASK_ID, record(status="UPLOADING", result={"description": "x"}))
    assert (uploading["state"], uploading["final"]) == ("UPLOADING", False)
    assert uploading["progress"]["message"] == "x"


def test_success_drops_the_last_message_and_fills_the_bar() -> None:
    status = decode_status(
        TASK_ID,
        record(
            status="SUCCESS",
            result="ok",
            progress={"current": 1, "total": 2, "description": "sending"},
        ),
    )
    assert status["progress"] == {
        "current": 2,
        "total": 2,
        "percent": 100.0,
        "message": None,
        "rate": None,
        "eta_s": 0.0,
    }
