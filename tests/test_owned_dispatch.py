"""Dispatch as an owner over REST (``POST /tasks/{name}?owner=&tag=``,
``POST /groups/{name}?owner=``): who may say the owner, and
``TASKCAST_FEED_TOKENS_MAY_START``; with the session's real worker, Redis and uvicorn, and
servers of the module's own where auth is on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import taskcast
from taskcast.api.guards import (
    FEED_TOKEN_MAY_NOT_START,
    FEED_TOKEN_OTHER_OWNER,
    FEED_TOKEN_OWNER_MISSING,
    WORK_REFUSED,
)
from tests.owning import KEY, QUICK, SECRET, bearer, new_owner, serving
from tests.support import final, settings_with, wait_for_state


async def listed(client: httpx.AsyncClient, owner: str) -> set[str]:
    """The ids of ``owner``'s listed tasks (one page)."""
    response = await client.get(f"/feeds/{owner}/tasks")
    assert response.status_code == 200, response.text
    return {task["task_id"] for task in response.json()["tasks"]}


@pytest.fixture(scope="module")
async def secured() -> AsyncIterator[str]:
    """A server of the session's app with API keys and a secret (feed tokens start
    nothing)."""
    async with serving(api_keys=(KEY,), secret=SECRET) as url:
        yield url


@pytest.fixture(scope="module")
async def feed_starts() -> AsyncIterator[str]:
    """The same, where feed tokens may start tasks (TASKCAST_FEED_TOKENS_MAY_START)."""
    async with serving(api_keys=(KEY,), secret=SECRET, feed_tokens_may_start=True) as url:
        yield url


async def test_rest_dispatch_as_an_owner_with_auth_off(client: httpx.AsyncClient) -> None:
    me = new_owner()
    response = await client.post(
        "/tasks/progress", params=[("owner", me), ("tag", "a"), ("tag", "b")], json=QUICK
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["owner"], body["tags"]) == (me, ["a", "b"])
    status = await wait_for_state(client, body["task_id"], final)
    assert (status["owner"], status["tags"], status["state"]) == (me, ["a", "b"], "SUCCESS")
    group = await client.post(
        "/groups/progress", params={"owner": me}, json={"count": 2, "params": QUICK}
    )
    assert group.status_code == 202, group.text
    assert (group.json()["owner"], group.json()["tags"]) == (me, [])
    assert await listed(client, me) == {body["task_id"], *group.json()["task_ids"]}
    # Without an owner, the answer says nothing of one.
    plain = await client.post("/tasks/progress", json=QUICK)
    assert "owner" not in plain.json() and "tags" not in plain.json()


@pytest.mark.parametrize(
    "query, fragment",
    [
        ({"owner": "user/42"}, "an owner is"),
        ({"owner": ""}, "an owner is"),
        ({"tag": "a"}, "tags go with an owner"),
        ([("owner", "a"), ("owner", "b")], "one owner"),
        ({"owner": "a", "tag": "b c"}, "a tag is"),
    ],
)
async def test_a_bad_owner_at_dispatch_is_a_422(
    client: httpx.AsyncClient, query: Any, fragment: str
) -> None:
    for path, body in (("/tasks/progress", QUICK), ("/groups/progress", {"count": 1})):
        response = await client.post(path, params=query, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_owner"
        assert fragment in response.json()["detail"]


async def test_rest_dispatch_as_an_owner_with_keys(
    client: httpx.AsyncClient, secured: str, feed_starts: str
) -> None:
    me = new_owner()
    other = me + "2"
    token = taskcast.sign_feed_token(me, secret=SECRET)
    async with httpx.AsyncClient(base_url=secured) as http:
        keyed = await http.post(
            "/tasks/progress", params={"owner": me}, json=QUICK, headers=bearer(KEY)
        )
        assert keyed.status_code == 202 and keyed.json()["owner"] == me
        nothing = await http.post("/tasks/progress", params={"owner": me}, json=QUICK)
        assert (nothing.status_code, nothing.json()["detail"]) == (401, WORK_REFUSED)
        garbage = await http.post(
            "/tasks/progress", params={"owner": me}, json=QUICK, headers=bearer("x" * 30)
        )
        assert garbage.status_code == 401
        # The owner's own feed token, where feed tokens start nothing: 403, saying why.
        feed = await http.post(
            "/tasks/progress", params={"owner": me}, json=QUICK, headers=bearer(token)
        )
        assert (feed.status_code, feed.json()["detail"]) == (403, FEED_TOKEN_MAY_NOT_START)
    async with httpx.AsyncClient(base_url=feed_starts) as http:
        started = await http.post(
            "/tasks/progress",
            params=[("owner", me), ("tag", "t")],
            json=QUICK,
            headers=bearer(token),
        )
        assert started.status_code == 202, started.text
        assert (started.json()["owner"], started.json()["tags"]) == (me, ["t"])
        refusals = {
            # Another owner than the token's, even one it is the start of.
            FEED_TOKEN_OTHER_OWNER.format(owner=other): await http.post(
                "/tasks/progress", params={"owner": other}, json=QUICK, headers=bearer(token)
            ),
            FEED_TOKEN_OWNER_MISSING: await http.post(
                "/tasks/progress", json=QUICK, headers=bearer(token)
            ),
            FEED_TOKEN_OTHER_OWNER.format(owner=me + "x"): await http.post(
                "/groups/progress", params={"owner": me + "x"}, json={"count": 1},
                headers=bearer(token),
            ),
        }  # fmt: skip
        for detail, refused in refusals.items():
            assert refused.status_code == 403, refused.text
            assert refused.json() == {"error": "forbidden_owner", "detail": detail}
        # A feed token never cancels (that needs a key, or the task's watch token).
        cancel = await http.delete(
            f"/tasks/{started.json()['task_id']}", params={"owner": me}, headers=bearer(token)
        )
        assert cancel.status_code == 401
    status = await wait_for_state(client, started.json()["task_id"], final)
    assert status["owner"] == me
    assert await listed(client, me) == {keyed.json()["task_id"], started.json()["task_id"]}


def test_feed_tokens_start_nothing_unless_the_setting_says() -> None:
    from taskcast.settings import Settings

    assert Settings().feed_tokens_may_start is False
    assert settings_with(feed_tokens_may_start=True).feed_tokens_may_start is True
