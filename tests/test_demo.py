"""The demo page's files as HTTP serves them (tests/test_browser.py drives the page)."""

from __future__ import annotations

import httpx


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    for path, kind in (("static/app.js", "javascript"), ("static/style.css", "text/css")):
        assert f'"{path}"' in page.text
        asset = await client.get(f"/{path}")
        assert asset.status_code == 200
        assert kind in asset.headers["content-type"]


async def test_a_missing_file_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/nothing.js")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
