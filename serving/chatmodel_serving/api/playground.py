"""The playground page at / (static files from the ui package). The page is public, like any static asset:
every API call it makes carries the user's key, so it opens no path around the API keys. The policy header
lets the page load and call nothing but this server, and run no inline script."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

from .protocol import ApiError

ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _file(name: str, media_type: str) -> Response:
    body = files("chatmodel_serving.ui").joinpath(name).read_bytes()
    return Response(body, media_type=media_type, headers=HEADERS)


def add_playground(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _file("index.html", "text/html; charset=utf-8")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ApiError(404, f"no such file: /ui/{name}", code="not_found")
        return _file(name, ASSETS[name])
