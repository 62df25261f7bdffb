"""The live book page: ``/`` (index.html) and ``/static/...`` from ``relay/static``.

A single page with no build step: ``relay-client.js`` (the JavaScript client, an ES module
that also runs in Node), ``page.js`` and ``page.css``. The relay serves the files as they
are in the package; the page talks to ``/ws`` and ``/channels`` of the same origin.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
INDEX = STATIC / "index.html"

# The page changes with the relay's version: let browsers revalidate instead of guessing.
_NO_CACHE = {"Cache-Control": "no-cache"}


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(INDEX, headers=_NO_CACHE)


async def _revalidate(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/") and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-cache"


def add_page_routes(app: web.Application) -> None:
    """Serve the page at ``/`` and its files at ``/static/`` (call before the app starts).

    Idempotent: an app that already serves the page is left as it is.
    """
    if "page" in app.router.named_resources():
        return
    app.router.add_get("/", _index, name="page")
    app.router.add_static(
        "/static/", STATIC, name="static", show_index=False, follow_symlinks=False
    )
    app.on_response_prepare.append(_revalidate)
