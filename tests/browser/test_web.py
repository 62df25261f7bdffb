"""relay.web: the page's routes, without a browser."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.web import STATIC, add_page_routes


async def _client() -> TestClient[web.Request, web.Application]:
    app = web.Application()
    add_page_routes(app)
    add_page_routes(app)  # idempotent
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_the_page_and_its_files_are_served() -> None:
    client = await _client()
    try:
        index = await client.get("/")
        assert index.status == 200
        assert index.content_type == "text/html"
        assert index.headers["Cache-Control"] == "no-cache"
        html = await index.text()
        assert '<script type="module" src="static/page.js">' in html
        for name in ("relay-client.js", "page.js"):
            response = await client.get(f"/static/{name}")
            assert response.status == 200
            assert response.content_type in {"text/javascript", "application/javascript"}
            assert response.headers["Cache-Control"] == "no-cache"
            assert await response.read() == (STATIC / name).read_bytes()
        css = await client.get("/static/page.css")
        assert css.content_type == "text/css"
    finally:
        await client.close()


async def test_nothing_else_is_served() -> None:
    client = await _client()
    try:
        assert (await client.get("/static/")).status in {403, 404}  # no listing
        assert (await client.get("/static/nope.js")).status == 404
        assert (await client.get("/static/../web.py")).status in {403, 404}
        assert (await client.get("/static/%2e%2e/web.py")).status in {403, 404}
        assert (await client.post("/")).status == 405
    finally:
        await client.close()


def test_every_file_the_page_loads_is_in_the_package() -> None:
    html = (STATIC / "index.html").read_text()
    for name in ("page.css", "page.js"):
        assert f"static/{name}" in html
        assert (STATIC / name).is_file()
    assert 'from "./relay-client.js"' in (STATIC / "page.js").read_text()
